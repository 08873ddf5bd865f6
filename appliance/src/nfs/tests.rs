//! The server against a small tree over real TCP: mount, lookup, read, directory cookies, a
//! client refused by address, and input that is not NFS (random, truncated, oversized) ending
//! only its own connection.

use super::*;
use std::net::{IpAddr, Ipv4Addr};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// /holdfast/{a, b}: a holds disk.raw (bytes i % 251, writable) and notes.txt; b admits nobody
/// here. Writes are recorded, not kept.
#[derive(Default)]
struct Tree {
    writes: std::sync::Mutex<Vec<(u64, Vec<u8>, bool)>>,
    commits: std::sync::atomic::AtomicU32,
    /// Files made in a/ (name, size), ids 300 on.
    made: std::sync::Mutex<Vec<(String, u64)>>,
}

impl Tree {
    fn made_node(&self, i: usize) -> Option<Node> {
        let made = self.made.lock().unwrap();
        let (_, size) = made.get(i)?;
        Some(Node { id: 300 + i as u64, token: 7, kind: Kind::File, size: *size, mtime: 1, writable: true })
    }
}

fn node(id: u64, kind: Kind, size: u64) -> Node {
    Node { id, token: if id == 1 { 0 } else { 7 }, kind, size, mtime: 1_700_000_000_000_000_000, writable: id == 257 }
}

const DISK: u64 = 3 * MAX_IO as u64 + 5;

impl Exports for Tree {
    fn root(&self) -> Node {
        node(1, Kind::Dir, 0)
    }
    fn node(&self, id: u64, token: u32, client: IpAddr) -> Result<Node, u32> {
        let n = match id {
            1 => self.root(),
            256 => node(256, Kind::Dir, 0),
            257 => node(257, Kind::File, DISK),
            258 => node(258, Kind::File, 5),
            512 if client == LOCAL => return Err(NFS3ERR_ACCES),
            300.. => return self.made_node(id as usize - 300).ok_or(NFS3ERR_STALE),
            _ => return Err(NFS3ERR_STALE),
        };
        if n.token != token {
            return Err(NFS3ERR_STALE);
        }
        Ok(n)
    }
    fn lookup(&self, dir: &Node, name: &str, client: IpAddr) -> Result<Node, u32> {
        self.list(dir, client)?.into_iter().find(|(n, _)| n == name).map(|(_, n)| n).ok_or(NFS3ERR_NOENT)
    }
    fn list(&self, dir: &Node, _client: IpAddr) -> Result<Vec<(String, Node)>, u32> {
        Ok(match dir.id {
            1 => vec![("a".into(), node(256, Kind::Dir, 0))],
            256 => {
                let mut v = vec![
                    ("disk.raw".into(), node(257, Kind::File, DISK)),
                    ("notes.txt".into(), node(258, Kind::File, 5)),
                ];
                let made = self.made.lock().unwrap().clone();
                let kept = made.iter().enumerate().filter(|(_, (n, _))| !n.is_empty());
                v.extend(kept.map(|(i, (n, _))| (n.clone(), self.made_node(i).unwrap())));
                v
            }
            _ => vec![],
        })
    }
    fn read(&self, file: &Node, offset: u64, buf: &mut [u8]) -> Result<(), u32> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if file.id == 258 { b"notes"[offset as usize + i] } else { ((offset + i as u64) % 251) as u8 };
        }
        Ok(())
    }
    fn write(&self, _file: &Node, offset: u64, data: &[u8], sync: bool) -> Result<(), u32> {
        self.writes.lock().unwrap().push((offset, data.to_vec(), sync));
        Ok(())
    }
    fn commit(&self, _file: &Node) -> Result<(), u32> {
        self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn create(&self, _dir: &Node, name: &str, how: How, size: Option<u64>, _client: IpAddr) -> Result<Node, u32> {
        let mut made = self.made.lock().unwrap();
        match made.iter().position(|(n, _)| n == name) {
            Some(_) if how != How::Unchecked => Err(NFS3ERR_EXIST),
            Some(i) => {
                drop(made);
                Ok(self.made_node(i).unwrap())
            }
            None => {
                made.push((name.to_string(), size.unwrap_or(0)));
                let i = made.len() - 1;
                drop(made);
                Ok(self.made_node(i).unwrap())
            }
        }
    }
    fn remove(&self, _dir: &Node, name: &str, _client: IpAddr) -> Result<(), u32> {
        let mut made = self.made.lock().unwrap();
        let i = made.iter().position(|(n, _)| n == name).ok_or(NFS3ERR_NOENT)?;
        made[i].0 = String::new();
        Ok(())
    }
    fn rename(&self, _from: &Node, from_name: &str, _to: &Node, to_name: &str, _client: IpAddr) -> Result<(), u32> {
        let mut made = self.made.lock().unwrap();
        let i = made.iter().position(|(n, _)| n == from_name).ok_or(NFS3ERR_NOENT)?;
        made[i].0 = to_name.to_string();
        Ok(())
    }
    fn set_size(&self, file: &Node, size: u64) -> Result<(), u32> {
        // Only the files made here change size.
        let i = (file.id as usize).checked_sub(300).ok_or(NFS3ERR_INVAL)?;
        self.made.lock().unwrap().get_mut(i).ok_or(NFS3ERR_INVAL)?.1 = size;
        Ok(())
    }
    fn space(&self) -> (u64, u64) {
        (1 << 40, 1 << 39)
    }
    fn mount(&self, path: &str, client: IpAddr) -> Result<Node, u32> {
        match path {
            "/holdfast" => Ok(self.root()),
            "/holdfast/a" => Ok(node(256, Kind::Dir, 0)),
            "/holdfast/b" if client == LOCAL => Err(MNT3ERR_ACCES),
            _ => Err(MNT3ERR_NOENT),
        }
    }
    fn export_list(&self, _client: IpAddr) -> Vec<(String, Vec<String>)> {
        vec![("/holdfast/a".into(), vec!["127.0.0.1".into()])]
    }
}

