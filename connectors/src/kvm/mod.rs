//! KVM through libvirt: inventory, the domain's neutral description (with its XML kept
//! verbatim), and pull-mode backups: a checkpoint plus a backup job that serves each disk over
//! NBD on a unix socket, with the dirty bitmap since the base checkpoint for incrementals.
//! libvirt's checkpoint and backup calls are not wrapped by the `virt` crate, so they are made
//! through its `sys` bindings here, each in one small function.

pub mod domain_xml;
mod instant;
mod kind;
mod offline;
mod qcow2;
mod restore;

use crate::connector::*;
use crate::control::JobControl;
use crate::nbd::NbdAddress;
use crate::nbd_source::NbdSource;
use domain_xml::{backup_xml, checkpoint_xml, BackupDisk, NbdServer};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use vds_store::{BackupType, VmDescription};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

pub use kind::KIND;

const PLATFORM: &str = "kvm";
/// Names of the checkpoints Holdfast makes; it touches no others.
pub const CHECKPOINT_PREFIX: &str = "hf-";
/// The file in a backup's work directory naming the checkpoint that backup created.
const CHECKPOINT_FILE: &str = "checkpoint";

pub struct KvmConnector {
    conn: Connect,
    uri: String,
    work_dir: PathBuf,
    /// None for a local URI: backups are then served on a unix socket.
    nbd_host: Option<String>,
    /// TCP ports the hypervisor's NBD server may use for remote backups (open in its firewall).
    nbd_ports: std::ops::Range<u16>,
    nbd_tls: Option<TlsFiles>,
}

/// PEM texts for NBD over TLS: the CA that signed the hypervisor's backup certificate (qemu.conf
/// backup_tls_x509_cert_dir) and our client certificate and key, which QEMU asks for unless
/// backup_tls_x509_verify is 0.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// ca-cert.pem, and client-cert.pem with client-key.pem where there is a client certificate,
    /// from `dir`; the error names the file.
    pub fn from_dir(dir: &Path) -> Result<TlsFiles, ConnectorError> {
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| ConnectorError::Unreachable {
                platform: PLATFORM,
                target: dir.join(f).display().to_string(),
                cause: format!("cannot read the NBD TLS file: {e}"),
            })
        };
        let client = if dir.join("client-cert.pem").exists() {
            Some((read("client-cert.pem")?, read("client-key.pem")?))
        } else {
            None
        };
        Ok(TlsFiles { ca_pem: read("ca-cert.pem")?, client })
    }
}

/// NBD's registered port and the ninety after it.
pub const DEFAULT_NBD_PORTS: std::ops::Range<u16> = 10809..10900;

/// The host part of a remote libvirt URI (`qemu+tcp://user@host:16509/system` -> `host`);
/// None for a local one (`qemu:///system`).
pub fn uri_host(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Answers libvirt's credential prompts from a platform record.
unsafe extern "C" fn answer_prompts(
    creds: *mut sys::virConnectCredential,
    n: std::os::raw::c_uint,
    data: *mut std::os::raw::c_void,
) -> std::os::raw::c_int {
    // SAFETY: `data` is the &Credentials passed to virConnectOpenAuth, alive for the call.
    let c = unsafe { &*(data as *const Credentials) };
    for i in 0..n as usize {
        // SAFETY: libvirt passes `n` valid credential structs.
        let cred = unsafe { &mut *creds.add(i) };
        let answer = match cred.type_ as sys::virConnectCredentialType {
            sys::VIR_CRED_USERNAME | sys::VIR_CRED_AUTHNAME | sys::VIR_CRED_ECHOPROMPT => &c.username,
            sys::VIR_CRED_PASSPHRASE | sys::VIR_CRED_NOECHOPROMPT => &c.password,
            _ => return -1,
        };
        let value = cstring(answer);
        // SAFETY: libvirt frees `result` with free(); strdup allocates with malloc.
        cred.result = unsafe { libc::strdup(value.as_ptr()) };
        cred.resultlen = answer.len() as std::os::raw::c_uint;
    }
    0
}

fn open_with_credentials(uri: &str, credentials: &Credentials) -> Result<Connect, String> {
    let mut types = [
        sys::VIR_CRED_USERNAME as std::os::raw::c_int,
        sys::VIR_CRED_AUTHNAME as _,
        sys::VIR_CRED_PASSPHRASE as _,
        sys::VIR_CRED_ECHOPROMPT as _,
        sys::VIR_CRED_NOECHOPROMPT as _,
    ];
    let mut auth = sys::virConnectAuth {
        credtype: types.as_mut_ptr(),
        ncredtype: types.len() as _,
        cb: Some(answer_prompts),
        cbdata: credentials as *const Credentials as *mut _,
    };
    let u = cstring(uri);
    // SAFETY: valid C string and auth struct; the callback data outlives the call.
    let ptr = unsafe { sys::virConnectOpenAuth(u.as_ptr(), &mut auth, 0) };
    if ptr.is_null() {
        return Err(last_error());
    }
    // SAFETY: a fresh connection we own.
    Ok(unsafe { Connect::from_ptr(ptr) })
}

pub(crate) fn last_error() -> String {
    // SAFETY: virGetLastErrorMessage returns a pointer to a thread-local string owned by libvirt.
    let p = unsafe { sys::virGetLastErrorMessage() };
    if p.is_null() {
        "unknown libvirt error".into()
    } else {
        // SAFETY: non-null, NUL-terminated, valid until the next libvirt call on this thread.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

pub(crate) fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "")).expect("NULs removed")
}

