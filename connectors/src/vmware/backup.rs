//! A VMware backup session: change tracking (CBT) turned on where the plan wants it, a snapshot
//! (quiesced through VMware Tools when asked), the snapshot's disks read over the HTTPS
//! datastore transport, the areas CBT reports changed since the base point's change id (or the
//! allocated areas for a full), and the snapshot removed on every path.

use super::config::{self, Disk};
use super::soap::{SoapError, Transfer};
use super::xml::{esc, El, MoRef};
use super::{VmRef, VmwareConnector};
use crate::connector::*;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use vds_store::{BackupType, DiskSource};

/// Our snapshots' names start so; a killed backup's are found by it.
pub const SNAPSHOT_PREFIX: &str = "holdfast-backup-";
/// What a quiesced snapshot is: VMware Tools froze the guest's filesystems; applications are
/// consistent only where the guest's VSS writers or freeze scripts took part.
const QUIESCED: &str = "quiesced by VMware Tools: file-system consistent (application-consistent where the guest's \
                        VSS writers or freeze scripts took part)";
/// How long a snapshot may take to be created or removed (consolidation of a busy disk is slow).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3 * 3600);

/// A snapshot in the VM's tree: (reference, name).
fn snapshot_tree(node: &El, out: &mut Vec<(MoRef, String)>) {
    for s in node.children("rootSnapshotList").chain(node.children("childSnapshotList")) {
        if let Some(r) = s.moref_of("snapshot") {
            out.push((r, s.text_of("name").unwrap_or_default().to_string()));
        }
        snapshot_tree(s, out);
    }
}

fn snapshots(conn: &VmwareConnector, vm: &VmRef) -> Result<Vec<(MoRef, String)>, ConnectorError> {
    let o = conn
        .soap
        .retrieve_one(&vm.obj, &["snapshot"], &[])
        .map_err(|e| VmwareConnector::failed(&vm.name, "reading its snapshots", e))?;
    let mut out = Vec::new();
    if let Some(info) = o.props.get("snapshot") {
        snapshot_tree(info, &mut out);
    }
    Ok(out)
}

fn remove_snapshot(soap: &super::soap::Soap, snapshot: &MoRef) -> Result<(), SoapError> {
    soap.run_task(
        &format!(
            "<RemoveSnapshot_Task xmlns=\"urn:vim25\">{}<removeChildren>false</removeChildren>\
                 <consolidate>true</consolidate></RemoveSnapshot_Task>",
            snapshot.arg("_this")
        ),
        SNAPSHOT_WAIT,
    )
    .map(|_| ())
}

/// Removes the snapshots a killed backup of `vm` left (ours only, by name).
pub fn remove_our_snapshots(conn: &VmwareConnector, vm: &VmRef) -> Result<Option<String>, ConnectorError> {
    let ours: Vec<(MoRef, String)> =
        snapshots(conn, vm)?.into_iter().filter(|(_, n)| n.starts_with(SNAPSHOT_PREFIX)).collect();
    if ours.is_empty() {
        return Ok(None);
    }
    for (r, name) in &ours {
        remove_snapshot(&conn.soap, r)
            .map_err(|e| VmwareConnector::failed(&vm.name, &format!("removing the left-over snapshot {name}"), e))?;
    }
    let names: Vec<&str> = ours.iter().map(|(_, n)| n.as_str()).collect();
    Ok(Some(format!("removed the snapshot {} a killed backup left", names.join(", "))))
}

