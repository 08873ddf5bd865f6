//! The simulated platform (cargo feature `sim`, for tests): a hypervisor whose state is a
//! directory, so a test and a `holdfast serve` process share it. VMs with disks whose contents
//! tests write through [`SimHost`], change tracking (every write is logged with the generation
//! it happened in; a checkpoint is a generation), snapshots (copies of the disks a backup reads
//! while the "guest" writes on) and faults on demand: an unreachable host, a refused snapshot, a
//! read error at a disk offset, slow reads. Everything a backup makes here is visible to a test
//! (`snapshot/`, `checkpoints`), so cleanup on every path can be checked.
//!
//! Layout under the platform's `dir`:
//! - `vms/NAME/vm.json`: [`SimVm`] (uuid, power state, hardware, disks, NICs, checkpoints);
//! - `vms/NAME/KEY.img`: disk KEY's bytes; `vms/NAME/KEY.dirty`: "generation offset length" lines;
//! - `vms/NAME/snapshot/`: a running backup's frozen disks (removed when it ends);
//! - `vms/NAME/restoring`: a restore as this new VM is under way (removed when it is done);
//! - `faults.json`: [`Faults`], read on every call.

use crate::connector::*;
use crate::control::{write_raw_file, JobControl};
use crate::registry::{typed, Capabilities, DiskFormat, FieldError, PlatformKind, SettingField, Settings};
use serde::{Deserialize, Serialize};
use std::fs;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vds_store::{BackupType, DiskSource, FileSource, NativeConfig, VmDescription, VmDisk, VmNic};

const PLATFORM: &str = "sim";
/// The one host a simulated platform has (its inventory's).
const SIM_HOST: &str = "sim-host";

/// Faults a test switches on; read from `faults.json` on every call, so they can change while a
/// job runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Every call fails as if the host did not answer, with this cause.
    pub unreachable: Option<String>,
    /// Snapshots of these VMs are refused.
    pub snapshot_refused: Vec<String>,
    /// A read of (VM, disk) that reaches this byte offset fails.
    pub read_error: Option<(String, String, u64)>,
    /// Each disk read sleeps this long first.
    pub read_delay_ms: u64,
}

/// A simulated VM as kept in `vm.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimVm {
    pub uuid: String,
    pub running: bool,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<SimDisk>,
    pub nics: Vec<VmNic>,
    /// Writes now are logged with this generation.
    pub generation: u64,
    /// Change ids (checkpoints) the platform knows, each the last generation it covers.
    pub checkpoints: Vec<(String, u64)>,
    /// The checkpoint of a backup under way (removed with it unless it commits).
    #[serde(default)]
    pub pending: Option<String>,
    /// A VM started from an instant-recovery export: its disks' nfs:// URLs (it has no image
    /// files of its own).
    #[serde(default)]
    pub exported: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SimDisk {
    pub key: String,
    pub size: u64,
}

/// The simulated platform's kind in the registry.
pub struct Sim;

pub static KIND: Sim = Sim;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimSettings {
    dir: PathBuf,
}

const FIELDS: &[SettingField] = &[SettingField {
    name: "dir",
    label: "State directory",
    help: "the directory holding the simulated platform's VMs",
    required: true,
    example: "/var/tmp/sim",
}];

const FORMATS: &[DiskFormat] = &[DiskFormat { name: "raw", description: "raw image" }];

fn settings(s: &Settings) -> Result<SimSettings, FieldError> {
    let k: SimSettings = typed(s)?;
    if !k.dir.join("vms").is_dir() {
        return Err(FieldError::new("dir", format!("{} holds no simulated platform", k.dir.display())));
    }
    Ok(k)
}

impl PlatformKind for Sim {
    fn name(&self) -> &'static str {
        PLATFORM
    }
    fn title(&self) -> &'static str {
        "Simulated platform (tests)"
    }
    fn fields(&self) -> &'static [SettingField] {
        FIELDS
    }
    fn check(&self, s: &Settings) -> Result<(), FieldError> {
        settings(s).map(|_| ())
    }
    fn summary(&self, s: &Settings) -> String {
        settings(s).map(|k| k.dir.display().to_string()).unwrap_or_default()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            change_tracking: true,
            quiesce: false,
            lan_free: false,
            hot_add: false,
            restore_in_place: true,
            restore_as_new_vm: true,
            storage_word: "storage",
            default_storage: Some("default"),
            disk_formats: FORMATS,
            instant_recovery: true,
        }
    }
    fn open(
        &self,
        s: &Settings,
        _credentials: Option<&Credentials>,
        _work_dir: &Path,
    ) -> Result<Box<dyn Connector>, ConnectorError> {
        let k = settings(s).map_err(|e| unreachable("the platform's settings", e.to_string()))?;
        let host = SimHost { dir: k.dir };
        host.check_reachable()?;
        Ok(Box::new(host))
    }
}