async fn start() -> u16 {
    start_tree(Arc::new(Tree::default())).await
}

async fn start_tree(tree: Arc<Tree>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, tree, port));
    port
}

struct Client {
    s: TcpStream,
    xid: u32,
}

impl Client {
    async fn new(port: u16) -> Client {
        Client { s: TcpStream::connect(("127.0.0.1", port)).await.unwrap(), xid: 0 }
    }

    /// Calls and returns the result body after an accepted SUCCESS header.
    async fn call(&mut self, prog: u32, vers: u32, proc_: u32, args: &Writer) -> Vec<u8> {
        let reply = self.raw(prog, vers, proc_, args).await;
        let mut r = Reader::new(&reply);
        assert_eq!(r.u32().unwrap(), self.xid);
        assert_eq!((r.u32().unwrap(), r.u32().unwrap()), (1, 0), "a reply, accepted");
        r.u32().unwrap();
        r.opaque(400).unwrap();
        assert_eq!(r.u32().unwrap(), 0, "SUCCESS");
        r.rest().to_vec()
    }

    async fn raw(&mut self, prog: u32, vers: u32, proc_: u32, args: &Writer) -> Vec<u8> {
        self.xid += 1;
        let mut cred = Writer::default();
        cred.u32(0).string("test").u32(1000).u32(1000).u32(0);
        let mut w = Writer::default();
        w.u32(self.xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc_).u32(rpc::AUTH_SYS).opaque(&cred.buf);
        w.u32(0).opaque(&[]);
        w.buf.extend_from_slice(&args.buf);
        rpc::write_record(&mut self.s, &w.buf).await.unwrap();
        rpc::read_record(&mut self.s).await.unwrap().expect("a reply")
    }
}

fn skip_post_op(r: &mut Reader<'_>) {
    if r.bool().unwrap() {
        r.fixed(84).unwrap();
    }
}

async fn mount(c: &mut Client, path: &str) -> Result<Vec<u8>, u32> {
    let mut a = Writer::default();
    a.string(path);
    let body = c.call(MOUNT_PROG, 3, 1, &a).await;
    let mut r = Reader::new(&body);
    match r.u32().unwrap() {
        0 => Ok(r.opaque(64).unwrap().to_vec()),
        s => Err(s),
    }
}

async fn lookup(c: &mut Client, dir: &[u8], name: &str) -> Result<Vec<u8>, u32> {
    let mut a = Writer::default();
    a.opaque(dir).string(name);
    let body = c.call(NFS_PROG, 3, 3, &a).await;
    let mut r = Reader::new(&body);
    match r.u32().unwrap() {
        0 => Ok(r.opaque(64).unwrap().to_vec()),
        s => Err(s),
    }
}

