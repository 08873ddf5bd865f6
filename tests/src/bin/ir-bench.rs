//! Instant-recovery benchmark, against `holdfast serve` with its NFS server on 127.0.0.1:2049
//! and its portmapper on 111:
//! - session start to export ready (the API's answer, then the first 4 KiB read over NFS) for
//!   points of 1 GiB, 100 GiB and 2 TiB (sparse, 256 MiB of realistic data at the front);
//! - sequential read MB/s of a 512 MiB disk full of realistic data over NFS (one outstanding
//!   1 MiB READ, the client below), against `holdfast store export` of the same point and a
//!   plain read of a local copy; 4 KiB random read latency (p50/p99) over NFS, against the
//!   store's reader in-process and a local file;
//! - with `--boot`: the KVM test bed's Debian guest (tests/testbed/build-guest.sh) backed up,
//!   then booted from a local raw disk (a restore as a new VM) and from the export (a session
//!   with its VM), each timed from start to its guest agent answering.
//!
//!   cargo build --release -p appliance --features sim
//!   cargo run --release -p holdfast-tests --bin ir-bench -- [RUNS] [--boot]
//!
//! The local file and the store are read warm (the page cache is not dropped): the NFS figures
//! are compared with the best case of a local read.

use holdfast_tests::service::{Client, Server};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Disk bytes as a guest might hold them, in 64 KiB blocks: a fifth zeros, two fifths text
/// (compresses), two fifths noise (does not).
fn realistic(len: usize, seed: u64) -> Vec<u8> {
    let noise = holdfast_tests::noise(len, seed);
    let mut out = noise.clone();
    for (i, block) in out.chunks_mut(64 << 10).enumerate() {
        match i % 5 {
            0 => block.fill(0),
            1 | 2 => block.iter_mut().for_each(|b| *b = b"etaoin shrdlu cmfwyp\n"[(*b % 21) as usize]),
            _ => {}
        }
    }
    out
}

/// A minimal NFSv3 client over TCP (AUTH_SYS, one call at a time): what the benchmark reads with.
struct Nfs {
    s: TcpStream,
    xid: u32,
}

fn put(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_opaque(buf: &mut Vec<u8>, data: &[u8]) {
    put(buf, data.len() as u32);
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (4 - data.len() % 4) % 4, 0);
}

fn get(r: &[u8], at: &mut usize) -> u32 {
    let v = u32::from_be_bytes(r[*at..*at + 4].try_into().unwrap());
    *at += 4;
    v
}

fn get_opaque<'a>(r: &'a [u8], at: &mut usize) -> &'a [u8] {
    let n = get(r, at) as usize;
    let out = &r[*at..*at + n];
    *at += n.div_ceil(4) * 4;
    out
}

impl Nfs {
    fn connect(port: u16) -> Nfs {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("the NFS server answers");
        s.set_nodelay(true).unwrap();
        Nfs { s, xid: 0 }
    }

    /// The result body of an accepted, successful call.
    fn call(&mut self, prog: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        self.xid += 1;
        let mut m = Vec::new();
        for v in [self.xid, 0, 2, prog, 3, proc_, 1] {
            put(&mut m, v);
        }
        let mut cred = Vec::new();
        put(&mut cred, 0);
        put_opaque(&mut cred, b"bench");
        for v in [0, 0, 0] {
            put(&mut cred, v);
        }
        put_opaque(&mut m, &cred);
        put(&mut m, 0);
        put(&mut m, 0);
        m.extend_from_slice(args);
        let mut wire = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&m);
        self.s.write_all(&wire).unwrap();
        let mut reply = Vec::new();
        loop {
            let mut head = [0u8; 4];
            self.s.read_exact(&mut head).unwrap();
            let word = u32::from_be_bytes(head);
            let start = reply.len();
            reply.resize(start + (word & 0x7fff_ffff) as usize, 0);
            self.s.read_exact(&mut reply[start..]).unwrap();
            if word & 0x8000_0000 != 0 {
                break;
            }
        }
        let mut at = 0;
        assert_eq!(get(&reply, &mut at), self.xid);
        assert_eq!((get(&reply, &mut at), get(&reply, &mut at)), (1, 0), "accepted");
        get(&reply, &mut at);
        get_opaque(&reply, &mut at);
        assert_eq!(get(&reply, &mut at), 0, "SUCCESS");
        reply[at..].to_vec()
    }

    /// The handle of `file` in export `dir`.
    fn open(&mut self, dir: &str, file: &str) -> Vec<u8> {
        let mut a = Vec::new();
        put_opaque(&mut a, dir.as_bytes());
        let r = self.call(100_005, 1, &a);
        let mut at = 0;
        assert_eq!(get(&r, &mut at), 0, "mount {dir}");
        let root = get_opaque(&r, &mut at).to_vec();
        let mut a = Vec::new();
        put_opaque(&mut a, &root);
        put_opaque(&mut a, file.as_bytes());
        let r = self.call(100_003, 3, &a);
        let mut at = 0;
        assert_eq!(get(&r, &mut at), 0, "lookup {file}");
        get_opaque(&r, &mut at).to_vec()
    }

    /// Reads `count` bytes at `offset`; returns how many came.
    fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> usize {
        let mut a = Vec::new();
        put_opaque(&mut a, fh);
        a.extend_from_slice(&offset.to_be_bytes());
        put(&mut a, count);
        let r = self.call(100_003, 6, &a);
        let mut at = 0;
        assert_eq!(get(&r, &mut at), 0, "read at {offset}");
        if get(&r, &mut at) == 1 {
            at += 84;
        }
        let n = get(&r, &mut at) as usize;
        get(&r, &mut at);
        assert_eq!(get_opaque(&r, &mut at).len(), n);
        n
    }
}

