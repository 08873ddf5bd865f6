//! The appliance's NFSv3 server (RFC 1813) for instant recovery: NFS, MOUNT v3 and the
//! portmapper's GETPORT over TCP, AUTH_SYS, on a tree the service describes through
//! [`Exports`]: a root directory, one directory per instant-recovery session, and the session's
//! files. Each connection's client address goes with every question to `Exports`, which decides
//! what that client may see; a client refused gets NFS3ERR_ACCES (MNT3ERR_ACCES on mount).
//!
//! File handles are 16 bytes: a tag, the file id and the session's token, with nothing tied
//! to this process, so a handle stays valid across appliance restarts for as long as its
//! session lives, and becomes NFS3ERR_STALE when the session ends (a new session never takes
//! over an old one's handles: its token differs).
//!
//! Every connection reads whole records (bounded), answers up to 16 calls at once (replies go
//! out as they are ready, each with its xid) and drops the connection on input that is not an
//! RPC call; a call whose arguments do not decode gets GARBAGE_ARGS. At most 256 connections are
//! served at once. Files the tree says are writable take WRITE (UNSTABLE, DATA_SYNC, FILE_SYNC)
//! and COMMIT; the write verifier is made at each start of the process, so a client whose
//! unstable writes a restart may have lost sees it change and sends them again.

pub mod rpc;
pub mod xdr;

use rpc::{Call, Caller, Refusal};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use xdr::{Reader, Writer, XdrError};

/// The largest READ (and WRITE) offered.
pub const MAX_IO: u32 = 1 << 20;
/// Calls of one connection answered at once (each may hold a READ's or WRITE's data).
const IN_FLIGHT: usize = 16;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 256;

const PMAP_PROG: u32 = 100_000;
const NFS_PROG: u32 = 100_003;
const MOUNT_PROG: u32 = 100_005;

// NFS3 status codes used here.
pub const NFS3_OK: u32 = 0;
pub const NFS3ERR_NOENT: u32 = 2;
pub const NFS3ERR_IO: u32 = 5;
pub const NFS3ERR_ACCES: u32 = 13;
pub const NFS3ERR_NOTDIR: u32 = 20;
pub const NFS3ERR_ISDIR: u32 = 21;
pub const NFS3ERR_INVAL: u32 = 22;
pub const NFS3ERR_FBIG: u32 = 27;
pub const NFS3ERR_ROFS: u32 = 30;
pub const NFS3ERR_STALE: u32 = 70;
pub const NFS3ERR_EXIST: u32 = 17;
pub const NFS3ERR_NOSPC: u32 = 28;
pub const NFS3ERR_NAMETOOLONG: u32 = 63;
const NFS3ERR_BADHANDLE: u32 = 10001;
const NFS3ERR_NOT_SYNC: u32 = 10002;
const NFS3ERR_NOTSUPP: u32 = 10004;
const NFS3ERR_TOOSMALL: u32 = 10005;
// MOUNT status codes.
pub const MNT3ERR_NOENT: u32 = 2;
pub const MNT3ERR_ACCES: u32 = 13;

/// How a client asks for a file to be made (NFSv3 createhow3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Made, or the one there taken.
    Unchecked,
    /// Made; refused if one is there.
    Guarded,
    /// Made with the client's verifier; refused if one is there, unless it was made by this
    /// very create (a retry carries the same verifier).
    Exclusive(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// A file or directory of the exported tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Never 0; unique within the tree and the same across restarts.
    pub id: u64,
    /// The session's token (0 for the root): part of every handle.
    pub token: u32,
    pub kind: Kind,
    pub size: u64,
    /// When it last changed, in nanoseconds since the epoch, for every time attribute (clients
    /// see a directory's entries or a file's bytes change by it).
    pub mtime: u64,
    /// Takes writes.
    pub writable: bool,
}

