//! `holdfast serve` end to end: first start, login and the forced password change, sessions and
//! CSRF, a KVM platform and a backup job through the API against the real test bed, the job's
//! states, log and point, the catalog rebuilt from the store, bad input, lockout, and a service
//! killed mid-job recovering on restart.

use holdfast_tests::kvm::{TestVm, MIB, TCP_PASSWORD, TCP_URI, TCP_USER};
use holdfast_tests::service::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn the_service_runs_a_kvm_backup_through_its_api_and_recovers_from_a_kill() {
    service_end_to_end(None);
}

#[test]
fn the_same_on_a_postgresql_catalog() {
    service_end_to_end(Some(holdfast_tests::service::postgres_catalog("e2e")));
}

fn service_end_to_end(catalog: Option<String>) {
    let mut vm = TestVm::start(if catalog.is_some() { "service-pg" } else { "service" });
    let data = vm.dir.join("data");
    let args: Vec<&str> = catalog.as_deref().map(|c| vec!["--catalog", c]).unwrap_or_default();
    let mut server = Server::start_with(&data, None, &args);
    assert_eq!(data.join("catalog.db").exists(), catalog.is_none(), "the catalog is where --catalog says");

    // Nothing without a session; the initial password must be changed before anything else.
    let anon = server.client();
    for path in ["/api/points", "/api/platforms", "/api/jobs", "/api/audit", "/api/jobs/1/log"] {
        assert_eq!(anon.get_status(path).0, 401, "{path} answered without a session");
    }
    assert_eq!(anon.request("POST", "/api/jobs", Some(&json!({}))).0, 401);
    let mut c = server.client();
    assert_eq!(c.login("admin", "not-the-password").0, 401);
    // A body that is not declared JSON is refused, not read as JSON; the console's page says
    // where the API is to a browser without JavaScript, and allows no script but its own.
    let plain = std::process::Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-H", "content-type: text/plain", "--data-binary"])
        .arg(json!({ "user": "admin", "password": server.initial_password() }).to_string())
        .arg(format!("https://127.0.0.1:{}/api/login", server.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.ends_with("415") && text.contains("application/json"), "{text}");
    let page = std::process::Command::new("curl")
        .args(["-sk", "-i"])
        .arg(format!("https://127.0.0.1:{}/", server.port))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains("text/html")
            && page.contains("/api/openapi.json")
            && page.to_lowercase().contains("content-security-policy: default-src 'self'; script-src 'self';"),
        "{page}"
    );
    let initial = server.initial_password();
    let (code, reply) = c.login("admin", &initial);
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["must_change_password"], true);
    assert_eq!(c.get_status("/api/platforms").0, 403);
    let csrf = c.csrf.take();
    let v = c.post("/api/password", json!({ "old": initial, "new": "correct horse battery" }), 403);
    assert!(v["error"].as_str().unwrap().contains("CSRF"), "{v}");
    c.csrf = csrf;
    let v = c.post("/api/password", json!({ "old": initial, "new": "short" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("new:"), "{v}");
    assert!(server.data.join("initial-admin-password").exists());
    c.post("/api/password", json!({ "old": initial, "new": "correct horse battery" }), 204);
    assert!(!server.data.join("initial-admin-password").exists(), "the stale initial password was kept");

    // A platform is saved only when its connection test passes; bad input names the field.
    let v =
        c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu+tcp://127.0.0.1:1/system" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("uri: the connection test failed"), "{v}");
    let v = c.post("/api/platforms", json!({ "name": "lab", "kind": "hyperv", "uri": "https://hv" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("kind:"), "{v}");
    // The kind's settings: unknown ones are named, the optional NBD ones are used.
    let v =
        c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system", "colour": 1 }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("colour: unknown field"), "{v}");
    let tls = json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system", "nbd_tls_dir": "/nonexistent" });
    let v = c.post("/api/platforms", tls, 400);
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/ca-cert.pem"), "{v}");
    let v = c.post("/api/platforms", json!({ "name": "lab", "uri": "qemu:///system" }), 400);
    assert!(v["error"].as_str().unwrap().contains("kind"), "{v}");
    assert_eq!(c.get("/api/platforms"), json!([]), "nothing half-saved");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    assert!(p["reached"].as_str().unwrap().contains("libvirt"), "{p}");
    c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 409);
    let pid = p["id"].as_i64().unwrap();
    let vms = c.get(&format!("/api/platforms/{pid}/vms"));
    assert!(vms.as_array().unwrap().iter().any(|v| v["name"] == vm.name.as_str()), "{vms}");

    // A full backup job: queued, then done, with its log and its point in the catalog, and
    // its changes streamed live as server-sent events.
    vm.write(0, 0x5a, 0, 2 * MIB);
    let events_file = vm.dir.join("events.txt");
    let mut events = c.stream("/api/events", &events_file);
    assert_eq!(anon.get_status("/api/events").0, 401);
    std::thread::sleep(Duration::from_millis(300));
    let v = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "weekly" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("type:"), "{v}");
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let done = c.wait_job(job["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["percent"], 100.0);
    assert!(done["rate"].is_i64() && done["total_bytes"].as_i64() > Some(0), "{done}");
    let point = done["point_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let _ = events.wait();
    let streamed: Vec<Value> = std::fs::read_to_string(&events_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .filter(|j: &Value| j["id"] == job["id"])
        .collect();
    let states: Vec<&str> = streamed.iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states.first(), Some(&"queued"), "{states:?}");
    assert!(states.contains(&"preparing"), "{states:?}");
    assert_eq!(states.last(), Some(&"completed"), "{states:?}");
    assert_eq!(streamed.last().unwrap()["point_id"], point.as_str());
    let log = c.get(&format!("/api/jobs/{}/log", job["id"]));
    let lines: Vec<&str> = log.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(lines.iter().any(|l| l.contains("crash-consistent")), "{lines:?}");
    assert!(lines.last().unwrap().contains(&point), "{lines:?}");
    let points = c.get("/api/points");
    assert_eq!(points[0]["point_id"], point.as_str());
    assert_eq!((points[0]["type"].as_str(), points[0]["storage"].as_i64()), (Some("full"), Some(1)));
    // The appliance's own store is storage target 1, and counts the point (on either catalog).
    let storage = c.get("/api/storage");
    assert_eq!((storage[0]["id"].as_i64(), storage[0]["name"].as_str()), (Some(1), Some("local")), "{storage}");
    assert_eq!((storage[0]["points"].as_i64(), storage[0]["available"].as_bool()), (Some(1), Some(true)), "{storage}");
    assert!(storage[0]["stored_bytes"].as_i64().unwrap() > 0, "{storage}");

    // A job for a VM that is not there is refused before it is queued, naming the field.
    let bad = c.post("/api/jobs", json!({ "platform": pid, "vm": "no-such-vm", "type": "full" }), 400);
    assert!(bad["error"].as_str().unwrap().starts_with("vm: platform lab has no VM \"no-such-vm\""), "{bad}");

    // Statistics: successes, bytes protected and stored (failures and unread errors: engine.rs);
    // a refused request is no VM of the statistics.
    let stats = c.get("/api/stats");
    assert!(!stats.to_string().contains("no-such-vm"), "{stats}");
    let row = |name: &str| stats["vms"].as_array().unwrap().iter().find(|v| v["vm"] == name).cloned().unwrap();
    let good = row(&vm.name);
    assert_eq!((good["succeeded"]["week"].as_i64(), good["failed"]["year"].as_i64()), (Some(1), Some(0)), "{good}");
    assert_eq!(good["protected_bytes"].as_i64(), Some(2 * holdfast_tests::kvm::DISK as i64), "{good}");
    assert!(good["stored_bytes"].as_i64().unwrap() > 0, "{good}");

    // The OpenAPI document is served, and every route it lists refuses a request without a session.
    let (code, spec) = anon.get_status("/api/openapi.json");
    assert_eq!(code, 200);
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            if op["x-access"] == "public" {
                continue;
            }
            let concrete =
                path.replace("{id}", "1").replace("{name}", "someone").replace("{vm}", "x").replace("{point}", "p");
            let body = (method != "get").then(|| json!({}));
            let (code, v) = anon.request(&method.to_uppercase(), &concrete, body.as_ref());
            assert_eq!(code, 401, "{} {path} without a session: {v}", method.to_uppercase());
        }
    }

    // Killed while a job is queued or running: on restart the job is failed with that reason,
    // what it left on the hypervisor is removed (its log says so), the catalog comes back from
    // the store, and the next backup runs.
    vm.write(1, 0x6b, 8 * MIB, MIB);
    let killed = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    server.kill();
    let server = Server::start_with(&data, None, &args);
    let mut c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let k = c.get(&format!("/api/jobs/{}", killed["id"]));
    if k["state"] != "completed" {
        assert_eq!(k["state"], "failed", "{k}");
        assert!(k["error"].as_str().unwrap().contains("service stopped"), "{k}");
        wait_log(&c, killed["id"].as_i64().unwrap(), "after the restart");
    }
    let next = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let next = c.wait_job(next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    assert!(!vm.has_job());
    let ids: Vec<String> =
        c.get("/api/points").as_array().unwrap().iter().map(|p| p["point_id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&point) && ids.contains(&next["point_id"].as_str().unwrap().to_string()), "{ids:?}");

    // The audit log has who did what; five wrong passwords lock the account.
    let audit = c.get("/api/audit");
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for want in ["password changed", "platform added", "backup started", "login"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let mut other = server.client();
    for _ in 0..5 {
        assert_eq!(other.login("admin", "wrong").0, 401);
    }
    let (code, locked) = other.login("admin", "correct horse battery");
    assert_eq!(code, 401, "{locked}");
    assert!(locked["error"].as_str().unwrap().contains("locked"), "{locked}");
    // A name that does not exist gets the very same reply, however often it is tried.
    for _ in 0..5 {
        assert_eq!(other.login("nobody", "wrong").0, 401);
    }
    assert_eq!(other.login("nobody", "correct horse battery"), (401, locked), "the reply tells which users exist");
    assert_eq!(c.request("POST", "/api/logout", None).0, 204);
    assert_eq!(c.get_status("/api/jobs").0, 401);
}

/// Waits until job `id`'s log has a line containing `needle`; returns the log.
fn wait_log(c: &holdfast_tests::service::Client, id: i64, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let log = c.get(&format!("/api/jobs/{id}/log")).to_string();
        if log.contains(needle) {
            return log;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "job {id}: no {needle:?} in its log: {log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A service killed while a backup transfers (held at 0 MB/s, so the kill surely lands
/// mid-transfer): at restart the job is failed and, before any new backup of the VM may start,
/// the libvirt backup job it left is ended and the checkpoint it made deleted, as its log says.
/// The VM's next backup is an incremental from the last committed point.
#[test]
fn a_restarted_service_removes_what_its_killed_backup_left_on_the_hypervisor() {
    let mut vm = TestVm::start("killed");
    let data = vm.dir.join("data");
    let mut server = Server::start(&data);
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    vm.write(0, 0x21, 0, MIB);
    let first = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let first = c.wait_job(first["id"].as_i64().unwrap());
    assert_eq!(first["state"], "completed", "{first}");
    let committed = vm.checkpoints();

    let window = json!([{ "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "from": "00:00",
                          "to": "23:59", "mb_per_second": 0 }]);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&window)).0, 204);
    vm.write(1, 0x22, 2 * MIB, MIB);
    let job = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let id = job["id"].as_i64().unwrap();
    c.wait_state(id, "running");
    // A second backup of the VM meanwhile is refused, naming the one that runs.
    let v = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 409);
    assert!(v["error"].as_str().unwrap().contains(&format!("job {id}")), "{v}");
    assert!(vm.has_job() && vm.checkpoints().len() > committed.len(), "the backup job and its checkpoint run");
    server.kill();
    assert!(vm.has_job(), "libvirt keeps the job of a killed appliance");

    let server = Server::start(&data);
    let mut c = server.client();
    assert_eq!(c.login("admin", "correct horse battery").0, 200);
    let log = wait_log(&c, id, "after the restart");
    assert!(log.contains("ended the backup job") && log.contains("deleted its checkpoint"), "{log}");
    assert!(!vm.has_job(), "the killed run's backup job is ended");
    assert_eq!(vm.checkpoints(), committed, "the killed run's checkpoint is deleted, the committed one kept");
    let k = c.get(&format!("/api/jobs/{id}"));
    assert_eq!(k["state"], "failed", "{k}");
    assert!(k["error"].as_str().unwrap().contains("service stopped"), "{k}");

    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let next = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let next = c.wait_job(next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    let log = c.get(&format!("/api/jobs/{}/log", next["id"])).to_string();
    assert!(!log.contains("read in full"), "an incremental from the committed point: {log}");
    let points = c.get("/api/points");
    let newest = points.as_array().unwrap().iter().find(|p| p["point_id"] == next["point_id"]).unwrap().clone();
    assert_eq!((newest["type"].as_str(), newest["parent"].as_str()), (Some("incremental"), first["point_id"].as_str()));
}

/// Sets the service's clock (UTC), atomically.
fn set_clock(file: &std::path::Path, t: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, t).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// Waits for the rule's jobs to reach `n` and for all of them to finish; returns them, newest first.
fn wait_rule_jobs(c: &holdfast_tests::service::Client, rule: i64, n: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let jobs: Vec<Value> =
            c.get("/api/jobs").as_array().unwrap().iter().filter(|j| j["rule"] == rule).cloned().collect();
        let finished = jobs.iter().all(|j| ["completed", "failed", "skipped"].contains(&j["state"].as_str().unwrap()));
        if jobs.len() >= n && finished {
            return jobs;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "rule {rule}: waiting for {n} finished jobs: {jobs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rule_runs_on_schedule_with_fallback_to_full_retention_and_skips() {
    let mut vm = TestVm::start("rules");
    let data = vm.dir.join("data");
    let clock = vm.dir.join("clock");
    set_clock(&clock, "2026-11-23T01:00:00Z"); // a Monday
    let server = Server::start_with_clock(&data, Some(&clock));
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let rule = |full: Value, retention: Value, vms: Value| {
        json!({ "name": "nightly", "platform": pid, "vms": vms, "full": full, "retention": retention,
                "partial": { "kind": "incremental", "schedule": { "kind": "daily", "times": ["02:00"] } } })
    };
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });

    // Bad input names the field; nothing is saved.
    for (body, field) in [
        (rule(json!({ "kind": "daily", "times": ["25:00"] }), json!({}), json!([vm.name])), "full.times[0]"),
        (rule(json!({ "kind": "once", "at": "2026-11-22 23:00" }), json!({}), json!([vm.name])), "full.at"),
        (rule(weekly.clone(), json!({ "keep_days": 65 }), json!([vm.name])), "retention"),
        (rule(weekly.clone(), json!({}), json!(["no-such-vm"])), "vms[0]"),
        (rule(json!({ "kind": "fortnightly" }), json!({}), json!([vm.name])), "full"),
    ] {
        let v = c.post("/api/rules", body, 400);
        assert!(v["error"].as_str().unwrap().starts_with(field), "{field}: {v}");
    }
    assert_eq!(c.get("/api/rules"), json!([]));

    let r = c.post("/api/rules", rule(weekly.clone(), json!({ "keep_last": 2 }), json!([vm.name])), 201);
    let rid = r["id"].as_i64().unwrap();
    let mut other = rule(weekly.clone(), json!({}), json!([vm.name]));
    other["name"] = json!("another");
    let v = c.post("/api/rules", other, 409);
    assert!(v["error"].as_str().unwrap().contains("already in rule nightly"), "{v}");

    // Monday 02:00: the incremental is due; with no base it runs as a full.
    vm.write(0, 0x11, 0, MIB);
    set_clock(&clock, "2026-11-23T02:00:30Z");
    let jobs = wait_rule_jobs(&c, rid, 1);
    assert_eq!(
        (jobs[0]["type"].as_str(), jobs[0]["state"].as_str()),
        (Some("incremental"), Some("completed")),
        "{jobs:?}"
    );
    let first = jobs[0]["point_id"].as_str().unwrap().to_string();
    let log = c.get(&format!("/api/jobs/{}/log", jobs[0]["id"]));
    assert!(log.to_string().contains("read in full: no earlier backup"), "{log}");

    // Tuesday and Wednesday: incrementals; keep_last 2 then removes Monday's point.
    for (day, pattern) in [("2026-11-24T02:00:30Z", 0x22), ("2026-11-25T02:00:30Z", 0x33)] {
        vm.write(1, pattern, 4 * MIB, MIB);
        set_clock(&clock, day);
        let n = if pattern == 0x22 { 2 } else { 3 };
        let jobs = wait_rule_jobs(&c, rid, n);
        assert_eq!(jobs[0]["state"], "completed", "{jobs:?}");
    }
    let jobs = wait_rule_jobs(&c, rid, 3);
    let log = c.get(&format!("/api/jobs/{}/log", jobs[0]["id"]));
    assert!(log.to_string().contains(&format!("retention removed point {first}")), "{log}");
    let points = c.get("/api/points");
    assert_eq!(points.as_array().unwrap().len(), 2, "{points}");
    assert!(points.as_array().unwrap().iter().all(|p| p["type"] == "incremental" && p["point_id"] != first.as_str()));

    // Saturday 01:00: Thursday's and Friday's 02:00 were missed (the clock jumped, as after a
    // stopped service): one catch-up run, not two. Sunday 03:00: the full wins over the 02:00
    // incremental that falls in the same window.
    set_clock(&clock, "2026-11-28T01:00:00Z");
    let jobs = wait_rule_jobs(&c, rid, 4);
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert_eq!(jobs[0]["type"], "incremental");
    set_clock(&clock, "2026-11-29T03:00:30Z");
    let jobs = wait_rule_jobs(&c, rid, 5);
    assert_eq!(jobs.len(), 5, "{jobs:?}");
    assert_eq!((jobs[0]["type"].as_str(), jobs[0]["state"].as_str()), (Some("full"), Some("completed")));

    // Retention by days counts calendar days on the service's clock, and points carry its time:
    // on Tuesday, keep_days 1 keeps Monday's and Tuesday's points: only the new one (Saturday's and
    // Sunday's, the two keep_last 2 left, go).
    let edit = rule(weekly, json!({ "keep_days": 1 }), json!([vm.name]));
    let (code, v) = c.request("PUT", &format!("/api/rules/{rid}"), Some(&edit));
    assert_eq!(code, 200, "{v}");
    set_clock(&clock, "2026-12-01T02:00:30Z");
    let jobs = wait_rule_jobs(&c, rid, 6);
    assert_eq!(jobs[0]["state"], "completed", "{jobs:?}");
    let points = c.get("/api/points");
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0]["point_id"], jobs[0]["point_id"]);
    assert!(points[0]["started"].as_str().unwrap().starts_with("2026-12-01T02:0"), "{points:?}");
    let log = c.get(&format!("/api/jobs/{}/log", jobs[0]["id"]));
    assert_eq!(log.to_string().matches("retention removed point").count(), 2, "{log}");

    // Run now, twice at once: the second finds the first still going and is skipped.
    let started = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
    let again = c.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202);
    assert_eq!((started.as_array().unwrap().len(), again.as_array().unwrap().len()), (1, 0));
    let jobs = wait_rule_jobs(&c, rid, 7);
    assert!(jobs
        .iter()
        .any(|j| j["state"] == "skipped" && j["error"].as_str().unwrap().contains("still queued or running")));

    c.request("DELETE", &format!("/api/rules/{rid}"), None);
    assert_eq!(c.get("/api/rules"), json!([]));
    assert!(c.get("/api/jobs").as_array().unwrap().len() >= 8, "jobs keep their history");
}

/// Seconds since the epoch of an RFC 3339 time the service wrote.
fn secs(t: &Value) -> f64 {
    let s = t.as_str().unwrap();
    let out = std::process::Command::new("date").args(["-u", "-d", s, "+%s.%N"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn roles_limit_what_users_do_and_api_tokens_work_without_a_browser_session() {
    roles_and_tokens(None);
}

#[test]
fn roles_and_tokens_on_a_postgresql_catalog() {
    roles_and_tokens(Some(holdfast_tests::service::postgres_catalog("roles")));
}

fn roles_and_tokens(catalog: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = catalog.as_deref().map(|c| vec!["--catalog", c]).unwrap_or_default();
    let server = Server::start_with(&dir.path().join("data"), None, &args);
    let admin = server.admin("correct horse battery");
    let v = admin.post("/api/users", json!({ "name": "ops1", "role": "root", "password": "operator pass 1" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("role:"), "{v}");
    admin.post("/api/users", json!({ "name": "ops1", "role": "operator", "password": "operator pass 1" }), 201);
    admin.post("/api/users", json!({ "name": "ops1", "role": "operator", "password": "operator pass 1" }), 409);
    admin.post("/api/users", json!({ "name": "aud1", "role": "auditor", "password": "auditor pass 1" }), 201);
    let users = admin.get("/api/users");
    assert_eq!(users.as_array().unwrap().len(), 3, "{users}");

    let login = |name: &str, initial: &str, new: &str| {
        let mut c = server.client();
        let (code, v) = c.login(name, initial);
        assert_eq!((code, v["must_change_password"].as_bool()), (200, Some(true)), "{v}");
        c.post("/api/password", json!({ "old": initial, "new": new }), 204);
        c
    };
    let auditor = login("aud1", "auditor pass 1", "auditor pass 2");
    assert_eq!(auditor.get_status("/api/points").0, 200);
    assert_eq!(auditor.get_status("/api/audit").0, 200);
    let v = auditor.post("/api/jobs", json!({ "platform": 1, "vm": "x", "type": "full" }), 403);
    assert!(v["error"].as_str().unwrap().contains("auditor"), "{v}");
    assert_eq!(auditor.get_status("/api/users").0, 403);
    let operator = login("ops1", "operator pass 1", "operator pass 2");
    assert_eq!(operator.get_status("/api/platforms").0, 200);
    let v = operator.post("/api/platforms", json!({ "name": "p", "kind": "kvm", "uri": "qemu:///system" }), 403);
    assert!(v["error"].as_str().unwrap().contains("needs an admin"), "{v}");
    assert_eq!(operator.get_status("/api/audit").0, 403);

    // An API token: shown once, acts as its user without cookie or CSRF token, revocable.
    let t = admin.post("/api/tokens", json!({ "name": "nightly script" }), 201);
    let token = t["token"].as_str().unwrap().to_string();
    assert!(admin.get("/api/tokens")[0]["token"].is_null(), "a token is never shown again");
    let mut script = server.client();
    script.bearer = Some(token);
    assert_eq!(script.get("/api/users").as_array().unwrap().len(), 3);
    script.post("/api/tokens", json!({ "name": "made by a script" }), 201);
    script.bearer = Some("hf_not-a-token".into());
    assert_eq!(script.get_status("/api/points").0, 401);
    admin.request("DELETE", &format!("/api/tokens/{}", t["id"]), None);
    script.bearer = t["token"].as_str().map(String::from);
    assert_eq!(script.get_status("/api/points").0, 401, "a revoked token is refused");

    // A deleted user's session ends with it; nobody deletes themselves.
    assert_eq!(admin.request("DELETE", "/api/users/aud1", None).0, 204);
    assert_eq!(auditor.get_status("/api/points").0, 401);
    assert_eq!(admin.request("DELETE", "/api/users/admin", None).0, 409);
    let audit = admin.get("/api/audit").to_string();
    for want in ["user added", "API token created", "API token revoked", "user deleted"] {
        assert!(audit.contains(want), "{want} missing from the audit log");
    }
}

/// The states the live events showed for `job`, in order.
fn streamed_states(events: &std::path::Path, job: &Value) -> Vec<String> {
    std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|j| j["id"] == job["id"])
        .map(|j| j["state"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `want` appears in `seen` in this order (other states may come between).
fn in_order(seen: &[String], want: &[&str]) -> bool {
    let mut it = seen.iter();
    want.iter().all(|w| it.any(|s| s == w))
}

#[test]
fn jobs_show_their_phases_follow_bandwidth_windows_and_stop_cleanly() {
    let mut vm = TestVm::start("jobctl");
    let data = vm.dir.join("data");
    let clock = vm.dir.join("clock");
    set_clock(&clock, "2026-11-23T12:00:00Z");
    // One job at a time, so a second job waits queued behind the first.
    let server = Server::start_with(&data, Some(&clock), &["--max-jobs", "1"]);
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let every_day = json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]);
    let window = |mb: f64| json!([{ "days": every_day, "from": "00:00", "to": "23:59", "mb_per_second": mb }]);

    // Bad windows name the field and change nothing.
    for (body, field) in [
        (json!([{ "days": ["mon"], "from": "8:xx", "to": "18:00", "mb_per_second": 1 }]), "[0].from"),
        (json!([{ "days": ["someday"], "from": "08:00", "to": "18:00", "mb_per_second": 1 }]), "[0].days"),
        (json!([{ "days": ["mon"], "from": "08:00", "to": "18:00", "mb_per_second": -1 }]), "[0].mb_per_second"),
    ] {
        let (code, v) = c.request("PUT", "/api/bandwidth", Some(&body));
        assert_eq!(code, 400, "{v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{field}: {v}");
    }
    assert_eq!(c.get("/api/bandwidth"), json!([]));

    // 0 MB/s pauses the transfer: the job runs but its bytes hold; lifting the window lets it
    // finish. Its live events show every phase in order.
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&window(0.0))).0, 204);
    assert_eq!(c.get("/api/bandwidth")[0]["mb_per_second"], 0.0);
    vm.write(0, 0x11, 0, 4 * MIB);
    let events_file = vm.dir.join("events.txt");
    let mut events = c.stream("/api/events", &events_file);
    std::thread::sleep(Duration::from_millis(300));
    let full = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let fid = full["id"].as_i64().unwrap();
    c.wait_state(fid, "running");
    std::thread::sleep(Duration::from_secs(2));
    let held = c.get(&format!("/api/jobs/{fid}"));
    assert_eq!((held["state"].as_str(), held["done_bytes"].as_i64()), (Some("running"), Some(0)), "{held}");
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let done = c.wait_job(fid);
    assert_eq!(done["state"], "completed", "{done}");
    // The ended job keeps its average rate (its 2 s at 0 MB/s counted in); no ETA.
    let rate = done["rate"].as_i64().unwrap();
    assert!(rate > 0 && (rate as u64) < done["done_bytes"].as_u64().unwrap(), "{done}");
    assert!(done["eta_seconds"].is_null(), "{done}");
    let log = c.get(&format!("/api/jobs/{fid}/log"));
    let lines: Vec<&str> = log.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    for want in
        ["saving the VM configuration", "taking the snapshot", "transfer paused", "transfer resumed", "checking data"]
    {
        assert!(lines.iter().any(|l| l.contains(want)), "{want} missing from {lines:?}");
    }

    // An incremental also queries the changed blocks.
    vm.write(1, 0x22, 2 * MIB, MIB);
    let inc = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let inc_done = c.wait_job(inc["id"].as_i64().unwrap());
    assert_eq!(inc_done["state"], "completed", "{inc_done}");
    std::thread::sleep(Duration::from_millis(300));
    let full_states = streamed_states(&events_file, &full);
    let want = ["queued", "preparing", "saving_configuration", "snapshotting", "running", "checking_data", "completed"];
    assert!(in_order(&full_states, &want), "{full_states:?}");
    assert!(!full_states.contains(&"querying_changes".to_string()), "a full queries no changes: {full_states:?}");
    let inc_states = streamed_states(&events_file, &inc);
    let want = [
        "preparing",
        "saving_configuration",
        "snapshotting",
        "querying_changes",
        "running",
        "checking_data",
        "completed",
    ];
    assert!(in_order(&inc_states, &want), "{inc_states:?}");

    // Stops: a running job (paused, so it is surely mid-transfer) ends as stopped with nothing
    // committed and nothing left on the hypervisor; a queued one never starts.
    let points_before = c.get("/api/points").as_array().unwrap().len();
    let checkpoints_before = vm.checkpoints();
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&window(0.0))).0, 204);
    vm.write(0, 0x33, 6 * MIB, MIB);
    let running = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let rid = running["id"].as_i64().unwrap();
    c.wait_state(rid, "running");
    assert!(vm.has_job());
    // (A queued job stopped before its turn: engine.rs, on the simulated platform.)
    let r = c.post(&format!("/api/jobs/{rid}/stop"), json!({}), 200);
    assert_eq!(r["state"], "stopping", "{r}");
    let r = c.wait_job(rid);
    assert_eq!(r["state"], "stopped", "{r}");
    assert!(r["error"].as_str().unwrap().contains("nothing of this run was committed"), "{r}");
    assert!(r["point_id"].is_null(), "{r}");
    assert!(!vm.has_job(), "the backup job is ended on the hypervisor");
    assert_eq!(vm.checkpoints(), checkpoints_before, "the stopped run's checkpoint is removed");
    assert_eq!(c.get("/api/points").as_array().unwrap().len(), points_before);
    let v = c.post(&format!("/api/jobs/{rid}/stop"), json!({}), 409);
    assert!(v["error"].as_str().unwrap().contains("ended already"), "{v}");
    c.post("/api/jobs/999999/stop", json!({}), 404);

    // The next run starts clean and is still incremental from the last committed point.
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let next = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "incremental" }), 202);
    let next = c.wait_job(next["id"].as_i64().unwrap());
    assert_eq!(next["state"], "completed", "{next}");
    let points = c.get("/api/points");
    assert_eq!(points[0]["type"], "incremental", "{points}");
    let audit = c.get("/api/audit");
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"job stopped") && actions.contains(&"bandwidth limits changed"), "{actions:?}");

    // A limit above 0 holds the transfer to it: a full reading four 4 MiB data extents at
    // 4 MB/s cannot end in under 2 s even if its first two extents went out at once (the limit
    // reaching the job after its first read starts a new average), where unlimited it takes
    // a fraction of a second.
    vm.write(0, 0x44, 8 * MIB, MIB);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&window(4.0))).0, 204);
    let limited = c.post("/api/jobs", json!({ "platform": pid, "vm": vm.name, "type": "full" }), 202);
    let limited = c.wait_job(limited["id"].as_i64().unwrap());
    assert_eq!(limited["state"], "completed", "{limited}");
    let took = secs(&limited["finished"]) - secs(&limited["started"]);
    assert!(took >= 2.0, "4 data extents at 4 MB/s took {took:.2} s: the limit did not hold");
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&json!([]))).0, 204);
    let _ = events.kill();
    let _ = events.wait();
}

