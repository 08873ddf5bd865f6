//! The store through the real `holdfast` binary: kill -9 at random moments, a full disk, bad
//! input. Each asserts that earlier restore points survive intact and that errors are clear.

use holdfast_tests::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn sparse_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

#[test]
fn killed_ingests_never_damage_committed_points() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let image = dir.path().join("disk.raw");
    ok(holdfast(&store).arg("init"));
    sparse_image(&image, 96 * MIB as u64);
    write_at(&image, 0, &noise(48 * MIB, 1));
    ok(holdfast(&store).args(["ingest", "--vm", "vm1", "--disk"]).arg(format!("vda={}", image.display())));
    let mut expected: HashMap<String, Vec<u8>> = HashMap::new();
    let first = point_ids(&store);
    expected.insert(first[0].clone(), std::fs::read(&image).unwrap());

    // How long an uninterrupted ingest takes here, to spread kills across its whole run.
    let t = Instant::now();
    ok(holdfast(&store).args(["ingest", "--vm", "probe", "--disk"]).arg(format!("vda={}", image.display())));
    let span = t.elapsed().as_millis().max(20) as u64;
    let probe = point_ids(&store).into_iter().find(|p| !expected.contains_key(p)).unwrap();
    ok(holdfast(&store).args(["delete", &probe]));

    let mut seed = 0x5eed_u64;
    let mut killed_mid_run = 0;
    for round in 0..30u64 {
        // Change the disk: new data in a few places, so every run writes new chunks.
        write_at(&image, (round * 7 % 90) * MIB as u64, &noise(2 * MIB, 100 + round));
        write_at(&image, 60 * MIB as u64 + round * 4096, &noise(4096, 200 + round));
        let state = std::fs::read(&image).unwrap();
        let before = point_ids(&store);
        let mut cmd = holdfast(&store);
        cmd.args(["ingest", "--vm", "vm1", "--threads", "2", "--disk"]).arg(format!("vda={}", image.display()));
        if round % 2 == 1 {
            cmd.args(["--type", "incremental", "--parent", "latest"]);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % (span * 5 / 4)));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_run += 1;
        }
        let after = point_ids(&store);
        let new: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
        assert!(new.len() <= 1, "one ingest made {} points", new.len());
        assert!(before.iter().all(|p| after.contains(p)), "a killed ingest removed an earlier point");
        if let Some(p) = new.first() {
            expected.insert((*p).clone(), state);
        }
        if round % 5 == 4 {
            ok(holdfast(&store).arg("gc"));
        }
        let out = run(holdfast(&store).args(["verify", "--sample", "100"]));
        assert!(out.status.success(), "verify after kill in round {round}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(killed_mid_run >= 10, "only {killed_mid_run} ingests were actually interrupted");
    ok(holdfast(&store).arg("gc"));
    for (point, want) in &expected {
        let got = export(&store, point, "vda", &dir.path().join("check.raw"));
        assert!(got == *want, "point {point} does not export as captured");
    }
    let writers = std::fs::read_dir(store.join("locks/writers")).unwrap().count();
    assert_eq!(writers, 0, "gc clears registrations of killed writers");
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count(),
        0
    );
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "mounting a tmpfs at {} needs root (the test suite runs as root)",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_ingest_cleanly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let _fs = Tmpfs::mount(&mnt, "24m");
    let store = mnt.join("store");
    ok(holdfast(&store).arg("init"));
    let small = dir.path().join("small.raw");
    sparse_image(&small, 16 * MIB as u64);
    write_at(&small, 0, &noise(6 * MIB, 3));
    ok(holdfast(&store).args(["ingest", "--vm", "vm1", "--disk"]).arg(format!("vda={}", small.display())));
    let kept = point_ids(&store);

    let big = dir.path().join("big.raw");
    sparse_image(&big, 64 * MIB as u64);
    write_at(&big, 0, &noise(40 * MIB, 4));
    let out = run(holdfast(&store).args(["ingest", "--vm", "vm1", "--disk"]).arg(format!("vda={}", big.display())));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left") && err.contains("vda"), "unclear error: {err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "the cause is said once: {err}");
    assert_eq!(point_ids(&store), kept, "no half point");
    let v = run(holdfast(&store).arg("verify"));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let exported = dir.path().join("x.raw");
    assert_eq!(export(&store, &kept[0], "vda", &exported), std::fs::read(&small).unwrap());
    // The partial blobs are garbage: gc frees them (once past its clock margin) and the store
    // has room again.
    std::thread::sleep(Duration::from_millis(2500));
    let gc = json(holdfast(&store).arg("gc"));
    assert!(gc["removed_bytes"].as_u64().unwrap() > 4 * MIB as u64, "{gc}");
    write_at(&small, 8 * MIB as u64, &noise(MIB, 5));
    ok(holdfast(&store).args(["ingest", "--vm", "vm1", "--disk"]).arg(format!("vda={}", small.display())));
    assert_eq!(point_ids(&store).len(), 2);
}

#[test]
fn bad_input_is_refused_with_a_message_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let expect_err = |cmd: &mut std::process::Command, needle: &str| {
        let out = run(cmd);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(needle), "expected an error containing {needle:?}, got {err:?}");
    };
    expect_err(holdfast(&store).arg("ls"), "not a Holdfast store");
    ok(holdfast(&store).arg("init"));
    expect_err(holdfast(&store).arg("init"), "already holds a Holdfast store");
    expect_err(holdfast(&store).args(["ingest", "--vm", "v", "--disk", "vda=/nonexistent.raw"]), "/nonexistent.raw");
    let image = dir.path().join("d.raw");
    sparse_image(&image, MIB as u64);
    let changed = dir.path().join("changed.txt");
    std::fs::write(&changed, "0 4096\nnonsense\n").unwrap();
    expect_err(
        holdfast(&store)
            .args(["ingest", "--vm", "v", "--type", "incremental", "--disk"])
            .arg(format!("vda={}", image.display()))
            .arg("--changed")
            .arg(format!("vda={}", changed.display())),
        "line 2",
    );
    expect_err(holdfast(&store).args(["prune", "--keep-days", "65"]), "keep-days is 65");
    expect_err(
        holdfast(&store).args(["show", "20260101T000000Z-nothere"]),
        "no restore point 20260101T000000Z-nothere",
    );
    expect_err(
        holdfast(&store).args(["ingest", "--vm", "bad/name", "--disk"]).arg(format!("vda={}", image.display())),
        "invalid VM key",
    );
    // Encrypted store: no passphrase, wrong passphrase.
    let enc = dir.path().join("enc");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "right\n").unwrap();
    ok(holdfast(&enc).args(["init", "--encrypt", "--passphrase-file"]).arg(&pass));
    expect_err(
        holdfast(&enc).args(["ingest", "--vm", "v", "--disk"]).arg(format!("vda={}", image.display())),
        "is encrypted",
    );
    std::fs::write(&pass, "wrong\n").unwrap();
    expect_err(holdfast(&enc).arg("ls").arg("--passphrase-file").arg(&pass), "passphrase does not open");
}

#[test]
fn a_command_whose_output_pipe_closes_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(holdfast(&store).arg("init"));
    // Stdout is a pipe whose reader is gone before the command starts, as after `| head -0`.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = holdfast(&store).arg("ls").stdout(writer).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "it printed to stderr: {err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
