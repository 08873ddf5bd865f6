//! The web console in a real browser (headless Chromium through chromedriver) against a real
//! `holdfast serve` and the simulated platform, clicked through as an admin would: log in, the
//! forced password change, register a platform (a wrong setting first: its message, nothing
//! saved), browse its VMs (one with a hostile name, shown as text), back one up and watch the job
//! reach 100 % live, read its log, find the dashboard's figures equal to the API's; an auditor
//! sees no control that changes anything. axe-core checks every page at desktop and phone width,
//! and each step leaves screenshots under /var/tmp/holdfast-screenshots/<test>/ to look at.

use connectors::sim::{Faults, SimHost};
use holdfast_tests::browser::{shots, Browser};
use holdfast_tests::service::Server;
use serde_json::json;

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "correct horse battery";
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

#[test]
fn an_admin_registers_a_platform_backs_up_a_vm_and_follows_it_live() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("web1", &[("vda", 32 * MIB)]);
    host.write("web1", "vda", 0, &holdfast_tests::noise(16 * MIB as usize, 1));
    host.add_vm(HOSTILE, &[("vda", MIB)]);
    let server = Server::start(&tmp.path().join("data"));
    let base = format!("https://127.0.0.1:{}", server.port);
    let b = Browser::start(&shots("admin"));

    // The login page; a wrong password says so and keeps the form.
    b.go(&format!("{base}/"));
    b.log_in("admin", "wrong password");
    b.wait_for("the refusal", "return document.querySelector('.form-error:not([hidden])')");
    b.look("01-login-refused");

    // First login: the password must be changed; a mismatch is caught, a short one is the API's refusal.
    b.log_in("admin", &server.initial_password());
    b.find("form[aria-label='Change your password']");
    b.type_into("input[name=old]", &server.initial_password());
    b.type_into("input[name=new]", "long enough password");
    b.type_into("input[name=again]", "another one");
    b.click("form[aria-label='Change your password'] button[type=submit]");
    assert!(b
        .wait_for("the mismatch", "return document.querySelector('.field[data-field=again] .error').innerText")
        .as_str()
        .unwrap()
        .contains("differ"));
    b.change_password(&server.initial_password(), "short");
    let refusal =
        b.wait_for("the API's refusal", "return document.querySelector('.field[data-field=new] .error').innerText");
    assert!(refusal.as_str().unwrap().starts_with("new:"), "{refusal}");
    b.look("02-password-change");
    b.change_password(&server.initial_password(), PASSWORD);
    b.wait_for("the dashboard", "return document.title.startsWith('Dashboard')");
    b.look("03-dashboard-empty");

    // Register the platform through its kind's form: a wrong directory first.
    b.click("#nav a[data-page=platforms]");
    b.click(".page-head button.primary");
    b.select("select[name=kind]", "sim");
    b.type_into("input[name=name]", "lab");
    b.type_into("input[name=dir]", "/nonexistent/sim");
    b.click("form[aria-label='Add a platform'] button[type=submit]");
    let err = b.wait_for(
        "the connection test's error",
        "const e = [...document.querySelectorAll('.field .error, .form-error:not([hidden])')].find((x) => x.innerText); \
         return e && e.innerText",
    );
    assert!(err.as_str().unwrap().contains("/nonexistent/sim"), "the error names the cause: {err}");
    b.look("04-platform-refused");
    let mut admin = server.client();
    assert_eq!(admin.login("admin", PASSWORD).0, 200);
    assert_eq!(admin.get("/api/platforms"), json!([]), "a refused platform is not saved");
    b.type_into("input[name=dir]", host.settings()["dir"].as_str().unwrap());
    b.click("form[aria-label='Add a platform'] button[type=submit]");
    b.wait_for("the saved platform", "return document.querySelector('table a[href^=\"#/platforms/\"]')");
    b.look("05-platforms");
    assert_eq!(admin.get("/api/platforms")[0]["name"], "lab");

    // Its inventory: the hostile name is text, not an element, and nothing ran.
    b.click("table a[href^='#/platforms/']");
    b.wait_for("the VM list", "return document.querySelectorAll('tr[data-vm]').length === 2");
    assert!(b.text("main").contains(HOSTILE), "the hostile name is shown as text");
    assert_eq!(b.count("main img"), 0, "the hostile name became markup");
    b.click("button[aria-label='Disks of web1']");
    b.wait_for("web1's disks", "return document.querySelector('main').innerText.includes('vda 32.0 MiB')");
    b.look("06-inventory");

    // Back up web1 (slowly, so its progress can be watched) and follow it live to 100 %.
    host.set_faults(&Faults { read_delay_ms: 1000, ..Default::default() });
    b.select("select[aria-label='Backup type for web1']", "full");
    b.click("button[aria-label='Back up web1']");
    b.wait_for("the job page", "return location.hash.startsWith('#/jobs/')");
    let job: i64 = b.run("return location.hash.split('/')[2]", json!([])).as_str().unwrap().parse().unwrap();
    let seen = b.wait_for(
        "progress between 0 and 100 %",
        "const p = document.querySelector('progress'); return p && p.value > 0 && p.value < 100 && p.value",
    );
    b.look("07-job-running");
    host.set_faults(&Faults::default());
    b.wait_for("100 %", "const p = document.querySelector('progress'); return p && p.value === 100");
    b.wait_for("completed", "return document.querySelector('dl.facts .badge').innerText === 'completed'");
    b.wait_for("the log", "return document.querySelectorAll('ol.log li').length > 1");
    let done = admin.get(&format!("/api/jobs/{job}"));
    assert_eq!(done["state"], "completed", "{done}");
    assert!(seen.as_f64().unwrap() > 0.0);
    // The log's level filter.
    b.select("select[name=level]", "error");
    b.wait_for("no error lines", "return document.querySelector('ol.log') === null");
    b.select("select[name=level]", "");
    b.look("08-job-completed");

    // The jobs list filters; the dashboard's figures are the API's.
    b.click("#nav a[data-page=jobs]");
    b.wait_for("the job row", &format!("return document.querySelector('tr[data-job=\"{job}\"]')"));
    b.select("select[name=state]", "failed");
    b.wait_for("the filtered list", "return document.querySelector('main .empty')");
    b.select("select[name=state]", "");
    b.look("09-jobs");
    b.click("#nav a[data-page=dashboard]");
    let figure = |name: &str| {
        b.wait_for(
            name,
            &format!("const f = document.querySelector('[data-figure={name}] .value'); return f && f.innerText"),
        )
        .as_str()
        .unwrap()
        .parse::<usize>()
        .unwrap()
    };
    let jobs = admin.get("/api/jobs");
    let completed = jobs.as_array().unwrap().iter().filter(|j| j["state"] == "completed").count();
    assert_eq!(figure("succeeded"), completed);
    assert_eq!(figure("unprotected"), 2, "both VMs are in no rule");
    assert_eq!(figure("protected"), 0);
    // The hostile name is text on the dashboard too.
    b.click("main details summary");
    assert!(b.text("main details").contains(HOSTILE));
    assert_eq!(b.count("main img"), 0, "the hostile name became markup on the dashboard");
    // The store's saving is the API's protected against stored bytes.
    let target = &admin.get("/api/storage")[0];
    let ratio = target["protected_bytes"].as_f64().unwrap() / target["stored_bytes"].as_f64().unwrap();
    assert_eq!(b.text("[data-ratio=local]"), format!("{ratio:.1} : 1"));
    // The live panel fills from the event stream within seconds.
    b.wait_for("the live panel", "return document.querySelector('[data-live-waiting]') === null");
    assert!(b.text("[data-live=CPU]").contains('%'), "{}", b.text("[data-live=CPU]"));
    b.look("10-dashboard");

    // Logging out ends the session.
    b.click("#user button");
    b.wait_for("the login form", "return document.querySelector(\"form[aria-label='Log in']\")");
    assert!(b.text("main").contains("logged out"));
}