fn unreachable(target: &str, cause: String) -> ConnectorError {
    ConnectorError::Unreachable { platform: PLATFORM, target: target.into(), cause }
}

/// A new VM's NICs: the point's models, new MAC addresses unless kept, the chosen network.
fn new_nics(source: &VmDescription, spec: &NewVmSpec) -> Vec<VmNic> {
    source
        .nics
        .iter()
        .map(|n| VmNic {
            model: n.model.clone(),
            mac: if spec.keep_macs { n.mac.clone() } else { Some(new_mac()) },
            network: spec.network.clone().or_else(|| n.network.clone()),
        })
        .collect()
}

fn failed(vm: &str, action: &str, cause: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Failed { platform: PLATFORM, vm: vm.into(), action: action.into(), cause: cause.to_string() }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ConnectorError {
    move |e| failed("-", &what, e)
}

/// A simulated platform: the connector, and the test's handle on the same directory.
#[derive(Clone, Debug)]
pub struct SimHost {
    dir: PathBuf,
}

impl SimHost {
    /// Makes an empty platform in `dir`.
    pub fn create(dir: &Path) -> SimHost {
        fs::create_dir_all(dir.join("vms")).expect("simulated platform directory");
        SimHost { dir: dir.to_path_buf() }
    }

    /// The settings a platform record of this host carries.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({ "dir": self.dir })
    }

    fn vm_dir(&self, name: &str) -> PathBuf {
        self.dir.join("vms").join(name)
    }

    /// Adds a shut-off VM with empty disks of the given sizes (and one NIC on "lan").
    pub fn add_vm(&self, name: &str, disks: &[(&str, u64)]) {
        let dir = self.vm_dir(name);
        fs::create_dir_all(&dir).expect("VM directory");
        let mut vm = SimVm {
            uuid: new_uuid(),
            running: false,
            cpus: 2,
            memory_mib: 1024,
            nics: vec![VmNic { model: Some("virtio".into()), mac: Some(new_mac()), network: Some("lan".into()) }],
            ..SimVm::default()
        };
        for (key, size) in disks {
            fs::File::create(dir.join(format!("{key}.img"))).and_then(|f| f.set_len(*size)).expect("disk image");
            vm.disks.push(SimDisk { key: key.to_string(), size: *size });
        }
        self.save(name, &vm).expect("vm.json");
    }

    /// The guest writes `data` at `offset` of disk `key` (logged for change tracking).
    pub fn write(&self, vm: &str, key: &str, offset: u64, data: &[u8]) {
        let state = self.load(vm).expect("VM exists");
        let dir = self.vm_dir(vm);
        let f = fs::OpenOptions::new().write(true).open(dir.join(format!("{key}.img"))).expect("disk exists");
        f.write_all_at(data, offset).expect("disk write");
        let line = format!("{} {offset} {}\n", state.generation, data.len());
        let mut log = fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{key}.dirty"))).unwrap();
        std::io::Write::write_all(&mut log, line.as_bytes()).expect("dirty log");
    }

    /// Disk `key`'s bytes as the guest sees them.
    pub fn disk(&self, vm: &str, key: &str) -> Vec<u8> {
        fs::read(self.vm_dir(vm).join(format!("{key}.img"))).expect("disk exists")
    }

    pub fn set_running(&self, vm: &str, running: bool) {
        let mut state = self.load(vm).expect("VM exists");
        state.running = running;
        self.save(vm, &state).unwrap();
    }

    /// Renames a VM: its UUID stays.
    pub fn rename(&self, vm: &str, to: &str) {
        fs::rename(self.vm_dir(vm), self.vm_dir(to)).expect("rename");
    }

    pub fn set_faults(&self, faults: &Faults) {
        let tmp = self.dir.join("faults.json.tmp");
        fs::write(&tmp, serde_json::to_vec(faults).unwrap()).unwrap();
        fs::rename(tmp, self.dir.join("faults.json")).unwrap();
    }

    /// The VM's state, as the platform keeps it.
    pub fn vm(&self, vm: &str) -> Option<SimVm> {
        self.load(vm).ok()
    }

    pub fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join("vms"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether a backup's snapshot of `vm` is still there.
    pub fn has_snapshot(&self, vm: &str) -> bool {
        self.vm_dir(vm).join("snapshot").exists()
    }

    fn faults(&self) -> Faults {
        fs::read(self.dir.join("faults.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn check_reachable(&self) -> Result<(), ConnectorError> {
        match self.faults().unreachable {
            Some(cause) => Err(unreachable(&self.dir.display().to_string(), cause)),
            None => Ok(()),
        }
    }

    fn load(&self, vm: &str) -> Result<SimVm, ConnectorError> {
        let text = fs::read(self.vm_dir(vm).join("vm.json"))
            .map_err(|_| ConnectorError::NoSuchVm { platform: PLATFORM, vm: vm.into() })?;
        serde_json::from_slice(&text).map_err(|e| failed(vm, "reading its state", e))
    }

    fn save(&self, vm: &str, state: &SimVm) -> Result<(), ConnectorError> {
        let dir = self.vm_dir(vm);
        let tmp = dir.join("vm.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap())
            .and_then(|()| fs::rename(&tmp, dir.join("vm.json")))
            .map_err(|e| failed(vm, "saving its state", e))
    }

    /// A VM by name or UUID: its name and state.
    fn find(&self, vm: &str) -> Result<(String, SimVm), ConnectorError> {
        self.check_reachable()?;
        if let Ok(state) = self.load(vm) {
            return Ok((vm.to_string(), state));
        }
        for name in self.vm_names() {
            if let Ok(state) = self.load(&name) {
                if state.uuid == vm {
                    return Ok((name, state));
                }
            }
        }
        Err(ConnectorError::NoSuchVm { platform: PLATFORM, vm: vm.into() })
    }

    /// The ranges of disk `key` written after generation `since`, merged.
    fn dirty_since(&self, vm: &str, key: &str, since: u64, size: u64) -> Vec<Range<u64>> {
        let text = fs::read_to_string(self.vm_dir(vm).join(format!("{key}.dirty"))).unwrap_or_default();
        let ranges = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ').map(|n| n.parse::<u64>().ok());
                let (g, o, n) = (it.next()??, it.next()??, it.next()??);
                (g > since && o < size).then(|| o..(o + n).min(size))
            })
            .collect();
        union(ranges)
    }

    fn storage(&self) -> Vec<StorageInfo> {
        vec![StorageInfo { name: "default".into(), active: true, capacity: 1 << 40, available: 1 << 39 }]
    }
}

fn new_uuid() -> String {
    let b: [u8; 16] = rand_bytes();
    format!("{}-{}-{}-{}-{}", hex(&b[0..4]), hex(&b[4..6]), hex(&b[6..8]), hex(&b[8..10]), hex(&b[10..16]))
}

fn new_mac() -> String {
    let b: [u8; 3] = rand_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let f = fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut &f, &mut b).expect("random bytes");
    b
}

/// A snapshot disk a backup reads, with the platform's faults applied.
struct SimSource {
    inner: FileSource,
    host: SimHost,
    vm: String,
    key: String,
}

impl DiskSource for SimSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let f = self.host.faults();
        if f.read_delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(f.read_delay_ms));
        }
        if let Some((vm, key, at)) = &f.read_error {
            if *vm == self.vm && *key == self.key && (offset..offset + buf.len() as u64).contains(at) {
                return Err(std::io::Error::other(format!("simulated read error at byte {at}")));
            }
        }
        self.inner.read_at(offset, buf)
    }
    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.inner.is_unallocated(offset, len)
    }
    fn describe(&self) -> String {
        format!("simulated disk {} of VM {}", self.key, self.vm)
    }
}

