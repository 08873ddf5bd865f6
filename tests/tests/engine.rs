//! The job engine against the simulated platform (connectors' `sim` feature): backups and
//! restores byte for byte, incrementals that read only what the guest wrote, the global and
//! per-platform limits, bandwidth windows, stops, faults (host unreachable, snapshot refused, a
//! read error mid-disk), retention after a successful run only, alert mails, and a service
//! killed mid-backup cleaning up after its restart. No libvirt: these run in seconds; what only a real hypervisor
//! shows stays in service.rs.

use connectors::sim::{Faults, SimHost};
use holdfast_tests::service::{Client, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "correct horse battery";

/// Bytes that do not compress or deduplicate: `seed` picks the stream.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    holdfast_tests::noise(len, seed)
}

struct Bed {
    _tmp: tempfile::TempDir,
    host: SimHost,
    server: Server,
    c: Client,
    platform: i64,
}

impl Bed {
    fn start(args: &[&str]) -> Bed {
        Bed::start_with_clock(args, None)
    }

    fn start_with_clock(args: &[&str], clock: Option<&str>) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let host = SimHost::create(&tmp.path().join("sim"));
        let clock_file = tmp.path().join("clock");
        if let Some(t) = clock {
            std::fs::write(&clock_file, t).unwrap();
        }
        let server = Server::start_with(&tmp.path().join("data"), clock.map(|_| clock_file.as_path()), args);
        let c = server.admin(PASSWORD);
        let platform = c.add_sim_platform("sim", &host);
        Bed { _tmp: tmp, host, server, c, platform }
    }

    fn dir(&self) -> &Path {
        self._tmp.path()
    }

    fn backup(&self, vm: &str, kind: &str) -> Value {
        let j = self.c.post("/api/jobs", json!({ "platform": self.platform, "vm": vm, "type": kind }), 202);
        self.c.wait_job(j["id"].as_i64().unwrap())
    }

    fn log(&self, job: &Value) -> String {
        self.c.get(&format!("/api/jobs/{}/log", job["id"])).to_string()
    }

    fn points(&self) -> Vec<Value> {
        self.c.get("/api/points").as_array().unwrap().clone()
    }

    fn set_bandwidth(&self, mb: Option<f64>) {
        let every_day = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
        let body = match mb {
            Some(mb) => json!([{ "days": every_day, "from": "00:00", "to": "23:59", "mb_per_second": mb }]),
            None => json!([]),
        };
        assert_eq!(self.c.request("PUT", "/api/bandwidth", Some(&body)).0, 204);
    }
}

#[test]
fn backups_and_restores_are_byte_identical_and_incrementals_read_only_what_changed() {
    let bed = Bed::start(&[]);
    bed.host.add_vm("web", &[("vda", 8 * MIB), ("vdb", 4 * MIB)]);
    bed.host.write("web", "vda", 0, &noise(1, 3 * MIB as usize));
    bed.host.write("web", "vdb", MIB, &noise(2, MIB as usize));

    let full = bed.backup("web", "full");
    assert_eq!(full["state"], "completed", "{full}");
    let log = bed.log(&full);
    assert!(log.contains("simulated file read"), "the transport is logged: {log}");

    // 64 KiB written on one disk: the incremental reads those bytes, not the disks.
    bed.host.write("web", "vda", 5 * MIB, &noise(3, 64 << 10));
    let inc = bed.backup("web", "incremental");
    assert_eq!(inc["state"], "completed", "{inc}");
    assert!(!bed.log(&inc).contains("read in full"), "{}", bed.log(&inc));
    // (The store reads changes by its 4 MiB extents: one extent of 12 MiB of disks.)
    let read = inc["total_bytes"].as_u64().unwrap();
    assert!(read <= 4 * MIB, "the incremental read {read} bytes for 64 KiB written");
    assert_eq!(full["total_bytes"].as_u64(), Some(12 * MIB), "{full}");
    let points = bed.points();
    let newest = points.iter().find(|p| p["point_id"] == inc["point_id"]).unwrap();
    assert_eq!((newest["type"].as_str(), newest["parent"].as_str()), (Some("incremental"), full["point_id"].as_str()));
    assert!(newest["stored_bytes"].as_u64().unwrap() < MIB, "{newest}");

    // The restore options are the platform's: its disk formats, its storage, checked before
    // anything is queued.
    let restore = |extra: Value| {
        let mut body = json!({ "point": inc["point_id"], "platform": bed.platform, "mode": "new_vm", "name": "x" });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        bed.c.post("/api/restores", body, 400)["error"].as_str().unwrap().to_string()
    };
    assert_eq!(restore(json!({ "disk_format": "qcow2" })), "disk_format: \"qcow2\": use raw");
    assert!(restore(json!({ "storage": "nope" })).starts_with("storage: no storage \"nope\""));
    assert!(bed.host.vm("x").is_none());

    // Restored as a new VM: every disk equals the source at the incremental.
    let want = (bed.host.disk("web", "vda"), bed.host.disk("web", "vdb"));
    let r = bed.c.post(
        "/api/restores",
        json!({ "point": inc["point_id"], "platform": bed.platform, "mode": "new_vm", "name": "web-copy", "cpus": 4 }),
        202,
    );
    let r = bed.c.wait_job(r["id"].as_i64().unwrap());
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!((bed.host.disk("web-copy", "vda"), bed.host.disk("web-copy", "vdb")), want);
    let copy = bed.host.vm("web-copy").unwrap();
    assert_eq!(copy.cpus, 4);
    assert_ne!(copy.uuid, bed.host.vm("web").unwrap().uuid, "a new VM gets a new identity");
    assert_ne!(copy.nics[0].mac, bed.host.vm("web").unwrap().nics[0].mac, "and new MAC addresses");
    // Asked to, it keeps the point's MAC addresses (a VM that replaces one that is gone).
    let r = bed.c.post(
        "/api/restores",
        json!({ "point": inc["point_id"], "platform": bed.platform, "mode": "new_vm", "name": "web-same", "keep_macs": true }),
        202,
    );
    assert_eq!(bed.c.wait_job(r["id"].as_i64().unwrap())["state"], "completed");
    assert_eq!(bed.host.vm("web-same").unwrap().nics[0].mac, bed.host.vm("web").unwrap().nics[0].mac);

    // In place onto the (shut off) VM after the guest wrote on: back to the full's bytes.
    let after_inc = bed.host.disk("web", "vda");
    bed.host.write("web", "vda", 0, &noise(4, MIB as usize));
    let in_place = json!({ "point": full["point_id"], "platform": bed.platform, "mode": "in_place" });
    bed.host.set_running("web", true);
    let v = bed.c.post("/api/restores", in_place.clone(), 409);
    assert!(v["error"].as_str().unwrap().starts_with("mode: VM web is running"), "{v}");
    bed.host.set_running("web", false);
    let r = bed.c.post("/api/restores", in_place, 202);
    let r = bed.c.wait_job(r["id"].as_i64().unwrap());
    assert_eq!(r["state"], "completed", "{r}");
    assert_ne!(bed.host.disk("web", "vda"), after_inc, "the full's bytes differ from the incremental's");
    let mut expect = after_inc.clone();
    expect[5 * MIB as usize..(5 * MIB + (64 << 10)) as usize].copy_from_slice(&vec![0; 64 << 10]);
    assert_eq!(bed.host.disk("web", "vda"), expect, "the full had zeros where the incremental wrote");
    assert!(!bed.host.has_snapshot("web"));
}

