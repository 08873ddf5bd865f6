//! Instant recovery on KVM: a VM defined on the appliance's NFS export (network disks,
//! `protocol='nfs'`, raw), started, removed; and its move to the host's own storage while it
//! runs: libvirt block copy of each disk into a new volume (QEMU mirrors the guest's writes
//! meanwhile), then a pivot of every disk at once, then the definition saved with the volumes.
//! A copy that fails or is stopped is cancelled (the VM keeps running from the export) and its
//! volumes removed.

use super::domain_xml::{escape, volume_xml, with_disk_sources, DiskSource, NewDisk};
use super::restore::{define_new_vm, failed};
use super::{cstring, last_error, KvmConnector};
use crate::connector::{ConnectorError, ExportedDisk, NewVmSpec};
use crate::control::JobControl;
use std::time::{Duration, Instant};
use vds_store::VmDescription;
use virt::storage_vol::StorageVol;
use virt::sys;

/// The VM defined on the export's NFS disks (raw), started if asked.
pub(super) fn start_exported_vm(
    conn: &KvmConnector,
    source: &VmDescription,
    disks: &[ExportedDisk],
    spec: &NewVmSpec,
) -> Result<String, ConnectorError> {
    let name = &spec.name;
    if conn.conn.lookup_domain_by_name(name).is_ok() {
        return Err(failed(name, "starting from the instant-recovery export", "a VM of that name exists already"));
    }
    let new: Vec<NewDisk> = disks
        .iter()
        .map(|d| NewDisk {
            key: d.key.clone(),
            source: DiskSource::Nfs { host: d.host.clone(), path: d.path.clone() },
            format: "raw".into(),
        })
        .collect();
    define_new_vm(conn, source, spec, &new)
}

/// The VM destroyed and undefined (its UEFI variables too); its disks are the export's.
pub(super) fn remove_exported_vm(conn: &KvmConnector, name: &str) -> Result<(), ConnectorError> {
    let Ok(dom) = conn.conn.lookup_domain_by_name(name) else { return Ok(()) };
    if dom.is_active().unwrap_or(false) {
        dom.destroy().map_err(|e| failed(name, "stopping the VM", e.to_string()))?;
    }
    dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM)
        .or_else(|_| dom.undefine())
        .map_err(|e| failed(name, "removing the VM", e.to_string()))
}

/// How far a disk's block job has got: (cur, end), None when it has none.
fn job_info(dom: &virt::domain::Domain, dev: &str) -> Option<(u64, u64)> {
    let d = cstring(dev);
    let mut info = sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: a live domain pointer, a NUL-terminated name and an info struct we own.
    let n = unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), d.as_ptr(), &mut info, 0) };
    (n == 1).then_some((info.cur, info.end))
}

fn abort_job(dom: &virt::domain::Domain, dev: &str, flags: u32) -> Result<(), String> {
    let d = cstring(dev);
    // SAFETY: as above.
    if unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), d.as_ptr(), flags) } < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Moves the running VM `name` off the export: each of `disks` copied into a new volume
