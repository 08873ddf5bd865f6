//! Ways back in for a locked-out or forgetful user: an admin unlocks another user or gives a new
//! password in the API, and `holdfast reset-password` on the appliance's shell does it for the
//! last admin. No platform is needed.

use holdfast_tests::service::Server;
use serde_json::json;
use std::process::Command;

const PASSWORD: &str = "correct horse battery";

#[test]
fn locked_or_forgotten_users_get_back_in_through_an_admin_or_the_appliance_shell() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data);
    let admin = server.admin(PASSWORD);
    admin.post("/api/users", json!({ "name": "olga", "role": "operator", "password": "first password 1" }), 201);
    let mut olga = server.client();
    assert_eq!(olga.login("olga", "first password 1").0, 200);
    olga.post("/api/password", json!({ "old": "first password 1", "new": "olga's own pass" }), 204);

    // Five wrong passwords lock her out; the right one is refused too, until an admin unlocks.
    let mut guess = server.client();
    for _ in 0..5 {
        assert_eq!(guess.login("olga", "wrong guess here").0, 401);
    }
    assert_eq!(guess.login("olga", "olga's own pass").0, 401, "locked");
    let users = admin.get("/api/users");
    let row = users.as_array().unwrap().iter().find(|u| u["name"] == "olga").unwrap().clone();
    assert!(row["locked_until"].is_string(), "{row}");
    let (code, v) = olga.request("POST", "/api/users/olga/unlock", Some(&json!({})));
    assert_eq!(code, 403, "an operator cannot unlock: {v}");
    admin.post("/api/users/olga/unlock", json!({}), 204);
    admin.post("/api/users/nobody/unlock", json!({}), 404);
    let mut back = server.client();
    assert_eq!(back.login("olga", "olga's own pass").0, 200, "unlocked");

    // A forgotten password: the admin gives a new one; her sessions end and she must change it.
    let v = admin.post("/api/users/olga/password", json!({ "password": "short" }), 400);
    assert!(v["error"].as_str().unwrap().starts_with("password:"), "{v}");
    admin.post("/api/users/olga/password", json!({ "password": "given by admin 1" }), 204);
    assert_eq!(back.get_status("/api/jobs").0, 401, "her sessions ended");
    let mut fresh = server.client();
    assert_eq!(fresh.login("olga", "olga's own pass").0, 401);
    let (code, v) = fresh.login("olga", "given by admin 1");
    assert_eq!((code, v["must_change_password"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(fresh.get_status("/api/jobs").0, 403, "the given password must be changed first");
    let (code, _) = admin.request("POST", "/api/users/admin/password", Some(&json!({ "password": "0123456789ab" })));
    assert_eq!(code, 409, "an admin changes the own password the usual way");

    // The last admin locked out: the appliance's shell gives a new password.
    for _ in 0..5 {
        assert_eq!(guess.login("admin", "wrong guess here").0, 401);
    }
    assert_eq!(guess.login("admin", PASSWORD).0, 401, "locked");
    let out = Command::new(holdfast_tests::holdfast_bin())
        .args(["reset-password", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let given = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(given.len() >= 10, "{given:?}");
    let mut c = server.client();
    let (code, v) = c.login("admin", &given);
    assert_eq!((code, v["must_change_password"].as_bool()), (200, Some(true)), "{v}");
    c.post("/api/password", json!({ "old": given, "new": "a brand new one" }), 204);
    let audit = c.get("/api/audit").to_string();
    for want in ["user unlocked", "password reset", "(appliance shell)"] {
        assert!(audit.contains(want), "{want} missing: {audit}");
    }
    // A page at a time, newest first: the second page goes on where the first stopped.
    let all = c.get("/api/audit");
    let all = all.as_array().unwrap();
    assert!(all.len() >= 4, "{all:?}");
    let first = c.get("/api/audit?limit=2");
    let second = c.get(&format!("/api/audit?limit=2&before={}", first[1]["id"]));
    let ids: Vec<&serde_json::Value> =
        first.as_array().unwrap().iter().chain(second.as_array().unwrap()).map(|r| &r["id"]).collect();
    let want: Vec<&serde_json::Value> = all[..4].iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, want);
    let (code, e) = c.request("GET", "/api/audit?limit=0", None);
    assert_eq!(code, 400, "{e}");
    let wrong = Command::new(holdfast_tests::holdfast_bin())
        .args(["reset-password", "--data-dir"])
        .arg(dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("no catalog at"));
    let nobody = Command::new(holdfast_tests::holdfast_bin())
        .args(["reset-password", "--user", "nobody", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!nobody.status.success() && String::from_utf8_lossy(&nobody.stderr).contains("no user nobody"));
    server.kill();
}