/// Changed or allocated areas of a disk since `change_id` ("*": allocated) up to `snapshot`
/// (None: up to now, which vSphere knows for a powered-off VM only), asking page by page as
/// vSphere answers.
pub fn changed_areas(
    conn: &VmwareConnector,
    vm: &MoRef,
    snapshot: Option<&MoRef>,
    disk: &Disk,
    change_id: &str,
) -> Result<Vec<Range<u64>>, SoapError> {
    let mut out = Vec::new();
    let mut start = 0u64;
    while start < disk.size {
        let reply = conn.soap.call(&format!(
            "<QueryChangedDiskAreas xmlns=\"urn:vim25\">{}{}<deviceKey>{}</deviceKey><startOffset>{start}</startOffset>\
             <changeId>{}</changeId></QueryChangedDiskAreas>",
            vm.arg("_this"),
            snapshot.map(|s| s.arg("snapshot")).unwrap_or_default(),
            disk.device_key,
            esc(change_id)
        ))?;
        let r =
            reply.child("returnval").ok_or_else(|| SoapError::Protocol("QueryChangedDiskAreas: no answer".into()))?;
        let length = r.u64_of("length").unwrap_or(0);
        let at = r.u64_of("startOffset").unwrap_or(start);
        if at != start {
            return Err(SoapError::Protocol(format!(
                "QueryChangedDiskAreas answered from offset {at} when asked from {start} (disk {})",
                disk.key
            )));
        }
        for a in r.children("changedArea") {
            let (s, l) = (a.u64_of("start").unwrap_or(0), a.u64_of("length").unwrap_or(0));
            let end = s.saturating_add(l).min(disk.size);
            if s < end {
                out.push(s..end);
            }
        }
        // Each answer covers [startOffset, startOffset + length); an answer that does not move
        // on would loop forever.
        let next = at.saturating_add(length);
        if next <= start {
            return Err(SoapError::Protocol(format!(
                "QueryChangedDiskAreas answered an empty window at offset {start} of disk {}",
                disk.key
            )));
        }
        start = next;
    }
    Ok(crate::connector::union(out))
}

/// Whether a CBT query failed because vSphere no longer knows the change id (or the disk's
/// tracking), which a full read repairs: its FileFault.
fn cbt_lost(e: &SoapError) -> bool {
    e.fault_kind().is_some_and(|k| k == "FileFault" || k.ends_with("FileFault"))
}

/// Whether `offset..offset + len` lies outside every allocated area (false when they are not
/// known). The areas are sorted and disjoint (a `union`): the first one ending past `offset`
/// is the only one that can overlap first, found by binary search (a big disk has many areas
/// and many extents).
fn never_written(allocated: &Option<Vec<Range<u64>>>, offset: u64, len: u64) -> bool {
    let end = offset + len;
    allocated.as_ref().is_some_and(|a| {
        let i = a.partition_point(|r| r.end <= offset);
        a.get(i).is_none_or(|r| r.start >= end)
    })
}

/// A snapshot's flat disk read with byte-range GETs; the allocated areas, when known, let
/// the pipeline skip the rest without reading it.
struct HttpDisk {
    transfer: Transfer,
    url: String,
    size: u64,
    allocated: Option<Vec<Range<u64>>>,
    describe: String,
}

impl DiskSource for HttpDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.transfer.read_at(&self.url, offset, buf).map_err(std::io::Error::other)
    }

    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        Ok(never_written(&self.allocated, offset, len))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// A snapshot's disk read through VDDK.
struct VddkDiskSource {
    disk: super::vddk::Disk,
    allocated: Option<Vec<Range<u64>>>,
    describe: String,
}

impl DiskSource for VddkDiskSource {
    fn size(&self) -> u64 {
        self.disk.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.disk.read_at(offset, buf).map_err(std::io::Error::other)
    }