/// The most jobs whose [started, finished] intervals overlap at one instant.
fn max_overlap(jobs: &[&Value]) -> usize {
    let secs = |t: &Value| chrono_secs(t.as_str().unwrap());
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for j in jobs {
        edges.push((secs(&j["started"]), 1));
        edges.push((secs(&j["finished"]), -1));
    }
    edges.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Seconds of an RFC 3339 UTC time the service wrote ("2026-12-03T09:01:02.345Z"), from midnight.
fn chrono_secs(t: &str) -> f64 {
    let time = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    let day: f64 = t[8..10].parse().unwrap();
    day * 86400.0 + h * 3600.0 + m * 60.0 + s
}

#[test]
fn queued_jobs_keep_to_the_global_and_per_platform_limits() {
    let bed = Bed::start(&["--max-jobs", "3", "--max-jobs-per-host", "2"]);
    let other = SimHost::create(&bed.dir().join("sim-b"));
    let second = bed.c.add_sim_platform("sim-b", &other);
    // Slow reads, so that jobs overlap for long enough to see the limits.
    for h in [&bed.host, &other] {
        h.set_faults(&Faults { read_delay_ms: 150, ..Faults::default() });
    }
    let mut ids = Vec::new();
    for i in 0..12 {
        let (host, platform) = if i % 2 == 0 { (&bed.host, bed.platform) } else { (&other, second) };
        let name = format!("vm{i}");
        host.add_vm(&name, &[("vda", 2 * MIB)]);
        host.write(&name, "vda", 0, &noise(i, 2 * MIB as usize));
        let j = bed.c.post("/api/jobs", json!({ "platform": platform, "vm": name, "type": "full" }), 202);
        ids.push(j["id"].as_i64().unwrap());
    }
    let done: Vec<Value> = ids.iter().map(|id| bed.c.wait_job(*id)).collect();
    for j in &done {
        assert_eq!(j["state"], "completed", "{j}");
    }
    let all: Vec<&Value> = done.iter().collect();
    let overall = max_overlap(&all);
    assert!((2..=3).contains(&overall), "{overall} jobs ran at once with --max-jobs 3");
    for p in [bed.platform, second] {
        let on: Vec<&Value> = done.iter().filter(|j| j["platform"] == p).collect();
        let n = max_overlap(&on);
        assert!(n <= 2, "{n} jobs ran at once on platform {p} with --max-jobs-per-host 2");
    }
}

#[test]
fn job_limits_change_while_jobs_wait_and_outlast_a_restart() {
    let mut bed = Bed::start(&["--max-jobs", "3", "--max-jobs-per-host", "3"]);
    assert_eq!(bed.c.get("/api/limits"), json!({ "max_jobs": 3, "max_jobs_per_host": 3 }));
    let (code, v) = bed.c.request("PUT", "/api/limits", Some(&json!({ "max_jobs": 0, "max_jobs_per_host": 1 })));
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("max_jobs:"), "{v}");
    assert_eq!(bed.c.request("PUT", "/api/limits", Some(&json!({ "max_jobs": 1, "max_jobs_per_host": 1 }))).0, 204);
    // Reads slow enough that the third job still runs when the limit goes up.
    bed.host.set_faults(&Faults { read_delay_ms: 800, ..Faults::default() });
    let mut ids = Vec::new();
    for i in 0..4 {
        let name = format!("lim{i}");
        bed.host.add_vm(&name, &[("vda", 2 * MIB)]);
        bed.host.write(&name, "vda", 0, &noise(40 + i, 2 * MIB as usize));
        ids.push(
            bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": name, "type": "full" }), 202)["id"]
                .as_i64()
                .unwrap(),
        );
    }
    // Two run one after the other; then the limit goes up while the last two wait.
    let first: Vec<Value> = ids[..2].iter().map(|id| bed.c.wait_job(*id)).collect();
    assert_eq!(max_overlap(&first.iter().collect::<Vec<_>>()), 1, "max_jobs 1 let two run at once");
    assert_eq!(bed.c.request("PUT", "/api/limits", Some(&json!({ "max_jobs": 2, "max_jobs_per_host": 2 }))).0, 204);
    let rest: Vec<Value> = ids[2..].iter().map(|id| bed.c.wait_job(*id)).collect();
    for j in first.iter().chain(&rest) {
        assert_eq!(j["state"], "completed", "{j}");
    }
    assert_eq!(max_overlap(&rest.iter().collect::<Vec<_>>()), 2, "the waiting job did not start when the limit rose");
    // Saved limits outlast a restart and win over the command line's defaults.
    bed.server.kill();
    bed.server = Server::start_with(&bed.dir().join("data"), None, &["--max-jobs", "3"]);
    let mut c = bed.server.client();
    assert_eq!(c.login("admin", PASSWORD).0, 200);
    assert_eq!(c.get("/api/limits"), json!({ "max_jobs": 2, "max_jobs_per_host": 2 }));
}