/// `<name>-<disk>.<format>` in pool `storage`, then all switched over together; the VM's
/// definition then names the volumes. Returns the volumes' paths.
pub(super) fn migrate_exported_vm(
    conn: &KvmConnector,
    name: &str,
    disks: &[ExportedDisk],
    storage: &str,
    format: &str,
    control: &JobControl,
) -> Result<Vec<String>, ConnectorError> {
    let dom = conn.conn.lookup_domain_by_name(name).map_err(|e| failed(name, "finding the VM", e.to_string()))?;
    if !dom.is_active().unwrap_or(false) {
        return Err(failed(name, "moving it to production storage", "it is not running: start it first"));
    }
    if format != "raw" && format != "qcow2" {
        return Err(failed(
            name,
            "moving it to production storage",
            format!("disk format {format:?}: use raw or qcow2"),
        ));
    }
    let pool = conn
        .conn
        .lookup_storage_pool_by_name(storage)
        .map_err(|e| failed(name, &format!("finding storage pool {storage:?}"), e.to_string()))?;
    let mut volumes: Vec<(StorageVol, String)> = Vec::new();
    let mut copying: Vec<&str> = Vec::new();
    let mut switched: Vec<&str> = Vec::new();
    control.add_total(disks.iter().map(|d| d.size).sum());
    let result = (|| {
        for d in disks {
            let vol_name = format!("{name}-{}.{format}", d.key);
            let vol = StorageVol::create_xml(&pool, &volume_xml(&vol_name, d.size, format), 0)
                .map_err(|e| failed(name, &format!("creating volume {vol_name}"), e.to_string()))?;
            let path = vol.path().map_err(|e| failed(name, "reading a volume's path", e.to_string()))?;
            volumes.push((vol, path.clone()));
            let dest = format!(
                "<disk type='file'><source file='{}'/><driver type='{}'/></disk>",
                escape(&path),
                escape(format)
            );
            let (dev, xml) = (cstring(&d.key), cstring(&dest));
            let flags = sys::VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | sys::VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB;
            // SAFETY: a live domain, NUL-terminated strings, no typed parameters.
            let rc = unsafe {
                sys::virDomainBlockCopy(dom.as_ptr(), dev.as_ptr(), xml.as_ptr(), std::ptr::null_mut(), 0, flags)
            };
            if rc < 0 {
                return Err(failed(name, &format!("starting the copy of disk {}", d.key), last_error()));
            }
            copying.push(&d.key);
        }
        // Until every copy has caught up with the guest (QEMU mirrors new writes meanwhile).
        loop {
            if control.stopped() {
                return Err(failed(name, "moving it to production storage", crate::control::STOPPED));
            }
            let mut all_ready = true;
            let mut done = 0;
            for d in disks {
                let (cur, end) = job_info(&dom, &d.key)
                    .ok_or_else(|| failed(name, &format!("copying disk {}", d.key), "the copy job ended by itself"))?;
                all_ready &= end > 0 && cur == end;
                // The job's own units scaled to the disk's bytes (in u128: both can be terabytes).
                done += (cur.min(end) as u128 * d.size as u128).checked_div(end as u128).unwrap_or(0) as u64;
            }
            control.set_progress(done, disks.iter().map(|d| d.size).sum());
            if all_ready {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The switch: every disk at once (a pivot that is refused for not being ready yet is
        // tried again for a few seconds); the definition follows each disk switched, so the next
        // start uses what the VM runs on even if a later disk fails.
        for (d, (_, path)) in disks.iter().zip(&volumes) {
            let t = Instant::now();
            loop {
                match abort_job(&dom, &d.key, sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) {
                    Ok(()) => break,
                    Err(e) if t.elapsed() > Duration::from_secs(10) => {
                        let on = if switched.is_empty() {
                            String::new()
                        } else {
                            format!(" (disks {} already run on their volumes)", switched.join(", "))
                        };
                        return Err(failed(name, &format!("switching disk {} to its volume{on}", d.key), e));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
            copying.retain(|k| *k != d.key);
            switched.push(&d.key);
            let inactive = dom
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| failed(name, "reading its definition", e.to_string()))?;
            let xml = with_disk_sources(&inactive, &[NewDisk::file(&d.key, path, format)])
                .map_err(|e| failed(name, "saving its definition", e))?;
            conn.conn.define_domain_xml(&xml).map_err(|e| failed(name, "saving its definition", e.to_string()))?;
        }
        Ok(volumes.iter().map(|(_, p)| p.clone()).collect())
    })();
    if result.is_err() {
        // Copies not yet switched are cancelled: those disks stay on the export. A disk already
        // switched keeps its volume (the VM runs on it).
        for dev in &copying {
            let _ = abort_job(&dom, dev, 0);
        }
        for (d, (vol, _)) in disks.iter().zip(&volumes) {
            if !switched.contains(&d.key.as_str()) {
                let _ = vol.delete(0);
            }
        }
    }
    result
}
