//! The console's settings and statistics pages in a real browser (headless Chromium through
//! chromedriver) against a real `holdfast serve` and the simulated platform, clicked through as
//! an admin would: add an operator (a too-short password first: the API's message under its
//! field, nothing saved), unlock, reset and delete a user, create and revoke an API token (shown
//! once, working until revoked), save bandwidth windows (a bad time first) and find them in the
//! weekly grid, save alert mail settings (a bad address first) and read the test mail's exact
//! SMTP error, add a storage target in a fresh directory, be refused its removal while a rule
//! uses it, remove and adopt it again, filter the audit log, export and import the
//! configuration, and read the statistics of a rule's backup and a failed one. An auditor finds
//! every section it may read and no control that changes anything. axe-core checks each state
//! at desktop and phone width; screenshots go under /var/tmp/holdfast-screenshots/<test>/.

use connectors::sim::{Faults, SimHost};
use holdfast_tests::browser::{shots, Browser};
use holdfast_tests::service::{Client, Server};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "correct horse battery";

/// Makes each screenshot show what the test looks at: at each resize of `look` the page scrolls
/// to `window.lookAt` (a selector) if set, else to the element in focus.
fn follow_focus(b: &Browser) {
    b.run(
        "window.addEventListener('resize', () => { \
           const e = (window.lookAt && document.querySelector(window.lookAt)) || document.activeElement; \
           if (e && e !== document.body) e.scrollIntoView({ block: 'center' }); else window.scrollTo(0, 0); });",
        json!([]),
    );
}

/// Points the screenshots at `css` (None: back to the element in focus).
fn look_at(b: &Browser, css: Option<&str>) {
    b.run(
        "window.lookAt = arguments[0]; if (arguments[0]) document.querySelector(arguments[0]).scrollIntoView();",
        json!([css]),
    );
}

/// A CSS selector or text as a JavaScript string literal.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

/// Opens a section of the settings page through its link in the section list.
fn section(b: &Browser, path: &str, title: &str) {
    b.click(&format!("nav.tabs a[href='#/settings/{path}']"));
    b.wait_for(
        title,
        &format!("const e = document.getElementById('settings-h'); return e && e.innerText === {}", js(title)),
    );
}

/// Clicks the button (in `within`) whose text is `text`, as a person finds it.
fn press(b: &Browser, within: &str, text: &str) {
    let script = "const b = [...document.querySelectorAll(arguments[0] + ' button')] \
                    .find((x) => x.innerText.trim() === arguments[1]); \
                  if (b) b.click(); return Boolean(b);";
    assert_eq!(b.run(script, json!([within, text])), json!(true), "no button {text} in {within}");
}

/// The API's message shown under field `name` of `form`, once there.
fn error_under(b: &Browser, form: &str, name: &str) -> String {
    let css = format!("{form} .field[data-field='{name}'] .error");
    let v = b.wait_for(
        &format!("the error under {name}"),
        &format!("const e = document.querySelector({}); return e && e.innerText", js(&css)),
    );
    v.as_str().unwrap().to_string()
}

/// Waits for the toast to say `text`.
fn toast(b: &Browser, text: &str) {
    b.wait_for(text, &format!("return document.getElementById('toast').innerText.includes({})", js(text)));
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|x| x[key] == value)
}

fn job_id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap()
}

/// A platform `lab` on a simulated host with VMs web1 (in rule `nightly`, backed up by it) and
/// db1 (one failed backup, then one that completed); returns the platform's and the rule's ids.
fn backups(admin: &Client, host: &SimHost) -> (i64, i64) {
    host.add_vm("web1", &[("vda", 8 * MIB)]);
    host.write("web1", "vda", 0, &holdfast_tests::noise(4 * MIB as usize, 1));
    host.add_vm("db1", &[("vda", 4 * MIB)]);
    host.write("db1", "vda", 0, &holdfast_tests::noise(MIB as usize, 2));
    let platform = admin.add_sim_platform("lab", host);
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let rule = admin.post(
        "/api/rules",
        json!({ "name": "nightly", "platform": platform, "vms": ["web1"], "full": weekly }),
        201,
    );
    let rule = job_id(&rule);
    let run = admin.post(&format!("/api/rules/{rule}/run"), json!({ "type": "full" }), 202);
    assert_eq!(admin.wait_job(job_id(&run[0]))["state"], "completed");
    host.set_faults(&Faults { snapshot_refused: vec!["db1".into()], ..Faults::default() });
    let failed = admin.post("/api/jobs", json!({ "platform": platform, "vm": "db1", "type": "full" }), 202);
    assert_eq!(admin.wait_job(job_id(&failed))["state"], "failed");
    host.set_faults(&Faults::default());
    let done = admin.post("/api/jobs", json!({ "platform": platform, "vm": "db1", "type": "full" }), 202);
    assert_eq!(admin.wait_job(job_id(&done))["state"], "completed");
    (platform, rule)
}