/// Waits until target 1's last check of `kind` has ended; returns it.
fn check_ended(bed: &Bed, kind: &str) -> Value {
    let t = Instant::now();
    loop {
        let target = bed.c.get("/api/storage")[0].clone();
        let check = target["health"].as_array().unwrap().iter().find(|c| c["kind"] == kind).cloned();
        if let Some(c) = check.filter(|c| c["running"] == false) {
            return c;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the {kind} did not end: {target}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_verify_names_the_point_a_damaged_blob_affects_and_gc_frees_what_no_point_needs() {
    let mut bed = Bed::start(&[]);
    bed.host.add_vm("fs", &[("vda", 8 * MIB)]);
    bed.host.write("fs", "vda", 0, &noise(7, 4 * MIB as usize));
    let full = bed.backup("fs", "full");
    assert_eq!(full["state"], "completed", "{full}");
    let v = bed.c.post("/api/storage/1/verify", json!({}), 202);
    assert!(v["health"].as_array().unwrap().iter().any(|c| c["kind"] == "verify"), "{v}");
    let clean = check_ended(&bed, "verify");
    assert_eq!(clean["ok"], true, "{clean}");
    assert!(clean["summary"].as_str().unwrap().contains("all sound"), "{clean}");
    let (code, e) = bed.c.request("POST", "/api/storage/1/verify", Some(&json!({ "sample_percent": 0 })));
    assert_eq!(code, 400, "{e}");
    assert!(e["error"].as_str().unwrap().starts_with("sample_percent:"), "{e}");

    // One blob's bytes go bad: the verify says so and names the point.
    let blobs = bed.dir().join("data/store/blobs");
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    bed.c.post("/api/storage/1/verify", json!({}), 202);
    let bad = check_ended(&bed, "verify");
    assert_eq!(bad["ok"], false, "{bad}");
    let point = full["point_id"].as_str().unwrap();
    assert!(bad["summary"].as_str().unwrap().contains(point), "the damaged point is named: {bad}");

    // Deleting the point leaves its blobs to the garbage collection, which frees them; the
    // result outlasts a restart.
    assert_eq!(bed.c.request("DELETE", &format!("/api/points/{point}"), None).0, 204);
    // (GC sweeps only blobs older than its clock margin, 2 s: the backup was just now.)
    std::thread::sleep(vds_store::gc::CLOCK_MARGIN + Duration::from_millis(500));
    bed.c.post("/api/storage/1/gc", json!({}), 202);
    let gc = check_ended(&bed, "gc");
    assert_eq!(gc["ok"], true, "{gc}");
    let removed: u64 = gc["summary"].as_str().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(removed > 0, "{gc}");
    bed.server.kill();
    bed.server = Server::start(&bed.dir().join("data"));
    let mut c = bed.server.client();
    assert_eq!(c.login("admin", PASSWORD).0, 200);
    let kinds: Vec<Value> =
        c.get("/api/storage")[0]["health"].as_array().unwrap().iter().map(|h| h["kind"].clone()).collect();
    assert_eq!(kinds, [json!("verify"), json!("gc")]);
}

#[test]
fn a_configuration_imported_without_its_passwords_keeps_the_stored_smtp_password() {
    let bed = Bed::start(&[]);
    let alerts = json!({
        "enabled": true, "smtp_host": "mail.example.com", "smtp_port": 587, "security": "starttls",
        "username": "backup", "password": "smtp secret", "from": "holdfast@example.com", "to": ["ops@example.com"],
    });
    assert_eq!(bed.c.request("PUT", "/api/alerts", Some(&alerts)).0, 204);
    let file = bed.c.post("/api/config/export", json!({}), 200);
    let report = bed.c.post("/api/config/import", json!({ "config": file }), 200);
    assert_eq!(bed.c.get("/api/alerts")["has_password"], true, "the stored SMTP password was erased: {report}");
    assert!(report["notes"].to_string().contains("the stored one is kept"), "{report}");
    // For another server the file's settings win, and the report says the password is wanted.
    let mut other = file.clone();
    other["alerts"]["smtp_host"] = json!("relay.example.com");
    let report = bed.c.post("/api/config/import", json!({ "config": other }), 200);
    assert_eq!(bed.c.get("/api/alerts")["has_password"], false);
    assert!(report["notes"].to_string().contains("set it again"), "{report}");
    // Left out, a stored password stays; an empty one removes it.
    assert_eq!(bed.c.request("PUT", "/api/alerts", Some(&alerts)).0, 204);
    let mut without = alerts.clone();
    without.as_object_mut().unwrap().remove("password");
    assert_eq!(bed.c.request("PUT", "/api/alerts", Some(&without)).0, 204);
    assert_eq!(bed.c.get("/api/alerts")["has_password"], true);
    without["password"] = json!("");
    assert_eq!(bed.c.request("PUT", "/api/alerts", Some(&without)).0, 204);
    assert_eq!(bed.c.get("/api/alerts")["has_password"], false, "an empty password removes the stored one");
}

#[test]
fn bandwidth_windows_pause_and_limit_and_a_stopped_job_leaves_nothing() {
    let bed = Bed::start(&["--max-jobs", "1"]);
    bed.host.add_vm("db", &[("vda", 16 * MIB)]);
    bed.host.add_vm("waits", &[("vda", MIB)]);
    bed.host.write("db", "vda", 0, &noise(1, 4 * MIB as usize));

    // 0 MB/s holds the transfer; lifting the window lets it finish.
    bed.set_bandwidth(Some(0.0));
    let j = bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "db", "type": "full" }), 202);
    let id = j["id"].as_i64().unwrap();
    bed.c.wait_state(id, "running");
    std::thread::sleep(Duration::from_millis(1500));
    let held = bed.c.get(&format!("/api/jobs/{id}"));
    assert_eq!((held["state"].as_str(), held["done_bytes"].as_i64()), (Some("running"), Some(0)), "{held}");
    bed.set_bandwidth(None);
    let full = bed.c.wait_job(id);
    assert_eq!(full["state"], "completed", "{full}");
    let rate = full["rate"].as_u64().unwrap();
    assert!(rate > 0 && rate < full["done_bytes"].as_u64().unwrap(), "the pause counts in the average: {full}");
    let log = bed.log(&full);
    for want in ["saving the VM configuration", "taking the snapshot", "transfer paused", "transfer resumed"] {
        assert!(log.contains(want), "{want} missing: {log}");
    }

    // A stop while paused mid-transfer: nothing committed, the snapshot and checkpoint gone; a
    // queued job stopped never starts.
    let checkpoints = bed.host.vm("db").unwrap().checkpoints;
    bed.set_bandwidth(Some(0.0));
    bed.host.write("db", "vda", 8 * MIB, &noise(2, MIB as usize));
    let running = bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "db", "type": "incremental" }), 202);
    let rid = running["id"].as_i64().unwrap();
    bed.c.wait_state(rid, "running");
    assert!(bed.host.has_snapshot("db"));
    let queued = bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "waits", "type": "full" }), 202);
    let qid = queued["id"].as_i64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bed.c.get(&format!("/api/jobs/{qid}"))["state"], "queued", "--max-jobs 1 holds it back");
    let q = bed.c.post(&format!("/api/jobs/{qid}/stop"), json!({}), 200);
    assert_eq!(q["state"], "stopped", "{q}");
    let r = bed.c.post(&format!("/api/jobs/{rid}/stop"), json!({}), 200);
    assert_eq!(r["state"], "stopping", "{r}");
    let r = bed.c.wait_job(rid);
    assert_eq!(r["state"], "stopped", "{r}");
    assert!(r["point_id"].is_null(), "{r}");
    assert!(!bed.host.has_snapshot("db"), "the stopped run's snapshot is removed");
    assert_eq!(bed.host.vm("db").unwrap().checkpoints, checkpoints, "the stopped run's checkpoint is removed");
    assert!(bed.c.get(&format!("/api/jobs/{qid}"))["started"].is_null());

    // A limit holds from the first byte: 4 MiB at 2 MB/s takes about 2 s, unlimited a blink.
    bed.set_bandwidth(Some(2.0));
    let t = Instant::now();
    let limited = bed.backup("db", "incremental");
    assert_eq!(limited["state"], "completed", "{limited}");
    assert!(!bed.log(&limited).contains("read in full"), "incremental from the last committed point");
    let took = t.elapsed().as_secs_f64();
    let moved = limited["done_bytes"].as_f64().unwrap();
    assert!(took >= moved / 2e6 * 0.9, "{moved} bytes at 2 MB/s took {took:.2} s: the limit did not hold");
    bed.set_bandwidth(None);
}