struct SimSession {
    host: SimHost,
    vm: String,
    /// The checkpoint this backup made (None: change tracking off).
    checkpoint: Option<String>,
    keep: Vec<String>,
    disks: Vec<SessionDisk>,
}

impl BackupSession for SimSession {
    fn change_id(&self, _disk: &str) -> Option<String> {
        self.checkpoint.clone()
    }
    fn transport(&self) -> String {
        "simulated file read".into()
    }
    fn consistency(&self) -> String {
        "crash-consistent: the simulated platform has no guest agent".into()
    }
    fn take_disks(&mut self) -> Vec<SessionDisk> {
        std::mem::take(&mut self.disks)
    }
    fn finish(self: Box<Self>, committed: bool) -> Result<(), ConnectorError> {
        drop(self.disks);
        let snapshot = self.host.vm_dir(&self.vm).join("snapshot");
        let removed = fs::remove_dir_all(&snapshot).map_err(|e| failed(&self.vm, "removing the snapshot", e));
        let mut state = self.host.load(&self.vm)?;
        match (&self.checkpoint, committed) {
            (Some(new), true) => state.checkpoints.retain(|(id, _)| id == new || self.keep.contains(id)),
            (Some(new), false) => state.checkpoints.retain(|(id, _)| id != new),
            (None, _) => {}
        }
        state.pending = None;
        self.host.save(&self.vm, &state)?;
        removed
    }
}