fn ingest(data: &Path, vm: &str, image: &Path) -> String {
    let out = holdfast_tests::ok(
        holdfast_tests::holdfast(&data.join("store"))
            .args(["--json", "ingest", "--vm", vm])
            .arg("--disk")
            .arg(format!("vda={}", image.display())),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("ingest --json");
    v["point_id"].as_str().expect("a point id").to_string()
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// Microseconds of `n` random 4 KiB reads by `read(offset)` within `size`: (p50, p99).
fn random_latency(n: usize, size: u64, mut read: impl FnMut(u64)) -> (f64, f64) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut samples: Vec<f64> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % (size / 4096)) * 4096;
            let t = Instant::now();
            read(offset);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99))
}

fn start_session(c: &Client, point: &str, name: &str) -> (Duration, u16) {
    let t = Instant::now();
    let s = c.post("/api/recoveries", json!({ "point": point, "clients": ["127.0.0.1"], "name": name }), 201);
    (t.elapsed(), s["nfs_port"].as_u64().unwrap() as u16)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let boot = args.iter().any(|a| a == "--boot");
    let dir = Path::new("/var/tmp/holdfast-ir-bench");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("data");
    let server =
        Server::start_with(&data, None, &["--portmap-listen", "127.0.0.1:111", "--nfs-listen", "127.0.0.1:2049"]);
    let c = server.admin(PASSWORD);

    // Points of three sizes, 256 MiB of data at the front; and a 512 MiB disk full of data.
    let front = realistic(256 * MIB as usize, 1);
    let mut points = Vec::new();
    for (label, size) in [("1 GiB", GIB), ("100 GiB", 100 * GIB), ("2 TiB", 2048 * GIB)] {
        let image = dir.join("image.raw");
        let mut f = std::fs::File::create(&image).unwrap();
        f.write_all(&front).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let vm = format!("sparse-{}", label.replace(' ', ""));
        points.push((label, ingest(&data, &vm, &image)));
        std::fs::remove_file(&image).unwrap();
    }
    let full = dir.join("full.raw");
    std::fs::write(&full, realistic(512 * MIB as usize, 2)).unwrap();
    let full_point = ingest(&data, "full", &full);

    println!("## Session start to export ready (API answer; then the first 4 KiB read over NFS)");
    for run in 1..=runs {
        for (label, point) in &points {
            let name = format!("start-{}-{run}", label.replace(' ', ""));
            let t = Instant::now();
            let (answer, port) = start_session(&c, point, &name);
            let mut nfs = Nfs::connect(port);
            let fh = nfs.open(&format!("/holdfast/{name}"), "vda.raw");
            nfs.read(&fh, 0, 4096);
            println!(
                "run {run}: {label}: answered in {:.0} ms, first read done {:.0} ms after the call",
                answer.as_secs_f64() * 1e3,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    for s in c.get("/api/recoveries").as_array().unwrap() {
        c.request("DELETE", &format!("/api/recoveries/{}", s["id"]), None);
    }

    println!("\n## Sequential read of a 512 MiB disk full of data (MB/s)");
    let (_, port) = start_session(&c, &full_point, "read");
    let size = 512 * MIB;
    for run in 1..=runs {
        let mut nfs = Nfs::connect(port);
        let fh = nfs.open("/holdfast/read", "vda.raw");
        let t = Instant::now();
        let mut at = 0;
        while at < size {
            at += nfs.read(&fh, at, MIB as u32) as u64;
        }
        let over_nfs = size as f64 / t.elapsed().as_secs_f64() / 1e6;
        let out = dir.join("exported.raw");
        let t = Instant::now();
        holdfast_tests::ok(
            holdfast_tests::holdfast(&data.join("store"))
                .args(["export", "--disk", "vda", "--out"])
                .arg(&out)
                .arg(&full_point),
        );
        let export = size as f64 / t.elapsed().as_secs_f64() / 1e6;
        let t = Instant::now();
        let mut f = std::fs::File::open(&full).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        while f.read(&mut buf).unwrap() > 0 {}
        let local = size as f64 / t.elapsed().as_secs_f64() / 1e6;
        let _ = std::fs::remove_file(&out);
        // QEMU's nfs:// driver (libnfs) with 16 reads of 256 KiB in flight.
        let t = Instant::now();
        let bench = Command::new("qemu-img")
            .args([
                "bench",
                "-f",
                "raw",
                "-c",
                "2048",
                "-d",
                "16",
                "-s",
                "262144",
                "nfs://127.0.0.1/holdfast/read/vda.raw",
            ])
            .output()
            .unwrap();
        assert!(bench.status.success(), "qemu-img bench: {}", String::from_utf8_lossy(&bench.stderr));
        let qemu = size as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!(
            "run {run}: NFS one at a time {over_nfs:.0} MB/s, QEMU nfs:// 16 in flight {qemu:.0} MB/s, holdfast store export {export:.0} MB/s ({:.2}x of QEMU), local file {local:.0} MB/s ({:.2}x of QEMU)",
            export / qemu,
            local / qemu
        );
    }

    println!("\n## 4 KiB random reads, 2000 per run (microseconds, p50 / p99)");
    let store = vds_store::Store::open(&data.join("store"), None).expect("the store opens");
    let reader = store.open_disk(&full_point, "vda").expect("the point's disk");
    for run in 1..=runs {
        let mut nfs = Nfs::connect(port);
        let fh = nfs.open("/holdfast/read", "vda.raw");
        let (np50, np99) = random_latency(2000, size, |o| {
            nfs.read(&fh, o, 4096);
        });
        let mut buf = vec![0u8; 4096];
        let (sp50, sp99) = random_latency(2000, size, |o| reader.read_at(&mut buf, o).unwrap());
        let f = std::fs::File::open(&full).unwrap();
        let (lp50, lp99) = random_latency(2000, size, |o| {
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, o).unwrap();
        });
        println!("run {run}: NFS {np50:.0} / {np99:.0}, store reader in-process {sp50:.0} / {sp99:.0}, local file {lp50:.0} / {lp99:.0}");
    }

    if boot {
        boot_bench(&c, dir, runs);
    }
}

/// Seconds from `start` until `domain`'s guest agent answers.
fn until_agent(domain: &str, started: Instant) -> f64 {
    loop {
        let out = Command::new("virsh")
            .args([
                "-c",
                holdfast_tests::kvm::URI,
                "qemu-agent-command",
                domain,
                r#"{"execute":"guest-ping"}"#,
                "--timeout",
                "5",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            return started.elapsed().as_secs_f64();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{domain} never answered");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn boot_bench(c: &Client, dir: &Path, runs: usize) {
    use holdfast_tests::kvm::{virsh, TestGuest, URI};
    println!("\n## Boot of the test bed's Debian guest (TCG) to its agent answering (s)");
    let guest = TestGuest::boot("ir-bench");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": URI }), 201)["id"].clone();
    let job = c.post("/api/jobs", json!({ "platform": p, "vm": guest.name, "type": "full" }), 202);
    let point = c.wait_job(job["id"].as_i64().unwrap())["point_id"].as_str().unwrap().to_string();
    virsh(&["destroy", &guest.name]);
    let pool_dir = dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    virsh(&["pool-create-as", "ir-bench", "dir", "--target", pool_dir.to_str().unwrap()]);
    for run in 1..=runs {
        let local = format!("ir-bench-local-{run}");
        let r = c.post("/api/restores", json!({ "point": point, "platform": p, "mode": "new_vm", "name": local, "storage": "ir-bench", "disk_format": "raw", "start": false }), 202);
        assert_eq!(c.wait_job(r["id"].as_i64().unwrap())["state"], "completed");
        let t = Instant::now();
        virsh(&["start", &local]);
        let from_local = until_agent(&local, t);
        virsh(&["destroy", &local]);
        virsh(&["undefine", &local]);
        let name = format!("ir-bench-nfs-{run}");
        let t = Instant::now();
        let s = c.post("/api/recoveries", json!({ "point": point, "clients": ["127.0.0.1"], "name": name, "vm": { "platform": p, "nfs_host": "127.0.0.1" } }), 201);
        let from_export = until_agent(&name, t);
        c.request("DELETE", &format!("/api/recoveries/{}", s["id"]), None);
        println!(
            "run {run}: local raw disk {from_local:.1} s, NFS export {from_export:.1} s ({:.2}x)",
            from_export / from_local
        );
    }
    let _ = Command::new("virsh").args(["-c", URI, "pool-destroy", "ir-bench"]).output();
}
