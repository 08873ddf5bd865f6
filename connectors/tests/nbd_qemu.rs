//! The NBD transport against a real server, QEMU's qemu-nbd: reads and allocation agree with
//! qemu-img, a dirty bitmap drives an incremental backup into the store, and server refusals
//! and broken servers give clear errors.

use connectors::{NbdAddress, NbdClient, NbdError, NbdSource};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vds_store::*;

const MIB: u64 = 1 << 20;

struct QemuNbd {
    child: Child,
    socket: PathBuf,
}

impl QemuNbd {
    fn serve(image: &Path, bitmap: Option<&str>) -> QemuNbd {
        let socket = image.with_extension("sock");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--read-only", "--persistent", "--format=qcow2", "--export-name=disk", "--socket"]).arg(&socket);
        if let Some(b) = bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        let child = cmd
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-nbd runs (package qemu-utils)");
        // The socket file appears when qemu-nbd binds it, a moment before it listens: wait
        // until a connection is taken (qemu-nbd is persistent, so the probe costs nothing).
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "qemu-nbd did not listen on {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuNbd { child, socket }
    }

    fn address(&self) -> NbdAddress {
        NbdAddress::Unix(self.socket.clone())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_io(image: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    run(c.arg(image));
}

fn raw_copy(image: &Path, out: &Path) -> Vec<u8> {
    run(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(image).arg(out));
    std::fs::read(out).unwrap()
}

fn noise_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, holdfast_tests::noise(len, seed)).unwrap();
}

/// A 96 MiB qcow2 with data in a few places, so reads span several 32 MiB requests.
fn image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("96M"));
    let n = dir.join("noise.bin");
    noise_file(&n, 3 * MIB as usize, 7);
    qemu_io(
        &img,
        &[
            format!("write -s {} 1M 3M", n.display()),
            "write -P 0xab 40M 128k".into(),
            format!("write -s {} 70M 3M", n.display()),
            "write -z 80M 1M".into(),
        ],
    );
    img
}

#[test]
fn reads_and_allocation_agree_with_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = raw_copy(&img, &dir.path().join("want.raw"));
    let server = QemuNbd::serve(&img, None);
    let mut client = NbdClient::connect(&server.address(), "disk", &["base:allocation"]).unwrap();
    assert_eq!(client.size(), 96 * MIB);
    assert!(client.read_only());
    let mut all = vec![0u8; client.size() as usize];
    client.read_at(0, &mut all).unwrap();
    assert!(all == want, "whole-disk read differs from qemu-img convert");
    for (off, len) in [(MIB - 3, 10usize), (40 * MIB + 1000, 70_000), (70 * MIB - 5, 5 * MIB as usize)] {
        let mut b = vec![0u8; len];
        client.read_at(off, &mut b).unwrap();
        assert!(b[..] == want[off as usize..off as usize + len], "read of {len} at {off}");
    }
    let e = client.read_at(96 * MIB - 10, &mut [0u8; 20]).unwrap_err();
    assert!(matches!(e, NbdError::Range(_)), "{e}");
    client.disconnect().unwrap();

    let mut src = NbdSource::open(&server.address(), "disk", None).unwrap();
    assert!(!src.is_unallocated(MIB, 4 * MIB).unwrap());
    assert!(src.is_unallocated(8 * MIB, 4 * MIB).unwrap(), "never-written range reads as a hole");
    assert!(src.is_unallocated(80 * MIB, MIB).unwrap(), "write -z range is known zero");
    assert!(!src.is_unallocated(39 * MIB, 2 * MIB).unwrap());
}

