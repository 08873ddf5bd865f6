//! Backups of a shut-off VM on this host: libvirt's backup API needs a running domain, so each
//! disk image is served read-only by qemu-nbd (whose image lock keeps the VM from starting
//! meanwhile). Changes come from the persistent dirty bitmaps the VM's checkpoints left in its
//! qcow2 images: everything written since the base checkpoint is in the union of the base's
//! bitmap and every later one of ours. No checkpoint is made (libvirt cannot while the VM is
//! off); the point's change id is the newest checkpoint, whose bitmap the next run reads on.

use super::domain_xml::DomainDisk;
use super::restore::ImageServer;
use super::{checkpoint_exists, KvmConnector, CHECKPOINT_PREFIX, PLATFORM};
use crate::connector::*;
use crate::nbd::{NbdAddress, NbdClient};
use crate::nbd_source::{dirty_ranges, NbdSource};
use std::path::PathBuf;
use vds_store::BackupType;
use virt::domain::Domain;

/// The persistent bitmaps in a qcow2 image: (name, consistent). A bitmap QEMU did not close
/// cleanly (the VM crashed) is marked in-use and cannot be trusted.
pub(super) fn image_bitmaps(image: &str) -> Result<Vec<(String, bool)>, String> {
    let info = image_info(image)?;
    let bitmaps = info["format-specific"]["data"]["bitmaps"].as_array().cloned().unwrap_or_default();
    Ok(bitmaps
        .iter()
        .filter_map(|b| {
            let name = b["name"].as_str()?.to_string();
            let flags = b["flags"].as_array().cloned().unwrap_or_default();
            Some((name, !flags.iter().any(|f| f == "in-use")))
        })
        .collect())
}

