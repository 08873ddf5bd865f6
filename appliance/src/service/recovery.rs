//! Instant recovery: restore points exported over the appliance's NFS server (../nfs). A
//! session exports one point's disks, one raw image per disk, under /holdfast/<name>, to the
//! client addresses it names; any other client is refused and the attempt is audited. Starting
//! one opens the point's disk maps and holds the point (retention and deletion leave it alone),
//! nothing more: no copy, no scan, so it is ready at once whatever the disks' size. Clients
//! write: each disk's writes go to its overlay (overlay.rs) under the data directory's
//! recoveries/<session>, never to the point; ending the session discards them. Sessions are
//! kept in the catalog and opened again when the service starts, with the same file handles
//! (ids from the catalog, the session's token saved with it); one that cannot be opened again
//! ends, and the audit log says why.

use super::catalog::now;
use super::session_files::{valid_name, vmdk_descriptor, ClientFiles, Created, How, Slot, MAX_DISKS};
use super::Service;
use crate::nfs::{self, Exports, Kind, Node};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use web::*;

/// The export's root directory.
pub(super) const ROOT: &str = "/holdfast";

/// A client address or network a session admits.
#[derive(Clone, Debug, PartialEq)]
struct Allowed {
    net: IpAddr,
    prefix: u8,
}

impl Allowed {
    fn parse(s: &str) -> Result<Allowed, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("{s:?}: the prefix is not 0-{max}"))?,
        };
        Ok(Allowed { net, prefix })
    }

    fn admits(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v) => u32::from(v) as u128,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let width = if self.net.is_ipv4() { 32 } else { 128 };
        if self.net.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let shift = width - self.prefix as u32;
        shift >= width || (bits(self.net) >> shift) == (bits(ip) >> shift)
    }
}

struct Export {
    id: i64,
    token: u32,
    allowed: Vec<Allowed>,
    point: String,
    files: Vec<(String, vds_store::DiskReader)>,
    /// Each file's overlay, in the order of `files`.
    overlays: Vec<super::overlay::Overlay>,
    /// When the directory last changed (a client file made, renamed or removed), nanoseconds
    /// since the epoch; at first, when the session opened.
    changed: AtomicU64,
    /// Set while its writes are being kept as a point: nothing more is written.
    frozen: std::sync::atomic::AtomicBool,
    bytes_read: AtomicU64,
    /// What the API shows (bytes_read and the port filled in when asked).
    shown: Recovery,
    /// The VM started from the export, if any.
    vm: Mutex<Option<RecoveryVm>>,
    /// Its move to production storage, running or failed.
    migration: Mutex<Option<RecoveryMigration>>,
    /// The point's VM, as a VM started from the export is defined.
    description: vds_store::VmDescription,
    /// Each disk's VMDK descriptor (its flat extent is the disk), in the order of `files`.
    descriptors: Vec<(String, Vec<u8>)>,
    /// The VM's saved configuration, if the point has it.
    config: Option<(String, Vec<u8>)>,
    /// The files clients made in the directory.
    made: ClientFiles,
    _hold: vds_store::PointHold,
}

impl Export {
    fn admits(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|a| a.admits(ip))
    }

    fn dir(&self) -> Node {
        self.node(Slot::Dir, Kind::Dir, 0, true)
    }

    fn node(&self, slot: Slot, kind: Kind, size: u64, writable: bool) -> Node {
        let id = ((self.id as u64) << 8) | slot.low();
        let opened = self.changed.load(Ordering::Relaxed);
        Node { id, token: self.token, kind, size, mtime: opened, writable }
    }

    /// A directory's change: its time moves on.
    fn touch(&self) {
        self.changed.fetch_max(unix_nanos(), Ordering::Relaxed);
    }

    /// The file a slot names, with its name, if it exists.
    fn entry(&self, slot: Slot) -> Option<(String, Node)> {
        let file = |name: String, size: u64, writable: bool| Some((name, self.node(slot, Kind::File, size, writable)));
        // A disk's time is its last write's.
        let disk = |k: usize, name: String, size: u64| {
            let mut n = self.node(slot, Kind::File, size, true);
            n.mtime = n.mtime.max(self.overlays.get(k).map_or(0, |o| o.changed()));
            Some((name, n))
        };
        match slot {
            Slot::Dir => None,
            Slot::Raw(k) => self.files.get(k).and_then(|(n, d)| disk(k, n.clone(), d.size())),
            Slot::Flat(k) => self
                .files
                .get(k)
                .and_then(|(n, d)| disk(k, format!("{}-flat.vmdk", n.trim_end_matches(".raw")), d.size())),
            Slot::Descriptor(k) => self.descriptors.get(k).and_then(|(n, b)| file(n.clone(), b.len() as u64, false)),
            Slot::Config => self.config.as_ref().and_then(|(n, b)| file(n.clone(), b.len() as u64, false)),
            Slot::Client(i) => {
                let name = self.made.list().into_iter().find(|(j, _)| *j == i)?.1;
                let meta = std::fs::metadata(self.made.path(i)).ok();
                let mut n = self.node(slot, Kind::File, meta.as_ref().map_or(0, |m| m.len()), true);
                let modified = meta.and_then(|m| m.modified().ok());
                let nanos =
                    modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64);
                n.mtime = n.mtime.max(nanos.unwrap_or(0));
                Some((name, n))
            }
        }
    }

    /// Every file of the directory, by id.
    fn entries(&self) -> Vec<(String, Node)> {
        let k = 0..self.files.len();
        let slots = k.clone().map(Slot::Raw).chain(k.clone().map(Slot::Flat)).chain(k.map(Slot::Descriptor));
        let slots = slots.chain([Slot::Config]).chain(self.made.list().into_iter().map(|(i, _)| Slot::Client(i)));
        slots.filter_map(|s| self.entry(s)).collect()
    }

    /// The disk and overlay of a raw image or flat extent.
    fn disk(&self, slot: Slot) -> Result<(&vds_store::DiskReader, &super::overlay::Overlay), u32> {
        let k = match slot {
            Slot::Raw(k) | Slot::Flat(k) => k,
            _ => return Err(nfs::NFS3ERR_INVAL),
        };
        match (self.files.get(k), self.overlays.get(k)) {
            (Some((_, d)), Some(o)) => Ok((d, o)),
            _ => Err(nfs::NFS3ERR_STALE),
        }
    }
}