#[test]
fn rules_are_edited_disabled_in_groups_select_disks_and_take_their_data_when_deleted() {
    let mut a = TestVm::start("ruleedit-a");
    let b = TestVm::start("ruleedit-b");
    let data = a.dir.join("data");
    let clock = a.dir.join("clock");
    set_clock(&clock, "2026-11-23T01:00:00Z"); // a Monday
    let server = Server::start_with_clock(&data, Some(&clock));
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let daily = |t: &str| json!({ "kind": "daily", "times": [t] });
    let rule = |name: &str, vms: Value, full: Value| json!({ "name": name, "platform": pid, "vms": vms, "full": full });

    // Disks to include must exist on every VM of the rule; the error lists the VM's disks.
    let mut bad = rule("a", json!([a.name]), daily("02:00"));
    bad["disks"] = json!(["vdz"]);
    let v = c.post("/api/rules", bad, 400);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("disks:") && msg.contains("vdz") && msg.contains("vda, vdb"), "{v}");

    let mut ra = rule("a", json!([a.name]), daily("02:00"));
    ra["disks"] = json!(["vda"]);
    ra["delete_data_with_rule"] = json!(true);
    let ra = c.post("/api/rules", ra, 201);
    let (ida, rb) = (ra["id"].as_i64().unwrap(), c.post("/api/rules", rule("b", json!([b.name]), daily("02:00")), 201));
    let idb = rb["id"].as_i64().unwrap();
    assert_eq!(
        (ra["disks"].clone(), ra["delete_data_with_rule"].clone(), ra["enabled"].clone()),
        (json!(["vda"]), json!(true), json!(true))
    );

    // Editing: a VM of another rule cannot be added, a taken name is refused, the platform
    // stays; nothing is half-saved.
    let mut edit = ra.clone();
    for k in ["id", "created", "next_run"] {
        edit.as_object_mut().unwrap().remove(k);
    }
    edit["vms"] = json!([a.name, b.name]);
    let v = c.request("PUT", &format!("/api/rules/{ida}"), Some(&edit)).1;
    assert!(v["error"].as_str().unwrap().contains("already in rule b"), "{v}");
    edit["vms"] = json!([a.name]);
    edit["name"] = json!("b");
    assert_eq!(c.request("PUT", &format!("/api/rules/{ida}"), Some(&edit)).0, 409);
    edit["name"] = json!("a");
    edit["platform"] = json!(pid + 1);
    let v = c.request("PUT", &format!("/api/rules/{ida}"), Some(&edit)).1;
    assert!(v["error"].as_str().unwrap().starts_with("platform:"), "{v}");
    assert_eq!(c.get(&format!("/api/rules/{ida}"))["vms"], json!([a.name]));
    // Its schedule moves from 02:00 to 04:00.
    edit["platform"] = json!(pid);
    edit["full"] = daily("04:00");
    let (code, edited) = c.request("PUT", &format!("/api/rules/{ida}"), Some(&edit));
    assert_eq!(code, 200, "{edited}");
    assert_eq!(edited["full"]["times"], json!(["04:00"]));

    // 02:00: only b runs; 04:00: a runs, backing up only vda.
    a.write(0, 0x11, 0, MIB);
    a.write(1, 0x12, 0, MIB);
    set_clock(&clock, "2026-11-23T02:00:30Z");
    let jb = wait_rule_jobs(&c, idb, 1);
    assert_eq!(jb[0]["state"], "completed", "{jb:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(c.get("/api/jobs").as_array().unwrap().iter().all(|j| j["rule"] != ida), "a moved to 04:00");
    set_clock(&clock, "2026-11-23T04:00:30Z");
    let ja = wait_rule_jobs(&c, ida, 1);
    assert_eq!(ja[0]["state"], "completed", "{ja:?}");
    let store = vds_store::Store::open(&data.join("store"), None).unwrap();
    let first = ja[0]["point_id"].as_str().unwrap().to_string();
    let disks: Vec<String> = store.find(&first).unwrap().manifest.disks.iter().map(|d| d.key.clone()).collect();
    assert_eq!(disks, vec!["vda".to_string()], "only the rule's disks");

    // Group stop: neither runs on Tuesday; group start: both run on Wednesday.
    let both = c.post("/api/rules/state", json!({ "ids": [ida, idb], "enabled": false }), 200);
    assert!(both.as_array().unwrap().iter().all(|r| r["enabled"] == false), "{both}");
    let v = c.post("/api/rules/state", json!({ "ids": [ida, 999], "enabled": true }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("ids[1]"), "{v}");
    assert_eq!(c.get(&format!("/api/rules/{ida}"))["enabled"], false, "nothing half-saved");
    set_clock(&clock, "2026-11-24T05:00:00Z");
    std::thread::sleep(Duration::from_secs(3));
    let count = |id: i64| c.get("/api/jobs").as_array().unwrap().iter().filter(|j| j["rule"] == id).count();
    assert_eq!((count(ida), count(idb)), (1, 1), "disabled rules do not run");
    c.post("/api/rules/state", json!({ "ids": [ida, idb], "enabled": true }), 200);
    set_clock(&clock, "2026-11-25T05:00:00Z");
    let ja = wait_rule_jobs(&c, ida, 2);
    wait_rule_jobs(&c, idb, 2);
    let second = ja[0]["point_id"].as_str().unwrap().to_string();

    // Deleting a rule with its data deletes the points its jobs made, except a starred one;
    // b's points stay (b keeps its data).
    store.set_star(&first, true).unwrap();
    assert_eq!(c.request("DELETE", &format!("/api/rules/{ida}"), None).0, 204);
    let ids: Vec<String> =
        c.get("/api/points").as_array().unwrap().iter().map(|p| p["point_id"].as_str().unwrap().to_string()).collect();
    assert!(ids.contains(&first) && !ids.contains(&second), "{ids:?}");
    assert!(store.find(&second).is_err(), "deleted in the store too");
    let audit = c.get("/api/audit");
    let deleted = audit.as_array().unwrap().iter().find(|x| x["action"] == "rule deleted").unwrap();
    let detail = deleted["detail"].as_str().unwrap();
    assert!(detail.contains("1 points deleted") && detail.contains(&format!("{first} (starred)")), "{detail}");
    let b_points = ids.len() - 1;
    assert_eq!(c.request("DELETE", &format!("/api/rules/{idb}"), None).0, 204);
    assert_eq!(c.get("/api/points").as_array().unwrap().len(), b_points + 1, "b's points stay");
}

#[test]
fn change_tracking_is_auto_on_or_off_per_rule() {
    let mut vm = TestVm::start("tracking");
    let data = vm.dir.join("data");
    let server = Server::start(&data);
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let pid = p["id"].as_i64().unwrap();
    let mut rule = json!({ "name": "r", "platform": pid, "vms": [vm.name], "change_tracking": "sometimes",
                           "full": { "kind": "weekly", "days": ["sun"], "times": ["03:00"] } });
    let v = c.post("/api/rules", rule.clone(), 400);
    assert!(v["error"].as_str().unwrap().starts_with("change_tracking:"), "{v}");
    let log_of = |job: &Value| c.get(&format!("/api/jobs/{}/log", job["id"])).to_string();

    // Off: every run reads whole disks and no checkpoint is made on the hypervisor. (LAN-free
    // asked for: KVM has no SAN transport, so the job says it used the usual one.)
    rule["change_tracking"] = json!("off");
    rule["lan_free"] = json!(true);
    let rule = c.post("/api/rules", rule, 201);
    assert_eq!((rule["change_tracking"].as_str(), rule["lan_free"].as_bool()), (Some("off"), Some(true)));
    let id = rule["id"].as_i64().unwrap();
    let run = |kind: &str| {
        let jobs = c.post(&format!("/api/rules/{id}/run"), json!({ "type": kind }), 202);
        c.wait_job(jobs[0]["id"].as_i64().unwrap())
    };
    vm.write(0, 0x41, 0, MIB);
    assert_eq!(run("full")["state"], "completed");
    vm.write(1, 0x42, MIB, MIB);
    let second = run("incremental");
    assert_eq!(second["state"], "completed", "{second}");
    assert!(log_of(&second).contains("read in full: change tracking is off"), "{}", log_of(&second));
    assert!(log_of(&second).contains("LAN-free transport was asked for but is not available"), "{}", log_of(&second));
    assert_eq!(c.get("/api/points")[0]["type"], "full", "nothing to count from: a full");
    assert!(vm.checkpoints().is_empty(), "{:?}", vm.checkpoints());

    // A raw disk cannot track changes: with tracking required the backup fails before making
    // anything, naming the disk; on auto it is read whole while the qcow2 disks are incremental.
    vm.hotplug("raw.img", "vdc", "16M", "raw");
    let mut edit = rule.clone();
    for k in ["id", "created", "next_run"] {
        edit.as_object_mut().unwrap().remove(k);
    }
    edit["change_tracking"] = json!("on");
    assert_eq!(c.request("PUT", &format!("/api/rules/{id}"), Some(&edit)).0, 200);
    let refused = run("full");
    assert_eq!(refused["state"], "failed", "{refused}");
    let why = refused["error"].as_str().unwrap();
    assert!(why.contains("vdc is raw") && why.contains("cannot track changes"), "{why}");
    assert!(vm.checkpoints().is_empty() && !vm.has_job(), "nothing made");
    let left = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    let work = left(&data.join("work"));
    assert!(work.iter().all(|f| f == "active" || f == "restoring"), "no backup work directory left: {work:?}");
    assert!(left(&data.join("work/active")).is_empty(), "no running-backup marker left");
    assert!(left(&data.join("work/restoring")).is_empty(), "no running-restore marker left");
    edit["change_tracking"] = json!("auto");
    assert_eq!(c.request("PUT", &format!("/api/rules/{id}"), Some(&edit)).0, 200);
    assert_eq!(run("full")["state"], "completed");
    assert_eq!(vm.checkpoints().len(), 1);
    vm.write(0, 0x43, 2 * MIB, MIB);
    let inc = run("incremental");
    assert_eq!(inc["state"], "completed", "{inc}");
    assert!(log_of(&inc).contains("disk vdc read in full: disk vdc is raw"), "{}", log_of(&inc));
    assert_eq!(c.get("/api/points")[0]["type"], "incremental");
}

#[test]
fn the_configuration_exports_with_sealed_passwords_and_imports_into_a_new_appliance() {
    let mut vm = TestVm::start("config");
    let server = Server::start(&vm.dir.join("data"));
    let c = server.admin("correct horse battery");
    c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let remote =
        json!({ "name": "remote", "kind": "kvm", "uri": TCP_URI, "username": TCP_USER, "password": TCP_PASSWORD });
    let remote = c.post("/api/platforms", remote, 201);
    let rule = json!({ "name": "nightly", "platform": remote["id"], "vms": [vm.name], "disks": ["vda"],
                       "full": { "kind": "weekly", "days": ["sun"], "times": ["03:00"] },
                       "partial": { "kind": "incremental", "schedule": { "kind": "daily", "times": ["01:30"] } },
                       "retention": { "keep_last": 7 }, "quiesce": "off", "change_tracking": "on" });
    let rule = c.post("/api/rules", rule, 201);
    let windows = json!([{ "days": ["mon"], "from": "08:00", "to": "18:00", "mb_per_second": 25.5 }]);
    assert_eq!(c.request("PUT", "/api/bandwidth", Some(&windows)).0, 204);
    let alerts = json!({ "enabled": true, "smtp_host": "mail.example.com", "smtp_port": 587, "security": "starttls",
                         "username": "hf", "password": "smtp-secret", "from": "hf@example.com", "to": ["ops@example.com"] });
    assert_eq!(c.request("PUT", "/api/alerts", Some(&alerts)).0, 204);

    // Without a passphrase no password leaves the appliance, and the notes say so.
    let bare = c.post("/api/config/export", json!({}), 200);
    assert!(!bare.to_string().contains(TCP_PASSWORD) && !bare.to_string().contains("smtp-secret"));
    assert!(bare["platforms"].as_array().unwrap().iter().all(|p| p.get("password").is_none()), "{bare}");
    assert_eq!(bare["notes"].as_array().unwrap().len(), 2, "{bare}");
    let v = c.post("/api/config/export", json!({ "passphrase": "short" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("passphrase:"), "{v}");
    let file = c.post("/api/config/export", json!({ "passphrase": "keep this in the safe" }), 200);
    assert!(!file.to_string().contains(TCP_PASSWORD), "sealed, not plain");
    assert_eq!(file["rules"][0]["platform"], "remote");

    // A new appliance: a wrong or missing passphrase and a broken file are refused, naming
    // the field, and leave nothing behind.
    let fresh = Server::start(&vm.dir.join("data2"));
    let d = fresh.admin("correct horse battery");
    let import = |body: Value, want: u16| d.post("/api/config/import", body, want);
    let v = import(json!({ "config": file }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("passphrase:"), "{v}");
    let v = import(json!({ "config": file, "passphrase": "not the passphrase" }), 400);
    assert!(v["error"].as_str().unwrap().contains("does not open"), "{v}");
    let mut broken = file.clone();
    broken["rules"][0]["full"]["times"] = json!(["27:00"]);
    let v = import(json!({ "config": broken, "passphrase": "keep this in the safe" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("config.rules[0].full.times[0]"), "{v}");
    let mut other = file.clone();
    other["format"] = json!("something-else");
    let v = import(json!({ "config": other, "passphrase": "keep this in the safe" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("config.format"), "{v}");
    assert_eq!((d.get("/api/platforms"), d.get("/api/rules")), (json!([]), json!([])), "nothing half-saved");

    let report = import(json!({ "config": file, "passphrase": "keep this in the safe" }), 200);
    assert_eq!(report["platforms_added"], json!(["lab", "remote"]), "{report}");
    assert_eq!(report["rules_added"], json!(["nightly"]), "{report}");
    let platforms = d.get("/api/platforms");
    let r = platforms.as_array().unwrap().iter().find(|p| p["name"] == "remote").unwrap();
    assert_eq!((r["uri"].as_str(), r["has_password"].as_bool()), (Some(TCP_URI), Some(true)), "{r}");
    let imported = d.get("/api/rules")[0].clone();
    for k in ["vms", "full", "partial", "retention", "quiesce", "disks", "change_tracking", "enabled", "lan_free"] {
        assert_eq!(imported[k], rule[k], "{k}");
    }
    assert_eq!(d.get("/api/bandwidth"), windows);
    assert_eq!(d.get("/api/alerts")["has_password"], true);

    // The imported password works: the rule backs up through the SASL-authenticated platform.
    vm.write(0, 0x61, 0, MIB);
    let jobs = d.post(&format!("/api/rules/{}/run", imported["id"]), json!({ "type": "full" }), 202);
    let done = d.wait_job(jobs[0]["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");

    // Importing again adds nothing and keeps what is there.
    let again = import(json!({ "config": file, "passphrase": "keep this in the safe" }), 200);
    assert_eq!(
        (again["platforms_kept"].as_array().unwrap().len(), again["rules_kept"].clone()),
        (2, json!(["nightly"]))
    );
    assert_eq!(d.get("/api/platforms").as_array().unwrap().len(), 2);
    // Only admins move configurations.
    d.post("/api/users", json!({ "name": "op", "role": "operator", "password": "operator password 1" }), 201);
    let mut op = fresh.client();
    op.login("op", "operator password 1");
    op.post("/api/password", json!({ "old": "operator password 1", "new": "operator password 2" }), 204);
    assert_eq!(op.request("POST", "/api/config/export", Some(&json!({}))).0, 403);
}

#[test]
fn the_command_line_drives_the_service_with_an_api_token() {
    let mut vm = TestVm::start("client");
    let server = Server::start(&vm.dir.join("data"));
    let c = server.admin("correct horse battery");
    let p = c.post("/api/platforms", json!({ "name": "lab", "kind": "kvm", "uri": "qemu:///system" }), 201);
    let token = c.post("/api/tokens", json!({ "name": "shell" }), 201)["token"].as_str().unwrap().to_string();
    let cert = server.data.join("tls/cert.pem");
    let client = |token: &str, ca: &std::path::Path| {
        let mut cmd = std::process::Command::new(holdfast_tests::holdfast_bin());
        cmd.args(["client", "--server", &format!("https://127.0.0.1:{}", server.port), "--ca"])
            .arg(ca)
            .env("HOLDFAST_TOKEN", token);
        cmd
    };
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // A backup, followed to its end: the exit status says it completed.
    vm.write(0, 0x51, 0, MIB);
    let (code, out, err) = run(client(&token, &cert).args([
        "backup",
        "--platform",
        &p["id"].to_string(),
        "--vm",
        &vm.name,
        "--type",
        "full",
        "--wait",
    ]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("completed") && err.contains("job 1: "), "{out}{err}");
    let (_, points, _) = run(client(&token, &cert).args(["points", "--json"]));
    let points: Value = serde_json::from_str(&points).unwrap();
    let point = points[0]["point_id"].as_str().unwrap();
    assert!(out.contains(point), "the job line names its point: {out}");
    let (code, log, _) = run(client(&token, &cert).args(["job", "1"]));
    assert_eq!(code, Some(0));
    assert!(log.contains("transferring data") && log.contains("completed: full point"), "{log}");
    // Restores: the options reach the API as a NewRestore (a field it refuses is named; in place
    // onto the running VM fails as a job, with the exit status saying so).
    // --disk-size reaches the API as disk_sizes (in bytes): a size below the point's is refused.
    for (option, value, want) in [
        ("--disk-format", "vmdk", "400: disk_format"),
        ("--disk-size", "vdb=1M", "400: disk_sizes: disk vdb: 1048576 bytes"),
    ] {
        let args = ["restore", "--point", point, "--platform", "1", "--name", "x", option, value];
        let (code, _, err) = run(client(&token, &cert).args(args));
        assert_eq!(code, Some(1), "{option}");
        assert!(err.contains(want), "{option}: {err}");
    }
    let (code, out, err) =
        run(client(&token, &cert).args(["restore", "--point", point, "--platform", "1", "--in-place", "--wait"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("409") && err.contains("is running: shut it off before restoring in place"), "{err}");
    let (_, any, _) = run(client(&token, &cert).args(["call", "get", "/api/stats"]));
    assert!(any.contains(&vm.name), "{any}");

    // A backup of a VM that does not exist is refused, naming it, with a non-zero status.
    let (code, _, err) = run(client(&token, &cert).args(["backup", "--platform", "1", "--vm", "no-such-vm", "--wait"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("400") && err.contains("no-such-vm"), "{err}");

    // Refusals are clear: a wrong token, a certificate that is not the appliance's, no token.
    let (code, _, err) = run(client("hf_wrong", &cert).arg("jobs"));
    assert_eq!(code, Some(1));
    assert!(err.contains("401") && err.contains("unknown or revoked API token"), "{err}");
    let other_ca = std::path::Path::new("/var/tmp/holdfast-testbed/pki/ca-cert.pem");
    let (code, _, err) = run(client(&token, other_ca).arg("jobs"));
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("127.0.0.1:{}", server.port)) && err.contains("TLS handshake"), "{err}");
    let (code, _, err) = run(client(&token, &cert).env_remove("HOLDFAST_TOKEN").arg("jobs"));
    assert_eq!(code, Some(1));
    assert!(err.contains("no API token"), "{err}");
}