impl Connector for SimHost {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn test_connection(&self) -> Result<String, ConnectorError> {
        self.check_reachable()?;
        Ok(format!("simulated platform at {} with {} VMs", self.dir.display(), self.vm_names().len()))
    }

    fn list_vms(&self) -> Result<Vec<VmSummary>, ConnectorError> {
        self.check_reachable()?;
        Ok(self
            .vm_names()
            .into_iter()
            .filter_map(|name| {
                let s = self.load(&name).ok()?;
                Some(VmSummary { name, uuid: s.uuid, running: s.running })
            })
            .collect())
    }

    fn inventory(&self) -> Result<Inventory, ConnectorError> {
        Ok(Inventory {
            hosts: vec![HostInfo { name: SIM_HOST.into(), software: "simulated".into(), cpus: 8, memory_mib: 32768 }],
            vms: self.list_vms()?,
            networks: vec![NetworkInfo { name: "lan".into(), active: true }],
            storage: self.storage(),
        })
    }

    fn describe(&self, vm: &str) -> Result<VmDescription, ConnectorError> {
        let (name, s) = self.find(vm)?;
        Ok(VmDescription {
            key: s.uuid.clone(),
            name,
            platform: PLATFORM.into(),
            uuid: Some(s.uuid.clone()),
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            firmware: Some("bios".into()),
            guest_os: None,
            disks: s
                .disks
                .iter()
                .map(|d| VmDisk { key: d.key.clone(), size: d.size, bus: Some("virtio".into()) })
                .collect(),
            nics: s.nics.clone(),
            native: Some(NativeConfig {
                format: "sim-json".into(),
                text: serde_json::to_string_pretty(&s).unwrap_or_default(),
            }),
        })
    }