#[test]
fn an_auditor_sees_everything_and_no_control_that_changes_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("db1", &[("vda", MIB)]);
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    let platform = admin.add_sim_platform("lab", &host);
    admin.post("/api/users", json!({ "name": "audrey", "role": "auditor", "password": "first password 1" }), 201);
    let b = Browser::start(&shots("auditor"));
    b.go(&format!("https://127.0.0.1:{}/", server.port));
    b.log_in("audrey", "first password 1");
    b.change_password("first password 1", "audrey's own password");
    b.wait_for("the dashboard", "return document.title.startsWith('Dashboard')");
    assert!(b.text("#user").contains("auditor"));

    b.go(&format!("https://127.0.0.1:{}/#/platforms", server.port));
    b.wait_for("the platform list", "return document.querySelector('table a[href^=\"#/platforms/\"]')");
    assert_eq!(b.count("main button"), 0, "an auditor is offered a button on the platform list");
    b.look("01-platforms");
    b.go(&format!("https://127.0.0.1:{}/#/platforms/{platform}", server.port));
    b.wait_for("the VM list", "return document.querySelectorAll('tr[data-vm]').length === 1");
    assert_eq!(b.count("button[aria-label^='Back up']"), 0, "an auditor is offered a backup");
    b.look("02-inventory");

    // A rule, its point and its job: shown to the auditor with nothing to press.
    let rule = json!({ "name": "nightly", "platform": platform, "vms": ["db1"],
                       "full": { "kind": "daily", "times": ["23:00"] } });
    let rid = admin.post("/api/rules", rule, 201)["id"].as_i64().unwrap();
    let job = admin.post(&format!("/api/rules/{rid}/run"), json!({ "type": "full" }), 202)[0]["id"].as_i64().unwrap();
    assert_eq!(admin.wait_job(job)["state"], "completed");
    for (page, ready, name) in [
        ("#/rules", "tr[data-rule]", "03-rules"),
        ("#/points", "tr[data-vm-key]", "04-points"),
        (&format!("#/jobs/{job}") as &str, "ol.log li", "05-job"),
    ] {
        b.go(&format!("https://127.0.0.1:{}/{page}", server.port));
        b.find(ready);
        assert_eq!(b.count("main button, main input[type=checkbox]"), 0, "an auditor is offered a control on {page}");
        b.look(name);
    }
    b.go(&format!("https://127.0.0.1:{}/#/points", server.port));
    b.click("tr[data-vm-key] a");
    b.find("li.point");
    assert_eq!(b.count("main button, main form"), 0, "an auditor is offered a control on the timeline");
    b.look("06-timeline");
}