fn slot_of(n: &Node) -> Result<Slot, u32> {
    Slot::of(n.id & 0xff).ok_or(nfs::NFS3ERR_STALE)
}

/// A session's disk as it is now (its overlay over the point), read when its writes are kept.
struct Written {
    session: Arc<Export>,
    k: usize,
    size: u64,
}

impl vds_store::DiskSource for Written {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let disk = &self.session.files[self.k].1;
        let base = |b: &mut [u8], at: u64| disk.read_at(b, at).map_err(std::io::Error::other);
        self.session.overlays[self.k].read(buf, offset, &base)
    }

    fn describe(&self) -> String {
        format!("{}/{} with its writes", self.session.shown.export, self.session.files[self.k].0)
    }
}

/// A failed overlay or store operation, in the service log, as NFS3ERR_IO.
fn io_error(session: &str, what: &str, e: impl std::fmt::Display) -> u32 {
    eprintln!("holdfast: instant recovery {session}: {what}: {e}");
    nfs::NFS3ERR_IO
}

/// The sessions being exported: the tree the NFS server serves.
pub(super) struct Sessions {
    map: RwLock<BTreeMap<i64, Arc<Export>>>,
    /// Refusals already audited (session, client), so a client retrying is one line.
    refused: Mutex<HashSet<(i64, IpAddr)>>,
    audit: tokio::sync::mpsc::UnboundedSender<String>,
    /// Where the sessions' overlays and client files live (its free space is the export's).
    overlays_root: std::path::PathBuf,
}

impl Sessions {
    fn session(&self, id: i64) -> Option<Arc<Export>> {
        self.map.read().expect("sessions lock").get(&id).cloned()
    }

    fn by_name(&self, name: &str) -> Option<Arc<Export>> {
        self.map.read().expect("sessions lock").values().find(|s| s.shown.name == name).cloned()
    }

    /// Refuses `client` for session `s`, audited once per client and session (the first 1,024
    /// clients refused; the set is cleared as sessions end).
    fn refuse(&self, s: &Export, client: IpAddr, status: u32) -> u32 {
        let mut refused = self.refused.lock().expect("refused lock");
        let first = refused.len() < 1024 && refused.insert((s.id, client));
        drop(refused);
        if first {
            let _ = self.audit.send(format!(
                "client {client} asked for {}/{}, which admits only {}",
                ROOT,
                s.shown.name,
                s.shown.clients.join(", ")
            ));
        }
        status
    }

    /// The session a node of its directory belongs to.
    fn of(&self, n: &Node) -> Result<Arc<Export>, u32> {
        self.session((n.id >> 8) as i64).filter(|s| s.token == n.token).ok_or(nfs::NFS3ERR_STALE)
    }

    /// The session of a node, if it still takes writes (not while its writes are being kept).
    fn writable(&self, n: &Node) -> Result<Arc<Export>, u32> {
        let s = self.of(n)?;
        if s.frozen.load(Ordering::SeqCst) {
            return Err(nfs::NFS3ERR_ROFS);
        }
        Ok(s)
    }

    /// Whether a session is exporting `point` (its id, if so).
    pub(super) fn using(&self, point: &str) -> Option<i64> {
        self.map.read().expect("sessions lock").values().find(|s| s.point == point).map(|s| s.id)
    }
}

impl Exports for Sessions {
    fn root(&self) -> Node {
        // The root lists sessions, which come and go: it shows as changed now.
        Node { id: 1, token: 0, kind: Kind::Dir, size: 0, mtime: unix_nanos(), writable: false }
    }

    fn node(&self, id: u64, token: u32, client: IpAddr) -> Result<Node, u32> {
        if id == 1 && token == 0 {
            return Ok(self.root());
        }
        let s = self.session((id >> 8) as i64).filter(|s| s.token == token).ok_or(nfs::NFS3ERR_STALE)?;
        if !s.admits(client) {
            return Err(self.refuse(&s, client, nfs::NFS3ERR_ACCES));
        }
        match Slot::of(id & 0xff).ok_or(nfs::NFS3ERR_STALE)? {
            Slot::Dir => Ok(s.dir()),
            slot => s.entry(slot).map(|(_, n)| n).ok_or(nfs::NFS3ERR_STALE),
        }
    }

    fn lookup(&self, dir: &Node, name: &str, client: IpAddr) -> Result<Node, u32> {
        if dir.id == 1 {
            let s = self.by_name(name).ok_or(nfs::NFS3ERR_NOENT)?;
            return if s.admits(client) { Ok(s.dir()) } else { Err(self.refuse(&s, client, nfs::NFS3ERR_ACCES)) };
        }
        self.list(dir, client)?.into_iter().find(|(n, _)| n == name).map(|(_, n)| n).ok_or(nfs::NFS3ERR_NOENT)
    }

    fn list(&self, dir: &Node, client: IpAddr) -> Result<Vec<(String, Node)>, u32> {
        if dir.id == 1 {
            let map = self.map.read().expect("sessions lock");
            return Ok(map.values().filter(|s| s.admits(client)).map(|s| (s.shown.name.clone(), s.dir())).collect());
        }
        Ok(self.of(dir)?.entries())
    }

