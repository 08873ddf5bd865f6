//! The service under test: `holdfast serve` on a free local port with its own data directory,
//! and a small HTTPS client (curl, keeping the session cookie and the CSRF token).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Server {
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// A fresh, empty PostgreSQL database for one test's catalog (the test bed's server, started if
/// needed); returns its URL.
pub fn postgres_catalog(tag: &str) -> String {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/start-postgres.sh");
        let out = Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    });
    let db = format!("hf_{tag}_{}", std::process::id());
    for sql in [format!("DROP DATABASE IF EXISTS {db}"), format!("CREATE DATABASE {db}")] {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "holdfast", "-d", "postgres", "-qc", &sql])
            .env("PGPASSWORD", "testbed-pass")
            .output()
            .expect("psql runs (package postgresql-client)");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    format!("postgres://holdfast:testbed-pass@127.0.0.1/{db}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    /// Starts the service on `data` and waits until it answers.
    pub fn start(data: &Path) -> Server {
        Server::start_with_clock(data, None)
    }

    /// With `clock`, the service's "now" is the RFC 3339 time in that file (and its time zone
    /// UTC), so a test moves time by writing the file.
    pub fn start_with_clock(data: &Path, clock: Option<&Path>) -> Server {
        Server::start_with(data, clock, &[])
    }

    /// With extra `holdfast serve` arguments.
    pub fn start_with(data: &Path, clock: Option<&Path>, args: &[&str]) -> Server {
        let port = free_port();
        let log = std::fs::File::create(data.with_extension("log")).unwrap();
        let mut cmd = Command::new(crate::holdfast_bin());
        if let Some(c) = clock {
            cmd.env("HOLDFAST_TEST_CLOCK", c).env("TZ", "UTC");
        }
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"]).arg(data).args(args);
        // Each test's service exports on a port of its own, with no portmapper, unless told.
        if !args.contains(&"--nfs-listen") {
            cmd.args(["--nfs-listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--portmap-listen") {
            cmd.args(["--portmap-listen", "off"]);
        }
        let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("holdfast serve starts");
        let server = Server { data: data.to_path_buf(), port, child: Some(child) };
        let t = Instant::now();
        while server.client().get_status("/api/points").0 == 0 {
            assert!(t.elapsed() < Duration::from_secs(60), "the service did not answer: {}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    pub fn initial_password(&self) -> String {
        std::fs::read_to_string(self.data.join("initial-admin-password")).unwrap().trim().to_string()
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client logged in as admin with the initial password changed to `password`.
    pub fn admin(&self, password: &str) -> Client {
        let mut c = self.client();
        let initial = self.initial_password();
        let (code, v) = c.login("admin", &initial);
        assert_eq!(code, 200, "{v}");
        c.post("/api/password", serde_json::json!({ "old": initial, "new": password }), 204);
        c
    }

    pub fn client(&self) -> Client {
        Client { base: format!("https://127.0.0.1:{}", self.port), jar: None, csrf: None, bearer: None }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Client {
    base: String,
    jar: Option<tempfile::NamedTempFile>,
    pub csrf: Option<String>,
    /// An API token sent as `Authorization: Bearer`.
    pub bearer: Option<String>,
}

impl Client {
    /// (HTTP status, JSON body or Null); status 0 when nothing answered.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--max-time", "60"]);
        if let Some(jar) = &self.jar {
            cmd.arg("-b").arg(jar.path()).arg("-c").arg(jar.path());
        }
        if let Some(c) = &self.csrf {
            cmd.arg("-H").arg(format!("x-csrf-token: {c}"));
        }
        if let Some(t) = &self.bearer {
            cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary", &b.to_string()]);
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
    }

    pub fn get_status(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    /// GET that must succeed.
    pub fn get(&self, path: &str) -> Value {
        let (code, v) = self.request("GET", path, None);
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    /// POST that must answer `want`.
    pub fn post(&self, path: &str, body: Value, want: u16) -> Value {
        let (code, v) = self.request("POST", path, Some(&body));
        assert_eq!(code, want, "POST {path} {body}: {v}");
        v
    }

    /// Starts reading a server-sent event stream into `out`; kill the child to stop.
    pub fn stream(&self, path: &str, out: &Path) -> Child {
        let mut cmd = Command::new("curl");
        cmd.args(["-sNk", "--max-time", "300", "-o"]).arg(out);
        if let Some(jar) = &self.jar {
            cmd.arg("-b").arg(jar.path());
        }
        cmd.arg(format!("{}{path}", self.base)).spawn().expect("curl runs")
    }

    /// Registers the simulated platform of `host` under `name`; its id.
    pub fn add_sim_platform(&self, name: &str, host: &connectors::sim::SimHost) -> i64 {
        let mut body = host.settings();
        body["name"] = serde_json::json!(name);
        body["kind"] = serde_json::json!("sim");
        let (code, v) = self.request("POST", "/api/platforms", Some(&body));
        assert_eq!(
            code, 201,
            "{v}: is the binary built with the simulated platform (cargo build -p appliance --features sim)?"
        );
        v["id"].as_i64().unwrap()
    }

    /// Logs in (cookie jar and CSRF token kept); returns the reply.
    /// Waits for job `id` to end (completed, failed or stopped); returns it.
    pub fn wait_job(&self, id: i64) -> Value {
        let t = Instant::now();
        loop {
            let j = self.get(&format!("/api/jobs/{id}"));
            if ["completed", "failed", "stopped"].contains(&j["state"].as_str().unwrap_or_default()) {
                return j;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "job {id} did not finish: {j}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until job `id` is in `state` (failing if it ends otherwise); returns it.
    pub fn wait_state(&self, id: i64, state: &str) -> Value {
        let t = Instant::now();
        loop {
            let j = self.get(&format!("/api/jobs/{id}"));
            if j["state"] == state {
                return j;
            }
            assert!(j["finished"].is_null(), "job {id} ended before reaching {state}: {j}");
            assert!(t.elapsed() < Duration::from_secs(120), "job {id} did not reach {state}: {j}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn login(&mut self, user: &str, password: &str) -> (u16, Value) {
        self.jar = Some(tempfile::NamedTempFile::new().unwrap());
        let (code, v) =
            self.request("POST", "/api/login", Some(&serde_json::json!({ "user": user, "password": password })));
        self.csrf = v["csrf"].as_str().map(String::from);
        (code, v)
    }
}