#[test]
fn a_rule_made_in_the_wizard_refuses_wrong_input_where_it_is_typed_and_runs_live() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("app1", &[("vda", 16 * MIB), ("vdb", 4 * MIB)]);
    host.write("app1", "vda", 0, &holdfast_tests::noise(12 * MIB as usize, 2));
    host.add_vm("app2", &[("vda", MIB)]);
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    admin.add_sim_platform("lab", &host);
    let b = Browser::start(&shots("rules"));
    b.go(&format!("https://127.0.0.1:{}/#/rules", server.port));
    b.log_in("admin", PASSWORD);
    b.click("#nav a[data-page=rules]");
    b.find("main .empty");
    b.look("01-no-rules");

    // Basic: a name and one VM; without a VM the step says so.
    b.click("main a[href='#/rules/new']");
    b.find("form[aria-label='New backup rule']");
    b.type_into("input[name=name]", "nightly");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the VM refusal", "return document.querySelector('[data-field=vms] .error').innerText");
    b.click("label[for=vm-0]");
    b.look("02-wizard-basic");
    b.click(".wizard button.primary:not([hidden])");
    // Disks: the VM's disks as the platform describes them.
    b.wait_for("the disks", "return document.querySelector('.disk-choices') && document.querySelector('.disk-choices').innerText.includes('vdb (4.0 MiB')");
    b.look("03-wizard-disks");
    b.click(".wizard button.primary:not([hidden])");
    // Schedule: an impossible time is the API's refusal under its field, as it is typed.
    b.select("select[name='full.kind']", "daily");
    b.type_into("input[name='full.times']", "25:00");
    b.run(
        "document.querySelector(\"input[name='full.times']\").dispatchEvent(new Event('change', { bubbles: true }))",
        json!([]),
    );
    let e = b.wait_for(
        "the time's refusal",
        "const t = document.querySelector(\"[data-field='full.times'] .error\").innerText; \
         return t.startsWith('full.times[0]:') && t",
    );
    assert!(e.as_str().unwrap().contains("25:00"), "{e}");
    b.look("04-wizard-schedule-refused");
    b.click(".wizard button.primary:not([hidden])");
    assert!(
        b.run("return document.querySelector('[data-step=\"2\"]').hidden", json!([])) == json!(false),
        "Next moved on past a refusal"
    );
    b.type_into("input[name='full.times']", "23:00");
    b.click(".wizard button.primary:not([hidden])");
    // Retention: outside its range, refused on Next.
    b.type_into("input[name='retention.keep_days']", "70");
    b.click(".wizard button.primary:not([hidden])");
    let e = b.wait_for(
        "the retention refusal",
        "return document.querySelector('[data-field=retention] > .error').innerText",
    );
    assert!(e.as_str().unwrap().starts_with("retention:"), "{e}");
    b.look("05-wizard-retention-refused");
    assert_eq!(admin.get("/api/rules"), json!([]), "nothing is saved before the summary");
    b.type_into("input[name='retention.keep_days']", "7");
    b.click(".wizard button.primary:not([hidden])");
    b.find("select[name=quiesce]");
    // Advanced: a bandwidth of 0 is refused under its field; parallel snapshots and 50 MB/s go.
    b.type_into("input[name=bandwidth_mb_per_second]", "0");
    b.click(".wizard button.primary:not([hidden])");
    let e = b.wait_for(
        "the bandwidth refusal",
        "return document.querySelector('[data-field=bandwidth_mb_per_second] .error').innerText",
    );
    assert!(e.as_str().unwrap().starts_with("bandwidth_mb_per_second:"), "{e}");
    b.look("06-wizard-advanced-refused");
    b.type_into("input[name=bandwidth_mb_per_second]", "50");
    b.select("select[name=snapshot_mode]", "parallel");
    b.look("06-wizard-advanced");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the summary", "return document.querySelector('[data-step=\"5\"] dl.facts')");
    assert!(b.text("[data-step='5']").contains("daily at 23:00"));
    assert!(b.text("[data-step='5']").contains("50 MB/s"));
    b.look("07-wizard-summary");
    b.click(".wizard button[type=submit]");
    b.wait_for("the rule list", "return document.querySelector('tr[data-rule]')");
    assert!(b.text("tr[data-rule]").contains("parallel snapshots · 50 MB/s"), "the list says how the rule runs");
    let rules = admin.get("/api/rules");
    assert_eq!(rules[0]["name"], "nightly");
    assert_eq!(rules[0]["vms"], json!(["app1"]));
    assert_eq!(rules[0]["full"], json!({ "kind": "daily", "times": ["23:00"] }));
    assert_eq!(rules[0]["retention"], json!({ "keep_days": 7 }));
    assert_eq!(
        (rules[0]["snapshot_mode"].as_str(), rules[0]["bandwidth_mb_per_second"].as_f64()),
        (Some("parallel"), Some(50.0))
    );
    assert!(rules[0]["next_run"].is_string(), "{}", rules[0]);

    // Run it now, slowly enough to see it live in the list, to the end.
    host.set_faults(&Faults { read_delay_ms: 700, ..Default::default() });
    b.select("select[aria-label='Backup type to run nightly now']", "full");
    b.click("button[aria-label='Run now: nightly']");
    b.wait_for(
        "live progress",
        "const p = document.querySelector('[data-rule-vm=app1] progress'); return p && p.value > 0",
    );
    b.find("[data-rule-vm=app1] svg.spark");
    b.look("08-rule-running");
    host.set_faults(&Faults::default());
    b.wait_for(
        "the completed run",
        "const v = document.querySelector('[data-rule-vm=app1] .badge'); return v && v.innerText === 'completed'",
    );
    b.look("09-rule-completed");
    assert_eq!(admin.get("/api/points").as_array().unwrap().len(), 1);
    // The badge turns with the job's state; the runner lets go of the rule a moment later (after
    // the retention that follows a backup), and a delete before that is refused, as it should be.
    let t = std::time::Instant::now();
    while admin.get("/api/jobs").as_array().unwrap().iter().any(|j| j["finished"].is_null()) {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "the run's job never ended");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Delete it with its data, through the dialog, as a bulk action.
    b.click("input[aria-label='Select nightly']");
    b.click(".bulk button.danger");
    b.find("dialog[open]");
    b.look("10-delete-dialog");
    b.click("dialog label[for=delete-data]");
    b.click("dialog button.danger");
    b.wait_for("the empty list", "return document.querySelector('main .empty')");
    assert_eq!(admin.get("/api/rules"), json!([]));
    assert_eq!(admin.get("/api/points"), json!([]), "the rule's points went with it");
}