impl KvmConnector {
    /// Connects to a libvirt URI (qemu:///system, qemu+ssh://host/system, qemu+tcp://…,
    /// qemu+tls://…), answering libvirt's authentication prompts (SASL user name and password,
    /// libssh passwords) from `credentials`. Backup work files go under `work_dir`.
    pub fn open(uri: &str, work_dir: &Path, credentials: Option<&Credentials>) -> Result<KvmConnector, ConnectorError> {
        // Errors come back as values; libvirt's default handler would also print them.
        virt::error::clear_error_callback();
        let unreachable = |cause: String| ConnectorError::Unreachable { platform: PLATFORM, target: uri.into(), cause };
        let conn = match credentials {
            None => Connect::open(Some(uri)).map_err(|e| {
                let e = e.to_string();
                if e.contains("authentication") && !e.contains("certificate") {
                    unreachable(format!("{e} (the host asks for credentials: give a user name and password)"))
                } else {
                    unreachable(e)
                }
            })?,
            Some(c) => open_with_credentials(uri, c).map_err(unreachable)?,
        };
        std::fs::create_dir_all(work_dir.join("active"))
            .and_then(|()| std::fs::create_dir_all(work_dir.join("restoring")))
            .map_err(|e| ConnectorError::Unreachable {
                platform: PLATFORM,
                target: work_dir.display().to_string(),
                cause: format!("cannot create the work directory: {e}"),
            })?;
        let nbd_host = uri_host(uri);
        Ok(KvmConnector {
            conn,
            uri: uri.into(),
            work_dir: work_dir.to_path_buf(),
            nbd_host,
            nbd_ports: DEFAULT_NBD_PORTS,
            nbd_tls: None,
        })
    }

    /// The address the hypervisor's NBD server listens on for remote backups (default: the
    /// URI's host, which must reach the hypervisor from here and name it on the hypervisor).
    pub fn set_nbd_host(&mut self, host: &str) {
        self.nbd_host = Some(host.to_string());
    }

    /// Remote backups serve NBD over TLS only (libvirt must have backup TLS certificates).
    /// The CA and client certificate are checked here, so a bad one fails now, not mid-backup.
    pub fn set_nbd_tls(&mut self, files: TlsFiles) -> Result<(), ConnectorError> {
        let host = self.nbd_host.clone().ok_or_else(|| ConnectorError::Unsupported {
            platform: PLATFORM,
            what: "NBD over TLS on a local URI (backups use a unix socket there)".into(),
        })?;
        crate::nbd::NbdTls::new(&files.ca_pem, files.client.as_ref().map(|(c, k)| (&c[..], &k[..])), &host)?;
        self.nbd_tls = Some(files);
        Ok(())
    }

    /// The TCP ports remote backups may use on the hypervisor (default DEFAULT_NBD_PORTS).
    pub fn set_nbd_ports(&mut self, ports: std::ops::Range<u16>) {
        self.nbd_ports = ports;
    }

    /// Where a running backup of `dom` records its work directory, so a killed run's job is
    /// recognised as ours and ended by the next one.
    fn marker(&self, dom: &Domain) -> PathBuf {
        let id = dom.uuid_string().unwrap_or_else(|_| dom.name().unwrap_or_default());
        self.work_dir.join("active").join(id)
    }

    /// Where a running restore as the new VM `vm` lists the volumes it has made (pool, volume
    /// per line), so a restart can remove them if it was killed before defining the VM.
    pub(super) fn restore_marker(&self, vm: &str) -> PathBuf {
        let hex: String = vm.bytes().map(|b| format!("{b:02x}")).collect();
        self.work_dir.join("restoring").join(hex)
    }

    fn domain(&self, vm: &str) -> Result<Domain, ConnectorError> {
        self.conn
            .lookup_domain_by_name(vm)
            .or_else(|_| self.conn.lookup_domain_by_uuid_string(vm))
            .map_err(|_| ConnectorError::NoSuchVm { platform: PLATFORM, vm: vm.into() })
    }