    fn read(&self, file: &Node, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
        let s = self.of(file)?;
        let len = buf.len();
        let doc = |b: &[u8], buf: &mut [u8]| {
            let start = (offset as usize).min(b.len());
            let n = buf.len().min(b.len() - start);
            buf[..n].copy_from_slice(&b[start..start + n]);
        };
        match slot_of(file)? {
            Slot::Descriptor(k) => doc(&s.descriptors.get(k).ok_or(nfs::NFS3ERR_STALE)?.1, buf),
            Slot::Config => doc(&s.config.as_ref().ok_or(nfs::NFS3ERR_STALE)?.1, buf),
            Slot::Client(i) => {
                let f = std::fs::File::open(s.made.path(i))
                    .map_err(|e| io_error(&s.shown.name, "opening a client file", e))?;
                std::os::unix::fs::FileExt::read_exact_at(&f, buf, offset)
                    .map_err(|e| io_error(&s.shown.name, &format!("reading a client file at {offset}"), e))?;
            }
            slot => {
                let (disk, overlay) = s.disk(slot)?;
                let base = |b: &mut [u8], at: u64| disk.read_at(b, at).map_err(std::io::Error::other);
                overlay
                    .read(buf, offset, &base)
                    .map_err(|e| io_error(&s.shown.name, &format!("reading {offset}+{len}"), e))?;
            }
        }
        s.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, file: &Node, offset: u64, data: &[u8], sync: bool) -> Result<(), u32> {
        let s = self.writable(file)?;
        match slot_of(file)? {
            Slot::Client(i) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(s.made.path(i))
                    .map_err(|e| io_error(&s.shown.name, "opening a client file", e))?;
                std::os::unix::fs::FileExt::write_all_at(&f, data, offset)
                    .and_then(|()| if sync { f.sync_data() } else { Ok(()) })
                    .map_err(|e| io_error(&s.shown.name, "writing a client file", e))
            }
            slot => {
                let (disk, overlay) = s.disk(slot).map_err(|_| nfs::NFS3ERR_ROFS)?;
                if offset.saturating_add(data.len() as u64) > disk.size() {
                    return Err(nfs::NFS3ERR_FBIG);
                }
                let base = |b: &mut [u8], at: u64| disk.read_at(b, at).map_err(std::io::Error::other);
                overlay
                    .write(data, offset, sync, &base)
                    .map_err(|e| io_error(&s.shown.name, &format!("writing {offset}+{}", data.len()), e))
            }
        }
    }

    fn commit(&self, file: &Node) -> Result<(), u32> {
        let s = self.of(file)?;
        match slot_of(file)? {
            Slot::Client(i) => std::fs::File::open(s.made.path(i))
                .and_then(|f| f.sync_data())
                .map_err(|e| io_error(&s.shown.name, "committing a client file", e)),
            slot => {
                let (_, overlay) = s.disk(slot)?;
                overlay.sync().map_err(|e| io_error(&s.shown.name, "committing", e))
            }
        }
    }

    fn create(&self, dir: &Node, name: &str, how: How, size: Option<u64>, client: IpAddr) -> Result<Node, u32> {
        if dir.id == 1 {
            return Err(nfs::NFS3ERR_ACCES);
        }
        let s = self.writable(dir)?;
        if !valid_name(name) {
            return Err(nfs::NFS3ERR_INVAL);
        }
        // The export's own files (their names never change) first, then the clients'.
        let own = s
            .entries()
            .into_iter()
            .find(|(n, node)| n == name && slot_of(node).is_ok_and(|x| !matches!(x, Slot::Client(_))));
        let node = match own {
            Some(_) if how != How::Unchecked => return Err(nfs::NFS3ERR_EXIST),
            // An unchecked create of a disk's name takes the disk (its size cannot change).
            Some((_, n)) => n,
            None => match s.made.create(name, how) {
                Ok(Created::Made(i) | Created::There(i)) => {
                    s.touch();
                    s.entry(Slot::Client(i)).map(|(_, n)| n).ok_or(nfs::NFS3ERR_IO)?
                }
                Ok(Created::Exists) => return Err(nfs::NFS3ERR_EXIST),
                Ok(Created::Full) => return Err(nfs::NFS3ERR_NOSPC),
                Err(e) => return Err(io_error(&s.shown.name, "creating a client file", e)),
            },
        };
        if let Some(size) = size {
            self.set_size(&node, size)?;
        }
        self.node(node.id, node.token, client)
    }

    fn remove(&self, dir: &Node, name: &str, _client: IpAddr) -> Result<(), u32> {
        if dir.kind != Kind::Dir {
            return Err(nfs::NFS3ERR_NOTDIR);
        }
        let s = self.writable(dir)?;
        match s.made.remove(name) {
            Ok(true) => {
                s.touch();
                Ok(())
            }
            // The disks, their descriptors and the configuration are the export's own.
            Ok(false) if s.entries().iter().any(|(n, _)| n == name) => Err(nfs::NFS3ERR_ACCES),
            Ok(false) => Err(nfs::NFS3ERR_NOENT),
            Err(e) => Err(io_error(&s.shown.name, "removing a client file", e)),
        }
    }

    fn rename(&self, from: &Node, from_name: &str, to: &Node, to_name: &str, _client: IpAddr) -> Result<(), u32> {
        if from.kind != Kind::Dir || to.kind != Kind::Dir {
            return Err(nfs::NFS3ERR_NOTDIR);
        }
        if from.id != to.id {
            // Only within one session's directory.
            return Err(nfs::NFS3ERR_ACCES);
        }
        let s = self.writable(from)?;
        if !valid_name(to_name) {
            return Err(nfs::NFS3ERR_INVAL);
        }
        let own = |name: &str| {
            s.entries().iter().any(|(n, node)| n == name && slot_of(node).is_ok_and(|x| !matches!(x, Slot::Client(_))))
        };
        if own(from_name) || own(to_name) {
            return Err(nfs::NFS3ERR_ACCES);
        }
        match s.made.rename(from_name, to_name) {
            Ok(true) => {
                s.touch();
                Ok(())
            }
            Ok(false) => Err(nfs::NFS3ERR_NOENT),
            Err(e) => Err(io_error(&s.shown.name, "renaming a client file", e)),
        }
    }

    fn set_size(&self, file: &Node, size: u64) -> Result<(), u32> {
        let s = self.writable(file)?;
        match slot_of(file)? {
            Slot::Client(i) => std::fs::OpenOptions::new()
                .write(true)
                .open(s.made.path(i))
                .and_then(|f| f.set_len(size))
                .map_err(|e| io_error(&s.shown.name, "resizing a client file", e)),
            // A disk keeps the point's size.
            _ => Err(nfs::NFS3ERR_INVAL),
        }
    }

    fn space(&self) -> (u64, u64) {
        let Ok(path) = std::ffi::CString::new(self.overlays_root.as_os_str().as_encoded_bytes()) else { return (0, 0) };
        // SAFETY: a NUL-terminated path and a statvfs we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return (0, 0);
        }
        let unit = st.f_frsize as u64;
        (st.f_blocks as u64 * unit, st.f_bavail as u64 * unit)
    }

    fn mount(&self, path: &str, client: IpAddr) -> Result<Node, u32> {
        let path = path.trim_end_matches('/');
        if path == ROOT {
            return Ok(self.root());
        }
        let name = path.strip_prefix(ROOT).and_then(|p| p.strip_prefix('/')).ok_or(nfs::MNT3ERR_NOENT)?;
        let s = self.by_name(name).ok_or(nfs::MNT3ERR_NOENT)?;
        if s.admits(client) {
            Ok(s.dir())
        } else {
            Err(self.refuse(&s, client, nfs::MNT3ERR_ACCES))
        }
    }

    fn export_list(&self, client: IpAddr) -> Vec<(String, Vec<String>)> {
        // The root, which every client may mount (it lists only that client's sessions), then
        // the sessions that admit this client.
        let map = self.map.read().expect("sessions lock");
        let sessions = map.values().filter(|s| s.admits(client));
        std::iter::once((ROOT.to_string(), Vec::new()))
            .chain(sessions.map(|s| (s.shown.export.clone(), s.shown.clients.clone())))
            .collect()
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A name the export can use as a directory: letters, digits, `-`, `_`, `.`, 1-64 of them.
fn check_name(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "name",
            format!("{name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"),
        ))
    }
}