async fn read(c: &mut Client, fh: &[u8], offset: u64, count: u32) -> Result<(Vec<u8>, bool), u32> {
    let mut a = Writer::default();
    a.opaque(fh).u64(offset).u32(count);
    let body = c.call(NFS_PROG, 3, 6, &a).await;
    let mut r = Reader::new(&body);
    let status = r.u32().unwrap();
    skip_post_op(&mut r);
    if status != 0 {
        return Err(status);
    }
    let n = r.u32().unwrap();
    let eof = r.bool().unwrap();
    let data = r.opaque(MAX_IO).unwrap().to_vec();
    assert_eq!(n as usize, data.len());
    Ok((data, eof))
}

/// READDIR names, following cookies with a small count so it takes several calls.
async fn readdir(c: &mut Client, dir: &[u8], plus: bool) -> Vec<String> {
    let (mut names, mut cookie) = (Vec::new(), 0);
    loop {
        let mut a = Writer::default();
        a.opaque(dir).u64(cookie).fixed(&[0; 8]);
        if plus {
            a.u32(200).u32(300);
        } else {
            a.u32(170);
        }
        let body = c.call(NFS_PROG, 3, if plus { 17 } else { 16 }, &a).await;
        let mut r = Reader::new(&body);
        assert_eq!(r.u32().unwrap(), 0);
        skip_post_op(&mut r);
        r.fixed(8).unwrap();
        while r.bool().unwrap() {
            r.u64().unwrap();
            names.push(r.string(255).unwrap());
            cookie = r.u64().unwrap();
            if plus {
                skip_post_op(&mut r);
                assert!(r.bool().unwrap());
                r.opaque(64).unwrap();
            }
        }
        if r.bool().unwrap() {
            return names;
        }
    }
}

#[tokio::test]
async fn a_client_mounts_looks_up_lists_and_reads_and_is_refused_where_it_may_not_go() {
    let port = start().await;
    let mut c = Client::new(port).await;
    // The portmapper sends NFS and MOUNT over TCP to the server's port; UDP to none.
    let mut a = Writer::default();
    a.u32(MOUNT_PROG).u32(3).u32(6).u32(0);
    assert_eq!(c.call(PMAP_PROG, 2, 3, &a).await, (port as u32).to_be_bytes());
    let mut a = Writer::default();
    a.u32(NFS_PROG).u32(3).u32(17).u32(0);
    assert_eq!(c.call(PMAP_PROG, 2, 3, &a).await, [0, 0, 0, 0]);

    assert_eq!(mount(&mut c, "/holdfast/b").await, Err(MNT3ERR_ACCES));
    assert_eq!(mount(&mut c, "/elsewhere").await, Err(MNT3ERR_NOENT));
    let root = mount(&mut c, "/holdfast").await.unwrap();
    let a_dir = lookup(&mut c, &root, "a").await.unwrap();
    assert_eq!(a_dir, mount(&mut c, "/holdfast/a").await.unwrap(), "one handle per directory, however found");
    assert_eq!(lookup(&mut c, &a_dir, "missing").await, Err(NFS3ERR_NOENT));
    assert_eq!(readdir(&mut c, &a_dir, false).await, ["disk.raw", "notes.txt"]);
    assert_eq!(readdir(&mut c, &a_dir, true).await, ["disk.raw", "notes.txt"]);

    // Reads: the largest size offered, the end of the file with eof, past the end empty.
    let disk = lookup(&mut c, &a_dir, "disk.raw").await.unwrap();
    let (data, eof) = read(&mut c, &disk, 7, MAX_IO).await.unwrap();
    assert_eq!((data.len(), eof), (MAX_IO as usize, false));
    assert!(data.iter().enumerate().all(|(i, b)| *b == ((7 + i) % 251) as u8));
    let (tail, eof) = read(&mut c, &disk, DISK - 3, 4 * MAX_IO).await.unwrap();
    assert_eq!((tail.len(), eof), (3, true));
    assert_eq!(read(&mut c, &disk, DISK + 10, 10).await.unwrap(), (vec![], true));
    assert_eq!(read(&mut c, &a_dir, 0, 10).await, Err(NFS3ERR_ISDIR));
    let notes = lookup(&mut c, &a_dir, "notes.txt").await.unwrap();
    assert_eq!(read(&mut c, &notes, 1, 100).await.unwrap().0, b"otes");

    // A handle of a session this client may not see; one of a session gone or replaced; one
    // we never made.
    let mut other = disk.clone();
    other[4..12].copy_from_slice(&512u64.to_be_bytes());
    assert_eq!(read(&mut c, &other, 0, 1).await, Err(NFS3ERR_ACCES));
    let mut old = disk.clone();
    old[12..].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(read(&mut c, &old, 0, 1).await, Err(NFS3ERR_STALE));
    assert_eq!(read(&mut c, b"not ours", 0, 1).await, Err(NFS3ERR_BADHANDLE));

    // A file that is not writable refuses a write with ROFS.
    let mut a = Writer::default();
    a.opaque(&notes).u64(0).u32(1).u32(2).opaque(b"x");
    assert_eq!(&c.call(NFS_PROG, 3, 7, &a).await[..4], &NFS3ERR_ROFS.to_be_bytes());
}