    /// Whether the URI names libvirt on this machine (no host part).
    fn is_local(&self) -> bool {
        self.nbd_host.is_none()
    }

    fn failed(vm: &str, action: &str, cause: impl Into<String>) -> ConnectorError {
        ConnectorError::Failed { platform: PLATFORM, vm: vm.into(), action: action.into(), cause: cause.into() }
    }

    /// Ends a backup job a killed Holdfast left on `dom`, and deletes the checkpoint it made;
    /// says what it did (None: nothing was left). A job that is not ours (no marker of ours
    /// names it) is left alone.
    fn clear_stale_backup(&self, dom: &Domain, vm: &str) -> Result<Option<String>, ConnectorError> {
        let marker = self.marker(dom);
        let dir = std::fs::read_to_string(&marker).ok().map(PathBuf::from).filter(|d| d.starts_with(&self.work_dir));
        let job = backup_job_xml(dom).map_err(|e| Self::failed(vm, "looking for a running backup job", e))?;
        if job.is_none() {
            // A killed run whose job ended with the VM: its checkpoint, if it made one, goes with
            // the next successful backup's pruning.
            let Some(dir) = dir else { return Ok(None) };
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(&marker);
            return Ok(Some("the backup job had ended; its work files were removed".into()));
        }
        let Some(dir) = dir else {
            return Err(Self::failed(vm, "starting a backup", "another backup job is running on this VM"));
        };
        end_backup_job(dom).map_err(|e| Self::failed(vm, "ending a stale backup job", e))?;
        let mut done = "ended the backup job libvirt still ran".to_string();
        if let Ok(cp) = std::fs::read_to_string(dir.join(CHECKPOINT_FILE)) {
            delete_checkpoint(dom, cp.trim()).map_err(|e| Self::failed(vm, "deleting a stale checkpoint", e))?;
            done += &format!(" and deleted its checkpoint {}", cp.trim());
        }
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(&marker);
        Ok(Some(done))
    }
}

/// The XML of the domain's running backup job, None when none runs (or the domain is shut
/// off), an error when libvirt cannot tell (connection lost): that is not "no job".
fn backup_job_xml(dom: &Domain) -> Result<Option<String>, String> {
    // SAFETY: a valid domain pointer; libvirt returns a malloc'd string, or NULL.
    let xml = unsafe { sys::virDomainBackupGetXMLDesc(dom.as_ptr(), 0) };
    if xml.is_null() {
        // SAFETY: the thread's last error, owned by libvirt; only its code is read.
        let code = unsafe { sys::virGetLastError().as_ref().map(|e| e.code) };
        let no_job = [sys::VIR_ERR_NO_DOMAIN_BACKUP as i32, sys::VIR_ERR_OPERATION_INVALID as i32];
        return match code {
            Some(c) if !no_job.contains(&c) => Err(last_error()),
            _ => Ok(None),
        };
    }
    // SAFETY: non-null NUL-terminated string we own; freed right after copying.
    let text = unsafe { CStr::from_ptr(xml) }.to_string_lossy().into_owned();
    // SAFETY: allocated by libvirt with malloc.
    unsafe { libc::free(xml.cast()) };
    Ok(Some(text))
}