    fn begin_backup(&self, vm: &str, plan: &BackupPlan) -> Result<Box<dyn BackupSession>, ConnectorError> {
        let (name, mut state) = self.find(vm)?;
        let chosen: Vec<SimDisk> =
            state.disks.iter().filter(|d| plan.include.is_empty() || plan.include.contains(&d.key)).cloned().collect();
        if let Some(k) = plan.include.iter().find(|k| !state.disks.iter().any(|d| &d.key == *k)) {
            return Err(failed(&name, "choosing disks", format!("it has no disk {k:?}")));
        }
        if self.faults().snapshot_refused.contains(&name) {
            return Err(failed(&name, "taking the snapshot", "the simulated platform refused the snapshot"));
        }
        let dir = self.vm_dir(&name);
        let snapshot = dir.join("snapshot");
        if snapshot.exists() {
            return Err(failed(&name, "taking the snapshot", "a snapshot of an earlier backup is still there"));
        }
        fs::create_dir(&snapshot).map_err(io(format!("creating {}", snapshot.display())))?;
        // From here every failure removes the snapshot (and the checkpoint) again.
        let checkpoint = (plan.change_tracking != ChangeTracking::Off).then(|| format!("sim-{}", state.generation));
        let base_generation = |cp: &str| state.checkpoints.iter().find(|(id, _)| id == cp).map(|(_, g)| *g);
        if plan.requested != BackupType::Full && plan.base.is_some() && plan.change_tracking != ChangeTracking::Off {
            plan.control.enter(crate::control::Phase::QueryingChanges);
        }
        let mut disks = Vec::new();
        let mut made = || -> Result<(), ConnectorError> {
            for d in &chosen {
                let frozen = snapshot.join(format!("{}.img", d.key));
                fs::copy(dir.join(format!("{}.img", d.key)), &frozen).map_err(io(format!("copying disk {}", d.key)))?;
                let base = plan.base.as_ref().and_then(|b| b.disk(&d.key));
                let (changed, full_reason) = match (plan.requested, plan.change_tracking, base) {
                    (BackupType::Full, ..) => (None, None),
                    (_, ChangeTracking::Off, _) => (None, Some("change tracking is off for this backup".into())),
                    (_, _, None) => (None, Some("new disk: not in the base point".into())),
                    (_, _, Some(b)) if b.size != d.size => {
                        (None, Some(format!("the disk was resized from {} to {} bytes", b.size, d.size)))
                    }
                    (_, _, Some(b)) => match b.change_id.as_deref().map(|c| (c, base_generation(c))) {
                        None => (None, Some("the base point has no change id for this disk".into())),
                        Some((c, None)) => (None, Some(format!("change id {c} is unknown to the platform"))),
                        Some((_, Some(g))) => (Some(self.dirty_since(&name, &d.key, g, d.size)), None),
                    },
                };
                let inner = FileSource::open(&frozen).map_err(|e| failed(&name, "opening the snapshot", e))?;
                let source = SimSource { inner, host: self.clone(), vm: name.clone(), key: d.key.clone() };
                disks.push(SessionDisk { key: d.key.clone(), source: Box::new(source), changed, full_reason });
            }
            Ok(())
        };
        if let Err(e) = made() {
            let _ = fs::remove_dir_all(&snapshot);
            return Err(e);
        }
        if let Some(cp) = &checkpoint {
            state.checkpoints.push((cp.clone(), state.generation));
            state.pending = Some(cp.clone());
            state.generation += 1;
            if let Err(e) = self.save(&name, &state) {
                let _ = fs::remove_dir_all(&snapshot);
                return Err(e);
            }
        }
        Ok(Box::new(SimSession { host: self.clone(), vm: name, checkpoint, keep: plan.keep_change_ids.clone(), disks }))
    }

    fn clean_up_killed_backup(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        let (name, mut state) = self.find(vm)?;
        let mut done = Vec::new();
        let snapshot = self.vm_dir(&name).join("snapshot");
        if snapshot.exists() {
            fs::remove_dir_all(&snapshot).map_err(|e| failed(&name, "removing the snapshot", e))?;
            done.push(format!("removed the snapshot of VM {name}"));
        }
        if let Some(cp) = state.pending.take() {
            state.checkpoints.retain(|(id, _)| *id != cp);
            self.save(&name, &state)?;
            done.push(format!("deleted its checkpoint {cp}"));
        }
        Ok((!done.is_empty()).then(|| done.join(", ")))
    }

    fn clean_up_killed_restore(&self, vm: &str) -> Result<Option<String>, ConnectorError> {
        self.check_reachable()?;
        let dir = self.vm_dir(vm);
        if !dir.join("restoring").exists() {
            return Ok(None);
        }
        fs::remove_dir_all(&dir).map_err(|e| failed(vm, "removing the half-restored VM", e))?;
        Ok(Some(format!("removed the disks of the half-restored VM {vm}")))
    }

