//! A real browser for the console's tests: Debian's Chromium, headless, driven through
//! chromedriver's W3C WebDriver endpoint on a local port, with axe-core (from the npm registry,
//! fetched by scripts/test) run inside each page. The WebDriver client is the few commands the
//! tests use, as blocking JSON calls over a local TCP socket: a WebDriver crate would bring two
//! Unicode stacks and a web server into the build for that.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where scripts/test installs the npm packages the browser tests use.
fn npm_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOLDFAST_NPM_DIR").unwrap_or_else(|_| "/var/tmp/holdfast-testbed/npm".into()))
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Screenshots go here, named by step and width.
    pub shots: PathBuf,
    axe: String,
}

/// A page element found by a CSS selector.
#[derive(Clone)]
pub struct Element(String);

/// A test's screenshot folder, emptied: /var/tmp/holdfast-screenshots/<test>.
pub fn shots(test: &str) -> PathBuf {
    let dir = PathBuf::from("/var/tmp/holdfast-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    println!("screenshots: {}", dir.display());
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; screenshots go under `shots`.
    pub fn start(shots: &Path) -> Browser {
        std::fs::create_dir_all(shots).unwrap();
        let axe_path = npm_dir().join("node_modules/axe-core/axe.min.js");
        let axe = std::fs::read_to_string(&axe_path)
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs axe-core)", axe_path.display()));
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (package chromium-driver)");
        let mut b = Browser { driver, port, session: String::new(), shots: shots.to_path_buf(), axe };
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--ignore-certificate-errors", "--window-size=1280,900",
                         "--lang=en-GB"],
            },
        } } });
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        b
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("chromedriver answers");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let text = read_reply(&mut s).unwrap_or_else(|e| panic!("{method} {path}: chromedriver's reply: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        if v["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {} {}", v["value"]["error"], v["value"]["message"]);
        }
        v["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn go(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Runs `script` in the page, which calls its last argument with the result; that result.
    pub fn run_async(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/async", Some(json!({ "script": script, "args": args })))
    }

    /// Waits until `script` returns something truthy; returns it.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
        let t = Instant::now();
        loop {
            let v = self.run(script, json!([]));
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "waited 60 s for {what}; page: {}", self.text("main"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching `css`, waiting for it to appear.
    pub fn find(&self, css: &str) -> Element {
        let t = Instant::now();
        loop {
            let v = self.session_call("POST", "/elements", Some(json!({ "using": "css selector", "value": css })));
            if let Some(e) = v.as_array().and_then(|a| a.first()) {
                return Element(e[ELEMENT].as_str().unwrap().to_string());
            }
            assert!(t.elapsed() < Duration::from_secs(30), "no element {css}; page: {}", self.text("main"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn count(&self, css: &str) -> usize {
        let v = self.session_call("POST", "/elements", Some(json!({ "using": "css selector", "value": css })));
        v.as_array().map_or(0, |a| a.len())
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    /// Clears the field and types `text` into it, as a person would.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.session_call("POST", &format!("/element/{}/clear", e.0), Some(json!({})));
        self.session_call("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text })));
    }

    /// Picks the option whose value is `value` in a select, firing its change event.
    pub fn select(&self, css: &str, value: &str) {
        self.find(css);
        let script = "const s = document.querySelector(arguments[0]); s.value = arguments[1]; \
                      s.dispatchEvent(new Event('change', { bubbles: true })); return s.value;";
        assert_eq!(self.run(script, json!([css, value])), json!(value), "{css} has no option {value}");
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let v =
            self.run("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", json!([css]));
        v.as_str().unwrap_or_default().to_string()
    }

    /// Accepts the `confirm()` dialog the page shows.
    pub fn accept_dialog(&self) {
        let t = Instant::now();
        loop {
            let v = self.call("GET", &format!("/session/{}/alert/text", self.session), None);
            if v.is_string() {
                self.session_call("POST", "/alert/accept", Some(json!({})));
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no dialog appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sets the viewport's width (the window is resized to give it).
    pub fn width(&self, width: u32) {
        self.session_call("POST", "/window/rect", Some(json!({ "width": width, "height": 900 })));
    }

    /// Logs in through the console's login form.
    pub fn log_in(&self, user: &str, password: &str) {
        self.find("form[aria-label='Log in']");
        self.type_into("input[name=user]", user);
        self.type_into("input[name=password]", password);
        self.click("form[aria-label='Log in'] button[type=submit]");
    }

    /// Changes the password through the form the console shows at a first login.
    pub fn change_password(&self, old: &str, new: &str) {
        self.find("form[aria-label='Change your password']");
        self.type_into("input[name=old]", old);
        self.type_into("input[name=new]", new);
        self.type_into("input[name=again]", new);
        self.click("form[aria-label='Change your password'] button[type=submit]");
    }

    /// Saves the page at desktop (1280 px) and phone (360 px) width as `NN-step-desktop.png` and
    /// `NN-step-phone.png`, and runs axe-core at both widths: a serious or critical finding fails.
    pub fn look(&self, step: &str) {
        for (width, name) in [(1280, "desktop"), (360, "phone")] {
            self.width(width);
            std::thread::sleep(Duration::from_millis(150));
            let png = self.session_call("GET", "/screenshot", None);
            let png = base64_decode(png.as_str().unwrap());
            std::fs::write(self.shots.join(format!("{step}-{name}.png")), png).unwrap();
            self.accessible(&format!("{step} at {name} width"));
        }
        self.width(1280);
    }

    fn accessible(&self, what: &str) {
        if self.run("return typeof window.axe", json!([])) != json!("object") {
            self.run(&format!("{}\n;return true;", self.axe), json!([]));
        }
        let script = "const done = arguments[arguments.length - 1]; \
            axe.run(document, { resultTypes: ['violations'] }).then((r) => done(r.violations.filter((v) => \
            v.impact === 'serious' || v.impact === 'critical').map((v) => ({ id: v.id, help: v.help, \
            nodes: v.nodes.map((n) => n.html.slice(0, 200)) })))).catch((e) => done([{ id: 'axe failed', help: String(e) }]));";
        let found = self.run_async(script, json!([]));
        assert_eq!(found, json!([]), "axe-core found serious or critical problems on {what}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.call("DELETE", &format!("/session/{}", self.session), None)
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP reply's body: by its Content-Length, or its chunks (chromedriver may keep the
/// connection open whatever the request asked, so reading to the end would wait).
fn read_reply(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the headers ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let complete = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..];
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A chunked body's bytes (chunks may split a character: join them before decoding).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[eol + 2..];
        let Some(n) = size.filter(|n| *n > 0 && rest.len() >= *n) else { break };
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for group in clean.chunks(4) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, c)| n | u32::from(value(*c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

#[test]
fn a_chunked_reply_is_joined_before_it_is_decoded() {
    // "é" is two bytes, split across the two chunks.
    let body = b"2\r\n{\xc3\r\n3\r\n\xa9}\n\r\n0\r\n\r\n";
    assert_eq!(String::from_utf8(dechunk(body)).unwrap(), "{\u{e9}}\n");
}