/// `qemu-img info` of an image on this host, read without taking its lock.
pub(super) fn image_info(image: &str) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--force-share", "--output=json", image])
        .output()
        .map_err(|e| format!("running qemu-img (package qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!("qemu-img info {image}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info {image}: unreadable output: {e}"))
}

/// Whether a qcow2 image on this host is version 2 (compat 0.10), which cannot keep bitmaps.
pub(super) fn is_qcow2_v2(image: &str) -> bool {
    image_info(image).is_ok_and(|i| i["format-specific"]["data"]["compat"] == "0.10")
}

/// The creation second encoded in our checkpoint names (`hf-<secs>-<hex>`), for ordering.
fn checkpoint_secs(name: &str) -> Option<u64> {
    name.strip_prefix(CHECKPOINT_PREFIX)?.split('-').next()?.parse().ok()
}

struct OfflineSession {
    vm: String,
    dir: PathBuf,
    change_id: Option<String>,
    disks: Vec<SessionDisk>,
    servers: Vec<ImageServer>,
}

impl BackupSession for OfflineSession {
    fn change_id(&self, _disk: &str) -> Option<String> {
        self.change_id.clone()
    }
    fn transport(&self) -> String {
        "qemu-nbd on the disk images (VM shut off)".into()
    }
    fn consistency(&self) -> String {
        "consistent: the VM was shut off".into()
    }
    fn take_disks(&mut self) -> Vec<SessionDisk> {
        std::mem::take(&mut self.disks)
    }
    fn finish(self: Box<Self>, _committed: bool) -> Result<(), ConnectorError> {
        let OfflineSession { vm, dir, disks, servers, .. } = *self;
        drop(disks);
        drop(servers);
        std::fs::remove_dir_all(&dir).map_err(|e| {
            KvmConnector::failed(&vm, "cleaning up the backup", format!("removing {}: {e}", dir.display()))
        })
    }
}

impl KvmConnector {
    pub(super) fn begin_offline_backup(
        &self,
        dom: &Domain,
        vm: &str,
        plan: &BackupPlan,
        disks: &[DomainDisk],
        chosen: &[&str],
    ) -> Result<Box<dyn BackupSession>, ConnectorError> {
        if !self.is_local() {
            return Err(ConnectorError::Unsupported {
                platform: PLATFORM,
                what: format!(
                    "backing up VM {vm} while it is shut off on a remote host ({}): start it, or back it up \
                     through a connection on that host",
                    self.uri
                ),
            });
        }
        let fail = |action: &str, cause: String| KvmConnector::failed(vm, action, cause);
        let base_cp = match plan.requested {
            BackupType::Full => None,
            _ => plan.base.as_ref().and_then(|b| b.vm_change_id()),
        };
        let base_disks: Vec<&str> =
            plan.base.as_ref().map(|b| b.disks.iter().map(|d| d.key.as_str()).collect()).unwrap_or_default();
        if plan.change_tracking == ChangeTracking::On {
            for t in chosen {
                let format = disks.iter().find(|d| d.target == *t).and_then(|d| d.format.clone());
                let format = format.unwrap_or_else(|| "raw".into());
                if format != "qcow2" {
                    return Err(fail(
                        "checking change tracking",
                        format!("it is required, but disk {t} is {format}, which cannot track changes (qcow2 v3 can)"),
                    ));
                }
            }
        }
        let dir = self.work_dir.join(format!("offline-{}", vds_store::fslock::random_hex(6)));
        std::fs::create_dir_all(&dir).map_err(|e| fail("creating the backup work directory", e.to_string()))?;
        let mut session =
            OfflineSession { vm: vm.into(), dir: dir.clone(), change_id: None, disks: vec![], servers: vec![] };
        let mut newest: Vec<Vec<String>> = Vec::new();
        for t in chosen {
            let d = disks.iter().find(|d| d.target == *t).expect("chosen from these disks");
            let source =
                d.source.clone().ok_or_else(|| fail("opening disks", format!("disk {t} has no source file")))?;
            let format = d.format.clone().unwrap_or_else(|| "raw".into());
            let bitmaps = if format == "qcow2" {
                image_bitmaps(&source).map_err(|e| fail("reading bitmaps", e))?
            } else {
                vec![]
            };
            let ours: Vec<&(String, bool)> = bitmaps.iter().filter(|(n, _)| checkpoint_secs(n).is_some()).collect();
            newest.push(ours.iter().filter(|(_, ok)| *ok).map(|(n, _)| n.clone()).collect());
            // Which bitmaps hold everything written since the base.
            let (since, reason): (Vec<String>, Option<String>) = match (&base_cp, plan.requested) {
                (_, BackupType::Full) => (vec![], None),
                _ if plan.change_tracking == ChangeTracking::Off => {
                    (vec![], Some("change tracking is off for this backup".into()))
                }
                (None, _) => (vec![], Some("no earlier backup with a checkpoint".into())),
                (Some(_), _) if format != "qcow2" => {
                    (vec![], Some(format!("disk {t} is {format}, which cannot track changes (qcow2 v3 can)")))
                }
                (Some(_), _) if !base_disks.contains(t) => (vec![], Some("new disk: not in the base point".into())),
                (Some(cp), _) => match ours.iter().find(|(n, _)| n == cp) {
                    None => (vec![], Some(format!("checkpoint {cp} has no bitmap in disk {t}"))),
                    Some((_, false)) => (
                        vec![],
                        Some(format!("checkpoint {cp}'s bitmap in disk {t} is inconsistent (the VM crashed?)")),
                    ),
                    Some(_) => {
                        let from = checkpoint_secs(cp).unwrap_or(0);
                        let later: Vec<&(String, bool)> = ours
                            .iter()
                            .copied()
                            .filter(|(n, _)| checkpoint_secs(n).is_some_and(|s| s >= from))
                            .collect();
                        match later.iter().find(|(_, ok)| !ok) {
                            Some((bad, _)) => (vec![], Some(format!("bitmap {bad} in disk {t} is inconsistent"))),
                            None => (later.iter().map(|(n, _)| n.clone()).collect(), None),
                        }
                    }
                },
            };
            let socket = dir.join(format!("{t}.sock"));
            let server = ImageServer::start_read_only(&source, &format, socket, &since)
                .map_err(|e| fail(&format!("opening disk {t} ({source})"), e))?;
            let address = NbdAddress::Unix(server.socket.clone());
            session.servers.push(server);
            let changed = if since.is_empty() {
                None
            } else {
                plan.control.enter(crate::control::Phase::QueryingChanges);
                let mut all = Vec::new();
                for b in &since {
                    let mut client = NbdClient::connect(&address, "disk", &[&format!("qemu:dirty-bitmap:{b}")])?;
                    all.extend(dirty_ranges(&mut client, b)?);
                    client.disconnect()?;
                }
                Some(union(all))
            };
            session.disks.push(SessionDisk {
                key: t.to_string(),
                source: Box::new(NbdSource::open(&address, "disk", None)?),
                changed,
                full_reason: reason,
            });
        }
        // The newest of our checkpoints that every tracked disk holds and libvirt still knows.
        let mut candidates: Vec<String> = newest.iter().flatten().cloned().collect();
        candidates.sort_by_key(|n| std::cmp::Reverse(checkpoint_secs(n)));
        session.change_id = candidates
            .into_iter()
            .find(|c| newest.iter().filter(|n| !n.is_empty()).all(|n| n.contains(c)) && checkpoint_exists(dom, c));
        Ok(Box::new(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_carry_their_time() {
        assert_eq!(checkpoint_secs("hf-1795331683-3b3c04"), Some(1795331683));
        assert_eq!(checkpoint_secs("virtnbdbackup.0"), None);
    }
}