    fn restore_as_new_vm(
        &self,
        source: &VmDescription,
        disks: &[RestoreDisk<'_>],
        spec: &NewVmSpec,
        control: &JobControl,
    ) -> Result<String, ConnectorError> {
        let name = &spec.name;
        // The checks made before queueing hold again when the restore runs.
        self.check_restore(RestoreCheck::NewVm(spec)).map_err(|e| match e {
            CheckError::Invalid(r) | CheckError::Conflict(r) => failed(name, "creating the VM", r),
            CheckError::Platform(e) => e,
        })?;
        let have: Vec<(&str, u64)> = disks.iter().map(|d| (d.key.as_str(), d.reader.size())).collect();
        let sizes = restore_sizes(&have, &spec.disk_sizes).map_err(|e| failed(name, "sizing the disks", e))?;
        let dir = self.vm_dir(name);
        fs::create_dir_all(&dir).map_err(|e| failed(name, "creating the VM", e))?;
        let outcome = (|| {
            fs::write(dir.join("restoring"), b"").map_err(|e| e.to_string())?;
            control.add_total(disks.iter().map(|d| d.reader.size()).sum());
            for (d, size) in disks.iter().zip(&sizes) {
                let file = fs::File::create(dir.join(format!("{}.img", d.key))).map_err(|e| e.to_string())?;
                write_raw_file(&file, d.reader, *size, control, false).map_err(|e| format!("disk {}: {e}", d.key))?;
            }
            let state = SimVm {
                uuid: new_uuid(),
                running: spec.start,
                cpus: spec.cpus.unwrap_or(source.cpus),
                memory_mib: spec.memory_mib.unwrap_or(source.memory_mib),
                disks: disks.iter().zip(&sizes).map(|(d, s)| SimDisk { key: d.key.clone(), size: *s }).collect(),
                nics: new_nics(source, spec),
                generation: 0,
                checkpoints: vec![],
                pending: None,
                exported: vec![],
            };
            self.save(name, &state).map_err(|e| e.to_string())?;
            fs::remove_file(dir.join("restoring")).map_err(|e| e.to_string())
        })();
        match outcome {
            Ok(()) => Ok(name.clone()),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(failed(name, "restoring its disks", e))
            }
        }
    }

    fn start_exported_vm(
        &self,
        source: &VmDescription,
        disks: &[crate::ExportedDisk],
        spec: &NewVmSpec,
    ) -> Result<String, ConnectorError> {
        let name = &spec.name;
        self.check_reachable()?;
        let dir = self.vm_dir(name);
        if dir.exists() {
            return Err(failed(name, "starting from the instant-recovery export", "a VM of that name exists already"));
        }
        fs::create_dir_all(&dir).map_err(|e| failed(name, "creating the VM", e))?;
        let state = SimVm {
            uuid: new_uuid(),
            running: spec.start,
            cpus: spec.cpus.unwrap_or(source.cpus),
            memory_mib: spec.memory_mib.unwrap_or(source.memory_mib),
            disks: disks.iter().map(|d| SimDisk { key: d.key.clone(), size: d.size }).collect(),
            nics: new_nics(source, spec),
            exported: disks.iter().map(|d| format!("nfs://{}{}", d.host, d.path)).collect(),
            ..SimVm::default()
        };
        self.save(name, &state).inspect_err(|_| {
            let _ = fs::remove_dir_all(&dir);
        })?;
        Ok(name.clone())
    }

    /// The simulated platform cannot read an NFS export (it has no NFS client): the move fails
    /// as a real one that cannot reach the export does, and the VM stays as it was.
    fn migrate_exported_vm(
        &self,
        name: &str,
        _disks: &[crate::ExportedDisk],
        storage: &str,
        _format: &str,
        _control: &JobControl,
    ) -> Result<Vec<String>, ConnectorError> {
        self.load(name)?;
        if !self.storage().iter().any(|s| s.name == storage) {
            return Err(failed(name, "moving it to production storage", format!("no storage {storage:?}")));
        }
        Err(failed(name, "moving it to production storage", "the simulated platform cannot read an NFS export"))
    }

    fn remove_exported_vm(&self, name: &str) -> Result<(), ConnectorError> {
        match self.load(name) {
            Err(ConnectorError::NoSuchVm { .. }) => Ok(()),
            Err(e) => Err(e),
            Ok(vm) if vm.exported.is_empty() => {
                Err(failed(name, "removing it", "it was not started from an instant-recovery export"))
            }
            Ok(_) => fs::remove_dir_all(self.vm_dir(name)).map_err(|e| failed(name, "removing it", e)),
        }
    }

