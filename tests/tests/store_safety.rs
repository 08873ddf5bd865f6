//! The store's edges through the real `holdfast` binary: an export never destroys the output it
//! replaces nor claims bytes it did not check, block devices are written in place and other
//! special files refused, a lock is whole or absent whatever moment the ingest is killed, locked
//! chunks cannot be removed by hand, and inputs that are not disks get errors naming them.
//! Needs root (loop devices, chattr) on a filesystem with the immutable attribute.

use holdfast_tests::*;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn image_with_holes(path: &Path) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(8 * MIB as u64).unwrap();
    write_at(path, 0, &noise(3 * MIB, 1));
    write_at(path, 6 * MIB as u64, &noise(MIB, 2));
    std::fs::read(path).unwrap()
}

/// A new store in `dir` with one point of an image with holes (made with `extra` ingest
/// arguments): the store, the image's bytes, the point.
fn store_with_one_point(dir: &Path, extra: &[&str]) -> (PathBuf, Vec<u8>, String) {
    let store = dir.join("store");
    ok(holdfast(&store).arg("init"));
    let image = dir.join("disk.raw");
    let want = image_with_holes(&image);
    ok(holdfast(&store)
        .args(["ingest", "--vm", "vm1"])
        .args(extra)
        .arg("--disk")
        .arg(format!("vda={}", image.display())));
    let point = point_ids(&store)[0].clone();
    (store, want, point)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn failure(cmd: &mut std::process::Command) -> String {
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{cmd:?} should fail with exit 1: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The largest blob of the store (a data chunk), and its bytes before `flip` damaged it.
fn flip_largest_blob(store: &Path) -> (PathBuf, Vec<u8>) {
    let mut largest: Option<(u64, PathBuf)> = None;
    for d in std::fs::read_dir(store.join("blobs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len();
            if largest.as_ref().is_none_or(|(l, _)| len > *l) {
                largest = Some((len, f.path()));
            }
        }
    }
    let (len, path) = largest.unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[len as usize / 2] ^= 0x40;
    std::fs::write(&path, bad).unwrap();
    (path, good)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("holdfast-export"))
        .collect()
}

#[test]
fn a_failed_export_leaves_the_file_it_would_replace_untouched_and_nothing_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, want, point) = store_with_one_point(dir.path(), &[]);
    let out = dir.path().join("out.raw");
    assert_eq!(export(&store, &point, "vda", &out), want);
    let again = ok(holdfast(&store).args(["export", &point, "--disk", "vda", "--out"]).arg(&out));
    assert!(again.contains("replacing the file"), "{again}");
    assert_eq!(std::fs::read(&out).unwrap(), want);

    let (blob, good) = flip_largest_blob(&store);
    let blob_id = blob.file_name().unwrap().to_string_lossy().into_owned();
    let err = failure(holdfast(&store).args(["export", &point, "--disk", "vda", "--out"]).arg(&out));
    assert!(err.contains("is unchanged") && err.contains("bytes ") && err.contains(&blob_id), "{err}");
    assert_eq!(err.matches(&blob_id).count(), 1, "the blob's error is said once: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), want, "a failed export changed the earlier good output");
    assert!(leftovers(dir.path()).is_empty(), "staging files left: {:?}", leftovers(dir.path()));
    let fresh = dir.path().join("fresh.raw");
    let err = failure(holdfast(&store).args(["export", &point, "--disk", "vda", "--out"]).arg(&fresh));
    assert!(err.contains("was not created"), "{err}");
    assert!(!fresh.exists() && leftovers(dir.path()).is_empty());
    std::fs::write(&blob, good).unwrap();
    assert_eq!(export(&store, &point, "vda", &fresh), want);
}