/// The tree the server exports; every question names the client asking. Errors are NFS3 status
/// codes (MOUNT status codes for `mount`).
pub trait Exports: Send + Sync + 'static {
    fn root(&self) -> Node;
    /// The node a handle names: NFS3ERR_STALE when it is gone (or the token is an old one),
    /// NFS3ERR_ACCES when this client may not see it.
    fn node(&self, id: u64, token: u32, client: IpAddr) -> Result<Node, u32>;
    fn lookup(&self, dir: &Node, name: &str, client: IpAddr) -> Result<Node, u32>;
    /// A directory's entries, by ascending id.
    fn list(&self, dir: &Node, client: IpAddr) -> Result<Vec<(String, Node)>, u32>;
    /// Fills `buf` from `offset` of a file (within its size). Blocking.
    fn read(&self, file: &Node, offset: u64, buf: &mut [u8]) -> Result<(), u32>;
    /// Writes `data` at `offset` of a writable file; `sync`: durable before it returns.
    /// Blocking.
    fn write(&self, file: &Node, offset: u64, data: &[u8], sync: bool) -> Result<(), u32>;
    /// Makes a file's writes durable. Blocking.
    fn commit(&self, file: &Node) -> Result<(), u32>;
    /// Makes file `name` in `dir` as `how` asks, with `size` if given. Blocking.
    fn create(&self, dir: &Node, name: &str, how: How, size: Option<u64>, client: IpAddr) -> Result<Node, u32>;
    /// Removes file `name` from `dir`. Blocking.
    fn remove(&self, dir: &Node, name: &str, client: IpAddr) -> Result<(), u32>;
    /// Renames `from`/`from_name` to `to`/`to_name`, replacing a file there. Blocking.
    fn rename(&self, from: &Node, from_name: &str, to: &Node, to_name: &str, client: IpAddr) -> Result<(), u32>;
    /// Truncates or extends a writable file. Blocking.
    fn set_size(&self, file: &Node, size: u64) -> Result<(), u32>;
    /// Bytes in all and free where writes go.
    fn space(&self) -> (u64, u64);
    /// The directory a MOUNT of `path` gives this client.
    fn mount(&self, path: &str, client: IpAddr) -> Result<Node, u32>;
    /// The export paths this client may mount and the clients each admits, for MOUNT's EXPORT.
    fn export_list(&self, client: IpAddr) -> Vec<(String, Vec<String>)>;
}

/// Serves NFS, MOUNT and the portmapper on `listener` until the task is dropped. The
/// portmapper answers `nfs_port` for NFS and MOUNT over TCP: run it on port 111 beside the
/// NFS port (2049) so clients that ask (QEMU, libvirt, ESXi for MOUNT) find them.
pub async fn serve<E: Exports>(listener: TcpListener, exports: Arc<E>, nfs_port: u16) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, say: wait instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(connection) = connections.clone().try_acquire_owned() else {
            // Full: this one is closed at once.
            drop(socket);
            continue;
        };
        let exports = exports.clone();
        tokio::spawn(async move {
            let _connection = connection;
            let _ = socket.set_nodelay(true);
            let (mut rd, mut wr) = socket.into_split();
            let conn = Arc::new(Conn { exports, client: canonical(peer.ip()), nfs_port });
            // Calls are answered as they finish, up to IN_FLIGHT at once per connection (clients
            // such as QEMU keep several reads outstanding; replies carry their xid); one writer
            // sends the replies.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT);
            let writer = tokio::spawn(async move {
                while let Some(reply) = rx.recv().await {
                    if rpc::write_record(&mut wr, &reply).await.is_err() {
                        break;
                    }
                }
            });
            let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            // Any error (I/O, a record too long, not a call) ends this connection only.
            while let Ok(Some(record)) = rpc::read_record(&mut rd).await {
                if matches!(rpc::parse_call(&record), Err((None, _))) {
                    break;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let (conn, tx) = (conn.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(reply) = conn.answer(&record).await {
                        let _ = tx.send(reply).await;
                    }
                    drop(slot);
                });
            }
            drop(tx);
            let _ = writer.await;
        });
    }
}

/// The write verifier: new at every start of the process (unstable writes do not outlive it).
fn verifier() -> [u8; 8] {
    static VERF: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    *VERF.get_or_init(|| {
        let mut v = [0u8; 8];
        getrandom::getrandom(&mut v).expect("OS randomness");
        v
    })
}

/// An IPv4 client on an IPv6 socket is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

struct Conn<E> {
    exports: Arc<E>,
    client: IpAddr,
    nfs_port: u16,
}

/// A procedure's failure before its result: the arguments did not decode.
struct Garbage;

impl From<XdrError> for Garbage {
    fn from(_: XdrError) -> Garbage {
        Garbage
    }
}

