//! The VDDK transport: VMware's VixDiskLib, loaded at run time from the directory the platform's
//! settings name (vmware-vddk-sys), initialised once per library per process, connected per
//! backup to the snapshot (or, for a restore, to the powered-off VM) with the transport modes
//! the admin allows (nbd, nbdssl, hotadd, san), each disk opened by its datastore path and read
//! or written in whole sectors. The mode VDDK picked is reported per disk.

use std::ffi::{c_char, CStr, CString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vmware_vddk_sys as sys;

const SECTOR: u64 = sys::VIXDISKLIB_SECTOR_SIZE as u64;

/// A loaded and initialised VDDK.
pub struct Vddk {
    lib: sys::VixDiskLib,
    pub path: PathBuf,
}

// Safety: the library's functions may be called from any thread; connections and handles are
// each used by one thread at a time (their owners are not Sync).
unsafe impl Send for Vddk {}
unsafe impl Sync for Vddk {}

/// VDDK's guide: ConnectEx, Open, Close and Disconnect must not run on several threads at
/// once (concurrent jobs would); reads and writes on different handles may.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// VDDK's log lines (printf format and its va_list) go to the appliance's standard error.
unsafe extern "C" fn log_line(fmt: *const c_char, args: *mut sys::__va_list_tag) {
    extern "C" {
        fn vsnprintf(buf: *mut c_char, n: usize, fmt: *const c_char, args: *mut sys::__va_list_tag) -> i32;
    }
    if fmt.is_null() {
        return;
    }
    let mut buf = [0 as c_char; 1024];
    vsnprintf(buf.as_mut_ptr(), buf.len(), fmt, args);
    let line = CStr::from_ptr(buf.as_ptr()).to_string_lossy();
    eprintln!("vddk: {}", line.trim_end());
}

/// The VDDK in `dir`, loaded and initialised once per process (VixDiskLib_InitEx may be called
/// only once); a failure is kept and said again, naming the directory.
pub fn library(dir: &Path) -> Result<Arc<Vddk>, String> {
    // Only successes are kept: a library that failed to load may be installed later.
    static LOADED: Mutex<Vec<(PathBuf, Arc<Vddk>)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().expect("VDDK registry lock");
    if let Some((_, v)) = loaded.iter().find(|(d, _)| d == dir) {
        return Ok(v.clone());
    }
    let (lib, path) = sys::open(dir)?;
    let libdir = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // Safety: the arguments are valid for the call; VDDK copies what it keeps.
    let err = unsafe {
        lib.VixDiskLib_InitEx(6, 5, Some(log_line), Some(log_line), Some(log_line), libdir.as_ptr(), std::ptr::null())
    };
    let vddk = Vddk { lib, path };
    if err != sys::VIX_OK as sys::VixError {
        return Err(format!("VixDiskLib_InitEx failed: {}", vddk.error(err)));
    }
    let vddk = Arc::new(vddk);
    loaded.push((dir.to_path_buf(), vddk.clone()));
    Ok(vddk)
}

impl Vddk {
    /// VDDK's words for an error code.
    pub fn error(&self, err: sys::VixError) -> String {
        // Safety: GetErrorText returns a string we free with FreeErrorText.
        unsafe {
            let p = self.lib.VixDiskLib_GetErrorText(err, std::ptr::null());
            if p.is_null() {
                return format!("VIX error {err}");
            }
            let text = CStr::from_ptr(p).to_string_lossy().into_owned();
            self.lib.VixDiskLib_FreeErrorText(p);
            format!("VIX error {err}: {text}")
        }
    }

    fn check(&self, what: &str, err: sys::VixError) -> Result<(), String> {
        if err == sys::VIX_OK as sys::VixError {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.error(err)))
        }
    }

    /// The transport modes the library offers, where it says ("file:san:hotadd:nbdssl:nbd").
    pub fn modes(&self) -> Option<String> {
        if self.lib.VixDiskLib_ListTransportModes.is_err() {
            return None;
        }
        // Safety: a static string owned by the library.
        let p = unsafe { self.lib.VixDiskLib_ListTransportModes() };
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Connects to `vm` (a moref value) on `server`, to its snapshot `snapshot` (a moref
    /// value) when given, read-only or not, in the first of `modes` that works.
    pub fn connect(
        self: &Arc<Self>,
        to: &Target,
        read_only: bool,
        snapshot: Option<&str>,
        modes: &str,
    ) -> Result<Connection, String> {
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
        let strings =
            [c(&format!("moref={}", to.vm))?, c(&to.server)?, c(&to.thumbprint)?, c(&to.user)?, c(&to.password)?];
        let snapshot = snapshot.map(c).transpose()?;
        let modes = c(modes)?;
        // Safety: all-zero is a valid ConnectParams (null pointers, zero numbers).
        let mut p: sys::VixDiskLibConnectParams = unsafe { std::mem::zeroed() };
        p.vmxSpec = strings[0].as_ptr() as *mut c_char;
        p.serverName = strings[1].as_ptr() as *mut c_char;
        p.thumbPrint = strings[2].as_ptr() as *mut c_char;
        p.credType = sys::VixDiskLibCredType_VIXDISKLIB_CRED_UID;
        p.creds.uid = sys::VixDiskLibUidPasswdCreds {
            userName: strings[3].as_ptr() as *mut c_char,
            password: strings[4].as_ptr() as *mut c_char,
        };
        p.port = to.port as u32;
        p.specType = sys::VixDiskLibSpecType_VIXDISKLIB_SPEC_VMX;
        let mut conn: sys::VixDiskLibConnection = std::ptr::null_mut();
        let _one = serial();
        // vCenter keeps the VM where it is (no Storage vMotion) while we hold its disks. Not
        // every host does it (a standalone ESXi host has no vCenter to ask): reading goes on,
        // and the backup says so.
        let prepared = if self.lib.VixDiskLib_PrepareForAccess.is_ok() && self.lib.VixDiskLib_EndAccess.is_ok() {
            // Safety: p and the strings outlive the call.
            let err = unsafe { self.lib.VixDiskLib_PrepareForAccess(&p, IDENTITY.as_ptr()) };
            self.check("VixDiskLib_PrepareForAccess", err)
        } else {
            Err("this VDDK has no VixDiskLib_PrepareForAccess".into())
        };
        // Safety: p and the strings outlive the call; conn receives the connection.
        let err = unsafe {
            self.lib.VixDiskLib_ConnectEx(
                &p,
                read_only as sys::Bool,
                snapshot.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                modes.as_ptr(),
                &mut conn,
            )
        };
        let connected = self.check("VixDiskLib_ConnectEx", err);
        if connected.is_err() && prepared.is_ok() {
            // Safety: the parameters PrepareForAccess was given.
            unsafe { self.lib.VixDiskLib_EndAccess(&p, IDENTITY.as_ptr()) };
        }
        connected?;
        let (params, access) = match prepared {
            Ok(()) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        Ok(Connection { vddk: self.clone(), conn, params, access, _strings: strings.into() })
    }
}

/// Where a VDDK connection goes: the vCenter or ESXi host, its certificate's SHA-1 thumbprint,
/// the credentials and the VM.
#[derive(Clone)]
pub struct Target {
    pub server: String,
    pub port: u16,
    pub thumbprint: String,
    pub user: String,
    pub password: String,
    pub vm: String,
}

/// The name vSphere shows for the application holding a VM's disks (PrepareForAccess).
const IDENTITY: &CStr = c"Holdfast";

/// A VDDK connection; disconnected when the last disk opened through it is closed.
pub struct Connection {
    vddk: Arc<Vddk>,
    conn: sys::VixDiskLibConnection,
    /// The parameters PrepareForAccess took, for EndAccess (None: it was not done).
    params: Option<sys::VixDiskLibConnectParams>,
    /// Why the VM is not held in place while its disks are read (PrepareForAccess refused).
    pub access: Option<String>,
    /// What the parameters point into.
    _strings: Vec<CString>,
}

unsafe impl Send for Connection {}
unsafe impl Sync for Connection {}

impl Drop for Connection {
    fn drop(&mut self) {
        let _one = serial();
        // Safety: the connection is ours and every disk of it is closed (they hold an Arc).
        unsafe { self.vddk.lib.VixDiskLib_Disconnect(self.conn) };
        if let Some(p) = &self.params {
            // Safety: the parameters PrepareForAccess took; their strings are still ours.
            unsafe { self.vddk.lib.VixDiskLib_EndAccess(p, IDENTITY.as_ptr()) };
        }
    }
}

impl Connection {
    /// Opens the disk at `path` ("[datastore] dir/name.vmdk").
    pub fn open(self: &Arc<Self>, path: &str, read_only: bool) -> Result<Disk, String> {
        let cpath = CString::new(path).map_err(|_| format!("{path:?} holds a NUL byte"))?;
        let flags = if read_only { sys::VIXDISKLIB_FLAG_OPEN_READ_ONLY } else { 0 };
        let mut handle: sys::VixDiskLibHandle = std::ptr::null_mut();
        let lib = &self.vddk.lib;
        let one = serial();
        // Safety: valid connection, path and out-pointer.
        let err = unsafe { lib.VixDiskLib_Open(self.conn, cpath.as_ptr(), flags, &mut handle) };
        drop(one);
        self.vddk.check(&format!("opening {path}"), err)?;
        let mut disk = Disk { conn: self.clone(), handle, size: 0, mode: String::new(), path: path.into() };
        let mut info: *mut sys::VixDiskLibInfo = std::ptr::null_mut();
        // Safety: a valid handle; the info is freed with FreeInfo.
        let err = unsafe { lib.VixDiskLib_GetInfo(handle, &mut info) };
        self.vddk.check(&format!("sizing {path}"), err)?;
        unsafe {
            disk.size = (*info).capacity * SECTOR;
            lib.VixDiskLib_FreeInfo(info);
            let mode = lib.VixDiskLib_GetTransportMode(handle);
            disk.mode =
                if mode.is_null() { "unknown".into() } else { CStr::from_ptr(mode).to_string_lossy().into_owned() };
        }
        Ok(disk)
    }
}

/// An open disk: read and written in whole sectors.
pub struct Disk {
    conn: Arc<Connection>,
    handle: sys::VixDiskLibHandle,
    pub size: u64,
    /// The transport mode VDDK picked for this disk ("nbdssl", "hotadd", "san", …).
    pub mode: String,
    pub path: String,
}

// Safety: a handle is used by one thread at a time (Disk is not Sync).
unsafe impl Send for Disk {}

impl Drop for Disk {
    fn drop(&mut self) {
        let _one = serial();
        // Safety: the handle is ours and open.
        unsafe { self.conn.vddk.lib.VixDiskLib_Close(self.handle) };
    }
}

impl Disk {
    fn vddk(&self) -> &Vddk {
        &self.conn.vddk
    }

    /// Fills `buf` from `offset`; both need not be sector-aligned (a partial sector is read
    /// whole and cut).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = offset + buf.len() as u64;
        let (start, stop) = (offset / SECTOR * SECTOR, end.div_ceil(SECTOR) * SECTOR);
        if start == offset && stop == end {
            return self.read_sectors(offset, buf);
        }
        let mut whole = vec![0u8; (stop - start) as usize];
        self.read_sectors(start, &mut whole)?;
        buf.copy_from_slice(&whole[(offset - start) as usize..(end - start) as usize]);
        Ok(())
    }

    fn read_sectors(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        // Safety: buf holds exactly the sectors asked for.
        let err = unsafe {
            self.vddk().lib.VixDiskLib_Read(self.handle, offset / SECTOR, buf.len() as u64 / SECTOR, buf.as_mut_ptr())
        };
        self.vddk().check(&format!("reading {} at {offset}", self.path), err)
    }

    /// Writes `data` at `offset`, both sector-aligned (restores write whole extents).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        if !offset.is_multiple_of(SECTOR) || !(data.len() as u64).is_multiple_of(SECTOR) {
            return Err(format!("a write at {offset} of {} bytes is not in whole sectors", data.len()));
        }
        // Safety: data holds exactly the sectors written.
        let err = unsafe {
            self.vddk().lib.VixDiskLib_Write(self.handle, offset / SECTOR, data.len() as u64 / SECTOR, data.as_ptr())
        };
        self.vddk().check(&format!("writing {} at {offset}", self.path), err)
    }

    /// The allocated areas (whole chunks of 1 MiB), where the library can say.
    pub fn allocated(&mut self) -> Option<Vec<Range<u64>>> {
        let lib = &self.conn.vddk.lib;
        if !sys::has_allocated_blocks(lib) {
            return None;
        }
        let chunk = 2048u64; // sectors: 1 MiB
        let sectors = self.size / SECTOR / chunk * chunk;
        let per_call = chunk * sys::VIXDISKLIB_MAX_CHUNK_NUMBER as u64;
        let mut out = Vec::new();
        let mut at = 0;
        while at < sectors {
            let n = per_call.min(sectors - at);
            let mut list: *mut sys::VixDiskLibBlockList = std::ptr::null_mut();
            // Safety: a valid handle; the list is freed with FreeBlockList.
            let err = unsafe { lib.VixDiskLib_QueryAllocatedBlocks(self.handle, at, n, chunk, &mut list) };
            if err != sys::VIX_OK as sys::VixError || list.is_null() {
                return None;
            }
            unsafe {
                let count = (*list).numBlocks as usize;
                let blocks = std::ptr::addr_of!((*list).blocks) as *const sys::VixDiskLibBlock;
                for i in 0..count {
                    let b = *blocks.add(i);
                    out.push(b.offset * SECTOR..(b.offset + b.length) * SECTOR);
                }
                lib.VixDiskLib_FreeBlockList(list);
            }
            at += n;
        }
        // The tail that is not a whole chunk is counted as allocated.
        if sectors * SECTOR < self.size {
            out.push(sectors * SECTOR..self.size);
        }
        Some(crate::connector::union(out))
    }
}