#[test]
fn faults_fail_the_job_naming_the_cause_and_leave_nothing_on_the_platform() {
    let bed = Bed::start(&[]);
    bed.host.add_vm("app", &[("vda", 8 * MIB)]);
    bed.host.write("app", "vda", 0, &noise(1, 8 * MIB as usize));
    let full = bed.backup("app", "full");
    assert_eq!(full["state"], "completed", "{full}");
    let committed = bed.host.vm("app").unwrap().checkpoints;

    // A read error mid-disk fails the run; the snapshot and its checkpoint go, the earlier
    // point stays whole.
    bed.host.write("app", "vda", 0, &noise(2, 8 * MIB as usize));
    bed.host.set_faults(&Faults { read_error: Some(("app".into(), "vda".into(), 5 * MIB + 17)), ..Faults::default() });
    let bad = bed.backup("app", "incremental");
    assert_eq!(bad["state"], "failed", "{bad}");
    let e = bad["error"].as_str().unwrap();
    assert!(e.contains("simulated read error at byte 5242897"), "{e}");
    assert!(!bed.host.has_snapshot("app"));
    assert_eq!(bed.host.vm("app").unwrap().checkpoints, committed);
    // The statistics count the failure as an unread error until its log is read.
    let row = |c: &Client| c.get("/api/stats")["vms"].as_array().unwrap().iter().find(|v| v["vm"] == "app").cloned();
    let app = row(&bed.c).unwrap();
    let counts = (app["succeeded"]["week"].as_i64(), app["failed"]["week"].as_i64(), app["unread_errors"].as_i64());
    assert_eq!(counts, (Some(1), Some(1), Some(1)), "{app}");
    bed.log(&bad);
    assert_eq!(row(&bed.c).unwrap()["unread_errors"].as_i64(), Some(0), "reading the log clears it");

    // A refused snapshot, then an unreachable host: each named.
    bed.host.set_faults(&Faults { snapshot_refused: vec!["app".into()], ..Faults::default() });
    let refused = bed.backup("app", "incremental");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("refused the snapshot"), "{refused}");
    bed.host.set_faults(&Faults { unreachable: Some("no route to host".into()), ..Faults::default() });
    let lost = bed.backup("app", "incremental");
    assert_eq!(lost["state"], "failed", "{lost}");
    assert!(lost["error"].as_str().unwrap().contains("no route to host"), "{lost}");

    // Healed: the next incremental counts from the committed full.
    bed.host.set_faults(&Faults::default());
    let next = bed.backup("app", "incremental");
    assert_eq!(next["state"], "completed", "{next}");
    let points = bed.points();
    let newest = points.iter().find(|p| p["point_id"] == next["point_id"]).unwrap();
    assert_eq!(newest["parent"], full["point_id"], "{newest}");
    let r = bed.c.post(
        "/api/restores",
        json!({ "point": next["point_id"], "platform": bed.platform, "mode": "new_vm", "name": "app-check" }),
        202,
    );
    assert_eq!(bed.c.wait_job(r["id"].as_i64().unwrap())["state"], "completed");
    assert_eq!(bed.host.disk("app-check", "vda"), bed.host.disk("app", "vda"));
}