#[test]
fn dirty_bitmap_drives_an_incremental_backup_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let store = Store::init(&dir.path().join("store"), InitOptions::default()).unwrap();
    let vm = VmDescription { key: "vm1".into(), name: "vm1".into(), platform: "qemu-nbd".into(), ..Default::default() };
    let day1 = raw_copy(&img, &dir.path().join("day1.raw"));
    let full = {
        let server = QemuNbd::serve(&img, None);
        let source = NbdSource::open(&server.address(), "disk", None).unwrap();
        store
            .ingest(
                IngestRequest {
                    vm: vm.clone(),
                    backup_type: BackupType::Full,
                    parent: None,
                    disks: vec![IngestDisk {
                        key: "vda".into(),
                        source: Box::new(source),
                        changed: None,
                        change_id: None,
                        full_reason: None,
                    }],
                    labels: Labels::default(),
                    threads: 2,
                    consistency: None,
                },
                &mut |_| {},
            )
            .unwrap()
    };
    // Data lies in extents 0, 10, 17 and 18 (4 MiB each); holes and the write -z range are not read.
    assert_eq!(full.disks[0].read_bytes, 4 * 4 * MIB, "holes were read");

    // Guest writes after the backup, tracked by a persistent dirty bitmap.
    run(Command::new("qemu-img").args(["bitmap", "--add"]).arg(&img).arg("bm0"));
    qemu_io(&img, &["write -P 0x5a 2M 64k".into(), "write -P 0x6b 50M 4k".into(), "write -P 0x7c 95M 1M".into()]);
    let day2 = raw_copy(&img, &dir.path().join("day2.raw"));
    let server = QemuNbd::serve(&img, Some("bm0"));
    let mut source = NbdSource::open(&server.address(), "disk", Some("bm0")).unwrap();
    let dirty = source.dirty_ranges("bm0").unwrap();
    assert_eq!(dirty, vec![2 * MIB..2 * MIB + 65536, 50 * MIB..50 * MIB + 65536, 95 * MIB..96 * MIB]);
    let inc = store
        .ingest(
            IngestRequest {
                vm,
                backup_type: BackupType::Incremental,
                parent: Some(full.point_id.clone()),
                disks: vec![IngestDisk {
                    key: "vda".into(),
                    source: Box::new(source),
                    changed: Some(dirty),
                    change_id: Some("bm0".into()),
                    full_reason: None,
                }],
                labels: Labels::default(),
                threads: 2,
                consistency: None,
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(inc.backup_type, BackupType::Incremental);
    assert_eq!(inc.disks[0].read_bytes, 3 * 4 * MIB, "only the three dirty extents are read");
    for (point, want) in [(&full.point_id, &day1), (&inc.point_id, &day2)] {
        let out = dir.path().join(format!("{point}.raw"));
        let f = std::fs::File::options().write(true).create_new(true).open(&out).unwrap();
        store.open_disk(point, "vda").unwrap().export(&f, 2, &|_, _| ()).unwrap();
        assert!(std::fs::read(&out).unwrap() == *want, "point {point} differs from the image it captured");
    }
}

#[test]
fn refusals_and_broken_servers_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let server = QemuNbd::serve(&img, None);
    let e = NbdClient::connect(&server.address(), "nosuch", &[]).err().unwrap().to_string();
    assert!(e.contains("refused") && e.contains("nosuch"), "{e}");
    let e = NbdSource::open(&server.address(), "disk", Some("missing")).err().unwrap().to_string();
    assert!(e.contains("qemu:dirty-bitmap:missing"), "{e}");
    let e =
        NbdClient::connect(&NbdAddress::Unix(dir.path().join("absent.sock")), "disk", &[]).err().unwrap().to_string();
    assert!(e.contains("absent.sock"), "{e}");

    // Not an NBD server; and one that hangs up in the middle of the greeting.
    for (name, greeting) in [("http", &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..]), ("cut", &b"NBDMAGIC\x49\x48"[..])] {
        let sock = dir.path().join(format!("{name}.sock"));
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let bytes = greeting.to_vec();
        let t = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&bytes).unwrap();
        });
        let e = NbdClient::connect(&NbdAddress::Unix(sock), "disk", &[]).err().unwrap().to_string();
        t.join().unwrap();
        let expect = if name == "http" { "not an NBD server" } else { "connection closed" };
        assert!(e.contains(expect), "{name}: {e}");
    }
}