#[test]
fn export_writes_a_block_device_in_place_and_refuses_other_special_files() {
    let dir = tempfile::tempdir().unwrap();
    let (store, want, point) = store_with_one_point(dir.path(), &[]);
    let export_to = |out: &Path| {
        let mut c = holdfast(&store);
        c.args(["export", &point, "--disk", "vda", "--out"]).arg(out);
        c
    };

    // A device larger than the disk, full of old bytes: the disk's range becomes the point,
    // holes included, and the rest stays as it was.
    let backing = dir.path().join("big.img");
    std::fs::write(&backing, vec![0xAA; 12 * MIB]).unwrap();
    let big = LoopDevice::attach(&backing);
    let said = ok(&mut export_to(&big.0));
    assert!(said.contains("in place") && said.contains("left as they were"), "{said}");
    assert!(std::fs::metadata(&big.0).unwrap().file_type().is_block_device(), "the device node was replaced");
    let on_device = std::fs::read(&big.0).unwrap();
    assert!(on_device[..8 * MIB] == want[..], "the device does not hold the disk");
    assert!(on_device[8 * MIB..].iter().all(|&b| b == 0xAA), "bytes past the disk were changed");

    // A device smaller than the disk is refused before anything is written.
    let small_backing = dir.path().join("small.img");
    std::fs::write(&small_backing, vec![0xAA; 4 * MIB]).unwrap();
    let small = LoopDevice::attach(&small_backing);
    let err = failure(&mut export_to(&small.0));
    assert!(err.contains("4194304") && err.contains("8388608") && err.contains("smaller"), "{err}");
    assert!(std::fs::read(&small.0).unwrap().iter().all(|&b| b == 0xAA), "a refused device was written");

    // A read failure midway: the device is reported partly written, naming the range.
    let (blob, good) = flip_largest_blob(&store);
    let err = failure(&mut export_to(&big.0));
    assert!(err.contains("partly written") && err.contains("bytes "), "{err}");
    std::fs::write(&blob, good).unwrap();

    // Character devices, fifos, sockets and directories are refused and left as they were.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let a_dir = dir.path().join("a-dir");
    std::fs::create_dir(&a_dir).unwrap();
    for (path, kind) in [
        (PathBuf::from("/dev/null"), "a character device"),
        (fifo.clone(), "a fifo"),
        (sock.clone(), "a socket"),
        (a_dir.clone(), "a directory"),
    ] {
        let before = std::fs::metadata(&path).unwrap().file_type();
        let err = failure(&mut export_to(&path));
        assert!(err.contains(kind) && err.contains(&path.display().to_string()), "{path:?}: {err}");
        assert_eq!(std::fs::metadata(&path).unwrap().file_type(), before, "{path:?} was replaced");
    }
    assert!(std::fs::read_dir(&a_dir).unwrap().next().is_none());
}

#[test]
fn inputs_that_are_not_disks_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(holdfast(&store).arg("init"));
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let ingest = |disk: &Path| {
        let mut c = holdfast(&store);
        c.args(["ingest", "--vm", "v", "--disk"]).arg(format!("vda={}", disk.display()));
        c
    };
    for (path, kind) in [
        (dir.path().to_path_buf(), "a directory"),
        (PathBuf::from("/dev/null"), "a character device"),
        (PathBuf::from("/dev/zero"), "a character device"),
        (fifo, "a fifo"),
    ] {
        let err = failure(&mut ingest(&path));
        assert!(err.contains(kind) && err.contains(&path.display().to_string()), "{path:?}: {err}");
    }
    let empty = dir.path().join("empty.raw");
    std::fs::File::create(&empty).unwrap();
    let err = failure(&mut ingest(&empty));
    assert!(err.contains("empty") && err.contains("--allow-empty"), "{err}");
    assert!(point_ids(&store).is_empty());
    assert_eq!(std::fs::read_dir(store.join("locks/writers")).map_or(0, |d| d.count()), 0, "a writer was left");
    ok(ingest(&empty).arg("--allow-empty"));
    assert_eq!(point_ids(&store).len(), 1);

    // init refuses a directory of someone's files.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("report.pdf"), b"x").unwrap();
    let err = failure(holdfast(&theirs).arg("init"));
    assert!(err.contains("report.pdf") && err.contains("empty or missing directory"), "{err}");
    assert!(!theirs.join("store.json").exists());

    // A changed store_id: ls, verify and export all say so.
    let point = point_ids(&store)[0].clone();
    let cfg = store.join("store.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = v["store_id"].as_str().unwrap().to_string();
    std::fs::write(&cfg, text.replace(&id, "ffffffffffffffffffffffffffffffff")).unwrap();
    let ls = ok(holdfast(&store).arg("ls"));
    assert!(ls.contains("DAMAGED") && ls.contains("store.json was changed"), "{ls}");
    let v = run(holdfast(&store).arg("verify"));
    assert_eq!(v.status.code(), Some(2), "{}", String::from_utf8_lossy(&v.stdout));
    let err = failure(holdfast(&store).args(["export", &point, "--disk", "vda", "--out"]).arg(dir.path().join("x")));
    assert!(err.contains(&id) && err.contains("ffffffffffffffffffffffffffffffff"), "{err}");
}