#[test]
fn an_admin_sets_up_the_appliance_in_settings_and_reads_the_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    let (platform, rule) = backups(&admin, &host);
    let base = format!("https://127.0.0.1:{}", server.port);
    let b = Browser::start(&shots("settings-admin"));
    b.go(&format!("{base}/"));
    b.log_in("admin", PASSWORD);
    b.wait_for("the dashboard", "return document.title.startsWith('Dashboard')");
    follow_focus(&b);

    // Users: the admin's own row has no control against itself.
    b.click("#nav a[data-page=settings]");
    b.wait_for("the user list", "return document.querySelector('tr[data-user=admin]')");
    assert!(b.text("tr[data-user=admin]").contains("(you)"));
    assert_eq!(b.count("tr[data-user=admin] button"), 0, "the admin may delete itself");
    b.look("01-users");

    // A too-short password: the API's message under the password, and no user made.
    let add = "form[aria-label='Add a user']";
    b.type_into(&format!("{add} input[name=name]"), "oscar");
    b.select(&format!("{add} select[name=role]"), "operator");
    b.type_into(&format!("{add} input[name=password]"), "short");
    b.click(&format!("{add} button[type=submit]"));
    let e = error_under(&b, add, "password");
    assert!(e.starts_with("password: must have at least"), "{e}");
    assert!(find(&admin.get("/api/users"), "name", "oscar").is_none(), "a refused user was saved");
    b.look("02-user-refused");
    b.type_into(&format!("{add} input[name=password]"), "operator password 1");
    b.click(&format!("{add} button[type=submit]"));
    b.wait_for("oscar's row", "return document.querySelector('tr[data-user=oscar]')");
    let users = admin.get("/api/users");
    let oscar = find(&users, "name", "oscar").unwrap();
    assert_eq!((oscar["role"].as_str(), oscar["must_change_password"].as_bool()), (Some("operator"), Some(true)));
    assert!(b.text("tr[data-user=oscar]").contains("must change password"));

    // Five wrong passwords lock oscar out; the admin unlocks him.
    let mut guess = server.client();
    for _ in 0..5 {
        assert_eq!(guess.login("oscar", "not the password").0, 401);
    }
    assert!(!find(&admin.get("/api/users"), "name", "oscar").unwrap()["locked_until"].is_null());
    // Jobs at once: a value outside 1-256 is the API's refusal under its field; then saved.
    section(&b, "limits", "Jobs at once");
    b.type_into("input[name=max_jobs]", "0");
    b.click("form[aria-label='Concurrency limits'] button[type=submit]");
    let e = b.wait_for("the refusal", "return document.querySelector('[data-field=max_jobs] .error').innerText");
    assert!(e.as_str().unwrap().starts_with("max_jobs:"), "{e}");
    assert_eq!(admin.get("/api/limits")["max_jobs"], 8, "nothing was saved");
    b.type_into("input[name=max_jobs]", "5");
    b.type_into("input[name=max_jobs_per_host]", "2");
    b.click("form[aria-label='Concurrency limits'] button[type=submit]");
    b.wait_for("the saved limits", "return document.querySelector('[data-limits]').innerText.includes('At most 5')");
    assert_eq!(admin.get("/api/limits"), json!({ "max_jobs": 5, "max_jobs_per_host": 2 }));
    b.look("03a-limits");
    section(&b, "tokens", "API tokens");
    section(&b, "users", "Users");
    b.wait_for("the unlock button", "return document.querySelector(\"button[aria-label='Unlock oscar']\")");
    assert!(b.text("tr[data-user=oscar]").contains("locked until"));
    b.look("03-user-locked");
    b.click("button[aria-label='Unlock oscar']");
    b.wait_for("oscar unlocked", "return !document.querySelector(\"button[aria-label='Unlock oscar']\")");
    assert!(find(&admin.get("/api/users"), "name", "oscar").unwrap()["locked_until"].is_null());

    // A new password for oscar, to be changed at his next login.
    b.click("button[aria-label='Reset password of oscar']");
    let reset = "form[aria-label='New password for oscar']";
    b.type_into(&format!("{reset} input[name=password]"), "a new password 2");
    b.look("04-user-reset");
    b.click(&format!("{reset} button[type=submit]"));
    toast(&b, "oscar has a new password");
    // The list is drawn again and the keyboard put on the section's heading.
    b.wait_for("the redrawn list", "return document.activeElement && document.activeElement.id === 'settings-h'");
    let (code, s) = server.client().login("oscar", "a new password 2");
    assert_eq!((code, s["must_change_password"].as_bool()), (200, Some(true)), "{s}");

    // Deleting asks first.
    b.wait_for("the delete button", "return document.querySelector(\"button[aria-label='Delete oscar']\")");
    b.click("button[aria-label='Delete oscar']");
    b.accept_dialog();
    b.wait_for(
        "oscar gone",
        "return document.querySelector('tr[data-user=admin]') && !document.querySelector('tr[data-user=oscar]')",
    );
    assert!(find(&admin.get("/api/users"), "name", "oscar").is_none());

    // API tokens: a nameless one is refused under the name; a new one is shown once and works
    // until it is revoked.
    section(&b, "tokens", "API tokens");
    let tokens = "form[aria-label='Create an API token']";
    b.click(&format!("{tokens} button[type=submit]"));
    let e = error_under(&b, tokens, "name");
    assert!(e.starts_with("name: must not be empty"), "{e}");
    b.type_into(&format!("{tokens} input[name=name]"), "ci");
    b.click(&format!("{tokens} button[type=submit]"));
    let token =
        b.wait_for("the new token", "const i = document.querySelector('input[name=new-token]'); return i && i.value");
    let token = token.as_str().unwrap().to_string();
    assert!(token.starts_with("hf_"), "{token}");
    let mut script = server.client();
    script.bearer = Some(token);
    assert_eq!(script.get_status("/api/jobs").0, 200, "the token works");
    b.look("05-token-created");
    b.click("button[aria-label='Revoke ci']");
    b.accept_dialog();
    b.wait_for(
        "the token gone",
        "return !document.querySelector('tr[data-token]') && !document.querySelector('input[name=new-token]')",
    );
    assert_eq!(script.get_status("/api/jobs").0, 401, "a revoked token still works");
    assert_eq!(admin.get("/api/tokens"), json!([]));

    // Bandwidth: a time of day that does not exist is refused under that window's field.
    section(&b, "bandwidth", "Bandwidth");
    let windows = "form[aria-label='Bandwidth windows']";
    press(&b, windows, "Add window");
    b.type_into("fieldset.window input[name=from]", "25:00");
    b.click(&format!("{windows} button[type=submit]"));
    let e = error_under(&b, "fieldset.window", "from");
    assert!(e.starts_with("[0].from: \"25:00\" is not a time of day"), "{e}");
    assert_eq!(admin.get("/api/bandwidth"), json!([]), "a refused window was saved");
    b.look("06-bandwidth-refused");
    b.type_into("fieldset.window input[name=from]", "08:00");
    press(&b, windows, "Add window");
    let second = "fieldset.window:nth-of-type(2)";
    for day in ["mon", "tue", "wed", "thu", "fri", "sat"] {
        b.click(&format!("{second} input[value={day}]"));
    }
    b.type_into(&format!("{second} input[name=from]"), "22:00");
    b.type_into(&format!("{second} input[name=to]"), "06:00");
    b.type_into(&format!("{second} input[name=mb_per_second]"), "0");
    // A third window, thought better of.
    press(&b, windows, "Add window");
    assert_eq!(b.count("fieldset.window"), 3);
    b.click("button[aria-label='Remove window 3']");
    assert_eq!(b.count("fieldset.window"), 2);
    b.click(&format!("{windows} button[type=submit]"));
    toast(&b, "Bandwidth windows saved");
    let want = json!([
        { "days": ["mon", "tue", "wed", "thu", "fri"], "from": "08:00", "to": "18:00", "mb_per_second": 50.0 },
        { "days": ["sat"], "from": "22:00", "to": "06:00", "mb_per_second": 0.0 },
    ]);
    assert_eq!(admin.get("/api/bandwidth"), want);
    // The grid: Monday 08-18 at 50 MB/s, Saturday night paused into Sunday morning.
    let cell = |c: &str| b.text(&format!("td[data-cell='{c}']"));
    b.wait_for(
        "the grid",
        "const c = document.querySelector(\"td[data-cell='mon-08']\"); return c && c.innerText.startsWith('50')",
    );
    assert!(cell("fri-17").starts_with("50"), "{}", cell("fri-17"));
    assert!(
        cell("mon-07").starts_with('–') && cell("mon-18").starts_with('–'),
        "{} {}",
        cell("mon-07"),
        cell("mon-18")
    );
    assert!(
        cell("sat-22").starts_with('0') && cell("sun-05").starts_with('0'),
        "{} {}",
        cell("sat-22"),
        cell("sun-05")
    );
    assert!(cell("sun-06").starts_with('–'), "{}", cell("sun-06"));
    assert_eq!(b.count("fieldset.window"), 2);
    b.look("07-bandwidth-saved");

    // Alert mail: a bad address is refused under To; the test mail shows the API's exact error.
    section(&b, "alerts", "Alert mail");
    let mail = "form[aria-label='Alert mail settings']";
    b.type_into(&format!("{mail} input[name=smtp_host]"), "127.0.0.1");
    b.type_into(&format!("{mail} input[name=smtp_port]"), "1");
    b.select(&format!("{mail} select[name=security]"), "none");
    b.type_into(&format!("{mail} input[name=from]"), "holdfast@example.com");
    b.type_into(&format!("{mail} input[name=to]"), "ops@example.com, not an address");
    b.click(&format!("{mail} button[type=submit]"));
    let e = error_under(&b, mail, "to");
    assert!(e.starts_with("to[1]: "), "{e}");
    assert_eq!(admin.get("/api/alerts"), Value::Null, "refused settings were saved");
    b.look("08-alerts-refused");
    b.type_into(&format!("{mail} input[name=to]"), "ops@example.com, dev@example.com");
    b.type_into(&format!("{mail} input[name=password]"), "smtp secret");
    b.click(&format!("{mail} button[type=submit]"));
    toast(&b, "Alert settings saved");
    let saved = admin.get("/api/alerts");
    assert_eq!(saved["to"], json!(["ops@example.com", "dev@example.com"]), "{saved}");
    assert_eq!((saved["has_password"].as_bool(), saved["security"].as_str()), (Some(true), Some("none")));
    b.wait_for(
        "the stored password's hint",
        "return document.querySelector('main').innerText.includes('A password is stored')",
    );
    press(&b, mail, "Send test mail");
    let shown = b.wait_for(
        "the test mail's error",
        &format!(
            "const e = document.querySelector({}); return e && !e.hidden && e.innerText",
            js(&format!("{mail} .form-error"))
        ),
    );
    let (code, reply) = admin.request("POST", "/api/alerts/test", None);
    assert_eq!(code, 502, "{reply}");
    assert_eq!(shown, reply["error"], "the page shows the API's own error");
    b.look("09-alerts-test-failed");

    // Storage: a relative path is refused under Directory; a fresh directory becomes a store.
    section(&b, "storage", "Storage targets");
    let target = "form[aria-label='Add a storage target']";
    b.type_into(&format!("{target} input[name=name]"), "offsite");
    b.type_into(&format!("{target} input[name=path]"), "relative/dir");
    b.click(&format!("{target} button[type=submit]"));
    let e = error_under(&b, target, "path");
    assert!(e.starts_with("path: \"relative/dir\" is not an absolute path"), "{e}");
    assert_eq!(admin.get("/api/storage").as_array().unwrap().len(), 1, "a refused target was saved");
    b.look("10-storage-refused");
    let dir = tmp.path().join("offsite");
    b.type_into(&format!("{target} input[name=path]"), dir.to_str().unwrap());
    b.type_into(&format!("{target} input[name=zstd_level]"), "5");
    b.click(&format!("{target} button[type=submit]"));
    b.wait_for("the new target", "return document.querySelector(\"button[aria-label='Remove offsite']\")");
    let all = admin.get("/api/storage");
    let offsite = find(&all, "name", "offsite").unwrap().clone();
    assert!(dir.join("store.json").exists(), "no store was made in {}", dir.display());
    let row = b.text(&format!("tr[data-target='{}']", offsite["id"]));
    assert!(row.contains("available") && row.contains(dir.to_str().unwrap()), "{row}");
    b.look("11-storage-added");

    // Health: a verify of the own store (it holds the backups) reports it sound.
    b.click("button[aria-label='Verify local']");
    let verify = b.wait_for(
        "the verify's result",
        "const c = document.querySelector(\"tr[data-target='1'] [data-check=verify]\"); \
         return c && !c.innerText.includes('running') && c.innerText",
    );
    assert!(verify.as_str().unwrap().contains("all sound"), "{verify}");
    let targets = admin.get("/api/storage");
    let own = &find(&targets, "name", "local").unwrap()["health"][0];
    assert_eq!((own["kind"].as_str(), own["ok"].as_bool()), (Some("verify"), Some(true)), "{own}");
    b.look("11a-storage-verified");

    // Its removal is refused while a rule writes into it: the API's reason is shown.
    let weekly = json!({ "kind": "weekly", "days": ["sun"], "times": ["03:00"] });
    let copy = admin.post(
        "/api/rules",
        json!({ "name": "offsite-copy", "platform": platform, "vms": ["db1"], "full": weekly,
                "storage": offsite["id"] }),
        201,
    );
    b.click("button[aria-label='Remove offsite']");
    b.accept_dialog();
    let refusal = b.wait_for(
        "the refusal",
        "const e = document.querySelector('.settings-section .form-error'); return e && e.innerText",
    );
    assert!(refusal.as_str().unwrap().contains("used by rules offsite-copy"), "{refusal}");
    assert!(find(&admin.get("/api/storage"), "name", "offsite").is_some());
    b.look("12-storage-in-use");
    assert_eq!(admin.request("DELETE", &format!("/api/rules/{}", copy["id"]), None).0, 204);
    b.click("button[aria-label='Remove offsite']");
    b.accept_dialog();
    b.wait_for("the target gone", "return !document.querySelector(\"button[aria-label='Remove offsite']\")");
    assert!(find(&admin.get("/api/storage"), "name", "offsite").is_none());
    // Its files stayed: the store is adopted again (no compression level for an adopted store).
    b.click(&format!("{target} input[value=adopt]"));
    b.wait_for(
        "no level",
        &format!("return document.querySelector({}).hidden", js(&format!("{target} .field[data-field=zstd_level]"))),
    );
    b.type_into(&format!("{target} input[name=name]"), "offsite-again");
    b.type_into(&format!("{target} input[name=path]"), dir.to_str().unwrap());
    b.click(&format!("{target} button[type=submit]"));
    b.wait_for("the adopted target", "return document.querySelector(\"button[aria-label='Remove offsite-again']\")");
    assert_eq!(find(&admin.get("/api/storage"), "name", "offsite-again").unwrap()["path"], dir.to_str().unwrap());

    // The audit log, newest first, filtered by user, action and any text.
    section(&b, "audit", "Audit log");
    b.wait_for("the log", "return document.querySelectorAll('.settings-section tbody tr').length > 5");
    b.select("select[name=user]", "admin");
    b.type_into("input[name=action]", "storage target");
    let log = admin.get("/api/audit");
    let storage_rows = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["user"] == "admin" && r["action"].as_str().unwrap().contains("storage target"))
        .count();
    assert_eq!(storage_rows, 3, "{log}");
    b.wait_for(
        "the filtered log",
        &format!("return document.querySelectorAll('.settings-section tbody tr').length === {storage_rows}"),
    );
    let actions = b.run(
        "return [...document.querySelectorAll('.settings-section tbody tr td:nth-child(3)')].map((e) => e.innerText)",
        json!([]),
    );
    assert_eq!(
        actions,
        json!(["storage target added", "storage target removed", "storage target added"]),
        "newest first"
    );
    b.type_into("input[name=text]", "offsite-again");
    b.wait_for("one entry", "return document.querySelectorAll('.settings-section tbody tr').length === 1");
    assert!(b.text("main [role=status]").starts_with("1 of "), "{}", b.text("main [role=status]"));
    b.look("13-audit");

    // Configuration: a short passphrase is refused; the export is offered as a file to save.
    section(&b, "configuration", "Configuration");
    let export = "form[aria-label='Export the configuration']";
    b.type_into(&format!("{export} input[name=passphrase]"), "short");
    b.click(&format!("{export} button[type=submit]"));
    let e = error_under(&b, export, "passphrase");
    assert!(e.starts_with("passphrase: use at least 10 characters"), "{e}");
    b.type_into(&format!("{export} input[name=passphrase]"), "a long export passphrase");
    b.click(&format!("{export} button[type=submit]"));
    let link = b.wait_for(
        "the download link",
        "const a = document.querySelector('a[download]'); \
         return a && [a.href, a.download, a.closest('[role=status]').innerText]",
    );
    let (href, file, said) = (link[0].as_str().unwrap(), link[1].as_str().unwrap(), link[2].as_str().unwrap());
    assert!(href.starts_with("blob:https://127.0.0.1"), "{href}");
    assert!(file.starts_with("holdfast-config-") && file.ends_with(".json"), "{file}");
    assert!(
        said.contains("1 platform, 1 storage target, 1 rule, 2 bandwidth windows and the alert settings"),
        "{said}"
    );
    assert!(said.contains("passwords sealed with your passphrase"), "{said}");
    b.look("14-configuration-exported");

    // Import: a file that is not JSON is refused under the file; an export of this appliance
    // keeps what exists.
    let import = "form[aria-label='Import a configuration']";
    let choose = "const i = document.querySelector(arguments[0]); const dt = new DataTransfer(); \
                  dt.items.add(new File([arguments[1]], arguments[2], { type: 'application/json' })); \
                  i.files = dt.files; return i.files.length;";
    let file_input = format!("{import} input[type=file]");
    assert_eq!(b.run(choose, json!([file_input, "not json", "notes.txt"])), json!(1));
    b.click(&format!("{import} button[type=submit]"));
    let e = error_under(&b, import, "config");
    assert!(e.starts_with("config: notes.txt is not JSON"), "{e}");
    let config = admin.post("/api/config/export", json!({ "passphrase": "another long passphrase" }), 200);
    assert_eq!(b.run(choose, json!([file_input, config.to_string(), "holdfast-config.json"])), json!(1));
    b.type_into(&format!("{import} input[name=passphrase]"), "another long passphrase");
    b.click(&format!("{import} button[type=submit]"));
    let report =
        b.wait_for("the import report", "const r = document.querySelector('.report'); return r && r.innerText");
    let report = report.as_str().unwrap();
    assert!(
        report.contains("Platforms kept as they were\nlab") || report.contains("Platforms kept as they were\tlab"),
        "{report}"
    );
    assert!(report.contains("nightly") && report.contains("offsite-again"), "{report}");
    assert_eq!(admin.get("/api/platforms").as_array().unwrap().len(), 1, "importing its own export added a platform");
    assert_eq!(admin.get("/api/alerts")["has_password"], true, "the import lost the SMTP password");
    b.look("15-configuration-imported");

    // Statistics: the rule's backup and db1's failure and success, in charts and tables.
    b.click("#nav a[data-page=statistics]");
    b.wait_for("three charts", "return document.querySelectorAll('svg.chart[role=img]').length === 3");
    let stats = admin.get("/api/stats");
    let db1 = find(&stats["vms"], "vm", "db1").unwrap();
    assert_eq!((db1["succeeded"]["week"].as_i64(), db1["failed"]["week"].as_i64()), (Some(1), Some(1)), "{stats}");
    let cells = |css: &str| {
        b.run("return [...document.querySelectorAll(arguments[0] + ' td')].map((e) => e.innerText)", json!([css]))
    };
    assert_eq!(cells(&format!("tr[data-rule='{rule}']")), json!(["nightly", "1", "0"]));
    assert_eq!(
        cells("tr[data-vm=db1]"),
        json!([
            "db1",
            "1",
            "1",
            "1",
            "db1",
            bytes(db1["protected_bytes"].as_i64().unwrap()),
            bytes(db1["stored_bytes"].as_i64().unwrap()),
            ratio(db1)
        ])
    );
    let labels =
        b.run("return [...document.querySelectorAll('svg.chart')].map((e) => e.getAttribute('aria-label'))", json!([]));
    assert!(labels[0].as_str().unwrap().contains("nightly: 1 succeeded, 0 failed"), "{labels}");
    assert!(labels[1].as_str().unwrap().contains("db1: 1 succeeded, 1 failed"), "{labels}");
    assert!(labels[2].as_str().unwrap().contains("web1"), "{labels}");
    assert_eq!(b.text("[data-figure=failed] .value"), "1");
    b.look("16-statistics-week");
    b.click("label[for=period-year]");
    b.wait_for("the year", "return document.getElementById('st-totals').innerText === 'In the last 365 days'");
    b.look("17-statistics-year");
    look_at(&b, Some("#st-space"));
    b.look("18-statistics-space");
}