#[tokio::test]
async fn writes_are_acknowledged_as_asked_and_commits_carry_the_same_verifier() {
    let tree = Arc::new(Tree::default());
    let port = start_tree(tree.clone()).await;
    let mut c = Client::new(port).await;
    let dir = mount(&mut c, "/holdfast/a").await.unwrap();
    let disk = lookup(&mut c, &dir, "disk.raw").await.unwrap();
    let write = |stable: u32, at: u64| {
        let mut a = Writer::default();
        a.opaque(&disk).u64(at).u32(3).u32(stable).opaque(b"abc");
        a
    };
    let mut verifiers = Vec::new();
    for (stable, committed) in [(0u32, 0u32), (2, 2)] {
        let body = c.call(NFS_PROG, 3, 7, &write(stable, 4096 * stable as u64)).await;
        let mut r = Reader::new(&body);
        assert_eq!(r.u32().unwrap(), NFS3_OK);
        assert!(!r.bool().unwrap(), "no attributes before");
        skip_post_op(&mut r);
        assert_eq!((r.u32().unwrap(), r.u32().unwrap()), (3, committed));
        verifiers.push(r.fixed(8).unwrap().to_vec());
    }
    let mut a = Writer::default();
    a.opaque(&disk).u64(0).u32(0);
    let body = c.call(NFS_PROG, 3, 21, &a).await;
    let mut r = Reader::new(&body);
    assert_eq!(r.u32().unwrap(), NFS3_OK);
    r.bool().unwrap();
    skip_post_op(&mut r);
    verifiers.push(r.fixed(8).unwrap().to_vec());
    assert!(verifiers.windows(2).all(|v| v[0] == v[1]), "one verifier while the process lives");
    assert_eq!(*tree.writes.lock().unwrap(), [(0, b"abc".to_vec(), false), (8192, b"abc".to_vec(), true)]);
    assert_eq!(tree.commits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // ACCESS grants modify and extend on the writable file only.
    for (fh, want) in [(&disk, 0x3f & (0x01 | 0x02 | 0x04 | 0x08 | 0x20)), (&dir, 0x01 | 0x02 | 0x20)] {
        let mut a = Writer::default();
        a.opaque(fh).u32(0x3f);
        let body = c.call(NFS_PROG, 3, 4, &a).await;
        let mut r = Reader::new(&body);
        assert_eq!(r.u32().unwrap(), NFS3_OK);
        skip_post_op(&mut r);
        assert_eq!(r.u32().unwrap(), want);
    }
}

#[tokio::test]
async fn input_that_is_not_nfs_ends_its_connection_only() {
    let port = start().await;
    let mut good = Client::new(port).await;
    let root = mount(&mut good, "/holdfast").await.unwrap();

    // Arguments that do not decode: GARBAGE_ARGS, and the connection goes on.
    let reply = good.raw(NFS_PROG, 3, 6, &Writer::default()).await;
    assert_eq!(&reply[20..24], &4u32.to_be_bytes(), "GARBAGE_ARGS");
    // A program, version or procedure not served.
    let reply = good.raw(100_021, 4, 0, &Writer::default()).await;
    assert_eq!(&reply[20..24], &1u32.to_be_bytes(), "PROG_UNAVAIL");
    let reply = good.raw(NFS_PROG, 4, 0, &Writer::default()).await;
    assert_eq!(&reply[20..32], &[0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3], "PROG_MISMATCH 3-3");
    let reply = good.raw(NFS_PROG, 3, 99, &Writer::default()).await;
    assert_eq!(&reply[20..24], &3u32.to_be_bytes(), "PROC_UNAVAIL");

    // Random records, a record claiming 2 GiB, a record cut short: each connection dropped.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let len = 1 + (seed % 300) as usize;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = match round % 3 {
            0 => rpc::write_record(&mut s, &junk).await,
            1 => s.write_all(&[0xff, 0xff, 0xff, 0xff]).await,
            _ => s.write_all(&junk).await,
        };
        drop(s);
    }
    // The well-behaved client was served throughout and still is.
    assert_eq!(readdir(&mut good, &root, false).await, ["a"]);
    let mut late = Client::new(port).await;
    assert!(mount(&mut late, "/holdfast/a").await.is_ok());
}