fn encode_handle(n: &Node) -> [u8; 16] {
    let mut fh = [0u8; 16];
    fh[..4].copy_from_slice(b"HF01");
    fh[4..12].copy_from_slice(&n.id.to_be_bytes());
    fh[12..].copy_from_slice(&n.token.to_be_bytes());
    fh
}

/// Reads a handle: (id, token), or NFS3ERR_BADHANDLE for one we never made.
fn read_handle(r: &mut Reader<'_>) -> Result<Result<(u64, u32), u32>, XdrError> {
    let fh = r.opaque(64)?;
    if fh.len() != 16 || &fh[..4] != b"HF01" {
        return Ok(Err(NFS3ERR_BADHANDLE));
    }
    let id = u64::from_be_bytes(fh[4..12].try_into().expect("8 bytes"));
    let token = u32::from_be_bytes(fh[12..].try_into().expect("4 bytes"));
    Ok(Ok((id, token)))
}

impl<E: Exports> Conn<E> {
    /// The reply to one record; None drops the connection (not an RPC call).
    async fn answer(&self, record: &[u8]) -> Option<Vec<u8>> {
        let call = match rpc::parse_call(record) {
            Ok(c) => c,
            Err((Some(xid), why)) => return Some(rpc::refused(xid, &why).buf),
            Err((None, _)) => return None,
        };
        let xid = call.xid;
        let needs_sys = call.prog != PMAP_PROG && call.caller.is_none() && call.proc_ != 0;
        let result = if needs_sys { Err(Refusal::TooWeak) } else { self.dispatch(call).await };
        Some(match result {
            Ok(body) => {
                let mut w = rpc::accepted(xid);
                w.buf.extend_from_slice(&body.buf);
                w.buf
            }
            Err(why) => rpc::refused(xid, &why).buf,
        })
    }

    async fn dispatch(&self, mut call: Call<'_>) -> Result<Writer, Refusal> {
        let caller = call.caller.clone().unwrap_or_default();
        let (prog, vers, proc_) = (call.prog, call.vers, call.proc_);
        let args = &mut call.args;
        let out = match prog {
            PMAP_PROG if vers == 2 => self.portmap(proc_, args),
            PMAP_PROG => return Err(Refusal::ProgMismatch(2, 2)),
            // MOUNT v3 only: v1 and v2 answer MNT with a fixed 32-byte handle of NFSv2.
            MOUNT_PROG if vers == 3 => self.mount(proc_, args),
            MOUNT_PROG => return Err(Refusal::ProgMismatch(3, 3)),
            NFS_PROG if vers == 3 => self.nfs(proc_, args, &caller).await,
            NFS_PROG => return Err(Refusal::ProgMismatch(3, 3)),
            _ => return Err(Refusal::ProgUnavail),
        };
        match out {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(Refusal::ProcUnavail),
            Err(Garbage) => Err(Refusal::GarbageArgs),
        }
    }

    fn portmap(&self, proc_: u32, r: &mut Reader<'_>) -> Result<Option<Writer>, Garbage> {
        let mut w = Writer::default();
        match proc_ {
            0 => {}
            // GETPORT(prog, vers, prot, port)
            3 => {
                let (prog, vers, prot, _) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                let ours = prot == 6 && (prog == NFS_PROG || prog == MOUNT_PROG) && vers == 3;
                w.u32(if ours { self.nfs_port as u32 } else { 0 });
            }
            // DUMP: the mappings served.
            4 => {
                for (prog, vers) in [(NFS_PROG, 3), (MOUNT_PROG, 3)] {
                    w.bool(true).u32(prog).u32(vers).u32(6).u32(self.nfs_port as u32);
                }
                w.bool(false);
            }
            _ => return Ok(None),
        }
        Ok(Some(w))
    }

