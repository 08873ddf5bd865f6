//! A stand-in for VMware's libvixDiskLib, in the spirit of nbdkit's dummy VDDK library: the
//! functions Holdfast calls, with VDDK's calling convention, struct layouts (the bindings' own
//! types) and error codes, serving the vSphere test bed's flat files so the loader, the FFI and
//! every transport-mode path run in CI. Installed by a test as `<dir>/lib64/libvixDiskLib.so.8`
//! and configured through the environment of the process that loads it:
//! - `VDDK_SHIM_DATASTORES`: `name=directory,…`, where "[name] path" disks live;
//! - `VDDK_SHIM_MODES`: the transport modes this "host" offers, `a:b` (default `nbdssl:nbd`);
//! - `VDDK_SHIM_USER`, `VDDK_SHIM_PASSWORD`: credentials ConnectEx insists on (when set);
//! - `VDDK_SHIM_THUMBPRINT`: the thumbprint Open insists on (when set), as real VDDK checks it;
//! - `VDDK_SHIM_LOG`: a file that gets one line per call that matters, for the test to read;
//! - `VDDK_SHIM_REFUSE_ACCESS`: PrepareForAccess and EndAccess fail (as without a vCenter).
//!
//! Not VDDK: no NFC, no network; a disk is its flat file, its capacity the file's size.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::{c_char, CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use vmware_vddk_sys::*;