/// Waits until the rule has `n` finished jobs; returns them newest first.
fn rule_jobs(c: &Client, rule: i64, n: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let jobs: Vec<Value> =
            c.get("/api/jobs").as_array().unwrap().iter().filter(|j| j["rule"] == rule).cloned().collect();
        let ended = jobs.iter().filter(|j| ["completed", "failed", "skipped"].contains(&j["state"].as_str().unwrap()));
        if ended.count() >= n {
            return jobs;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "rule {rule}: waiting for {n} jobs: {jobs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The rule's jobs, oldest first, once every one of them has ended.
fn ended_jobs_of(c: &Client, rule: i64, n: usize, mut each_look: impl FnMut(&[Value])) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let mut jobs: Vec<Value> =
            c.get("/api/jobs").as_array().unwrap().iter().filter(|j| j["rule"] == rule).cloned().collect();
        jobs.sort_by_key(|j| j["id"].as_i64());
        each_look(&jobs);
        if jobs.len() == n && jobs.iter().all(|j| !j["finished"].is_null()) {
            return jobs;
        }
        assert!(t.elapsed() < Duration::from_secs(90), "rule {rule}: {jobs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rules_snapshots_are_taken_one_after_another_or_together_and_its_bandwidth_holds() {
    let bed = Bed::start(&["--max-jobs", "1"]);
    let vms = ["app", "db", "web"];
    for (i, vm) in vms.iter().enumerate() {
        bed.host.add_vm(vm, &[("vda", 4 * MIB)]);
        bed.host.write(vm, "vda", 0, &noise(i as u64, 3 * MIB as usize));
    }
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let rule = |name: &str, vms: &[&str], mode: &str, mb: Value| {
        let body = json!({ "name": name, "platform": bed.platform, "vms": vms, "full": weekly, "enabled": false,
                           "snapshot_mode": mode, "bandwidth_mb_per_second": mb });
        bed.c.post("/api/rules", body, 201)["id"].as_i64().unwrap()
    };
    // A limit that is none is refused with the field's name, and nothing is saved.
    for bad in [json!(0), json!(-1.5)] {
        let body = json!({ "name": "bad", "platform": bed.platform, "vms": ["app"], "full": weekly,
                           "bandwidth_mb_per_second": bad });
        let (code, e) = bed.c.request("POST", "/api/rules", Some(&body));
        assert_eq!(code, 400, "{e}");
        assert!(e["error"].as_str().unwrap().starts_with("bandwidth_mb_per_second:"), "{e}");
    }
    let (code, e) = bed.c.request(
        "POST",
        "/api/rules",
        Some(&json!({ "name": "bad", "platform": bed.platform,
        "vms": ["app"], "full": weekly, "snapshot_mode": "sometimes" })),
    );
    assert_eq!(code, 400, "{e}");
    assert!(bed.c.get("/api/rules").as_array().unwrap().is_empty());

    // Parallel, with one job at a time allowed: the three snapshots exist together while the
    // first VM is read, the others wait holding theirs; each snapshot goes with its read. The
    // rule's 3 MB/s holds each read (about a second for 3 MiB).
    let together = rule("together", &vms, "parallel", json!(3.0));
    let read = bed.c.get(&format!("/api/rules/{together}"));
    assert_eq!(
        (read["snapshot_mode"].as_str(), read["bandwidth_mb_per_second"].as_f64()),
        (Some("parallel"), Some(3.0))
    );
    let t = Instant::now();
    bed.c.post(&format!("/api/rules/{together}/run"), json!({ "type": "full" }), 202);
    let (mut all_at_once, mut waiting_seen) = (false, false);
    let jobs = ended_jobs_of(&bed.c, together, 3, |jobs| {
        all_at_once |= vms.iter().all(|vm| bed.host.has_snapshot(vm));
        waiting_seen |= jobs.iter().filter(|j| j["state"] == "waiting").count() == 2;
        let reading = jobs.iter().filter(|j| ["running", "checking_data"].contains(&j["state"].as_str().unwrap()));
        assert!(reading.count() <= 1, "--max-jobs 1 reads one VM at a time: {jobs:?}");
    });
    let took = t.elapsed().as_secs_f64();
    assert!(all_at_once && waiting_seen, "the run's snapshots were never all there at once");
    for j in &jobs {
        assert_eq!(j["state"], "completed", "{j}");
        assert!(bed.log(j).contains("waiting for the run's other snapshots"), "{}", bed.log(j));
    }
    let moved: f64 = jobs.iter().map(|j| j["done_bytes"].as_f64().unwrap()).sum();
    assert!(took >= moved / 3e6 * 0.9, "{moved} bytes at 3 MB/s took {took:.2} s: the rule's limit did not hold");
    assert!(vms.iter().all(|vm| !bed.host.has_snapshot(vm)));

    // A job stopped while it waits with its snapshot: its snapshot goes, the others complete.
    bed.c.post(&format!("/api/rules/{together}/run"), json!({ "type": "full" }), 202);
    let waiting = loop {
        let jobs: Vec<Value> =
            bed.c.get("/api/jobs").as_array().unwrap().iter().filter(|j| j["rule"] == together).cloned().collect();
        if let Some(w) = jobs.iter().find(|j| j["state"] == "waiting" && j["finished"].is_null()) {
            break w.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    bed.c.post(&format!("/api/jobs/{}/stop", waiting["id"]), json!({}), 200);
    let jobs = ended_jobs_of(&bed.c, together, 6, |_| {});
    let states: Vec<&str> = jobs[3..].iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states.iter().filter(|s| **s == "stopped").count(), 1, "{jobs:?}");
    assert_eq!(states.iter().filter(|s| **s == "completed").count(), 2, "{jobs:?}");
    assert!(vms.iter().all(|vm| !bed.host.has_snapshot(vm)), "the stopped job's snapshot is removed");

    // Serial, with room for all three: one VM at a time, in the rule's order, each snapshot
    // taken after the previous backup ended.
    bed.c.request("DELETE", &format!("/api/rules/{together}"), None);
    bed.c.request("PUT", "/api/limits", Some(&json!({ "max_jobs": 3, "max_jobs_per_host": 3 })));
    let one_by_one = rule("one by one", &vms, "serial", json!(6.0));
    bed.c.post(&format!("/api/rules/{one_by_one}/run"), json!({ "type": "full" }), 202);
    let mut most = 0;
    let jobs = ended_jobs_of(&bed.c, one_by_one, 3, |jobs| {
        let active = jobs.iter().filter(|j| j["finished"].is_null() && j["state"] != "queued").count();
        let snapshots = vms.iter().filter(|vm| bed.host.has_snapshot(vm)).count();
        most = most.max(active).max(snapshots);
    });
    assert_eq!(most, 1, "a serial run had more than one VM going at once");
    let names: Vec<&str> = jobs.iter().map(|j| j["vm"].as_str().unwrap()).collect();
    assert_eq!(names, vms);
    for pair in jobs.windows(2) {
        assert!(pair[1]["started"].as_str() >= pair[0]["finished"].as_str(), "{pair:?}");
        assert_eq!(pair[1]["state"], "completed", "{}", pair[1]);
    }
}

#[test]
fn retention_runs_after_a_successful_run_only() {
    // A Monday night: the rule's schedule (Sundays) does not fire while the test runs.
    let bed = Bed::start_with_clock(&[], Some("2026-11-23T01:00:00Z"));
    bed.host.add_vm("mail", &[("vda", 4 * MIB)]);
    bed.host.write("mail", "vda", 0, &noise(1, MIB as usize));
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let rule = bed.c.post(
        "/api/rules",
        json!({ "name": "mail", "platform": bed.platform, "vms": ["mail"], "full": weekly,
                "retention": { "keep_last": 1 } }),
        201,
    );
    let rid = rule["id"].as_i64().unwrap();
    let run = |n: usize| {
        bed.c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
        rule_jobs(&bed.c, rid, n)[0].clone()
    };
    let first = run(1);
    assert_eq!(first["state"], "completed", "{first}");

    // A failed run removes nothing, even though keep_last 1 is met by the old point.
    bed.host.set_faults(&Faults { read_error: Some(("mail".into(), "vda".into(), 1000)), ..Faults::default() });
    let failed = run(2);
    assert_eq!(failed["state"], "failed", "{failed}");
    let ids: Vec<Value> = bed.points().iter().map(|p| p["point_id"].clone()).collect();
    assert_eq!(ids, vec![first["point_id"].clone()]);

    // The next successful one replaces it.
    bed.host.set_faults(&Faults::default());
    let third = run(3);
    assert_eq!(third["state"], "completed", "{third}");
    let ids: Vec<Value> = bed.points().iter().map(|p| p["point_id"].clone()).collect();
    assert_eq!(ids, vec![third["point_id"].clone()]);
    assert!(bed.log(&third).contains(&format!("retention removed point {}", first["point_id"].as_str().unwrap())));
}

#[test]
fn a_service_killed_mid_backup_cleans_the_platform_after_its_restart() {
    let mut bed = Bed::start(&[]);
    bed.host.add_vm("erp", &[("vda", 4 * MIB)]);
    bed.host.write("erp", "vda", 0, &noise(1, 2 * MIB as usize));
    let full = bed.backup("erp", "full");
    assert_eq!(full["state"], "completed", "{full}");
    let committed = bed.host.vm("erp").unwrap().checkpoints;

    bed.set_bandwidth(Some(0.0));
    bed.host.write("erp", "vda", 2 * MIB, &noise(2, MIB as usize));
    let job = bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "erp", "type": "incremental" }), 202);
    let id = job["id"].as_i64().unwrap();
    bed.c.wait_state(id, "running");
    assert!(bed.host.has_snapshot("erp"));
    bed.server.kill();

    let data = bed.dir().join("data");
    let server = Server::start(&data);
    let mut c = server.client();
    assert_eq!(c.login("admin", PASSWORD).0, 200);
    let t = Instant::now();
    let log = loop {
        let log = c.get(&format!("/api/jobs/{id}/log")).to_string();
        if log.contains("after the restart") {
            break log;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(log.contains("removed the snapshot") && log.contains("deleted its checkpoint"), "{log}");
    assert!(!bed.host.has_snapshot("erp"));
    assert_eq!(bed.host.vm("erp").unwrap().checkpoints, committed);
    let k = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(k["state"], "failed", "{k}");
    assert!(k["error"].as_str().unwrap().contains("service stopped"), "{k}");

    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let next = c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "erp", "type": "incremental" }), 202);
    let next = c.wait_job(next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    assert!(!c.get(&format!("/api/jobs/{}/log", next["id"])).to_string().contains("read in full"));
}