#[test]
fn lock_dates_that_overflow_or_protect_nothing_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let (store, _, point) = store_with_one_point(dir.path(), &[]);
    let image = dir.path().join("disk.raw");
    let err = failure(holdfast(&store).args(["lock", &point, "--days", "100000000"]));
    assert!(err.contains("1 to 36500"), "{err}");
    let err = failure(holdfast(&store).args(["lock", &point, "--until", "2020-01-01"]));
    assert!(err.contains("protects nothing"), "{err}");
    let err = failure(holdfast(&store).args(["lock", &point, "--until", "9999-01-01"]));
    assert!(err.contains("36500 days"), "{err}");
    let err = failure(
        holdfast(&store)
            .args(["ingest", "--vm", "vm1", "--lock-days", "40000", "--disk"])
            .arg(format!("vda={}", image.display())),
    );
    assert!(err.contains("1 to 36500"), "{err}");
    assert_eq!(point_ids(&store), vec![point.clone()], "a refused ingest made a point");
    let ls = json(holdfast(&store).arg("ls"));
    assert!(ls["points"][0]["retain_until"].is_null(), "a refused lock was recorded: {ls}");
}

/// Whether `path` has the immutable attribute, read by lsattr (not by the code under test).
fn immutable(path: &Path) -> bool {
    let out = std::process::Command::new("lsattr").arg("-d").arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.split_whitespace().next().is_some_and(|flags| flags.contains('i'))
}

/// Every point shown locked has its manifest and labels read-only and immutable, and every blob
/// it needs immutable; no labels file is without its manifest.
fn check_locks_whole(store: &Path, round: u64) {
    use std::os::unix::fs::PermissionsExt;
    let listed = json(holdfast(store).arg("ls"));
    let s = vds_store::Store::open(store, None).unwrap();
    for p in listed["points"].as_array().unwrap() {
        let (vm, id) = (p["vm"].as_str().unwrap(), p["point_id"].as_str().unwrap());
        if p["retain_until"].is_null() {
            continue;
        }
        for f in [s.manifest_path(vm, id), s.labels_path(vm, id)] {
            assert!(immutable(&f), "round {round}: point {id} is shown locked but {f:?} is not immutable");
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o222, 0, "round {round}: {f:?} is writable");
        }
        let manifest = s.load_point(vm, id).unwrap();
        let mut blobs = 0;
        s.for_each_point_blob(&manifest, &mut |b| {
            // In-process (lsattr per blob would take minutes); lsattr checked the files above.
            assert!(s.chunks().is_immutable(b), "round {round}: point {id} is shown locked but blob {b} is not");
            blobs += 1;
            Ok(())
        })
        .unwrap();
        assert!(blobs > 0);
    }
    for vm in s.vms().unwrap() {
        for e in std::fs::read_dir(s.vm_dir(&vm)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".labels") {
                assert!(s.manifest_path(&vm, id).exists(), "round {round}: labels {name} without a point");
            }
        }
    }
}

/// A lock intent some ingest has written (its commit has begun): tmp/<writer>/lock-intent.
fn intent_written(store: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(store.join("tmp")) else { return false };
    dirs.filter_map(|d| d.ok()).any(|d| d.path().join("lock-intent").exists())
}

/// What a kill left, looked at before anything opens the store again: labels without their
/// point, and a point shown locked whose manifest is not immutable.
fn half_commits(store: &Path) -> (bool, bool) {
    let (mut orphan, mut unprotected) = (false, false);
    let vm_dir = store.join("points/vm1");
    for e in std::fs::read_dir(&vm_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".labels") else { continue };
        let manifest = vm_dir.join(format!("{id}.point"));
        if !manifest.exists() {
            orphan = true;
        } else if !immutable(&manifest) {
            unprotected = true;
        }
    }
    (orphan, unprotected)
}