    fn is_unallocated(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        Ok(never_written(&self.allocated, offset, len))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

struct Session {
    conn_soap: Arc<super::soap::Soap>,
    vm: VmRef,
    snapshot: MoRef,
    snapshot_name: String,
    change_ids: Vec<(String, String)>,
    disks: Vec<SessionDisk>,
    consistency: String,
    /// Each disk's data path: ("scsi0-0", "vddk nbdssl") or ("scsi0-0", "https").
    paths: Vec<(String, String)>,
    /// Why VDDK, though configured, was not used.
    vddk_fallback: Option<String>,
    /// Warnings for the job's log (VDDK could not have vCenter hold the VM in place).
    warnings: Vec<String>,
    finished: bool,
}

impl Drop for Session {
    /// A session dropped without `finish` (a panic on the way) still removes its snapshot.
    fn drop(&mut self) {
        if !self.finished {
            drop(std::mem::take(&mut self.disks));
            let _ = remove_snapshot(&self.conn_soap, &self.snapshot);
        }
    }
}

impl BackupSession for Session {
    fn change_id(&self, disk: &str) -> Option<String> {
        self.change_ids.iter().find(|(k, _)| k == disk).map(|(_, c)| c.clone())
    }

    fn transport(&self) -> String {
        let mut modes: Vec<&str> = self.paths.iter().map(|(_, p)| p.as_str()).collect();
        modes.dedup();
        let mut said = match modes.as_slice() {
            [] => "none".to_string(),
            ["https"] => "https (datastore /folder)".to_string(),
            [one] => one.to_string(),
            _ => self.paths.iter().map(|(k, p)| format!("{k} {p}")).collect::<Vec<_>>().join(", "),
        };
        if let Some(why) = &self.vddk_fallback {
            said += &format!("; VDDK not used: {why}");
        }
        said
    }

    fn lan_free(&self) -> bool {
        !self.paths.is_empty() && self.paths.iter().all(|(_, p)| p == "vddk san")
    }

    fn consistency(&self) -> String {
        self.consistency.clone()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn take_disks(&mut self) -> Vec<SessionDisk> {
        std::mem::take(&mut self.disks)
    }

    fn finish(mut self: Box<Self>, _committed: bool) -> Result<(), ConnectorError> {
        // Disks not taken are closed first (VDDK holds the snapshot's disks while they are open);
        // the snapshot goes either way: CBT's change ids live in the VM's disks, not in it.
        drop(std::mem::take(&mut self.disks));
        self.finished = true;
        remove_snapshot(&self.conn_soap, &self.snapshot).map_err(|e| {
            VmwareConnector::failed(&self.vm.name, &format!("removing the backup's snapshot {}", self.snapshot_name), e)
        })
    }
}

pub(super) fn reconfigure_cbt(conn: &VmwareConnector, vm: &VmRef, on: bool) -> Result<(), SoapError> {
    conn.soap
        .run_task(
            &format!(
                "<ReconfigVM_Task xmlns=\"urn:vim25\">{}<spec><changeTrackingEnabled>{on}</changeTrackingEnabled></spec>\
                 </ReconfigVM_Task>",
                vm.obj.arg("_this")
            ),
            Duration::from_secs(600),
        )
        .map(|_| ())
}

/// Takes the backup's snapshot; says how consistent it is.
fn take_snapshot(
    conn: &VmwareConnector,
    vm: &VmRef,
    plan: &BackupPlan,
    name: &str,
) -> Result<(MoRef, String), ConnectorError> {
    let create = |quiesce: bool| {
        conn.soap.run_task(
            &format!(
                "<CreateSnapshot_Task xmlns=\"urn:vim25\">{}<name>{}</name><description>Taken by Holdfast for a backup; \
                 removed when the backup ends.</description><memory>false</memory><quiesce>{quiesce}</quiesce>\
                 </CreateSnapshot_Task>",
                vm.obj.arg("_this"),
                esc(name)
            ),
            SNAPSHOT_WAIT,
        )
    };
    let failed = |e: SoapError| VmwareConnector::failed(&vm.name, "taking a snapshot", e);
    let (result, consistency) = if !vm.powered_on {
        (create(false).map_err(failed)?, "consistent: the VM is powered off".to_string())
    } else {
        match plan.quiesce {
            Quiesce::Off => (create(false).map_err(failed)?, "crash-consistent: quiescing is off for this rule".into()),
            Quiesce::Required => (
                create(true).map_err(|e| {
                    VmwareConnector::failed(&vm.name, "taking a quiesced snapshot (the rule requires one)", e)
                })?,
                QUIESCED.into(),
            ),
            Quiesce::IfPossible => match create(true) {
                Ok(r) => (r, QUIESCED.into()),
                // vSphere refused to quiesce: a snapshot without; any other failure (no answer,
                // a task that did not end) may have left a snapshot, so it is not retried.
                Err(why @ SoapError::Fault { .. }) => (
                    create(false).map_err(failed)?,
                    format!("crash-consistent: the guest could not be quiesced ({why})"),
                ),
                Err(e) => return Err(failed(e)),
            },
        }
    };
    let snapshot = result
        .map(|r| MoRef::new(r.mo_type.as_deref().unwrap_or("VirtualMachineSnapshot"), &r.text))
        .filter(|r| !r.value.is_empty())
        .ok_or_else(|| failed(SoapError::Protocol("the snapshot task gave no snapshot".into())))?;
    Ok((snapshot, consistency))
}

pub fn begin(conn: &VmwareConnector, vm: &str, plan: &BackupPlan) -> Result<Box<dyn BackupSession>, ConnectorError> {
    let v = conn.vm(vm)?;
    let (cfg, _) = conn.config(&v)?;
    let all: Vec<&str> = cfg.disks.iter().map(|d| d.key.as_str()).collect();
    if let Some(missing) = plan.include.iter().find(|w| !all.contains(&w.as_str())) {
        return Err(VmwareConnector::failed(
            &v.name,
            "choosing disks",
            format!("it has no disk {missing:?} (disks: {})", all.join(", ")),
        ));
    }
    // What a killed backup left goes first: a second snapshot would make our disk a delta.
    remove_our_snapshots(conn, &v)?;
    let chosen: Vec<&Disk> =
        cfg.disks.iter().filter(|d| plan.include.is_empty() || plan.include.contains(&d.key)).collect();
    let dcs = conn.datacenters()?;
    let stores = conn.datastores()?;

    // Change tracking: on where the plan wants it; a newly enabled CBT reports from this
    // backup's snapshot on, so this backup reads whole disks.
    let mut cbt_reason: Option<String> = None;
    let mut cbt = cfg.change_tracking;
    match plan.change_tracking {
        ChangeTracking::Off => cbt_reason = Some("change tracking is off for this backup".into()),
        _ if cbt => {}
        wanted => match reconfigure_cbt(conn, &v, true) {
            Ok(()) => {
                cbt = true;
                cbt_reason = Some(
                    "change tracking (CBT) was off on this VM and is now on: this backup reads whole disks, the \
                     next one only what changed"
                        .into(),
                )
            }
            Err(e) if wanted == ChangeTracking::On => {
                return Err(VmwareConnector::failed(
                    &v.name,
                    "turning on change tracking (CBT), which the rule requires",
                    e,
                ))
            }
            Err(e) => cbt_reason = Some(format!("change tracking (CBT) could not be turned on: {e}")),
        },
    }
    let consolidation = conn
        .soap
        .retrieve_one(&v.obj, &["runtime.consolidationNeeded"], &[])
        .ok()
        .and_then(|o| o.text("runtime.consolidationNeeded").map(|t| t == "true"))
        .unwrap_or(false);

    plan.control.enter(crate::control::Phase::Snapshotting);
    let name = format!(
        "{SNAPSHOT_PREFIX}{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
    );
    let (snapshot, consistency) = match take_snapshot(conn, &v, plan, &name) {
        Ok(taken) => taken,
        Err(e) => {
            // A task whose end was not seen may still have made the snapshot: ours go.
            let _ = remove_our_snapshots(conn, &v);
            return Err(e);
        }
    };
    let mut session = Session {
        conn_soap: conn.soap.clone(),
        vm: v.clone(),
        snapshot: snapshot.clone(),
        snapshot_name: name,
        change_ids: Vec::new(),
        disks: Vec::new(),
        consistency,
        paths: Vec::new(),
        vddk_fallback: None,
        warnings: Vec::new(),
        finished: false,
    };
    // From here on every failure removes the snapshot.
    let prepared = Prepared { chosen, cbt, cbt_reason, consolidation, dcs, stores };
    match fill(conn, &v, plan, &prepared, &mut session) {
        Ok(()) => Ok(Box::new(session)),
        Err(e) => match Box::new(session).finish(false) {
            Ok(()) => Err(e),
            Err(cleanup) => Err(VmwareConnector::failed(&v.name, "backing up", format!("{e}; and then {cleanup}"))),
        },
    }
}

/// What `begin` found before the snapshot, for reading its disks.
struct Prepared<'a> {
    chosen: Vec<&'a Disk>,
    cbt: bool,
    /// Why CBT cannot be used by this backup (off, just turned on, failed).
    cbt_reason: Option<String>,
    consolidation: bool,
    dcs: Vec<super::Datacenter>,
    stores: Vec<super::Datastore>,
}

/// The session's disks: the snapshot's flat files with their changed or allocated areas.
fn fill(
    conn: &VmwareConnector,
    v: &VmRef,
    plan: &BackupPlan,
    p: &Prepared<'_>,
    session: &mut Session,
) -> Result<(), ConnectorError> {
    let snapshot = session.snapshot.clone();
    let snapshot = &snapshot;
    let failed = |action: &str, e: &dyn std::fmt::Display| VmwareConnector::failed(&v.name, action, e);
    let snap_cfg =
        conn.soap.retrieve_one(snapshot, &["config"], &[]).map_err(|e| failed("reading the snapshot's disks", &e))?;
    let snap_cfg = snap_cfg.props.get("config").ok_or_else(|| failed("reading the snapshot's disks", &"none given"))?;
    let snap_cfg = config::parse(snap_cfg).map_err(|e| failed("reading the snapshot's disks", &e))?;
    let transfer = conn.soap.transfer();
    // VDDK where configured; a connection that fails sends every disk over HTTPS and says why.
    let vddk = match &conn.vddk {
        None => None,
        Some(_) => match conn.vddk_connect(&v.obj, Some(snapshot), true, plan.lan_free) {
            Ok(c) => {
                if let Some(why) = &c.access {
                    session.warnings.push(format!(
                        "vCenter was not asked to keep the VM in place while its disks are read ({why}): \
                         a Storage vMotion meanwhile would fail this backup"
                    ));
                }
                Some(Arc::new(c))
            }
            Err(e) => {
                session.vddk_fallback = Some(e);
                None
            }
        },
    };
    let (cbt, cbt_reason, consolidation) = (p.cbt, &p.cbt_reason, p.consolidation);
    if cbt && !consolidation {
        plan.control.enter(crate::control::Phase::QueryingChanges);
    }
    for want in &p.chosen {
        let Some(disk) = snap_cfg.disks.iter().find(|d| d.device_key == want.device_key) else {
            let e = format!("the snapshot has no disk {} (device {})", want.key, want.device_key);
            return Err(failed("reading the snapshot's disks", &e));
        };
        let base = plan.base.as_ref().and_then(|b| b.disk(&disk.key));
        let (mut changed, mut full_reason) = (None, None);
        let incremental = plan.requested != BackupType::Full && plan.base.is_some();
        if incremental {
            full_reason = match (cbt_reason, base) {
                (Some(why), _) => Some(why.clone()),
                (None, None) => Some("the disk is new since the base point".into()),
                (None, Some(b)) if b.size != disk.size => {
                    Some(format!("the disk was resized from {} to {} bytes since the base point", b.size, disk.size))
                }
                (None, Some(b)) if b.change_id.is_none() => {
                    Some("the base point has no CBT change id for this disk".into())
                }
                _ if consolidation => {
                    Some("the VM needs its snapshots consolidated, and CBT is not trusted until they are".into())
                }
                (None, Some(b)) => {
                    let id = b.change_id.as_deref().unwrap_or_default();
                    match changed_areas(conn, &v.obj, Some(snapshot), disk, id) {
                        Ok(areas) => {
                            changed = Some(areas);
                            None
                        }
                        // vSphere says a change id is unknown with a FileFault; anything else
                        // (no permission, a broken answer, no answer) fails the backup rather
                        // than read whole disks every night without anyone knowing why.
                        Err(e) if cbt_lost(&e) => {
                            Some(format!("CBT cannot give the changes since {id} ({e}); it was reset or lost"))
                        }
                        Err(e) => return Err(failed("asking CBT for changed areas", &e)),
                    }
                }
            };
        }
        // A whole read skips what CBT says was never written (thin or new disks are mostly that);
        // "*" asks for the allocated areas, which CBT knows from the moment it is on.
        let allocated = if changed.is_none() && cbt && !consolidation {
            match changed_areas(conn, &v.obj, Some(snapshot), disk, "*") {
                Ok(areas) => Some(areas),
                Err(e) if cbt_lost(&e) => None,
                Err(e) => return Err(failed("asking CBT for allocated areas", &e)),
            }
        } else {
            None
        };
        if cbt && plan.change_tracking != ChangeTracking::Off {
            if let Some(id) = &disk.change_id {
                session.change_ids.push((disk.key.clone(), id.clone()));
            }
        }
        let opened = match &vddk {
            Some(c) => match c.open(&disk.file, true) {
                Ok(d) => Some(d),
                Err(e) => {
                    session.vddk_fallback = Some(format!("disk {}: {e}", disk.key));
                    None
                }
            },
            None => None,
        };
        let source: Box<dyn DiskSource> = match opened {
            Some(mut d) => {
                let allocated = allocated.or_else(|| if changed.is_none() { d.allocated() } else { None });
                session.paths.push((disk.key.clone(), format!("vddk {}", d.mode)));
                let describe = format!("{} over VDDK {}", disk.file, d.mode);
                Box::new(VddkDiskSource { disk: d, allocated, describe })
            }
            None => {
                if let Some(why) = disk.not_flat() {
                    let e = format!(
                        "disk {}: {why}; the HTTPS datastore transport reads only flat disks (consolidate or delete \
                         the VM's snapshots, or use VDDK)",
                        disk.key
                    );
                    return Err(failed("reading its disks", &e));
                }
                let (dc, ds, flat) = VmwareConnector::disk_location(&p.dcs, &p.stores, disk)
                    .map_err(|e| failed(&format!("locating disk {}", disk.key), &e))?;
                session.paths.push((disk.key.clone(), "https".into()));
                Box::new(HttpDisk {
                    transfer: transfer.clone(),
                    describe: format!("{} over HTTPS", disk.file),
                    url: conn.soap.folder_url(&dc, &ds, &flat),
                    size: disk.size,
                    allocated,
                })
            }
        };
        session.disks.push(SessionDisk { key: disk.key.clone(), source, changed, full_reason });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The binary search answers as a scan of every area does.
        #[test]
        fn never_written_agrees_with_a_scan(
            raw in proptest::collection::vec((0u64..1 << 20, 1u64..1 << 16), 0..40),
            offset in 0u64..1 << 20,
            len in 1u64..1 << 17,
        ) {
            let areas = crate::connector::union(raw.into_iter().map(|(s, l)| s..s + l).collect());
            let scan = !areas.iter().any(|r| r.start < offset + len && offset < r.end);
            prop_assert_eq!(never_written(&Some(areas), offset, len), scan);
        }
    }

    #[test]
    fn unknown_areas_are_never_skipped() {
        assert!(!never_written(&None, 0, 4096));
        assert!(never_written(&Some(vec![]), 0, 4096));
        assert!(!never_written(&Some(vec![4095..4096, 9000..9001]), 0, 4096));
        assert!(never_written(&Some(vec![4096..8192, 9000..9001]), 0, 4096));
    }
}