    fn mount(&self, proc_: u32, r: &mut Reader<'_>) -> Result<Option<Writer>, Garbage> {
        let mut w = Writer::default();
        match proc_ {
            0 | 4 => {}
            1 => {
                let path = r.string(1024)?;
                match self.exports.mount(&path, self.client) {
                    Ok(dir) => {
                        w.u32(0).opaque(&encode_handle(&dir)).u32(1).u32(rpc::AUTH_SYS);
                    }
                    Err(status) => {
                        w.u32(status);
                    }
                }
            }
            // DUMP: mounts are not tracked.
            2 => {
                w.bool(false);
            }
            3 => {
                r.string(1024)?;
            }
            5 => {
                for (dir, clients) in self.exports.export_list(self.client) {
                    w.bool(true).string(&dir);
                    for c in clients {
                        w.bool(true).string(&c);
                    }
                    w.bool(false);
                }
                w.bool(false);
            }
            _ => return Ok(None),
        }
        Ok(Some(w))
    }

    /// The node a handle argument names, as this client may see it.
    fn node_of(&self, r: &mut Reader<'_>) -> Result<Result<Node, u32>, Garbage> {
        Ok(read_handle(r)?.and_then(|(id, token)| self.exports.node(id, token, self.client)))
    }

    async fn nfs(&self, proc_: u32, r: &mut Reader<'_>, caller: &Caller) -> Result<Option<Writer>, Garbage> {
        let mut w = Writer::default();
        let attrs = |w: &mut Writer, n: &Node| fattr(w, n, caller);
        let post = |w: &mut Writer, n: Option<&Node>| {
            match n {
                Some(n) => {
                    w.bool(true);
                    fattr(w, n, caller);
                }
                None => {
                    w.bool(false);
                }
            };
        };
        match proc_ {
            0 => {}
            // GETATTR
            1 => match self.node_of(r)? {
                Ok(n) => {
                    w.u32(NFS3_OK);
                    attrs(&mut w, &n);
                }
                Err(s) => {
                    w.u32(s);
                }
            },
            // SETATTR: a writable file's size cannot change (a disk's size is the point's);
            // mode, owner and times are taken and not kept (files show as the caller's own).
            2 => {
                let n = self.node_of(r)?;
                let new_size = read_sattr_size(r)?;
                // sattrguard3: the change time the client last saw; a change since is NOT_SYNC.
                let guard = if r.bool()? { Some((r.u32()?, r.u32()?)) } else { None };
                let stale = |n: &Node| {
                    guard.is_some_and(|g| g != ((n.mtime / 1_000_000_000) as u32, (n.mtime % 1_000_000_000) as u32))
                };
                let status = match (&n, new_size) {
                    (Err(s), _) => *s,
                    (Ok(n), _) if stale(n) => NFS3ERR_NOT_SYNC,
                    (Ok(n), _) if !n.writable => NFS3ERR_ROFS,
                    (Ok(n), Some(size)) if size != n.size && n.kind == Kind::File => {
                        let (exports, file) = (self.exports.clone(), n.clone());
                        let done = tokio::task::spawn_blocking(move || exports.set_size(&file, size)).await;
                        done.unwrap_or(Err(NFS3ERR_IO)).err().unwrap_or(NFS3_OK)
                    }
                    (Ok(_), _) => NFS3_OK,
                };
                // The attributes after: the size may have changed.
                let after = n.as_ref().ok().and_then(|n| self.exports.node(n.id, n.token, self.client).ok());
                w.u32(status).bool(false);
                post(&mut w, after.as_ref());
            }
            // LOOKUP(dir, name)
            3 => {
                let dir = self.node_of(r)?;
                let name = r.string(1024)?;
                match dir {
                    Err(s) => {
                        w.u32(s).bool(false);
                    }
                    Ok(d) if name.len() > 255 => {
                        w.u32(NFS3ERR_NAMETOOLONG);
                        post(&mut w, Some(&d));
                    }
                    Ok(d) if d.kind != Kind::Dir => {
                        w.u32(NFS3ERR_NOTDIR);
                        post(&mut w, Some(&d));
                    }
                    Ok(d) => match self.exports.lookup(&d, &name, self.client) {
                        Ok(n) => {
                            w.u32(NFS3_OK).opaque(&encode_handle(&n));
                            post(&mut w, Some(&n));
                            post(&mut w, Some(&d));
                        }
                        Err(s) => {
                            w.u32(s);
                            post(&mut w, Some(&d));
                        }
                    },
                }
            }
            // ACCESS(fh, bits): read, lookup and execute; nothing that changes.
            4 => {
                let n = self.node_of(r)?;
                let asked = r.u32()?;
                match n {
                    Ok(n) => {
                        // Read, lookup, execute; modify and extend where writable.
                        let granted = match (n.writable, n.kind) {
                            (true, Kind::Dir) => 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20,
                            (true, Kind::File) => 0x01 | 0x02 | 0x04 | 0x08 | 0x20,
                            (false, _) => 0x01 | 0x02 | 0x20,
                        };
                        w.u32(NFS3_OK);
                        post(&mut w, Some(&n));
                        w.u32(asked & granted);
                    }
                    Err(s) => {
                        w.u32(s).bool(false);
                    }
                }
            }
            // READLINK: there are no links.
            5 => {
                let n = self.node_of(r)?;
                w.u32(n.as_ref().err().copied().unwrap_or(NFS3ERR_INVAL));
                post(&mut w, n.as_ref().ok());
            }
            // READ(fh, offset, count)
            6 => {
                let n = self.node_of(r)?;
                let (offset, count) = (r.u64()?, r.u32()?.min(MAX_IO));
                match n {
                    Err(s) => {
                        w.u32(s).bool(false);
                    }
                    Ok(n) if n.kind == Kind::Dir => {
                        w.u32(NFS3ERR_ISDIR);
                        post(&mut w, Some(&n));
                    }
                    Ok(n) => {
                        let len = n.size.saturating_sub(offset).min(count as u64) as usize;
                        let (exports, file) = (self.exports.clone(), n.clone());
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; len];
                            exports.read(&file, offset, &mut buf).map(|()| buf)
                        })
                        .await
                        .unwrap_or(Err(NFS3ERR_IO));
                        match read {
                            Ok(buf) => {
                                w.u32(NFS3_OK);
                                post(&mut w, Some(&n));
                                w.u32(buf.len() as u32).bool(offset + buf.len() as u64 >= n.size).opaque(&buf);
                            }
                            Err(s) => {
                                w.u32(s);
                                post(&mut w, Some(&n));
                            }
                        }
                    }
                }
            }
            // WRITE(fh, offset, count, stable, data)
            7 => {
                let n = self.node_of(r)?;
                let (offset, _count, stable) = (r.u64()?, r.u32()?, r.u32()?);
                let data = r.opaque(MAX_IO)?.to_vec();
                let n = match n {
                    Ok(n) if n.kind == Kind::Dir => Err(NFS3ERR_ISDIR),
                    Ok(n) if !n.writable => Err(NFS3ERR_ROFS),
                    other => other,
                };
                match n {
                    Err(s) => {
                        w.u32(s).bool(false).bool(false);
                    }
                    Ok(n) => {
                        let sync = stable != 0;
                        let (exports, file, len) = (self.exports.clone(), n.clone(), data.len());
                        let done = tokio::task::spawn_blocking(move || exports.write(&file, offset, &data, sync))
                            .await
                            .unwrap_or(Err(NFS3ERR_IO));
                        // The attributes after the write (a client file may have grown).
                        let after = self.exports.node(n.id, n.token, self.client).unwrap_or(n);
                        w.u32(done.err().unwrap_or(NFS3_OK)).bool(false);
                        post(&mut w, Some(&after));
                        if done.is_ok() {
                            // What was asked is what was done: FILE_SYNC for a stable write.
                            w.u32(len as u32).u32(if sync { 2 } else { 0 }).fixed(&verifier());
                        }
                    }
                }
            }
            // CREATE(dir, name, how): UNCHECKED or GUARDED with attributes (a size), EXCLUSIVE
            // with the client's verifier (a retried exclusive create finds its own file).
            8 => {
                let dir = self.node_of(r)?;
                let name = r.string(1024)?;
                let (how, size) = match r.u32()? {
                    0 => (How::Unchecked, read_sattr_size(r)?),
                    1 => (How::Guarded, read_sattr_size(r)?),
                    2 => (How::Exclusive(u64::from_be_bytes(r.fixed(8)?.try_into().expect("8 bytes"))), None),
                    _ => return Err(Garbage),
                };
                let made = match &dir {
                    Err(s) => Err(*s),
                    Ok(d) if d.kind != Kind::Dir => Err(NFS3ERR_NOTDIR),
                    Ok(_) if name.len() > 255 => Err(NFS3ERR_NAMETOOLONG),
                    Ok(d) => {
                        let (exports, d, client) = (self.exports.clone(), d.clone(), self.client);
                        tokio::task::spawn_blocking(move || exports.create(&d, &name, how, size, client))
                            .await
                            .unwrap_or(Err(NFS3ERR_IO))
                    }
                };
                match made {
                    Ok(n) => {
                        w.u32(NFS3_OK).bool(true).opaque(&encode_handle(&n));
                        post(&mut w, Some(&n));
                    }
                    Err(s) => {
                        w.u32(s);
                    }
                }
                w.bool(false);
                post(&mut w, dir.as_ref().ok());
            }
            // REMOVE(dir, name)
            12 => {
                let dir = self.node_of(r)?;
                let name = r.string(1024)?;
                let done = match &dir {
                    Err(s) => Err(*s),
                    Ok(d) => {
                        let (exports, d, client) = (self.exports.clone(), d.clone(), self.client);
                        tokio::task::spawn_blocking(move || exports.remove(&d, &name, client))
                            .await
                            .unwrap_or(Err(NFS3ERR_IO))
                    }
                };
                w.u32(done.err().unwrap_or(NFS3_OK)).bool(false);
                post(&mut w, dir.as_ref().ok());
            }
            // MKDIR, SYMLINK, MKNOD, RMDIR: only files are made here.
            9..=11 | 13 => {
                let n = self.node_of(r)?;
                w.u32(n.as_ref().err().copied().unwrap_or(NFS3ERR_NOTSUPP)).bool(false);
                post(&mut w, n.as_ref().ok());
            }
            // RENAME(from dir, name, to dir, name): both directories' wcc data.
            14 => {
                let from = self.node_of(r)?;
                let from_name = r.string(1024)?;
                let to = self.node_of(r)?;
                let to_name = r.string(1024)?;
                let done = match (&from, &to) {
                    (Err(s), _) | (_, Err(s)) => Err(*s),
                    (Ok(f), Ok(t)) => {
                        let (exports, f, t, client) = (self.exports.clone(), f.clone(), t.clone(), self.client);
                        tokio::task::spawn_blocking(move || exports.rename(&f, &from_name, &t, &to_name, client))
                            .await
                            .unwrap_or(Err(NFS3ERR_IO))
                    }
                };
                w.u32(done.err().unwrap_or(NFS3_OK)).bool(false);
                post(&mut w, from.as_ref().ok());
                w.bool(false);
                post(&mut w, to.as_ref().ok());
            }
            // LINK: the file's attributes and the directory's wcc data.
            15 => {
                let n = self.node_of(r)?;
                w.u32(n.as_ref().err().copied().unwrap_or(NFS3ERR_NOTSUPP));
                post(&mut w, n.as_ref().ok());
                w.bool(false).bool(false);
            }
            // READDIR(dir, cookie, verifier, count) and READDIRPLUS(…, dircount, maxcount).
            16 | 17 => {
                let plus = proc_ == 17;
                let dir = self.node_of(r)?;
                let (cookie, _verf) = (r.u64()?, r.fixed(8)?);
                let count = if plus {
                    r.u32()?;
                    r.u32()?
                } else {
                    r.u32()?
                };
                match dir {
                    Err(s) => {
                        w.u32(s).bool(false);
                    }
                    Ok(d) if d.kind != Kind::Dir => {
                        w.u32(NFS3ERR_NOTDIR);
                        post(&mut w, Some(&d));
                    }
                    Ok(d) => match self.exports.list(&d, self.client) {
                        Err(s) => {
                            w.u32(s);
                            post(&mut w, Some(&d));
                        }
                        Ok(entries) => {
                            // The cookie is the id of the last entry sent: the listing goes on
                            // after it, whatever came or went meanwhile.
                            let mut body = Writer::default();
                            let mut eof = true;
                            let budget = (count as usize).min(MAX_IO as usize).saturating_sub(128);
                            let mut sent = 0;
                            for (name, n) in entries.iter().filter(|(_, n)| n.id > cookie) {
                                let mut e = Writer::default();
                                e.bool(true).u64(n.id).string(name).u64(n.id);
                                if plus {
                                    post(&mut e, Some(n));
                                    e.bool(true).opaque(&encode_handle(n));
                                }
                                if body.buf.len() + e.buf.len() > budget {
                                    eof = false;
                                    break;
                                }
                                body.buf.extend_from_slice(&e.buf);
                                sent += 1;
                            }
                            if sent == 0 && !eof {
                                w.u32(NFS3ERR_TOOSMALL);
                                post(&mut w, Some(&d));
                            } else {
                                w.u32(NFS3_OK);
                                post(&mut w, Some(&d));
                                w.fixed(&[0; 8]);
                                w.buf.extend_from_slice(&body.buf);
                                w.bool(false).bool(eof);
                            }
                        }
                    },
                }
            }
            // FSSTAT: the space writes can take (where the overlays live).
            18 => match self.node_of(r)? {
                Ok(n) => {
                    w.u32(NFS3_OK);
                    post(&mut w, Some(&n));
                    let (total, free) = self.exports.space();
                    w.u64(total).u64(free).u64(free).u64(1 << 20).u64(1 << 19).u64(1 << 19).u32(0);
                }
                Err(s) => {
                    w.u32(s).bool(false);
                }
            },
            // FSINFO
            19 => match self.node_of(r)? {
                Ok(n) => {
                    w.u32(NFS3_OK);
                    post(&mut w, Some(&n));
                    w.u32(MAX_IO).u32(MAX_IO).u32(4096);
                    w.u32(MAX_IO).u32(MAX_IO).u32(4096);
                    w.u32(64 << 10).u64(u64::MAX >> 1).u32(1).u32(0);
                    // FSF3_HOMOGENEOUS | FSF3_CANSETTIME
                    w.u32(0x08 | 0x10);
                }
                Err(s) => {
                    w.u32(s).bool(false);
                }
            },
            // PATHCONF
            20 => match self.node_of(r)? {
                Ok(n) => {
                    w.u32(NFS3_OK);
                    post(&mut w, Some(&n));
                    w.u32(1).u32(255).bool(true).bool(true).bool(false).bool(true);
                }
                Err(s) => {
                    w.u32(s).bool(false);
                }
            },
            // COMMIT(fh, offset, count): the whole file's writes made durable.
            21 => {
                let n = self.node_of(r)?;
                let (_offset, _count) = (r.u64()?, r.u32()?);
                let done = match &n {
                    Err(s) => Err(*s),
                    Ok(n) if n.kind == Kind::Dir => Err(NFS3ERR_ISDIR),
                    Ok(n) if !n.writable => Ok(()),
                    Ok(n) => {
                        let (exports, file) = (self.exports.clone(), n.clone());
                        tokio::task::spawn_blocking(move || exports.commit(&file)).await.unwrap_or(Err(NFS3ERR_IO))
                    }
                };
                w.u32(done.err().unwrap_or(NFS3_OK)).bool(false);
                post(&mut w, n.as_ref().ok());
                if done.is_ok() {
                    w.fixed(&verifier());
                }
            }
            _ => return Ok(None),
        }
        Ok(Some(w))
    }
}