/// A local SMTP sink (aiosmtpd, STARTTLS required, the test bed's server certificate) that
/// stores every mail it gets in a maildir.
struct SmtpSink {
    child: std::process::Child,
    port: u16,
    maildir: std::path::PathBuf,
}

impl SmtpSink {
    fn start(dir: &std::path::Path) -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let maildir = dir.join("maildir");
        let pki = std::path::Path::new("/var/tmp/holdfast-testbed/pki/server");
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg("--tlscert")
            .arg(pki.join("server-cert.pem"))
            .arg("--tlskey")
            .arg(pki.join("server-key.pem"))
            .arg(&maildir)
            .spawn()
            .expect("aiosmtpd runs (package python3-aiosmtpd)");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "the SMTP sink did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpSink { child, port, maildir }
    }

    /// The subjects of the mails received so far.
    fn subjects(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else { return vec![] };
        let mut out: Vec<String> = entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ").map(String::from)))
            .collect();
        out.sort();
        out
    }

    fn wait_for(&self, n: usize) -> Vec<String> {
        let t = Instant::now();
        loop {
            let s = self.subjects();
            if s.len() >= n {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "waiting for {n} mails, got {s:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alerts_are_mailed_over_starttls_and_repeats_are_capped() {
    holdfast_tests::kvm::ensure_libvirtd(); // the test bed's certificates
    let bed = Bed::start(&[]);
    let dir = bed.dir();
    let sink = SmtpSink::start(dir);
    let c = &bed.c;
    let ca = std::fs::read_to_string("/var/tmp/holdfast-testbed/pki/ca-cert.pem").unwrap();
    let mut settings = json!({
        "enabled": true, "smtp_host": "127.0.0.1", "smtp_port": sink.port, "security": "starttls",
        "from": "holdfast@example.com", "to": ["ops@example.com"], "ca_pem": ca,
        "storage_full_percent": 100, "repeat_minutes": 60,
    });
    let mut bad = settings.clone();
    bad["to"] = json!(["not an address"]);
    let v = c.request("PUT", "/api/alerts", Some(&bad)).1;
    assert!(v["error"].as_str().unwrap().starts_with("to[0]:"), "{v}");
    assert_eq!(c.request("PUT", "/api/alerts", Some(&settings)).0, 204);
    c.post("/api/alerts/test", json!({}), 204);
    assert_eq!(sink.wait_for(1), ["Holdfast: test"]);
    // Without our CA the sink's certificate is not trusted: the test mail fails, saying why.
    let mut untrusted = settings.clone();
    untrusted["ca_pem"] = json!(null);
    assert_eq!(c.request("PUT", "/api/alerts", Some(&untrusted)).0, 204);
    let v = c.post("/api/alerts/test", json!({}), 502);
    assert!(v["error"].as_str().unwrap().contains(&format!("127.0.0.1:{}", sink.port)), "{v}");
    // The store's filesystem is watched outside jobs too: over 1% full, the alert comes with no
    // job run (checked at once when the threshold changes).
    settings["storage_full_percent"] = json!(1);
    assert_eq!(c.request("PUT", "/api/alerts", Some(&settings)).0, 204);
    let got = sink.wait_for(2);
    assert!(got.iter().any(|s| s.starts_with("Holdfast: store ") && s.ends_with("% full")), "{got:?}");

    // A VM whose disk cannot be read fails its backups until the fault is healed.
    let late_name = "late".to_string();
    bed.host.add_vm(&late_name, &[("vda", MIB)]);
    bed.host.set_faults(&Faults { read_error: Some((late_name.clone(), "vda".into(), 0)), ..Faults::default() });
    let run = |vm: &str| bed.backup(vm, "full");
    // Two failures of the same VM in the window: one mail.
    assert_eq!(run(&late_name)["state"], "failed");
    assert_eq!(run(&late_name)["state"], "failed");
    let failed = format!("Holdfast: backup of {late_name} failed");
    let got = sink.wait_for(3);
    assert!(got.contains(&failed), "{got:?}");
    // The disk reads again; its backup succeeds: a recovery mail (the store is still 1% full,
    // but that alert went out within the repeat window).
    bed.host.set_faults(&Faults::default());
    assert_eq!(run(&late_name)["state"], "completed");
    let got = sink.wait_for(4);
    assert!(got.contains(&format!("Holdfast: backup of {late_name} succeeded after failures")), "{got:?}");
    std::thread::sleep(Duration::from_millis(500));
    let subjects = sink.subjects();
    assert_eq!(subjects.iter().filter(|s| **s == failed).count(), 1, "the repeated failure was mailed twice");
    assert_eq!(subjects.iter().filter(|s| s.starts_with("Holdfast: store ")).count(), 1, "{subjects:?}");

    // A storage target whose disk goes away is mailed at the next look (here: at once, as the
    // settings change), once per window, and shown unavailable.
    let nas = dir.join("nas");
    c.post("/api/storage", json!({ "name": "nas", "path": nas }), 201);
    std::fs::rename(&nas, dir.join("nas-unmounted")).unwrap();
    assert_eq!(c.request("PUT", "/api/alerts", Some(&settings)).0, 204);
    let got = sink.wait_for(5);
    let offline = "Holdfast: storage target nas is unavailable";
    assert!(got.iter().any(|s| s == offline), "{got:?}");
    let nas_target = c.get("/api/storage").as_array().unwrap().iter().find(|t| t["name"] == "nas").cloned().unwrap();
    assert_eq!(nas_target["available"], false, "{nas_target}");
    assert_eq!(c.request("PUT", "/api/alerts", Some(&settings)).0, 204);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.subjects().iter().filter(|s| *s == offline).count(), 1, "mailed once per window");
}

#[test]
fn platforms_are_described_edited_and_removed_only_when_nothing_needs_them() {
    let bed = Bed::start(&[]);
    let c = &bed.c;
    let kinds = c.get("/api/platform-kinds");
    let sim = kinds.as_array().unwrap().iter().find(|k| k["kind"] == "sim").unwrap().clone();
    assert_eq!(sim["fields"][0]["name"], "dir", "{sim}");
    assert_eq!(sim["capabilities"]["restore_in_place"], true, "{sim}");
    assert!(kinds.as_array().unwrap().iter().any(|k| k["kind"] == "kvm"), "{kinds}");

    // Settings are the kind's: an unknown one, a bad one are refused by name.
    let id = bed.platform;
    let path = format!("/api/platforms/{id}");
    let edit = |body: Value, want: u16| {
        let (code, v) = c.request("PUT", &path, Some(&body));
        assert_eq!(code, want, "{body}: {v}");
        v
    };
    let v = edit(json!({ "name": "sim", "kind": "sim", "dir": bed.host.settings()["dir"], "color": "red" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("color: unknown field"), "{v}");
    let v = edit(json!({ "name": "sim", "kind": "sim", "dir": "/nonexistent" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("dir: /nonexistent holds no simulated platform"), "{v}");
    let v = edit(json!({ "name": "sim", "kind": "kvm", "uri": "qemu:///system" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("kind: stays \"sim\""), "{v}");

    // New name, settings and credentials; a password left out later keeps the stored one.
    let moved = SimHost::create(&bed.dir().join("sim-moved"));
    let mut body = moved.settings();
    body["name"] = json!("moved");
    body["kind"] = json!("sim");
    body["username"] = json!("ops");
    body["password"] = json!("s3cret");
    let p = edit(body.clone(), 200);
    assert_eq!((p["name"].as_str(), p["dir"].as_str()), (Some("moved"), moved.settings()["dir"].as_str()), "{p}");
    assert_eq!(p["has_password"], true);
    body.as_object_mut().unwrap().remove("password");
    assert_eq!(edit(body, 200)["has_password"], true, "the stored password is kept");
    let audit = c.get("/api/audit").to_string();
    assert!(audit.contains("platform changed") && audit.contains("moved"), "{audit}");

    // A connection test that fails saves nothing.
    moved.set_faults(&Faults { unreachable: Some("host is down".into()), ..Faults::default() });
    let mut down = moved.settings();
    down["name"] = json!("renamed-while-down");
    down["kind"] = json!("sim");
    let v = edit(down, 400);
    assert!(v["error"].as_str().unwrap().starts_with("dir: the connection test failed"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("host is down"), "{v}");
    assert!(c.get("/api/platforms").to_string().contains("\"moved\""));
    moved.set_faults(&Faults::default());

    // Removal: refused while a rule uses the platform, then while its points are indexed.
    moved.add_vm("vm1", &[("vda", MIB)]);
    moved.write("vm1", "vda", 0, &noise(1, 4096));
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let rule = c.post("/api/rules", json!({ "name": "r", "platform": id, "vms": ["vm1"], "full": weekly }), 201);
    let (code, v) = c.request("DELETE", &path, None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("used by rule r"), "{v}");
    let done = bed.backup("vm1", "full");
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(c.request("DELETE", &format!("/api/rules/{}", rule["id"]), None).0, 204);
    let (code, v) = c.request("DELETE", &path, None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("made the restore points of VM vm1"), "{v}");

    // A platform nothing needs goes, with its job history.
    // (Not while a job of it runs: a stopped job made no point, and then it can go.)
    let spare = SimHost::create(&bed.dir().join("spare"));
    let sid = c.add_sim_platform("spare", &spare);
    spare.add_vm("tmp", &[("vda", MIB)]);
    spare.write("tmp", "vda", 0, &noise(2, 4096));
    bed.set_bandwidth(Some(0.0));
    let job = c.post("/api/jobs", json!({ "platform": sid, "vm": "tmp", "type": "full" }), 202);
    let jid = job["id"].as_i64().unwrap();
    c.wait_state(jid, "running");
    let (code, v) = c.request("DELETE", &format!("/api/platforms/{sid}"), None);
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&format!("has job {jid} queued or running")), "{v}");
    c.post(&format!("/api/jobs/{jid}/stop"), json!({}), 200);
    assert_eq!(c.wait_job(jid)["state"], "stopped");
    bed.set_bandwidth(None);
    assert_eq!(c.request("DELETE", &format!("/api/platforms/{sid}"), None).0, 204);
    assert_eq!(c.request("GET", &format!("/api/jobs/{jid}"), None).0, 404, "its job history goes with it");
    let names: Vec<Value> = c.get("/api/platforms").as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, vec![json!("moved")]);
    assert_eq!(c.request("DELETE", &format!("/api/platforms/{sid}"), None).0, 404);
}

#[test]
fn a_renamed_vm_keeps_its_rule_and_its_chain() {
    let bed = Bed::start_with_clock(&[], Some("2026-11-23T01:00:00Z"));
    bed.host.add_vm("crm", &[("vda", 4 * MIB)]);
    bed.host.write("crm", "vda", 0, &noise(1, MIB as usize));
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let rule = bed.c.post(
        "/api/rules",
        json!({ "name": "crm", "platform": bed.platform, "vms": ["crm"], "full": weekly,
                "partial": { "kind": "incremental", "schedule": { "kind": "daily", "times": ["02:00"] } } }),
        201,
    );
    let rid = rule["id"].as_i64().unwrap();
    let run = |n: usize| {
        bed.c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "incremental" }), 202);
        rule_jobs(&bed.c, rid, n)[0].clone()
    };
    let first = run(1);
    assert_eq!(first["state"], "completed", "{first}");

    // Renamed on the platform (same UUID): the rule still backs it up, incrementally from the
    // point it made under its old name, and now shows the new name.
    bed.host.rename("crm", "crm-2027");
    bed.host.write("crm-2027", "vda", 2 * MIB, &noise(2, 4096));
    let second = run(2);
    assert_eq!(second["state"], "completed", "{second}");
    assert_eq!(second["vm"], "crm-2027", "{second}");
    let log = bed.log(&second);
    assert!(log.contains("VM crm is now called crm-2027") && !log.contains("read in full"), "{log}");
    let points = bed.points();
    let newest = points.iter().find(|p| p["point_id"] == second["point_id"]).unwrap();
    assert_eq!(
        (newest["parent"].clone(), newest["vm_key"].clone()),
        (first["point_id"].clone(), points[1]["vm_key"].clone())
    );
    let r = bed.c.get(&format!("/api/rules/{rid}"));
    assert_eq!(r["vms"], json!(["crm-2027"]), "{r}");

    // The old name is no VM of the platform any more: a manual job by it is refused.
    let v = bed.c.post("/api/jobs", json!({ "platform": bed.platform, "vm": "crm", "type": "full" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("vm: "), "{v}");
}