    fn check_restore(&self, restore: RestoreCheck<'_>) -> Result<(), CheckError> {
        match restore {
            RestoreCheck::NewVm(spec) => {
                self.check_reachable()?;
                crate::connector::check_single_host(spec.host.as_deref(), || Ok(SIM_HOST.to_string()))?;
                if self.vm_dir(&spec.name).exists() {
                    return Err(CheckError::conflict("name", format!("a VM named {:?} exists", spec.name)));
                }
                if !self.storage().iter().any(|s| s.name == spec.storage) {
                    return Err(CheckError::invalid("storage", format!("no storage {:?}", spec.storage)));
                }
                if spec.network.as_ref().is_some_and(|n| n != "lan") {
                    return Err(CheckError::invalid("network", "no such network (it has lan)"));
                }
                Ok(())
            }
            RestoreCheck::InPlace { vm } => match self.find(vm) {
                Err(ConnectorError::NoSuchVm { .. }) => Err(CheckError::invalid(
                    "point",
                    format!("its VM ({vm}) is not on this platform: restore it as a new VM"),
                )),
                Err(e) => Err(e.into()),
                Ok((name, s)) if s.running => Err(CheckError::conflict(
                    "mode",
                    format!("VM {name} is running: shut it off before restoring in place"),
                )),
                Ok(_) => Ok(()),
            },
        }
    }

    fn restore_in_place(
        &self,
        vm: &str,
        disks: &[RestoreDisk<'_>],
        control: &JobControl,
    ) -> Result<(), ConnectorError> {
        let (name, state) = self.find(vm)?;
        if state.running {
            return Err(failed(&name, "restoring in place", "the VM is running: shut it off first"));
        }
        for d in disks {
            match state.disks.iter().find(|x| x.key == d.key) {
                None => return Err(failed(&name, "restoring in place", format!("it has no disk {}", d.key))),
                Some(x) if x.size != d.reader.size() => {
                    return Err(failed(
                        &name,
                        "restoring in place",
                        format!("disk {} has {} bytes, the point {}", d.key, x.size, d.reader.size()),
                    ))
                }
                Some(_) => {}
            }
        }
        control.add_total(disks.iter().map(|d| d.reader.size()).sum());
        let dir = self.vm_dir(&name);
        for d in disks {
            let path = dir.join(format!("{}.img", d.key));
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| e.to_string())
                .and_then(|file| write_raw_file(&file, d.reader, d.reader.size(), control, true))
                .map_err(|e| failed(&name, &format!("writing disk {}", d.key), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct SimBed {
        host: SimHost,
        dir: tempfile::TempDir,
        seed: u8,
    }

    impl crate::conformance::Bed for SimBed {
        fn connect(&self) -> Box<dyn Connector> {
            Box::new(self.host.clone())
        }
        fn vm(&self) -> String {
            "conf".into()
        }
        fn write(&mut self, key: &str, offset: u64, len: u64) {
            self.seed = self.seed.wrapping_add(1).max(1);
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ self.seed).collect();
            self.host.write("conf", key, offset, &data);
        }
        fn disk(&self, vm: &str, key: &str) -> Vec<u8> {
            self.host.disk(vm, key)
        }
        fn storage(&self) -> String {
            "default".into()
        }
        fn leftovers(&self, vm: &str) -> Vec<String> {
            let mut left = Vec::new();
            if self.host.has_snapshot(vm) {
                left.push("a snapshot".to_string());
            }
            if let Some(cp) = self.host.vm(vm).and_then(|v| v.pending) {
                left.push(format!("checkpoint {cp}"));
            }
            left
        }
        fn remove(&self, vm: &str) {
            let _ = fs::remove_dir_all(self.host.vm_dir(vm));
        }
        fn dir(&self) -> &Path {
            self.dir.path()
        }
    }

    #[test]
    fn the_simulated_platform_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let host = SimHost::create(&dir.path().join("sim"));
        host.add_vm("conf", &[("vda", 16 << 20), ("vdb", 8 << 20)]);
        let mut bed = SimBed { host, dir, seed: 0 };
        crate::conformance::run(&mut bed);
    }

    #[test]
    fn writes_are_tracked_from_the_checkpoint_after_them() {
        let t = tempfile::tempdir().unwrap();
        let host = SimHost::create(t.path());
        host.add_vm("a", &[("vda", 1 << 20)]);
        host.write("a", "vda", 0, &[1; 10]);
        host.write("a", "vda", 5, &[1; 10]);
        host.write("a", "vda", 4096, &[1; 1]);
        assert_eq!(host.dirty_since("a", "vda", 0, 1 << 20), Vec::<Range<u64>>::new());
        let mut s = host.load("a").unwrap();
        s.generation = 1;
        host.save("a", &s).unwrap();
        host.write("a", "vda", (1 << 20) - 2, &[1; 2]);
        assert_eq!(host.dirty_since("a", "vda", 0, 1 << 20), vec![(1 << 20) - 2..1 << 20]);
    }
}