/// Reads a sattr3; returns the size it sets, if it sets one.
fn read_sattr_size(r: &mut Reader<'_>) -> Result<Option<u64>, Garbage> {
    for _ in 0..3 {
        if r.bool()? {
            r.u32()?;
        }
    }
    let size = if r.bool()? { Some(r.u64()?) } else { None };
    for _ in 0..2 {
        if r.u32()? == 2 {
            r.u64()?;
        }
    }
    Ok(size)
}

/// fattr3. Files and directories show as the caller's own (the export decides who may see
/// them, by address), so a client's own permission checks pass.
fn fattr(w: &mut Writer, n: &Node, caller: &Caller) {
    let (ftype, mode, nlink) = match n.kind {
        Kind::File if n.writable => (1, 0o644, 1),
        Kind::File => (1, 0o444, 1),
        Kind::Dir if n.writable => (2, 0o755, 2),
        Kind::Dir => (2, 0o555, 2),
    };
    w.u32(ftype).u32(mode).u32(nlink).u32(caller.uid).u32(caller.gid);
    w.u64(n.size).u64(n.size).u32(0).u32(0);
    // fsid, fileid
    w.u64(0x486f_6c64).u64(n.id);
    for _ in 0..3 {
        w.u32((n.mtime / 1_000_000_000) as u32).u32((n.mtime % 1_000_000_000) as u32);
    }
}

#[cfg(test)]
mod tests;