static INITED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LAST: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn fail(code: u32, why: String) -> VixError {
    log(&format!("error {code}: {why}"));
    LAST.with(|l| *l.borrow_mut() = why);
    code as VixError
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn log(line: &str) {
    if let Some(path) = env("VDDK_SHIM_LOG") {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

unsafe fn text(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// The modes offered now (read on every call, so a test can change them); every string handed
/// out stays alive as long as the library, as VDDK's own static strings do.
fn modes_offered() -> &'static CStr {
    static KEPT: Mutex<Vec<&'static CStr>> = Mutex::new(Vec::new());
    let now = CString::new(env("VDDK_SHIM_MODES").unwrap_or_else(|| "nbdssl:nbd".into())).unwrap_or_default();
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = kept.iter().find(|k| **k == now.as_c_str()) {
        return k;
    }
    let leaked: &'static CStr = Box::leak(now.into_boxed_c_str());
    kept.push(leaked);
    leaked
}

/// Every mode name as a C string that lives as long as the library.
fn mode_name(mode: &str) -> &'static CStr {
    match mode {
        "file" => c"file",
        "san" => c"san",
        "hotadd" => c"hotadd",
        "nbdssl" => c"nbdssl",
        _ => c"nbd",
    }
}

struct Connection {
    read_only: bool,
    thumbprint: Option<String>,
    mode: &'static CStr,
}

struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    mode: &'static CStr,
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_InitEx(
    major: u32,
    minor: u32,
    _log: VixDiskLibGenericLogFunc,
    _warn: VixDiskLibGenericLogFunc,
    _panic: VixDiskLibGenericLogFunc,
    lib_dir: *const c_char,
    _config: *const c_char,
) -> VixError {
    log(&format!("InitEx {major}.{minor} libDir={}", text(lib_dir).unwrap_or_default()));
    if major < 6 {
        return fail(VIX_E_NOT_SUPPORTED, format!("VDDK API version {major}.{minor} is too old"));
    }
    INITED.store(true, Ordering::SeqCst);
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Exit() {
    log("Exit");
    INITED.store(false, Ordering::SeqCst);
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ListTransportModes() -> *const c_char {
    modes_offered().as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_ConnectEx(
    params: *const VixDiskLibConnectParams,
    read_only: Bool,
    snapshot: *const c_char,
    modes: *const c_char,
    out: *mut VixDiskLibConnection,
) -> VixError {
    if !INITED.load(Ordering::SeqCst) {
        return fail(VIX_E_FAIL, "ConnectEx before InitEx".into());
    }
    if params.is_null() || out.is_null() {
        return fail(VIX_E_INVALID_ARG, "ConnectEx without parameters".into());
    }
    let p = &*params;
    if p.credType != VixDiskLibCredType_VIXDISKLIB_CRED_UID || p.specType != VixDiskLibSpecType_VIXDISKLIB_SPEC_VMX {
        return fail(VIX_E_INVALID_ARG, format!("credType {} specType {} not served", p.credType, p.specType));
    }
    let user = text(p.creds.uid.userName).unwrap_or_default();
    let password = text(p.creds.uid.password).unwrap_or_default();
    if env("VDDK_SHIM_USER").is_some_and(|u| u != user) || env("VDDK_SHIM_PASSWORD").is_some_and(|w| w != password) {
        return fail(VIX_E_AUTHENTICATION_FAIL, format!("the host refused user {user}"));
    }
    let wanted = text(modes).unwrap_or_else(|| "file:san:hotadd:nbdssl:nbd".into());
    let offered = modes_offered().to_string_lossy().into_owned();
    let Some(mode) = wanted.split(':').find(|m| offered.split(':').any(|o| o == *m)) else {
        return fail(
            VIX_E_NOT_SUPPORTED,
            format!("none of the transport modes {wanted} is available (the host offers {offered})"),
        );
    };
    log(&format!(
        "ConnectEx server={} port={} vmx={} readonly={} snapshot={} modes={wanted} picked={mode}",
        text(p.serverName).unwrap_or_default(),
        p.port,
        text(p.vmxSpec).unwrap_or_default(),
        read_only != 0,
        text(snapshot).unwrap_or_default()
    ));
    let conn = Connection { read_only: read_only != 0, thumbprint: text(p.thumbPrint), mode: mode_name(mode) };
    *out = Box::into_raw(Box::new(conn)) as VixDiskLibConnection;
    VIX_OK as VixError
}

/// What vCenter's PrepareForAccess and EndAccess are asked for a VM (logged; refused, as a
/// standalone ESXi host refuses them, when `VDDK_SHIM_REFUSE_ACCESS` is set).
unsafe fn access(call: &str, params: *const VixDiskLibConnectParams, identity: *const c_char) -> VixError {
    if params.is_null() || identity.is_null() {
        return fail(VIX_E_INVALID_ARG, format!("{call} without parameters or identity"));
    }
    if env("VDDK_SHIM_REFUSE_ACCESS").is_some() {
        return fail(VIX_E_NOT_SUPPORTED, format!("{call} needs a vCenter"));
    }
    log(&format!(
        "{call} vmx={} identity={}",
        text((*params).vmxSpec).unwrap_or_default(),
        text(identity).unwrap_or_default()
    ));
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_PrepareForAccess(
    params: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    access("PrepareForAccess", params, identity)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_EndAccess(
    params: *const VixDiskLibConnectParams,
    identity: *const c_char,
) -> VixError {
    access("EndAccess", params, identity)
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Disconnect(conn: VixDiskLibConnection) -> VixError {
    if conn.is_null() {
        return fail(VIX_E_INVALID_ARG, "Disconnect of nothing".into());
    }
    drop(Box::from_raw(conn as *mut Connection));
    log("Disconnect");
    VIX_OK as VixError
}

fn normalise(t: &str) -> String {
    t.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_uppercase()
}

/// "[ds] dir/disk.vmdk" → the flat file in the datastore's directory.
fn flat_file(path: &str) -> Result<PathBuf, String> {
    let rest = path.strip_prefix('[').ok_or_else(|| format!("{path:?} is not a datastore path"))?;
    let (ds, rel) = rest.split_once(']').ok_or_else(|| format!("{path:?} is not a datastore path"))?;
    let stores = env("VDDK_SHIM_DATASTORES").unwrap_or_default();
    let dir = stores
        .split(',')
        .filter_map(|e| e.split_once('='))
        .find(|(name, _)| *name == ds)
        .map(|(_, d)| PathBuf::from(d))
        .ok_or_else(|| format!("no datastore {ds:?}"))?;
    let rel = rel.trim_start();
    Ok(dir.join(format!("{}-flat.vmdk", rel.strip_suffix(".vmdk").unwrap_or(rel))))
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Open(
    conn: VixDiskLibConnection,
    path: *const c_char,
    flags: u32,
    out: *mut VixDiskLibHandle,
) -> VixError {
    if conn.is_null() || out.is_null() {
        return fail(VIX_E_INVALID_ARG, "Open without a connection".into());
    }
    let c = &*(conn as *const Connection);
    if let Some(want) = env("VDDK_SHIM_THUMBPRINT") {
        if c.thumbprint.as_deref().map(normalise) != Some(normalise(&want)) {
            return fail(VIX_E_FAIL, format!("SSL thumbprint mismatch: given {:?}", c.thumbprint));
        }
    }
    let path = text(path).unwrap_or_default();
    let flat = match flat_file(&path) {
        Ok(f) => f,
        Err(e) => return fail(VIX_E_FILE_NOT_FOUND, e),
    };
    let read_only = c.read_only || flags & VIXDISKLIB_FLAG_OPEN_READ_ONLY != 0;
    let file = match OpenOptions::new().read(true).write(!read_only).open(&flat) {
        Ok(f) => f,
        Err(e) => return fail(VIX_E_FILE_NOT_FOUND, format!("{}: {e}", flat.display())),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    log(&format!("Open {path} flags={flags} mode={}", c.mode.to_string_lossy()));
    *out = Box::into_raw(Box::new(Disk { file, size, read_only, mode: c.mode })) as VixDiskLibHandle;
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Close(handle: VixDiskLibHandle) -> VixError {
    if handle.is_null() {
        return fail(VIX_E_INVALID_ARG, "Close of nothing".into());
    }
    drop(Box::from_raw(handle as *mut Disk));
    log("Close");
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetInfo(handle: VixDiskLibHandle, out: *mut *mut VixDiskLibInfo) -> VixError {
    if handle.is_null() || out.is_null() {
        return fail(VIX_E_INVALID_ARG, "GetInfo without a disk".into());
    }
    let d = &*(handle as *const Disk);
    let mut info: VixDiskLibInfo = std::mem::zeroed();
    info.capacity = d.size / VIXDISKLIB_SECTOR_SIZE as u64;
    info.adapterType = VixDiskLibAdapterType_VIXDISKLIB_ADAPTER_SCSI_LSILOGIC;
    info.numLinks = 1;
    *out = Box::into_raw(Box::new(info));
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeInfo(info: *mut VixDiskLibInfo) {
    if !info.is_null() {
        drop(Box::from_raw(info));
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetTransportMode(handle: VixDiskLibHandle) -> *const c_char {
    if handle.is_null() {
        return std::ptr::null();
    }
    (*(handle as *const Disk)).mode.as_ptr()
}

unsafe fn span(handle: VixDiskLibHandle, start: u64, n: u64) -> Result<(&'static Disk, u64, usize), VixError> {
    if handle.is_null() {
        return Err(fail(VIX_E_INVALID_ARG, "no disk handle".into()));
    }
    let d = &*(handle as *const Disk);
    let sector = VIXDISKLIB_SECTOR_SIZE as u64;
    match start.checked_add(n).and_then(|e| e.checked_mul(sector)) {
        Some(end) if end <= d.size => Ok((d, start * sector, (n * sector) as usize)),
        _ => Err(fail(VIX_E_INVALID_ARG, format!("sectors {start}+{n} lie past the disk's {} bytes", d.size))),
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Read(handle: VixDiskLibHandle, start: u64, n: u64, buf: *mut u8) -> VixError {
    let (d, offset, len) = match span(handle, start, n) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let out = std::slice::from_raw_parts_mut(buf, len);
    match d.file.read_exact_at(out, offset) {
        Ok(()) => VIX_OK as VixError,
        Err(e) => fail(VIX_E_FILE_ERROR, format!("reading at {offset}: {e}")),
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_Write(handle: VixDiskLibHandle, start: u64, n: u64, buf: *const u8) -> VixError {
    let (d, offset, len) = match span(handle, start, n) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if d.read_only {
        return fail(VIX_E_FILE_READ_ONLY, "the disk was opened read-only".into());
    }
    log(&format!("Write {start}+{n}"));
    match d.file.write_all_at(std::slice::from_raw_parts(buf, len), offset) {
        Ok(()) => VIX_OK as VixError,
        Err(e) => fail(VIX_E_FILE_ERROR, format!("writing at {offset}: {e}")),
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_GetErrorText(err: VixError, _locale: *const c_char) -> *mut c_char {
    let detail = LAST.with(|l| l.borrow().clone());
    let name = match err as u32 {
        VIX_OK => "The operation was successful",
        VIX_E_FAIL => "Unknown error",
        VIX_E_INVALID_ARG => "One of the parameters was invalid",
        VIX_E_FILE_NOT_FOUND => "The file was not found",
        VIX_E_NOT_SUPPORTED => "The operation is not supported",
        VIX_E_FILE_READ_ONLY => "The file is write-protected",
        VIX_E_AUTHENTICATION_FAIL => "Authentication failed",
        _ => "Error",
    };
    CString::new(format!("{name} ({detail})")).unwrap_or_default().into_raw()
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeErrorText(text: *mut c_char) {
    if !text.is_null() {
        drop(CString::from_raw(text));
    }
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_QueryAllocatedBlocks(
    handle: VixDiskLibHandle,
    start: u64,
    n: u64,
    chunk: u64,
    out: *mut *mut VixDiskLibBlockList,
) -> VixError {
    if chunk < VIXDISKLIB_MIN_CHUNK_SIZE as u64
        || !start.is_multiple_of(chunk)
        || !n.is_multiple_of(chunk)
        || out.is_null()
    {
        return fail(VIX_E_INVALID_ARG, format!("start {start}, count {n}, chunk {chunk}: not chunk-aligned"));
    }
    if n / chunk > VIXDISKLIB_MAX_CHUNK_NUMBER as u64 {
        return fail(VIX_E_INVALID_ARG, format!("{} chunks in one call", n / chunk));
    }
    let (d, offset, len) = match span(handle, start, n) {
        Ok(s) => s,
        Err(e) => return e,
    };
    // Data ranges by SEEK_DATA / SEEK_HOLE, widened to whole chunks.
    let (fd, end, bytes) = (d.file.as_raw_fd(), offset + len as u64, chunk * VIXDISKLIB_SECTOR_SIZE as u64);
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    let mut at = offset;
    while at < end {
        let data = libc::lseek(fd, at as i64, libc::SEEK_DATA);
        if data < 0 || data as u64 >= end {
            break;
        }
        let hole = (libc::lseek(fd, data, libc::SEEK_HOLE).max(data) as u64).min(end);
        let (s, e) = (data as u64 / bytes * bytes, hole.div_ceil(bytes) * bytes);
        match blocks.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => blocks.push((s, e)),
        }
        at = hole.max(at + 1);
    }
    let size = 8 + 16 * blocks.len().max(1);
    let list = libc::calloc(1, size) as *mut VixDiskLibBlockList;
    if list.is_null() {
        return fail(VIX_E_OUT_OF_MEMORY, "block list".into());
    }
    (*list).numBlocks = blocks.len() as u32;
    let items = std::ptr::addr_of_mut!((*list).blocks) as *mut VixDiskLibBlock;
    for (i, (s, e)) in blocks.iter().enumerate() {
        let sector = VIXDISKLIB_SECTOR_SIZE as u64;
        *items.add(i) = VixDiskLibBlock { offset: s / sector, length: (e - s) / sector };
    }
    log(&format!("QueryAllocatedBlocks {start}+{n} chunk={chunk}: {} blocks", blocks.len()));
    *out = list;
    VIX_OK as VixError
}

#[no_mangle]
pub unsafe extern "C" fn VixDiskLib_FreeBlockList(list: *mut VixDiskLibBlockList) -> VixError {
    libc::free(list as *mut libc::c_void);
    VIX_OK as VixError
}