/// `bytes()` of app.js, for comparing the page's figures.
fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n as f64, 0);
    while v.abs() >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v >= 100.0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The statistics page's protected : stored ratio.
fn ratio(vm: &Value) -> String {
    let (p, s) = (vm["protected_bytes"].as_f64().unwrap(), vm["stored_bytes"].as_f64().unwrap());
    if p == 0.0 || s == 0.0 {
        return "–".into();
    }
    let r = p / s;
    if r >= 10.0 {
        format!("{r:.0} : 1")
    } else {
        format!("{r:.1} : 1")
    }
}

#[test]
fn an_auditor_reads_the_settings_and_finds_no_control_that_changes_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let host = SimHost::create(&tmp.path().join("sim"));
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.admin(PASSWORD);
    backups(&admin, &host);
    let windows = json!([{ "days": ["sat", "sun"], "from": "00:00", "to": "23:59", "mb_per_second": 20 }]);
    assert_eq!(admin.request("PUT", "/api/bandwidth", Some(&windows)).0, 204);
    admin.post("/api/users", json!({ "name": "audrey", "role": "auditor", "password": "first password 1" }), 201);
    let base = format!("https://127.0.0.1:{}", server.port);
    let b = Browser::start(&shots("settings-auditor"));
    b.go(&format!("{base}/"));
    b.log_in("audrey", "first password 1");
    b.change_password("first password 1", "audrey's own password");
    b.wait_for("the dashboard", "return document.title.startsWith('Dashboard')");
    follow_focus(&b);

    // The sections an auditor may read, and nothing in them to press or fill in but filters.
    b.click("#nav a[data-page=settings]");
    b.wait_for("the first section", "return document.getElementById('settings-h')");
    let tabs = b.run("return [...document.querySelectorAll('nav.tabs a')].map((a) => a.innerText)", json!([]));
    assert_eq!(tabs, json!(["API tokens", "Jobs at once", "Bandwidth", "Storage targets", "Audit log"]));
    let no_change = |what: &str| {
        assert_eq!(b.count("main button"), 0, "{what}: an auditor is offered a button");
        assert_eq!(b.count("main form:not([role=search])"), 0, "{what}: an auditor is offered a form");
        assert_eq!(b.count("main input:not([type=search]), main textarea"), 0, "{what}: an auditor is offered a field");
    };
    for (n, (path, title)) in [
        ("tokens", "API tokens"),
        ("limits", "Jobs at once"),
        ("bandwidth", "Bandwidth"),
        ("storage", "Storage targets"),
        ("audit", "Audit log"),
    ]
    .into_iter()
    .enumerate()
    {
        section(&b, path, title);
        match path {
            "bandwidth" => {
                b.wait_for("the grid", "return document.querySelector(\"td[data-cell='sat-12']\")");
                assert!(b.text("td[data-cell='sat-12']").starts_with("20"));
                assert!(b.text("main").contains("Admins change the windows"));
            }
            "storage" => {
                b.wait_for("the targets", "return document.querySelector('tr[data-target]')");
            }
            "limits" => {
                b.wait_for("the limits", "return document.querySelector('[data-limits]')");
                assert!(b.text("main").contains("Admins change the limits"));
            }
            "audit" => {
                b.wait_for("the log", "return document.querySelector('.settings-section tbody tr')");
                assert!(b.text("main").contains("user added"));
            }
            _ => {}
        }
        no_change(title);
        b.look(&format!("{:02}-{path}", n + 1));
    }

    // An admin's section by its address: said so, nothing shown.
    b.go(&format!("{base}/#/settings/users"));
    b.wait_for("the notice", "return document.querySelector('main').innerText.includes('This section is for admins')");
    assert_eq!(b.count("tr[data-user]"), 0);
    no_change("users");
    b.look("05-users-refused");

    // Statistics read the same for an auditor.
    b.click("#nav a[data-page=statistics]");
    b.wait_for("three charts", "return document.querySelectorAll('svg.chart[role=img]').length === 3");
    assert_eq!(b.count("main button"), 0);
    b.look("06-statistics");
}