/// The catalog row of a session.
type Row = (i64, String, String, String, String, i64, String, Option<i64>, Option<String>, Option<i64>);

impl Service {
    /// The session tree (its overlays under `data`), with the channel its refusals come on.
    pub(super) fn new_sessions(
        data: &std::path::Path,
    ) -> (Arc<Sessions>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (audit, refusals) = tokio::sync::mpsc::unbounded_channel();
        let sessions =
            Sessions { map: Default::default(), refused: Default::default(), audit, overlays_root: data.to_path_buf() };
        (Arc::new(sessions), refusals)
    }

    /// Starts the NFS server (NFS and MOUNT on `nfs_listen`, the portmapper on
    /// `portmap_listen` if given) and the audit of refusals. A port that cannot be taken makes
    /// instant recovery unavailable, said at start and by every attempt to start a session.
    pub(super) async fn start_nfs(
        self: &Arc<Self>,
        nfs_listen: &str,
        portmap_listen: Option<&str>,
        mut refusals: tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(r) = refusals.recv().await {
                let _ = me.audit_log("nfs", "instant recovery access refused", &r).await;
            }
        });
        // The live list: every two seconds while sessions exist (their counters move), and
        // once more when the last one ends.
        let me = self.clone();
        tokio::spawn(async move {
            let mut had = false;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                let any = !me.sessions.map.read().expect("sessions lock").is_empty();
                if any || had {
                    me.publish_recoveries();
                }
                had = any;
            }
        });
        let nfs = match tokio::net::TcpListener::bind(nfs_listen).await {
            Ok(l) => l,
            Err(e) => {
                let why = format!("the NFS server cannot listen on {nfs_listen}: {e}");
                eprintln!("holdfast: instant recovery is unavailable: {why}");
                *self.nfs_port.lock().expect("nfs lock") = Err(why);
                return;
            }
        };
        let port = nfs.local_addr().map(|a| a.port()).unwrap_or(0);
        *self.nfs_port.lock().expect("nfs lock") = Ok(port);
        tokio::spawn(nfs::serve(nfs, self.sessions.clone(), port));
        match portmap_listen {
            None => eprintln!("holdfast: serving NFS exports on port {port} (no portmapper)"),
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tokio::spawn(nfs::serve(l, self.sessions.clone(), port));
                    eprintln!("holdfast: serving NFS exports on port {port}, the portmapper on {addr}");
                }
                Err(e) => eprintln!(
                    "holdfast: serving NFS exports on port {port}; no portmapper on {addr} ({e}): clients must be told the port"
                ),
            },
        }
    }

    /// Where a session's overlays live.
    /// Where a session's overlays live: named by its id and token, so a later session that
    /// gets a reused id never finds an earlier one's writes.
    fn overlay_dir(&self, id: i64, token: i64) -> std::path::PathBuf {
        self.sessions.overlays_root.join("recoveries").join(format!("{id}-{:08x}", token as u32))
    }

    fn shown(&self, s: &Export) -> Recovery {
        let mut r = s.shown.clone();
        r.bytes_read = s.bytes_read.load(Ordering::Relaxed);
        r.bytes_written = s.overlays.iter().map(|o| o.bytes_written()).sum();
        r.overlay_bytes = s.overlays.iter().map(|o| o.used()).sum();
        r.nfs_port = self.nfs_port.lock().expect("nfs lock").clone().unwrap_or(0);
        r.vm_started = s.vm.lock().expect("vm lock").clone();
        r.migration = s.migration.lock().expect("migration lock").clone();
        r
    }

    /// The disks of a session as a VM on `host` reaches them.
    fn exported_disks(s: &Export, host: &str) -> Vec<connectors::ExportedDisk> {
        s.files
            .iter()
            .map(|(file, d)| connectors::ExportedDisk {
                key: file.trim_end_matches(".raw").to_string(),
                host: host.to_string(),
                path: format!("{}/{file}", s.shown.export),
                size: d.size(),
            })
            .collect()
    }

    /// Starts moving a session's VM onto the platform's storage; the session shows the
    /// progress, ends when the move succeeds (the VM stays, now the platform's own) and shows
    /// the error when it fails (the VM keeps running from the export).
    pub(super) async fn migrate_recovery(
        self: &Arc<Self>,
        s: &Session,
        id: i64,
        m: MigrateRecovery,
    ) -> ApiResult<Recovery> {
        let session =
            self.sessions.session(id).ok_or_else(|| ApiError::not_found(format!("instant-recovery session {id}")))?;
        let vm = session.vm.lock().expect("vm lock").clone().ok_or_else(|| {
            ApiError::conflict(format!("instant-recovery session {id} runs no VM: there is nothing to move"))
        })?;
        let (_, target) = self.target(vm.platform).await?;
        let caps = target.kind().capabilities();
        let storage = m
            .storage
            .or_else(|| caps.default_storage.map(String::from))
            .ok_or_else(|| ApiError::field("storage", format!("name the {} to move the VM to", caps.storage_word)))?;
        let format = match m.disk_format {
            Some(f) if caps.disk_formats.iter().any(|d| d.name == f) => f,
            Some(f) => {
                let offered: Vec<&str> = caps.disk_formats.iter().map(|d| d.name).collect();
                return Err(ApiError::field("disk_format", format!("{f:?}: use {}", offered.join(" or "))));
            }
            None => caps.disk_formats.first().map(|d| d.name.to_string()).unwrap_or_else(|| "raw".into()),
        };
        {
            let mut mig = session.migration.lock().expect("migration lock");
            if mig.as_ref().is_some_and(|m| m.running) {
                return Err(ApiError::conflict(format!("instant-recovery session {id} is moving its VM already")));
            }
            *mig = Some(RecoveryMigration {
                running: true,
                storage: storage.clone(),
                disk_format: format.clone(),
                percent: 0.0,
                done_bytes: 0,
                total_bytes: session.files.iter().map(|(_, d)| d.size()).sum(),
                started: now(),
                error: None,
            });
        }
        let detail = format!("{}: VM {} to {} {storage} ({format})", session.shown.export, vm.name, caps.storage_word);
        self.audit_log(&s.user, "instant recovery migration started", &detail).await?;
        let control = connectors::JobControl::new();
        // The move needs each disk's key and size; the VM knows where its disks are (the host
        // part is not used).
        let disks = Self::exported_disks(&session, "");
        let (work, task_control, vm_name) = (self.work_dir.clone(), control.clone(), vm.name.clone());
        let task = tokio::task::spawn_blocking(move || {
            target.connect(&work)?.migrate_exported_vm(&vm_name, &disks, &storage, &format, &task_control)
        });
        let (me, user, shown) = (self.clone(), s.user.clone(), self.shown(&session));
        let reply = shown.clone();
        tokio::spawn(async move {
            tokio::pin!(task);
            let outcome = loop {
                tokio::select! {
                    done = &mut task => break done.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())),
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
                let (done, total) = control.progress();
                if let Some(m) = session.migration.lock().expect("migration lock").as_mut() {
                    (m.done_bytes, m.total_bytes) = (done, total.max(m.total_bytes));
                    m.percent = if total > 0 { done as f64 * 100.0 / total as f64 } else { 0.0 };
                }
            };
            match outcome {
                Ok(paths) => {
                    drop(session);
                    me.end_recovery(id).await;
                    me.publish_recoveries();
                    let detail =
                        format!("{}: VM {} runs from {}; the session ended", shown.export, vm.name, paths.join(", "));
                    let _ = me.audit_log(&user, "instant recovery migrated", &detail).await;
                }
                Err(e) => {
                    if let Some(m) = session.migration.lock().expect("migration lock").as_mut() {
                        m.running = false;
                        m.error = Some(e.clone());
                    }
                    me.publish_recoveries();
                    let detail = format!("{}: VM {} keeps running from the export: {e}", shown.export, vm.name);
                    let _ = me.audit_log(&user, "instant recovery migration failed", &detail).await;
                }
            }
        });
        Ok(reply)
    }

    /// Defines and starts the session's VM on its platform, disks on the export.
    async fn start_vm(&self, s: &Export, v: &NewRecoveryVm) -> ApiResult<RecoveryVm> {
        let (platform_name, target) = self.target(v.platform).await.map_err(|e| match e.problem {
            Problem::NotFound => ApiError::field("vm.platform", e.message),
            _ => e,
        })?;
        if !target.kind().capabilities().instant_recovery {
            return Err(ApiError::field(
                "vm.platform",
                format!("platform {platform_name} cannot run a VM from an export"),
            ));
        }
        if v.nfs_host.trim().is_empty() || v.nfs_host.contains(['/', ' ', '\'', '"', '<', '>']) {
            return Err(ApiError::field("vm.nfs_host", format!("{:?} is not an address or host name", v.nfs_host)));
        }
        let disks = Self::exported_disks(s, &v.nfs_host);
        // The point's MACs only for a VM that replaces one that is gone (asked, or found gone).
        let keep_macs = match v.keep_macs {
            Some(k) => k,
            None => self
                .vms_of(v.platform)
                .await
                .is_ok_and(|vms| !vms.iter().any(|vm| vm.uuid == s.description.key || vm.name == s.description.name)),
        };
        let spec = connectors::NewVmSpec {
            name: v.name.clone().unwrap_or_else(|| s.shown.name.clone()),
            cpus: v.cpus,
            memory_mib: v.memory_mib,
            storage: String::new(),
            network: v.network.clone(),
            host: None,
            disk_format: Some("raw".into()),
            disk_sizes: Default::default(),
            start: v.start.unwrap_or(true),
            keep_macs,
        };
        let (work, description) = (self.work_dir.clone(), s.description.clone());
        let name =
            Self::blocking(move || target.connect(&work)?.start_exported_vm(&description, &disks, &spec)).await?;
        Ok(RecoveryVm { platform: v.platform, name, macs_kept: keep_macs })
    }

    /// Stops and removes the session's VM, if it has one.
    async fn remove_vm(&self, s: &Export) -> ApiResult<()> {
        let Some(vm) = s.vm.lock().expect("vm lock").clone() else { return Ok(()) };
        let (_, target) = self.target(vm.platform).await?;
        let work = self.work_dir.clone();
        Self::blocking(move || target.connect(&work)?.remove_exported_vm(&vm.name)).await?;
        *s.vm.lock().expect("vm lock") = None;
        Ok(())
    }

    /// Takes a session out of the tree and the catalog and discards its overlay.
    async fn end_recovery(&self, id: i64) -> Option<Recovery> {
        let session = self.sessions.map.write().expect("sessions lock").remove(&id)?;
        self.sessions.refused.lock().expect("refused lock").retain(|(s, _)| *s != id);
        if let Err(e) = sqlx::query("DELETE FROM recoveries WHERE id = $1").bind(id).execute(&self.db).await {
            eprintln!("holdfast: instant recovery {id}: removing it from the catalog: {e}");
        }
        let shown = self.shown(&session);
        let dir = self.overlay_dir(id, session.token as i64);
        drop(session);
        // Its writes are discarded with it (the point never had them).
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("holdfast: instant recovery {id}: removing {}: {e}", dir.display());
        }
        Some(shown)
    }

    pub(super) async fn list_recoveries(&self) -> ApiResult<Vec<Recovery>> {
        Ok(self.recovery_list())
    }

    fn recovery_list(&self) -> Vec<Recovery> {
        let map = self.sessions.map.read().expect("sessions lock");
        map.values().map(|s| self.shown(s)).collect()
    }

    /// Tells live-event listeners the sessions as they are now (nobody listening is fine).
    fn publish_recoveries(&self) {
        let _ = self.recovery_events.send(self.recovery_list());
    }

    /// Opens a session's point and holds it; registers it in the tree.
    async fn open_session(&self, row: Row) -> ApiResult<Arc<Export>> {
        let (id, name, point, clients, created, token, created_by, vm_platform, vm_name, macs_kept) = row;
        let allowed = serde_json::from_str::<Vec<String>>(&clients)
            .map_err(ApiError::internal)?
            .iter()
            .map(|c| Allowed::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::server)?;
        let (_, store) = self.point_store(&point).await?;
        let (p, dir) = (point.clone(), self.overlay_dir(id, token));
        let (entry, hold, files, overlays, made) = tokio::task::spawn_blocking(move || {
            let entry = store.find(&p)?;
            let hold = store.hold_point(&entry.vm, &p)?;
            let files: Vec<(String, vds_store::DiskReader)> =
                store.open_disks(&p)?.into_iter().map(|(key, d)| (format!("{key}.raw"), d)).collect();
            if files.len() > MAX_DISKS {
                return Err(vds_store::StoreError::Invalid(format!(
                    "{} disks: an export holds at most {MAX_DISKS}",
                    files.len()
                )));
            }
            let made = ClientFiles::open(&dir)
                .map_err(|e| vds_store::StoreError::io(format!("reading the client files in {}", dir.display()), e))?;
            let overlays = files
                .iter()
                .map(|(name, d)| super::overlay::Overlay::open(&dir, name, d.size()))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| vds_store::StoreError::io(format!("opening the overlays in {}", dir.display()), e))?;
            Ok::<_, vds_store::StoreError>((entry, hold, files, overlays, made))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::conflict(format!("restore point {point}: {e}")))?;
        let shown = Recovery {
            id,
            export: format!("{ROOT}/{name}"),
            name,
            point: point.clone(),
            vm: entry.manifest.vm.name.clone(),
            clients: serde_json::from_str(&clients).map_err(ApiError::internal)?,
            nfs_port: 0,
            files: files.iter().map(|(n, d)| RecoveryFile { name: n.clone(), size: d.size() }).collect(),
            bytes_read: 0,
            bytes_written: 0,
            overlay_bytes: 0,
            vm_started: None,
            migration: None,
            created,
            created_by,
        };
        let descriptors = files
            .iter()
            .map(|(n, d)| {
                let key = n.trim_end_matches(".raw");
                (
                    format!("{key}.vmdk"),
                    vmdk_descriptor(&format!("{key}-flat.vmdk"), d.size(), token as u32).into_bytes(),
                )
            })
            .collect();
        let session = Arc::new(Export {
            id,
            token: token as u32,
            allowed,
            point,
            files,
            overlays,
            changed: AtomicU64::new(unix_nanos()),
            frozen: Default::default(),
            bytes_read: AtomicU64::new(0),
            shown,
            vm: Mutex::new(vm_platform.zip(vm_name).map(|(platform, name)| RecoveryVm {
                platform,
                name,
                macs_kept: macs_kept == Some(1),
            })),
            migration: Mutex::new(None),
            descriptors,
            config: entry.manifest.vm.native.as_ref().map(|n| {
                let ext = if n.text.trim_start().starts_with('<') { "xml" } else { "txt" };
                (format!("vm-config.{ext}"), n.text.clone().into_bytes())
            }),
            made,
            description: entry.manifest.vm.clone(),
            _hold: hold,
        });
        self.sessions.map.write().expect("sessions lock").insert(id, session.clone());
        Ok(session)
    }

    pub(super) async fn start_recovery(&self, s: &Session, r: NewRecovery) -> ApiResult<Recovery> {
        if let Err(why) = self.nfs_port.lock().expect("nfs lock").clone() {
            return Err(ApiError::server(format!("instant recovery is unavailable: {why}")));
        }
        if r.clients.is_empty() {
            return Err(ApiError::field("clients", "name at least one client address or network"));
        }
        for (i, c) in r.clients.iter().enumerate() {
            Allowed::parse(c).map_err(|e| ApiError::field(&format!("clients[{i}]"), e))?;
        }
        let (_, store) = self.point_store(&r.point).await.map_err(|e| match e.problem {
            Problem::NotFound => ApiError::field("point", e.message),
            _ => e,
        })?;
        let p = r.point.clone();
        let entry = tokio::task::spawn_blocking(move || store.find(&p))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("point", e.to_string()))?;
        let name = match r.name {
            Some(n) => n,
            None => {
                let vm: String = entry
                    .manifest
                    .vm
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
                    .collect();
                let vm = vm.trim_start_matches('.');
                format!("{}-{}", if vm.is_empty() { "vm" } else { vm }, &r.point[..r.point.len().min(15)])
            }
        };
        check_name(&name)?;
        if self.sessions.by_name(&name).is_some() {
            return Err(ApiError::conflict(format!("name: an instant-recovery session named {name:?} exists already")));
        }
        let mut token = [0u8; 4];
        getrandom::getrandom(&mut token).expect("OS randomness");
        let token = (u32::from_be_bytes(token) | 1) as i64;
        let clients = serde_json::to_string(&r.clients).map_err(ApiError::internal)?;
        let created = now();
        let id = sqlx::query_as::<_, (i64,)>(
            "INSERT INTO recoveries (name, point_id, clients, created, token, created_by) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING id",
        )
        .bind(&name)
        .bind(&r.point)
        .bind(&clients)
        .bind(&created)
        .bind(token)
        .bind(&s.user)
        .fetch_one(&self.db)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                ApiError::conflict(format!("name: an instant-recovery session named {name:?} exists already"))
            }
            e => ApiError::internal(e),
        })?
        .0;
        let row = (id, name.clone(), r.point.clone(), clients, created, token, s.user.clone(), None, None, None);
        // A new session starts with no writes, whatever a crash left under its name.
        let _ = std::fs::remove_dir_all(self.overlay_dir(id, token));
        let session = match self.open_session(row).await {
            Ok(session) => session,
            Err(e) => {
                let _ = sqlx::query("DELETE FROM recoveries WHERE id = $1").bind(id).execute(&self.db).await;
                let _ = std::fs::remove_dir_all(self.overlay_dir(id, token));
                return Err(e);
            }
        };
        if let Some(v) = &r.vm {
            match self.start_vm(&session, v).await {
                Ok(vm) => {
                    let saved = sqlx::query(
                        "UPDATE recoveries SET platform_id = $1, vm_name = $2, vm_macs_kept = $3 WHERE id = $4",
                    )
                    .bind(vm.platform)
                    .bind(&vm.name)
                    .bind(vm.macs_kept as i64)
                    .bind(id)
                    .execute(&self.db)
                    .await;
                    *session.vm.lock().expect("vm lock") = Some(vm);
                    if let Err(e) = saved {
                        let _ = self.remove_vm(&session).await;
                        self.end_recovery(id).await;
                        return Err(ApiError::internal(e));
                    }
                }
                Err(e) => {
                    drop(session);
                    self.end_recovery(id).await;
                    return Err(e);
                }
            }
        }
        let started = session.vm.lock().expect("vm lock").clone();
        let on =
            started.map(|v| format!(", VM {} started from it on platform {}", v.name, v.platform)).unwrap_or_default();
        let detail = format!("{} exports point {} to {}{on}", session.shown.export, r.point, r.clients.join(", "));
        self.publish_recoveries();
        self.audit_log(&s.user, "instant recovery started", &detail).await?;
        Ok(self.shown(&session))
    }

    /// Ends a session: its VM stopped and removed first (a VM that cannot be removed keeps the
    /// session, and the error says why), then its export and its overlay.
    pub(super) async fn stop_recovery(&self, s: &Session, id: i64) -> ApiResult<()> {
        let session = self.sessions.session(id);
        let Some(session) = session else { return Err(ApiError::not_found(format!("instant-recovery session {id}"))) };
        if session.migration.lock().expect("migration lock").as_ref().is_some_and(|m| m.running) {
            return Err(ApiError::conflict(format!(
                "instant-recovery session {id} is moving its VM to production storage: wait for it to end"
            )));
        }
        self.remove_vm(&session).await?;
        drop(session);
        let Some(shown) = self.end_recovery(id).await else {
            return Err(ApiError::not_found(format!("instant-recovery session {id}")));
        };
        self.publish_recoveries();
        let detail = format!(
            "{} (point {}, {} bytes read, {} bytes written, discarded)",
            shown.export, shown.point, shown.bytes_read, shown.bytes_written
        );
        self.audit_log(&s.user, "instant recovery ended", &detail).await
    }

    /// Ends a session keeping its writes: the VM stopped and removed first (a consistent
    /// disk), the overlays made durable, then an incremental point of the exported one holding
    /// the written blocks (the rest is shared with its parent), indexed, and the session ended.
    pub(super) async fn keep_recovery(&self, s: &Session, id: i64) -> ApiResult<RecoveryKept> {
        let session =
            self.sessions.session(id).ok_or_else(|| ApiError::not_found(format!("instant-recovery session {id}")))?;
        if session.migration.lock().expect("migration lock").as_ref().is_some_and(|m| m.running) {
            return Err(ApiError::conflict(format!(
                "instant-recovery session {id} is moving its VM to production storage: wait for it to end"
            )));
        }
        self.remove_vm(&session).await?;
        // No client writes any more: what is kept is what is there now.
        session.frozen.store(true, Ordering::SeqCst);
        let (storage, store) = match self.point_store(&session.point).await {
            Ok(found) => found,
            Err(e) => {
                session.frozen.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let task_session = session.clone();
        let point = tokio::task::spawn_blocking(move || {
            let s = task_session;
            let mut disks = Vec::new();
            for (k, (file, reader)) in s.files.iter().enumerate() {
                s.overlays[k]
                    .sync()
                    .map_err(|e| vds_store::StoreError::io(format!("syncing the overlay of {file}"), e))?;
                disks.push(vds_store::IngestDisk {
                    key: file.trim_end_matches(".raw").to_string(),
                    changed: Some(s.overlays[k].written_ranges()),
                    source: Box::new(Written { session: s.clone(), k, size: reader.size() }),
                    change_id: None,
                    full_reason: None,
                });
            }
            store.ingest(
                vds_store::IngestRequest {
                    vm: s.description.clone(),
                    backup_type: vds_store::BackupType::Incremental,
                    parent: Some(s.point.clone()),
                    disks,
                    labels: Default::default(),
                    threads: 2,
                    consistency: Some(format!(
                        "what instant-recovery session {} wrote, kept once its VM was stopped",
                        s.shown.name
                    )),
                },
                &mut |_| {},
            )
        })
        .await
        .map_err(ApiError::internal)
        .and_then(|r| {
            r.map_err(|e| ApiError::server(format!("instant-recovery session {id}: keeping its writes failed: {e}")))
        });
        let point = match point {
            Ok(p) => p,
            Err(e) => {
                // Nothing was kept: the export takes writes again.
                session.frozen.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        super::jobs::insert_point(&self.db, &point, &Default::default(), storage).await.map_err(ApiError::internal)?;
        let changed: u64 = session.overlays.iter().map(|o| o.used()).sum();
        drop(session);
        let shown = self.end_recovery(id).await;
        self.publish_recoveries();
        let export = shown.map(|r| r.export).unwrap_or_default();
        let detail = format!("{export}: its writes ({changed} bytes) are point {}", point.point_id);
        self.audit_log(&s.user, "instant recovery kept as a point", &detail).await?;
        Ok(RecoveryKept { point_id: point.point_id, changed_bytes: changed })
    }

    /// At start: every session the catalog has is exported again, or ends saying why.
    pub(super) async fn reopen_recoveries(&self) -> ApiResult<()> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, name, point_id, clients, created, token, created_by, platform_id, vm_name, vm_macs_kept FROM recoveries \
             ORDER BY id",
        )
        .fetch_all(&self.db)
        .await
        .map_err(ApiError::internal)?;
        for row in rows {
            let (id, name, token) = (row.0, row.1.clone(), row.5);
            if let Err(e) = self.open_session(row).await {
                // The session ends; what clients wrote stays on disk for an admin to look at.
                let _ = sqlx::query("DELETE FROM recoveries WHERE id = $1").bind(id).execute(&self.db).await;
                let dir = self.overlay_dir(id, token);
                let why = format!(
                    "{ROOT}/{name} could not be exported again after a restart: {}; its writes stay in {}",
                    e.message,
                    dir.display()
                );
                eprintln!("holdfast: instant recovery ended: {why}");
                self.audit_log("holdfast", "instant recovery ended", &why).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[test]
fn clients_are_addresses_or_networks() {
    let a = |s: &str| Allowed::parse(s).unwrap();
    assert!(a("10.1.2.3").admits("10.1.2.3".parse().unwrap()));
    assert!(!a("10.1.2.3").admits("10.1.2.4".parse().unwrap()));
    assert!(a("10.1.2.0/24").admits("10.1.2.200".parse().unwrap()));
    assert!(!a("10.1.2.0/24").admits("10.1.3.1".parse().unwrap()));
    assert!(a("0.0.0.0/0").admits("192.0.2.1".parse().unwrap()));
    assert!(!a("0.0.0.0/0").admits("::1".parse().unwrap()));
    assert!(a("fd00::/8").admits("fd12::1".parse().unwrap()));
    assert!(Allowed::parse("10.0.0.0/33").is_err());
    assert!(Allowed::parse("host.example").is_err());
    assert!(check_name("web01-20261201T0200").is_ok());
    assert!(check_name("../etc").is_err() && check_name("").is_err() && check_name("a b").is_err());
}