#[tokio::test]
async fn files_are_created_sized_renamed_and_removed_as_a_datastore_does_with_its_lock_files() {
    let port = start().await;
    let mut c = Client::new(port).await;
    let dir = mount(&mut c, "/holdfast/a").await.unwrap();
    // CREATE: GUARDED with a size, then the same name again: EXIST; UNCHECKED: the one there.
    let create = |how: u32, name: &str| {
        let mut a = Writer::default();
        a.opaque(&dir).string(name).u32(how);
        // sattr3: mode, uid, gid not set; size 512; times not changed.
        a.bool(false).bool(false).bool(false).bool(true).u64(512).u32(0).u32(0);
        a
    };
    let body = c.call(NFS_PROG, 3, 8, &create(1, ".lck-0001")).await;
    let mut r = Reader::new(&body);
    assert_eq!(r.u32().unwrap(), NFS3_OK);
    assert!(r.bool().unwrap(), "a handle follows");
    let fh = r.opaque(64).unwrap().to_vec();
    assert!(r.bool().unwrap());
    let attrs = r.fixed(84).unwrap();
    assert_eq!(&attrs[20..28], &512u64.to_be_bytes(), "the size asked for");
    assert_eq!(&c.call(NFS_PROG, 3, 8, &create(1, ".lck-0001")).await[..4], &NFS3ERR_EXIST.to_be_bytes());
    assert_eq!(&c.call(NFS_PROG, 3, 8, &create(0, ".lck-0001")).await[..4], &NFS3_OK.to_be_bytes());
    // SETATTR size on the new file; on the disk a size change is refused.
    let setattr = |fh: &[u8], size: u64| {
        let mut a = Writer::default();
        a.opaque(fh).bool(false).bool(false).bool(false).bool(true).u64(size).u32(0).u32(0).bool(false);
        a
    };
    assert_eq!(&c.call(NFS_PROG, 3, 2, &setattr(&fh, 0)).await[..4], &NFS3_OK.to_be_bytes());
    // With a guard that is not the file's change time: NOT_SYNC, nothing changed.
    let mut a = Writer::default();
    a.opaque(&fh).bool(false).bool(false).bool(false).bool(true).u64(9).u32(0).u32(0).bool(true).u32(1).u32(2);
    assert_eq!(&c.call(NFS_PROG, 3, 2, &a).await[..4], &10002u32.to_be_bytes());
    let disk = lookup(&mut c, &dir, "disk.raw").await.unwrap();
    assert_eq!(&c.call(NFS_PROG, 3, 2, &setattr(&disk, 1)).await[..4], &NFS3ERR_INVAL.to_be_bytes());
    // RENAME then REMOVE; the listing follows.
    let mut a = Writer::default();
    a.opaque(&dir).string(".lck-0001").opaque(&dir).string(".lck-0002");
    assert_eq!(&c.call(NFS_PROG, 3, 14, &a).await[..4], &NFS3_OK.to_be_bytes());
    assert_eq!(readdir(&mut c, &dir, true).await, ["disk.raw", "notes.txt", ".lck-0002"]);
    let mut a = Writer::default();
    a.opaque(&dir).string(".lck-0002");
    assert_eq!(&c.call(NFS_PROG, 3, 12, &a).await[..4], &NFS3_OK.to_be_bytes());
    assert_eq!(&c.call(NFS_PROG, 3, 12, &a).await[..4], &NFS3ERR_NOENT.to_be_bytes());
    // A directory cannot be made.
    let mut a = Writer::default();
    a.opaque(&dir).string("sub").bool(false).bool(false).bool(false).bool(false).u32(0).u32(0);
    assert_eq!(&c.call(NFS_PROG, 3, 9, &a).await[..4], &10004u32.to_be_bytes(), "NOTSUPP");
}