/// Aborts the domain's backup job and waits until libvirt reports it gone: the abort returns
/// before QEMU's block jobs have ended, and a backup started meanwhile would be refused.
fn end_backup_job(dom: &Domain) -> Result<(), String> {
    // SAFETY: a valid domain pointer.
    if unsafe { sys::virDomainAbortJob(dom.as_ptr()) } < 0 {
        let e = last_error();
        if backup_job_xml(dom)?.is_some() {
            return Err(e);
        }
    }
    let start = std::time::Instant::now();
    while backup_job_xml(dom)?.is_some() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err("the backup job is still running a minute after it was aborted".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Deletes a checkpoint of a shut-off domain on this host, which libvirt refuses to do: the
/// bitmap is removed from each qcow2 disk with qemu-img, then libvirt's record of it.
fn delete_checkpoint_offline(dom: &Domain, name: &str) -> Result<(), String> {
    let xml = dom.xml_desc(0).map_err(|e| e.to_string())?;
    let (_, disks) = domain_xml::parse(&xml)?;
    for d in disks.iter().filter(|d| d.format.as_deref() == Some("qcow2")) {
        let Some(src) = &d.source else { continue };
        if !offline::image_bitmaps(src)?.iter().any(|(b, _)| b == name) {
            continue;
        }
        let out = std::process::Command::new("qemu-img")
            .args(["bitmap", "--remove", src, name])
            .output()
            .map_err(|e| format!("running qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(format!("removing bitmap {name} from {src}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    let n = cstring(name);
    // SAFETY: valid domain pointer and C string; the checkpoint handle is freed after use.
    unsafe {
        let cp = sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0);
        if cp.is_null() {
            return Ok(());
        }
        let rc = sys::virDomainCheckpointDelete(cp, sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY);
        let err = (rc < 0).then(last_error);
        sys::virDomainCheckpointFree(cp);
        if let Some(e) = err {
            return Err(e);
        }
    }
    Ok(())
}

/// Names of the domain's checkpoints.
fn checkpoint_names(dom: &Domain) -> Result<Vec<String>, String> {
    let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: valid domain pointer; libvirt allocates the array and a reference per checkpoint,
    // all released below.
    let n = unsafe { sys::virDomainListAllCheckpoints(dom.as_ptr(), &mut list, 0) };
    if n < 0 {
        return Err(last_error());
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: `list` holds `n` valid checkpoint pointers.
        unsafe {
            let cp = *list.add(i);
            let name = sys::virDomainCheckpointGetName(cp);
            if !name.is_null() {
                names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
            }
            sys::virDomainCheckpointFree(cp);
        }
    }
    // SAFETY: the array was allocated by libvirt with malloc.
    unsafe { libc::free(list.cast()) };
    Ok(names)
}

/// Freezes every guest filesystem through the QEMU guest agent.
fn fs_freeze(dom: &Domain) -> Result<(), String> {
    // SAFETY: a valid domain pointer; NULL/0 means all mounted filesystems.
    if unsafe { sys::virDomainFSFreeze(dom.as_ptr(), std::ptr::null_mut(), 0, 0) } < 0 {
        return Err(last_error());
    }
    Ok(())
}

fn fs_thaw(dom: &Domain) -> Result<(), String> {
    // SAFETY: a valid domain pointer; NULL/0 means all filesystems.
    if unsafe { sys::virDomainFSThaw(dom.as_ptr(), std::ptr::null_mut(), 0, 0) } < 0 {
        return Err(last_error());
    }
    Ok(())
}

fn checkpoint_exists(dom: &Domain, name: &str) -> bool {
    let n = cstring(name);
    // SAFETY: valid domain pointer and C string; the returned checkpoint is freed at once.
    unsafe {
        let cp = sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0);
        if cp.is_null() {
            return false;
        }
        sys::virDomainCheckpointFree(cp);
        true
    }
}

/// Deletes a checkpoint; its bitmap changes merge into its parent, so later incrementals from
/// older checkpoints stay exact. A checkpoint that is already gone is not an error.
pub fn delete_checkpoint(dom: &Domain, name: &str) -> Result<(), String> {
    let n = cstring(name);
    // SAFETY: valid domain pointer and C string; the checkpoint handle is freed after use.
    unsafe {
        let cp = sys::virDomainCheckpointLookupByName(dom.as_ptr(), n.as_ptr(), 0);
        if cp.is_null() {
            return Ok(());
        }
        let rc = sys::virDomainCheckpointDelete(cp, 0);
        // Read the error before freeing: every libvirt call resets the thread's last error.
        let err = (rc < 0).then(last_error);
        sys::virDomainCheckpointFree(cp);
        if let Some(e) = err {
            return Err(e);
        }
    }
    Ok(())
}

impl Connector for KvmConnector {
    fn restore_as_new_vm(
        &self,
        source: &VmDescription,
        disks: &[RestoreDisk<'_>],
        spec: &NewVmSpec,
        control: &JobControl,
    ) -> Result<String, ConnectorError> {
        restore::restore_as_new_vm(self, source, disks, spec, control)
    }

    fn clean_up_killed_restore(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        restore::clean_up_killed_restore(self, vm)
    }

    fn restore_in_place(
        &self,
        vm: &str,
        disks: &[RestoreDisk<'_>],
        control: &JobControl,
    ) -> Result<(), ConnectorError> {
        restore::restore_in_place(self, vm, disks, control)
    }

    fn check_restore(&self, restore: RestoreCheck<'_>) -> Result<(), CheckError> {
        restore::check_restore(self, restore)
    }

    fn start_exported_vm(
        &self,
        source: &VmDescription,
        disks: &[crate::ExportedDisk],
        spec: &NewVmSpec,
    ) -> Result<String, ConnectorError> {
        instant::start_exported_vm(self, source, disks, spec)
    }

    fn remove_exported_vm(&self, name: &str) -> Result<(), ConnectorError> {
        instant::remove_exported_vm(self, name)
    }

    fn migrate_exported_vm(
        &self,
        name: &str,
        disks: &[crate::ExportedDisk],
        storage: &str,
        format: &str,
        control: &JobControl,
    ) -> Result<Vec<String>, ConnectorError> {
        instant::migrate_exported_vm(self, name, disks, storage, format, control)
    }

    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn test_connection(&self) -> Result<String, ConnectorError> {
        let unreachable =
            |cause: String| ConnectorError::Unreachable { platform: PLATFORM, target: self.uri.clone(), cause };
        let lib = self.conn.lib_version().map_err(|e| unreachable(e.to_string()))?;
        let hyp = self.conn.hyp_version().map_err(|e| unreachable(e.to_string()))?;
        let host = self.conn.hostname().map_err(|e| unreachable(e.to_string()))?;
        let v = |n: u32| format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000);
        Ok(format!("libvirt {} with QEMU {} on {host}", v(lib), v(hyp)))
    }

    fn list_vms(&self) -> Result<Vec<VmSummary>, ConnectorError> {
        let doms = self.conn.list_all_domains(0).map_err(|e| ConnectorError::Unreachable {
            platform: PLATFORM,
            target: self.uri.clone(),
            cause: e.to_string(),
        })?;
        let mut out: Vec<VmSummary> = doms
            .iter()
            .filter_map(|d| {
                Some(VmSummary {
                    name: d.name().ok()?,
                    uuid: d.uuid_string().ok()?,
                    running: d.is_active().unwrap_or(false),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn inventory(&self) -> Result<Inventory, ConnectorError> {
        let unreachable = |e: virt::error::Error| ConnectorError::Unreachable {
            platform: PLATFORM,
            target: self.uri.clone(),
            cause: e.to_string(),
        };
        let node = self.conn.node_info().map_err(unreachable)?;
        let host = HostInfo {
            name: self.conn.hostname().map_err(unreachable)?,
            software: self.test_connection()?,
            cpus: node.cpus,
            memory_mib: node.memory / 1024,
        };
        let mut networks: Vec<NetworkInfo> = self
            .conn
            .list_all_networks(0)
            .map_err(unreachable)?
            .iter()
            .filter_map(|n| Some(NetworkInfo { name: n.name().ok()?, active: n.is_active().unwrap_or(false) }))
            .collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        let mut storage: Vec<StorageInfo> = self
            .conn
            .list_all_storage_pools(0)
            .map_err(unreachable)?
            .iter()
            .filter_map(|p| {
                let info = p.info().ok()?;
                Some(StorageInfo {
                    name: p.name().ok()?,
                    active: p.is_active().unwrap_or(false),
                    capacity: info.capacity,
                    available: info.available,
                })
            })
            .collect();
        storage.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Inventory { hosts: vec![host], vms: self.list_vms()?, networks, storage })
    }

    fn describe(&self, vm: &str) -> Result<VmDescription, ConnectorError> {
        let dom = self.domain(vm)?;
        let xml = dom.xml_desc(0).map_err(|e| Self::failed(vm, "reading the domain XML", e.to_string()))?;
        let (mut d, _) = domain_xml::parse(&xml).map_err(|e| Self::failed(vm, "reading the domain XML", e))?;
        for disk in &mut d.disks {
            disk.size = dom
                .block_info(&disk.key, 0)
                .map_err(|e| Self::failed(vm, &format!("sizing disk {}", disk.key), e.to_string()))?
                .capacity;
        }
        Ok(d)
    }

    fn clean_up_killed_backup(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        let dom = self.domain(vm)?;
        self.clear_stale_backup(&dom, vm)
    }

    fn begin_backup(&self, vm: &str, plan: &BackupPlan) -> Result<Box<dyn BackupSession>, ConnectorError> {
        let dom = self.domain(vm)?;
        let running = dom.is_active().unwrap_or(false);
        if running {
            self.clear_stale_backup(&dom, vm)?;
        }
        let xml = dom.xml_desc(0).map_err(|e| Self::failed(vm, "reading the domain XML", e.to_string()))?;
        let (_, disks) = domain_xml::parse(&xml).map_err(|e| Self::failed(vm, "reading the domain XML", e))?;
        let all: Vec<String> = disks.iter().map(|d| d.target.clone()).collect();
        for want in &plan.include {
            if !all.contains(want) {
                return Err(Self::failed(
                    vm,
                    "choosing disks",
                    format!("it has no disk {want:?} (disks: {})", all.join(", ")),
                ));
            }
        }
        let chosen: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|t| plan.include.is_empty() || plan.include.iter().any(|i| i == t))
            .collect();
        if !running {
            return self.begin_offline_backup(&dom, vm, plan, &disks, &chosen);
        }

        // Incremental or differential from the base's checkpoint, when it still exists.
        let mut reason_all: Option<String> = None;
        let base_cp = match (plan.requested, plan.base.as_ref().and_then(|b| b.vm_change_id())) {
            (BackupType::Full, _) => None,
            (_, None) => {
                reason_all = Some("no earlier backup with a checkpoint".into());
                None
            }
            (_, Some(cp)) if !checkpoint_exists(&dom, &cp) => {
                reason_all = Some(format!("checkpoint {cp} no longer exists on the hypervisor"));
                None
            }
            (_, Some(cp)) => Some(cp),
        };
        let base_cp = base_cp.filter(|_| plan.change_tracking != ChangeTracking::Off);
        let base_disks: Vec<&str> =
            plan.base.as_ref().map(|b| b.disks.iter().map(|d| d.key.as_str()).collect()).unwrap_or_default();

        let dir = self.work_dir.join(format!("backup-{}", vds_store::fslock::random_hex(6)));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Self::failed(vm, "creating the backup work directory", e.to_string()))?;
        let marker = self.marker(&dom);
        std::fs::write(&marker, dir.display().to_string()).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            Self::failed(vm, "recording the running backup", format!("{}: {e}", marker.display()))
        })?;
        if let Some((uid, gid)) = domain_xml::dac_owner(&xml).filter(|_| self.is_local()) {
            // QEMU creates the NBD socket here.
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_file(&marker);
                Self::failed(vm, "handing the backup work directory to QEMU's user", e.to_string())
            })?;
        }
        let socket = dir.join("nbd.sock");
        let checkpoint = format!(
            "{CHECKPOINT_PREFIX}{}-{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
            vds_store::fslock::random_hex(3)
        );
        // Only qcow2 (v3) keeps persistent dirty bitmaps: other disks are read whole every time.
        // A v2 image is only recognised on this host; remotely QEMU's refusal names it.
        // Looked up once per disk: the v2 check runs qemu-img.
        let formats: Vec<(&str, Option<String>)> = chosen
            .iter()
            .map(|t| {
                let d = disks.iter().find(|d| d.target == *t);
                let format = d.and_then(|d| match (d.format.as_deref(), &d.source) {
                    (Some("qcow2"), Some(src)) if self.is_local() && offline::is_qcow2_v2(src) => {
                        Some("qcow2 v2 (compat 0.10; `qemu-img amend -o compat=1.1` upgrades it)".to_string())
                    }
                    _ => d.format.clone(),
                });
                (*t, format)
            })
            .collect();
        let format_of = |t: &str| formats.iter().find(|(k, _)| *k == t).and_then(|(_, f)| f.clone());
        let can_track = |t: &&str| format_of(t).as_deref() == Some("qcow2");
        if plan.change_tracking == ChangeTracking::On {
            if let Some(t) = chosen.iter().find(|t| !can_track(t)) {
                let what = format_of(t).unwrap_or_else(|| "of unknown format".into());
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_file(&marker);
                return Err(Self::failed(
                    vm,
                    "checking change tracking",
                    format!("it is required, but disk {t} is {what}, which cannot track changes (qcow2 v3 can)"),
                ));
            }
        }
        let trackable: Vec<&str> = match plan.change_tracking {
            ChangeTracking::Off => vec![],
            _ => chosen.iter().copied().filter(can_track).collect(),
        };
        let mut reasons = Vec::new();
        let specs: Vec<BackupDisk<'_>> = chosen
            .iter()
            .map(|t| {
                let tracked = trackable.contains(t);
                let reason = if plan.requested == BackupType::Full {
                    None
                } else if plan.change_tracking == ChangeTracking::Off {
                    Some("change tracking is off for this backup".to_string())
                } else if !tracked {
                    Some(format!(
                        "disk {t} is {}, which cannot track changes (qcow2 v3 can)",
                        format_of(t).unwrap_or_else(|| "of unknown format".into())
                    ))
                } else if base_cp.is_none() {
                    reason_all.clone()
                } else if !base_disks.contains(t) {
                    Some("new disk: not in the base point".into())
                } else {
                    None
                };
                reasons.push(reason);
                BackupDisk {
                    target: t,
                    // On a remote host our paths mean nothing: scratch beside the disk image
                    // there (libvirt removes the scratch files it made when the job ends).
                    scratch: if self.is_local() {
                        Some(dir.join(format!("scratch-{t}.qcow2")).display().to_string())
                    } else {
                        disks
                            .iter()
                            .find(|d| d.target == *t)
                            .and_then(|d| d.source.as_ref())
                            .map(|src| format!("{src}.{checkpoint}.scratch"))
                    },
                    full: base_cp.is_none() || !base_disks.contains(t) || !tracked,
                }
            })
            .collect();
        let socket_text = socket.display().to_string();
        // libvirt (9.0) wants the TCP port named: try a few from the range, skipping busy ones.
        let ports = {
            let (lo, hi) = (self.nbd_ports.start, self.nbd_ports.end.max(self.nbd_ports.start + 1));
            let first = u16::from_str_radix(&vds_store::fslock::random_hex(2), 16).unwrap_or(0) % (hi - lo);
            (0..(hi - lo).min(8)).map(move |i| lo + (first + i) % (hi - lo))
        };
        let servers: Vec<NbdServer<'_>> = match &self.nbd_host {
            None => vec![NbdServer::Unix(&socket_text)],
            Some(host) => ports.map(|port| NbdServer::Tcp(host, port, self.nbd_tls.is_some())).collect(),
        };
        let checkpoint = (!trackable.is_empty()).then_some(checkpoint);
        let cxml = checkpoint.as_ref().map(|c| checkpoint_xml(c, &trackable, &all));
        let cleanup_dir = |e: ConnectorError| {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_file(&marker);
            e
        };
        if let Some(cp) = &checkpoint {
            std::fs::write(dir.join(CHECKPOINT_FILE), cp)
                .map_err(|e| cleanup_dir(Self::failed(vm, "recording the checkpoint name", e.to_string())))?;
        }
        let tls = match (&self.nbd_tls, &self.nbd_host) {
            (Some(f), Some(host)) => {
                match crate::nbd::NbdTls::new(&f.ca_pem, f.client.as_ref().map(|(c, k)| (&c[..], &k[..])), host) {
                    Ok(t) => Some(t),
                    Err(e) => return Err(cleanup_dir(Self::failed(vm, "setting up NBD over TLS", e.to_string()))),
                }
            }
            _ => None,
        };
        // Quiesce: freeze the guest's filesystems for the instant the backup job takes its view.
        let (frozen, consistency) = match plan.quiesce {
            Quiesce::Off => (false, "crash-consistent (quiesce not requested)".to_string()),
            q => match fs_freeze(&dom) {
                Ok(()) => (true, "application-consistent: guest filesystems frozen for the snapshot".to_string()),
                Err(cause) if q == Quiesce::Required => {
                    return Err(cleanup_dir(Self::failed(vm, "quiescing the guest (QEMU guest agent)", cause)))
                }
                Err(cause) => (false, format!("crash-consistent: the guest could not be quiesced ({cause})")),
            },
        };
        let c = cxml.as_deref().map(cstring);
        let c_ptr = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let mut begin_error = None;
        let mut address = NbdAddress::Unix(socket.clone());
        for server in &servers {
            let b = cstring(&backup_xml(server, base_cp.as_deref(), &specs, &all));
            // SAFETY: valid domain pointer; C strings (or NULL for no checkpoint) that outlive the call.
            if unsafe { sys::virDomainBackupBegin(dom.as_ptr(), b.as_ptr(), c_ptr, 0) } >= 0 {
                if let NbdServer::Tcp(host, port, _) = server {
                    let a = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                    address = match &tls {
                        None => NbdAddress::Tcp(a),
                        Some(tls) => NbdAddress::Tls(a, tls.clone()),
                    };
                }
                begin_error = None;
                break;
            }
            let e = last_error();
            let busy = e.contains("in use") || e.contains("bind");
            begin_error = Some(e);
            if !busy {
                break;
            }
        }
        let begun = begin_error.is_none();
        if frozen {
            if let Err(e) = fs_thaw(&dom) {
                if begun {
                    let _ = end_backup_job(&dom);
                    if let Some(cp) = &checkpoint {
                        let _ = delete_checkpoint(&dom, cp);
                    }
                }
                return Err(cleanup_dir(Self::failed(vm, "thawing the guest's filesystems", e)));
            }
        }
        if let Some(cause) = begin_error {
            return Err(cleanup_dir(Self::failed(vm, "starting the backup job", cause)));
        }
        let mut session = KvmSession {
            dom,
            vm: vm.into(),
            local: self.is_local(),
            consistency,
            checkpoint,
            dir,
            marker,
            disks: Vec::new(),
            address,
            keep: plan.keep_change_ids.clone(),
        };
        if base_cp.is_some() {
            plan.control.enter(crate::control::Phase::QueryingChanges);
        }
        match session.open_disks(&specs, base_cp.is_some(), reasons) {
            Ok(()) => Ok(Box::new(session)),
            Err(e) => {
                let _ = Box::new(session).finish(false);
                Err(e)
            }
        }
    }
}

struct KvmSession {
    dom: Domain,
    vm: String,
    /// libvirt runs on this host (disk images are reachable directly).
    local: bool,
    consistency: String,
    /// None when no disk can keep a bitmap (no qcow2 disk).
    checkpoint: Option<String>,
    dir: PathBuf,
    /// Names `dir` as this VM's running backup (see `KvmConnector::marker`).
    marker: PathBuf,
    address: NbdAddress,
    disks: Vec<SessionDisk>,
    /// Checkpoints later backups still count from.
    keep: Vec<String>,
}

impl KvmSession {
    fn open_disks(
        &mut self,
        specs: &[BackupDisk<'_>],
        incremental: bool,
        reasons: Vec<Option<String>>,
    ) -> Result<(), ConnectorError> {
        let address = self.address.clone();
        for (spec, full_reason) in specs.iter().zip(reasons) {
            let bitmap = (incremental && !spec.full).then(|| format!("hf-{}", spec.target));
            let mut source = NbdSource::open(&address, spec.target, bitmap.as_deref())?;
            let changed = match &bitmap {
                Some(b) => Some(source.dirty_ranges(b)?),
                None => None,
            };
            self.disks.push(SessionDisk {
                key: spec.target.to_string(),
                source: Box::new(source),
                changed,
                full_reason,
            });
        }
        Ok(())
    }
}

impl BackupSession for KvmSession {
    fn change_id(&self, _disk: &str) -> Option<String> {
        self.checkpoint.clone()
    }

    fn transport(&self) -> String {
        match &self.address {
            NbdAddress::Unix(_) => "nbd+unix (libvirt pull-mode backup)".into(),
            NbdAddress::Tcp(a) => format!("nbd over TCP to {a} (libvirt pull-mode backup)"),
            NbdAddress::Tls(a, _) => format!("nbd over TLS to {a} (libvirt pull-mode backup)"),
        }
    }

    fn consistency(&self) -> String {
        self.consistency.clone()
    }

    fn take_disks(&mut self) -> Vec<SessionDisk> {
        std::mem::take(&mut self.disks)
    }

    fn finish(self: Box<Self>, committed: bool) -> Result<(), ConnectorError> {
        let mut errors = Vec::new();
        drop(self.disks);
        let job_ended = match end_backup_job(&self.dom) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("ending the backup job: {e}"));
                false
            }
        };
        if !committed {
            if let Some(cp) = &self.checkpoint {
                let deleted = delete_checkpoint(&self.dom, cp).or_else(|e| {
                    // The VM went down during the backup: libvirt cannot delete checkpoints of a
                    // shut-off domain, but on this host the bitmaps can be removed directly.
                    if self.local && !self.dom.is_active().unwrap_or(true) {
                        delete_checkpoint_offline(&self.dom, cp)
                    } else {
                        Err(e)
                    }
                });
                if let Err(e) = deleted {
                    errors.push(format!("deleting checkpoint {cp}: {e}"));
                }
            }
        } else {
            // Ours only, and never one a later incremental or differential counts from: each
            // deleted checkpoint's bitmap merges into its parent, so the kept ones stay exact.
            match checkpoint_names(&self.dom) {
                Ok(names) => {
                    for name in names.iter().filter(|n| {
                        n.starts_with(CHECKPOINT_PREFIX)
                            && self.checkpoint.as_deref() != Some(n.as_str())
                            && !self.keep.contains(n)
                    }) {
                        if let Err(e) = delete_checkpoint(&self.dom, name) {
                            errors.push(format!("deleting old checkpoint {name}: {e}"));
                        }
                    }
                }
                Err(e) => errors.push(format!("listing checkpoints: {e}")),
            }
        }
        if job_ended {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.marker);
        } else {
            // libvirtd went away (restarted, connection lost): the marker stays, so the next run
            // recognises the job as ours and ends it. A committed point's checkpoint is its
            // successor's base: that run must not delete it.
            if committed {
                let _ = std::fs::remove_file(self.dir.join(CHECKPOINT_FILE));
            }
            errors.push("the next backup of this VM will end the job".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(KvmConnector::failed(&self.vm, "cleaning up the backup", errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::uri_host;

    #[test]
    fn remote_uris_name_their_host_and_local_ones_none() {
        assert_eq!(uri_host("qemu:///system"), None);
        assert_eq!(uri_host("qemu+unix:///system?socket=/run/x"), None);
        assert_eq!(uri_host("qemu+ssh://root@kvm1.example/system").as_deref(), Some("kvm1.example"));
        assert_eq!(uri_host("qemu+tcp://10.0.0.5:16509/system").as_deref(), Some("10.0.0.5"));
        assert_eq!(uri_host("qemu+tls://[fd00::5]:16514/system").as_deref(), Some("fd00::5"));
    }
}