#[test]
fn the_timeline_stars_locks_and_deletes_points_and_the_wizard_restores_one_as_a_new_vm() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    host.add_vm("db1", &[("vda", 8 * MIB)]);
    host.write("db1", "vda", 0, &holdfast_tests::noise(4 * MIB as usize, 3));
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    let platform = admin.add_sim_platform("lab", &host);
    let backup = |kind: &str| {
        let j = admin.post("/api/jobs", json!({ "platform": platform, "vm": "db1", "type": kind }), 202);
        admin.wait_job(j["id"].as_i64().unwrap())
    };
    let full = backup("full");
    let at_full = host.disk("db1", "vda");
    host.write("db1", "vda", MIB, &holdfast_tests::noise(64 << 10, 4));
    let inc = backup("incremental");
    let (full_id, inc_id) = (full["point_id"].as_str().unwrap(), inc["point_id"].as_str().unwrap());

    let b = Browser::start(&shots("points"));
    b.go(&format!("https://127.0.0.1:{}/#/points", server.port));
    b.log_in("admin", PASSWORD);
    b.click("main a[href^='#/points/']");
    b.wait_for("the timeline", "return document.querySelectorAll('li.point').length === 2");
    let text = b.text("main");
    assert!(text.contains("simulated file read"), "the transport is shown: {text}");
    b.look("01-timeline");

    // Star the newest; lock the full until a date: neither can then be deleted, and each says why.
    let point = |id: &str| format!("li.point[data-point='{id}']");
    b.click(&format!("{} .row-actions button:not(.danger)", point(inc_id)));
    b.wait_for(
        "the star",
        &format!("return document.querySelector(\"{}\").innerText.includes('starred')", point(inc_id)),
    );
    b.run(
        "document.querySelector(arguments[0]).value = '2031-01-31'",
        json!([format!("{} input[type=date]", point(full_id))]),
    );
    b.click(&format!("{} form.inline button", point(full_id)));
    b.wait_for(
        "the lock",
        &format!("return document.querySelector(\"{}\").innerText.includes('locked until')", point(full_id)),
    );
    assert!(b.text(&point(full_id)).contains("Cannot be deleted: locked"), "{}", b.text(&point(full_id)));
    assert!(b.text(&point(inc_id)).contains("Cannot be deleted: starred"), "{}", b.text(&point(inc_id)));
    let rows = admin.get("/api/points");
    let row = |id: &str| rows.as_array().unwrap().iter().find(|p| p["point_id"] == id).unwrap().clone();
    assert_eq!(row(inc_id)["star"], true);
    assert!(row(full_id)["locked_until"].as_str().unwrap().starts_with("2031-01-31"), "{}", row(full_id));
    assert_eq!(admin.request("DELETE", &format!("/api/points/{full_id}"), None).0, 409, "the API refuses too");
    b.look("02-starred-and-locked");
    assert!(!b.text("main").contains("null"), "a missing part showed as the text null");

    // Unstar the newest and delete it.
    b.click(&format!("{} .row-actions button:not(.danger)", point(inc_id)));
    b.wait_for("the delete button", &format!("return document.querySelector(\"{} button.danger\")", point(inc_id)));
    b.click(&format!("{} button.danger", point(inc_id)));
    b.accept_dialog();
    b.wait_for("one point left", "return document.querySelectorAll('li.point').length === 1");
    assert_eq!(admin.get("/api/points").as_array().unwrap().len(), 1);

    // Restore the full as a new VM with a grown disk, through the wizard, and follow the job.
    b.click(&format!("{} a[href^='#/restore/']", point(full_id)));
    b.find("form[aria-label='Restore a point']");
    b.look("03-restore-onto");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the point step", "return !document.querySelector('[data-step=\"1\"]').hidden");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the how step", "return !document.querySelector('[data-step=\"2\"]').hidden");
    b.look("04-restore-how");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the disk sizes", "return document.querySelector(\"input[name='disk_sizes.vda']\")");
    b.type_into("input[name=name]", "db1-copy");
    b.type_into("input[name=cpus]", "3");
    b.type_into("input[name='disk_sizes.vda']", "12");
    b.look("05-restore-new-vm");
    b.click(".wizard button.primary:not([hidden])");
    b.wait_for("the summary", "return document.querySelector('[data-step=\"5\"]:not([hidden]) dl.facts')");
    assert!(b.text("[data-step='5']").contains("as a new VM named db1-copy"));
    b.look("06-restore-summary");
    b.click(".wizard button[type=submit]");
    b.wait_for("the job page", "return location.hash.startsWith('#/jobs/')");
    b.wait_for(
        "completed",
        "const e = document.querySelector('dl.facts .badge'); return e && e.innerText === 'completed'",
    );
    b.look("07-restore-completed");
    let copy = host.vm("db1-copy").expect("the restored VM exists");
    assert_eq!(copy.cpus, 3);
    let disk = host.disk("db1-copy", "vda");
    assert_eq!(disk.len() as u64, 12 * MIB, "the disk grew");
    assert_eq!(&disk[..at_full.len()], &at_full[..], "the new VM's disk is the full's");
    b.go(&format!("https://127.0.0.1:{}/#/platforms/{platform}", server.port));
    b.wait_for(
        "the new VM in the inventory",
        "return [...document.querySelectorAll('tr[data-vm] td:first-child')].some((td) => td.innerText === 'db1-copy')",
    );
}