#[test]
fn an_ingest_killed_across_its_locking_commit_leaves_the_lock_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let store = dir.path().join("store");
    // Small chunks: many blobs to protect, so the commit is long enough to be hit.
    ok(holdfast(&store).args(["init", "--chunk-avg-kib", "16"]));
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(32 * MIB as u64).unwrap();
    write_at(&image, 0, &noise(24 * MIB, 7));
    let spawn = || {
        holdfast(&store)
            .args(["ingest", "--vm", "vm1", "--lock-days", "30", "--threads", "2", "--disk"])
            .arg(format!("vda={}", image.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Waits until the ingest has written its lock intent (its commit has begun) or has ended.
    let wait_for_commit = |child: &mut std::process::Child| -> Option<Instant> {
        loop {
            if intent_written(&store) {
                return Some(Instant::now());
            }
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    // How long a commit takes here, from the intent to the process ending: the second run's,
    // whose data is mostly stored already, as in the rounds below.
    let mut span = 0;
    for _ in 0..2 {
        let mut probe = spawn();
        let began = wait_for_commit(&mut probe).expect("the probe wrote its intent");
        assert!(probe.wait().unwrap().success());
        span = began.elapsed().as_micros().max(500) as u64;
    }

    let mut seed = 0x10c4_u64;
    let (mut in_commit, mut orphans, mut unprotected) = (0, 0, 0);
    for round in 0..40u64 {
        write_at(&image, (round % 20) * MIB as u64, &noise(MIB, 300 + round));
        let points_before = point_ids(&store).len();
        let mut child = spawn();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let began = wait_for_commit(&mut child);
        if began.is_some() {
            // Kill somewhere from the intent to a little past the commit's end.
            std::thread::sleep(Duration::from_micros(seed % (span * 5 / 4)));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        if began.is_some() && !status.success() {
            in_commit += 1;
        }
        let (o, u) = half_commits(&store);
        orphans += o as u32;
        unprotected += u as u32;
        // The next open finishes the commit: then every lock shown is whole.
        check_locks_whole(&store, round);
        assert!(point_ids(&store).len() <= points_before + 1);
        let writers = std::fs::read_dir(store.join("locks/writers")).unwrap().count();
        assert_eq!(writers, 0, "round {round}: the next open left a killed writer's registration");
    }
    eprintln!("commit {span} us; {in_commit} kills in a commit: {orphans} left labels alone, {unprotected} an unprotected point");
    assert!(in_commit >= 6, "only {in_commit} kills landed in a commit");
    assert!(orphans + unprotected >= 1, "too few kills left a half commit to repair");
    let v = run(holdfast(&store).arg("verify"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_locked_points_chunks_survive_rm_and_gc_removes_orphan_labels() {
    let dir = tempfile::tempdir().unwrap();
    let _unprotect = Unprotect(dir.path().to_path_buf());
    let (store, want, point) = store_with_one_point(dir.path(), &["--lock-days", "7"]);
    // As root: rm -rf of every blob directory removes nothing the point needs.
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("rm -rf {}/blobs/* 2>/dev/null", store.display()))
        .status()
        .unwrap();
    assert!(!st.success(), "rm removed a locked point's blobs");
    let v = run(holdfast(&store).arg("verify"));
    assert!(v.status.success(), "verify after rm: {}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(export(&store, &point, "vda", &dir.path().join("x.raw")), want);

    // Labels without a point (an old ingest killed between the two): gc removes them once they
    // are older than its cutoff, never a fresh one (a running ingest's).
    let vm_dir = store.join("points/vm1");
    let old = vm_dir.join("20200101T000000.000000Z-dead.labels");
    std::fs::write(&old, br#"{"star":true}"#).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let fresh = vm_dir.join("20200101T000000.000000Z-live.labels");
    std::fs::write(&fresh, br#"{"star":true}"#).unwrap();
    let gc = json(holdfast(&store).arg("gc"));
    assert_eq!(gc["orphan_labels"], 1, "{gc}");
    assert_eq!(gc["locked_points"], 1, "{gc}");
    assert!(!old.exists() && fresh.exists());
    assert_eq!(point_ids(&store), vec![point]);
}
