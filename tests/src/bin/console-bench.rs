//! Console benchmark: bytes transferred and time to first render of the dashboard, the rule list
//! and the restore wizard, cold (an empty browser cache) and warm (the same page loaded again),
//! measured in headless Chromium against `holdfast serve`, on a small catalog and on one with
//! 500 VMs (in 50 rules) and 5,000 restore points with their jobs.
//!
//!   cargo build --release -p appliance --features sim
//!   cargo run --release -p holdfast-tests --bin console-bench -- [RUNS]
//!
//! "First render" is the console's own mark, set when a page has drawn its figures (app.js),
//! read from the page's performance timeline; bytes are the transfer sizes of the page, its
//! files and its API calls up to that mark. The 500-VM catalog's points and jobs are written into
//! the catalog directly (as many backups would take an hour); its VMs are real simulated VMs.

use connectors::sim::SimHost;
use holdfast_tests::browser::Browser;
use holdfast_tests::service::{Client, Server};
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;

const PASSWORD: &str = "correct horse battery";

/// A catalog of `vms` VMs of one simulated platform in rules of ten, and `points` points with
/// the jobs that made them, spread over the last `points / vms` days.
fn seed(dir: &Path, server: &Server, admin: &Client, vms: usize, points: usize) -> (SimHost, i64) {
    let host = SimHost::create(&dir.join("sim"));
    for i in 0..vms {
        host.add_vm(&format!("vm{i:04}"), &[("vda", 1 << 20)]);
    }
    let mut settings = host.settings();
    settings["name"] = json!("lab");
    settings["kind"] = json!("sim");
    let platform = admin.post("/api/platforms", settings, 201)["id"].as_i64().unwrap();
    for r in 0..vms.div_ceil(10) {
        let names: Vec<String> = (r * 10..((r + 1) * 10).min(vms)).map(|i| format!("vm{i:04}")).collect();
        let rule = json!({ "name": format!("rule{r:03}"), "platform": platform, "vms": names,
                           "full": { "kind": "weekly", "days": ["sat"], "times": ["22:00"] },
                           "partial": { "kind": "incremental", "schedule": { "kind": "daily", "times": ["22:00"] } } });
        admin.post("/api/rules", rule, 201);
    }
    if points > 0 {
        let mut sql = String::from("BEGIN;\n");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        for p in 0..points {
            let vm = p % vms;
            let t = now - (p / vms) as i64 * 86_400 - 3600;
            let at = |s: i64| format!("strftime('%Y-%m-%dT%H:%M:%SZ', {s}, 'unixepoch')");
            let kind = if (p / vms).is_multiple_of(7) { "full" } else { "incremental" };
            let id = format!("bench{p:06}");
            let _ = writeln!(
                sql,
                "INSERT INTO points (point_id, vm_key, vm_name, backup_type, started, finished, parent, stored_bytes, \
                 protected_bytes, storage_id) VALUES ('{id}', 'key{vm:04}', 'vm{vm:04}', '{kind}', {}, {}, NULL, 1048576, \
                 1073741824, 1);",
                at(t),
                at(t + 60)
            );
            let _ = writeln!(
                sql,
                "INSERT INTO jobs (platform_id, vm, backup_type, state, percent, done_bytes, total_bytes, point_id, created, \
                 started, finished, kind, rule_id, storage_id) VALUES ({platform}, 'vm{vm:04}', '{kind}', 'completed', 100, \
                 1048576, 1048576, '{id}', {}, {}, {}, 'backup', {}, 1);",
                at(t),
                at(t),
                at(t + 60),
                vm / 10 + 1
            );
        }
        sql.push_str("COMMIT;\n");
        let file = dir.join("seed.sql");
        std::fs::write(&file, sql).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=60)\nc.executescript(open(sys.argv[2]).read())"])
            .arg(server.data.join("catalog.db"))
            .arg(&file)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "seeding: {}", String::from_utf8_lossy(&out.stderr));
    }
    (host, platform)
}

/// Loads `hash` in a browser whose cache is empty (cold) and then again (warm); returns
/// (cold ms, cold bytes, warm ms, warm bytes).
fn measure(b: &Browser, base: &str, page: &str, hash: &str) -> (f64, u64, f64, u64) {
    let mut out = Vec::new();
    for _ in 0..2 {
        // Leave the console between the two loads, so the second is a new document (with the
        // browser's cache), not a jump within the first.
        b.go(&format!("{base}/api/openapi.json"));
        b.go(&format!("{base}/{hash}"));
        let mark = format!("hf-rendered:{page}");
        let v = b.wait_for(
            &format!("{page} rendered"),
            &format!(
                "const m = performance.getEntriesByName('{mark}')[0]; if (!m) return null; \
                 const n = performance.getEntriesByType('navigation')[0]; \
                 const bytes = performance.getEntriesByType('resource').filter((r) => r.responseEnd <= m.startTime) \
                   .reduce((a, r) => a + r.transferSize, n.transferSize); \
                 return [m.startTime, bytes];"
            ),
        );
        out.push((v[0].as_f64().unwrap(), v[1].as_u64().unwrap()));
        if std::env::var_os("CONSOLE_BENCH_SLOWEST").is_some() {
            let slowest = b.run(
                "return performance.getEntriesByType('resource').sort((a, b) => b.duration - a.duration).slice(0, 4) \
                 .map((r) => `${r.name.replace(location.origin, '')} ${r.duration.toFixed(0)} ms`).join('; ')",
                json!([]),
            );
            eprintln!("{page}: slowest requests: {}", slowest.as_str().unwrap_or_default());
        }
    }
    (out[0].0, out[0].1, out[1].0, out[1].1)
}

fn main() {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse().expect("RUNS is a number")).unwrap_or(3);
    println!("| catalog | page | run | cold first render ms | cold KB | warm first render ms | warm KB |");
    println!("|---|---|---|---|---|---|---|");
    for (label, vms, points) in [("small: 2 VMs, 0 points", 2usize, 0usize), ("500 VMs, 5,000 points", 500, 5000)] {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("data"));
        let admin = server.admin(PASSWORD);
        let (_host, _) = seed(tmp.path(), &server, &admin, vms, points);
        let base = format!("https://127.0.0.1:{}", server.port);
        let restore_hash = match admin.get("/api/points").as_array().and_then(|a| a.first().cloned()) {
            Some(p) => format!("#/restore/{}", p["point_id"].as_str().unwrap()),
            None => "#/restore".to_string(),
        };
        for run in 1..=runs {
            for (page, hash) in [
                ("dashboard", "#/dashboard".to_string()),
                ("rules", "#/rules".to_string()),
                ("restore", restore_hash.clone()),
            ] {
                // A new browser each time: an empty cache, and a session made without loading
                // any of the console's files.
                let b = Browser::start(&tmp.path().join("shots"));
                b.go(&format!("{base}/api/openapi.json"));
                let login = b.run_async(
                    "const done = arguments[arguments.length - 1]; fetch('/api/login', { method: 'POST', \
                     headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: 'admin', password: arguments[0] }) }) \
                     .then((r) => done(r.status));",
                    json!([PASSWORD]),
                );
                assert_eq!(login, json!(200), "logging in");
                let (cold_ms, cold_b, warm_ms, warm_b) = measure(&b, &base, page, &hash);
                println!(
                    "| {label} | {page} | {run} | {cold_ms:.0} | {:.1} | {warm_ms:.0} | {:.1} |",
                    cold_b as f64 / 1000.0,
                    warm_b as f64 / 1000.0
                );
            }
        }
    }
}
