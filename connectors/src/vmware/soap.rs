//! A vSphere Web Services (vim25 SOAP) session over HTTPS: the service content, log in and out
//! (again when the session lapses), calls with faults named by type, the PropertyCollector
//! (container views, paging with ContinueRetrievePropertiesEx), tasks, and the datastore's
//! /folder URLs for disk transfers. The certificate is checked against a CA, or pinned by its
//! thumbprint; what the host presented is remembered, so a refusal can show it to the admin.

use super::xml::{self, esc, El, MoRef};
use crate::connector::Credentials;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// No answer: the connection, TLS (an untrusted or unpinned certificate), a timeout.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with a SOAP fault: its type ("InvalidLogin") and message.
    #[error("{kind}: {message}")]
    Fault { kind: String, message: String },
    /// An answer that is not what vSphere sends.
    #[error("{0}")]
    Protocol(String),
}

impl SoapError {
    pub fn fault_kind(&self) -> Option<&str> {
        match self {
            SoapError::Fault { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// How the host's certificate is checked.
#[derive(Clone, Debug, Default)]
pub struct TlsTrust {
    /// PEM certificates of the CAs to trust (none: Mozilla's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// The certificate's SHA-256 or SHA-1 thumbprint (hex, colons optional): when set, exactly
    /// that certificate is accepted, whoever signed it.
    pub thumbprint: Option<String>,
}

/// A certificate's thumbprints, as vSphere shows them (uppercase hex pairs with colons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbprints {
    pub sha256: String,
    pub sha1: String,
}

impl Thumbprints {
    fn of(der: &[u8]) -> Thumbprints {
        use sha1::Digest as _;
        Thumbprints { sha256: hex_pairs(&sha2::Sha256::digest(der)), sha1: hex_pairs(&sha1::Sha1::digest(der)) }
    }

    fn matches(&self, pin: &str) -> bool {
        let norm = |s: &str| s.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_uppercase();
        let pin = norm(pin);
        pin == norm(&self.sha256) || pin == norm(&self.sha1)
    }
}

fn hex_pairs(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Checks a thumbprint as given in settings: 20 or 32 bytes of hex, colons allowed.
pub fn check_thumbprint(pin: &str) -> Result<(), String> {
    let hex: String = pin.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) || !(hex.len() == 40 || hex.len() == 64) {
        return Err(format!("{pin:?} is not a SHA-1 or SHA-256 thumbprint (hex pairs such as AB:CD:…)"));
    }
    Ok(())
}

#[derive(Debug)]
struct Verifier {
    pin: Option<String>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<Mutex<Option<Thumbprints>>>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let prints = Thumbprints::of(end_entity);
        *self.seen.lock().expect("thumbprint lock") = Some(prints.clone());
        if let Some(pin) = &self.pin {
            return if prints.matches(pin) {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(format!(
                    "the host's certificate has SHA-256 thumbprint {} (SHA-1 {}), not the pinned {pin}",
                    prints.sha256, prints.sha1
                )))
            };
        }
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| {
            rustls::Error::General(format!(
                "the host's certificate is not trusted ({e}); its SHA-256 thumbprint is {}: if that is the host's own \
                 certificate, pin it in the platform's settings (or give the CA that signed it)",
                prints.sha256
            ))
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The objects and facts of a vCenter or ESXi host that every call starts from.
#[derive(Clone, Debug)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    /// "VMware vCenter Server 8.0.2 build-…"
    pub full_name: String,
    /// "VirtualCenter" or "HostAgent".
    pub api_type: String,
    pub api_version: String,
}

/// One object of a PropertyCollector answer: its reference and the properties asked for that
/// it has (unset properties are absent).
#[derive(Clone, Debug)]
pub struct ObjectContent {
    pub obj: MoRef,
    pub props: BTreeMap<String, El>,
}

impl ObjectContent {
    pub fn text(&self, path: &str) -> Option<&str> {
        self.props.get(path).map(|v| v.text.as_str())
    }
}

/// A logged-in session.
pub struct Soap {
    http: ureq::Agent,
    upload: ureq::Agent,
    /// https://host:port
    base: String,
    action: String,
    /// The session cookie, shared with the transfers made from this session, so they carry a
    /// new one after a login again.
    cookie: Arc<Mutex<Option<String>>>,
    credentials: Credentials,
    pub content: ServiceContent,
    seen: Arc<Mutex<Option<Thumbprints>>>,
    /// Held while a transfer logs in again.
    relogin: Mutex<()>,
}

/// The longest a SOAP call may take (tasks are polled, so no single call waits long).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

/// A certificate refusal in our own words (it names the thumbprint), without the HTTP client's
/// wrapping; any other failure with its causes.
fn tls_or_chain(e: &dyn std::error::Error) -> String {
    let chain = cause_chain(e);
    match chain.find("the host's certificate") {
        Some(i) => format!("TLS: {}", &chain[i..]),
        None => chain,
    }
}

fn body_envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
         xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

/// The reply's body element (`XResponse`), or its fault.
pub fn read_reply(text: &str, keep_raw: &[&str]) -> Result<El, SoapError> {
    let env = xml::parse(text, keep_raw).map_err(SoapError::Protocol)?;
    let body = env
        .child("Body")
        .ok_or_else(|| SoapError::Protocol(format!("the reply has no SOAP Body (it is a {:?} element)", env.name)))?;
    let first = body.children.first().ok_or_else(|| SoapError::Protocol("the reply's SOAP Body is empty".into()))?;
    if first.name == "Fault" {
        return Err(fault(first));
    }
    Ok(first.clone())
}

/// A SOAP fault's type (the detail's xsi:type, or its element name without "Fault") and text.
fn fault(f: &El) -> SoapError {
    let message = f.text_of("faultstring").unwrap_or_default().to_string();
    let kind = f
        .child("detail")
        .and_then(|d| d.children.first())
        .map(|d| d.xsi_type.clone().unwrap_or_else(|| d.name.trim_end_matches("Fault").to_string()))
        .or_else(|| f.text_of("faultcode").map(str::to_string))
        .unwrap_or_else(|| "Fault".into());
    SoapError::Fault { kind, message }
}

/// A LocalizedMethodFault (a task's error): its fault type and message.
pub fn method_fault(e: &El) -> SoapError {
    let kind = e.child("fault").and_then(|f| f.xsi_type.clone()).unwrap_or_else(|| "Fault".into());
    let message = e.text_of("localizedMessage").unwrap_or_default().to_string();
    SoapError::Fault { kind, message }
}

/// Percent-encodes `s` for a URL, leaving unreserved characters (and '/' when `path`).
pub fn url_encode(s: &str, path: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if path => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Soap {
    /// Connects to `host` (a name or address, optionally with :port) and logs in.
    pub fn connect(host: &str, trust: &TlsTrust, credentials: &Credentials) -> Result<Soap, SoapError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &trust.ca_pem {
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                let mut n = 0;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| SoapError::Unreachable(format!("reading the CA certificate: {e}")))?;
                    roots.add(cert).map_err(|e| SoapError::Unreachable(format!("the CA certificate: {e}")))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(SoapError::Unreachable("the CA file holds no PEM certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| SoapError::Unreachable(format!("the CA certificates: {e}")))?;
        let seen = Arc::new(Mutex::new(None));
        let verifier =
            Verifier { pin: trust.thumbprint.clone(), webpki, provider: provider.clone(), seen: seen.clone() };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SoapError::Unreachable(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let tls = Arc::new(tls);
        let http = ureq::AgentBuilder::new()
            .tls_config(tls.clone())
            .timeout_connect(Duration::from_secs(15))
            // Each read and write waits at most this long (set once per response): a transfer
            // has no deadline of its own, as ureq would reset the socket's timeout before every
            // 8 KiB read to keep one.
            .timeout_read(CALL_TIMEOUT)
            .timeout_write(CALL_TIMEOUT)
            // A backup's readers each keep their connection between extents.
            .max_idle_connections_per_host(16)
            .build();
        // Uploads on connections of their own (see Transfer::put).
        let upload = ureq::AgentBuilder::new()
            .tls_config(tls)
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(CALL_TIMEOUT)
            .timeout_write(CALL_TIMEOUT)
            .max_idle_connections(0)
            .build();
        let base = format!("https://{host}");
        let mut soap = Soap {
            http,
            upload,
            base,
            action: "urn:vim25/6.7".into(),
            cookie: Arc::new(Mutex::new(None)),
            credentials: credentials.clone(),
            content: ServiceContent {
                root_folder: MoRef::new("Folder", ""),
                property_collector: MoRef::new("PropertyCollector", ""),
                view_manager: MoRef::new("ViewManager", ""),
                session_manager: MoRef::new("SessionManager", ""),
                full_name: String::new(),
                api_type: String::new(),
                api_version: String::new(),
            },
            seen,
            relogin: Mutex::new(()),
        };
        let reply = soap.call_once(
            "<RetrieveServiceContent xmlns=\"urn:vim25\"><_this type=\"ServiceInstance\">ServiceInstance</_this></RetrieveServiceContent>",
            &[],
        )?;
        soap.content = service_content(&reply)?;
        // Speak the host's version, up to the newest this client was written against.
        soap.action = format!("urn:vim25/{}", capped_version(&soap.content.api_version));
        soap.login()?;
        Ok(soap)
    }

    /// The thumbprints of the certificate the host presented (after any TLS handshake).
    pub fn seen_thumbprints(&self) -> Option<Thumbprints> {
        self.seen.lock().expect("thumbprint lock").clone()
    }

    /// Logs in; the new session's cookie replaces the old one only when the login succeeds (a
    /// transfer on another thread never sees no cookie at all).
    fn login(&self) -> Result<(), SoapError> {
        let body = format!(
            "<Login xmlns=\"urn:vim25\">{}<userName>{}</userName><password>{}</password></Login>",
            self.content.session_manager.arg("_this"),
            esc(&self.credentials.username),
            esc(&self.credentials.password)
        );
        self.call_once(&body, &[]).map(|_| ())
    }

    /// Ends the session (best effort: a host that is gone has ended it anyway).
    pub fn logout(&self) {
        if self.cookie.lock().expect("cookie lock").is_some() {
            let body = format!("<Logout xmlns=\"urn:vim25\">{}</Logout>", self.content.session_manager.arg("_this"));
            let _ = self.call_once(&body, &[]);
            *self.cookie.lock().expect("cookie lock") = None;
        }
    }

    fn cookie_header(&self) -> Option<String> {
        self.cookie.lock().expect("cookie lock").clone()
    }

    fn call_once(&self, body: &str, keep_raw: &[&str]) -> Result<El, SoapError> {
        let mut req = self
            .http
            .post(&format!("{}/sdk", self.base))
            .timeout(CALL_TIMEOUT)
            .set("Content-Type", "text/xml; charset=utf-8")
            .set("SOAPAction", &self.action);
        if let Some(c) = self.cookie_header() {
            req = req.set("Cookie", &c);
        }
        // A SOAP fault comes with HTTP 500: its body is the answer.
        let resp = match req.send_string(&body_envelope(body)) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(SoapError::Unreachable(tls_or_chain(&t))),
        };
        let status = resp.status();
        for v in resp.all("set-cookie") {
            if let Some(c) = v.split(';').next() {
                if c.trim_start().starts_with("vmware_soap_session=") {
                    *self.cookie.lock().expect("cookie lock") = Some(c.trim().to_string());
                }
            }
        }
        let status_text = resp.status_text().to_string();
        let mut text = String::new();
        resp.into_reader()
            .take(xml::MAX_REPLY as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| SoapError::Unreachable(format!("reading the reply: {}", cause_chain(&e))))?;
        if !((200..300).contains(&status) || status == 500) {
            return Err(SoapError::Protocol(format!(
                "the host answered HTTP {status} {status_text} at {}/sdk",
                self.base
            )));
        }
        read_reply(&text, keep_raw)
    }

    /// Calls a method; logs in again once if the session has lapsed.
    pub fn call(&self, body: &str) -> Result<El, SoapError> {
        self.call_keeping(body, &[])
    }

    /// As [`Soap::call`], keeping the source text of the elements named in `keep_raw`.
    pub fn call_keeping(&self, body: &str, keep_raw: &[&str]) -> Result<El, SoapError> {
        let used = self.cookie_header();
        match self.call_once(body, keep_raw) {
            Err(e) if e.fault_kind() == Some("NotAuthenticated") => {
                self.login_again_after(used.as_deref())?;
                self.call_once(body, keep_raw)
            }
            other => other,
        }
    }

    /// The properties `paths` of every object of type `kind` under the root folder.
    pub fn retrieve_all(&self, kind: &str, paths: &[&str]) -> Result<Vec<ObjectContent>, SoapError> {
        let view = self.call(&format!(
            "<CreateContainerView xmlns=\"urn:vim25\">{}{}<type>{}</type><recursive>true</recursive></CreateContainerView>",
            self.content.view_manager.arg("_this"),
            self.content.root_folder.arg("container"),
            esc(kind)
        ))?;
        let view = view
            .moref_of("returnval")
            .ok_or_else(|| SoapError::Protocol("CreateContainerView answered no view".into()))?;
        let object_set = format!(
            "<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\"><name>view</name>\
             <type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
            view.arg("obj")
        );
        let result = self.retrieve(kind, paths, &object_set, &[]);
        let _ = self.call(&format!("<DestroyView xmlns=\"urn:vim25\">{}</DestroyView>", view.arg("_this")));
        result
    }

    /// The properties `paths` of the objects `objs` (all of type `kind`).
    pub fn retrieve_objects(
        &self,
        kind: &str,
        objs: &[&MoRef],
        paths: &[&str],
        keep_raw: &[&str],
    ) -> Result<Vec<ObjectContent>, SoapError> {
        let object_set: String =
            objs.iter().map(|o| format!("<objectSet>{}<skip>false</skip></objectSet>", o.arg("obj"))).collect();
        self.retrieve(kind, paths, &object_set, keep_raw)
    }

    /// One object's properties; an object that is gone is an error naming it.
    pub fn retrieve_one(&self, obj: &MoRef, paths: &[&str], keep_raw: &[&str]) -> Result<ObjectContent, SoapError> {
        self.retrieve_objects(&obj.kind, &[obj], paths, keep_raw)?
            .into_iter()
            .next()
            .ok_or_else(|| SoapError::Protocol(format!("{} {} is not there", obj.kind, obj.value)))
    }

    fn retrieve(
        &self,
        kind: &str,
        paths: &[&str],
        object_set: &str,
        keep_raw: &[&str],
    ) -> Result<Vec<ObjectContent>, SoapError> {
        let path_set: String = paths.iter().map(|p| format!("<pathSet>{}</pathSet>", esc(p))).collect();
        let mut reply = self.call_keeping(
            &format!(
                "<RetrievePropertiesEx xmlns=\"urn:vim25\">{}<specSet><propSet><type>{}</type><all>false</all>{path_set}\
                 </propSet>{object_set}</specSet><options><maxObjects>100</maxObjects></options></RetrievePropertiesEx>",
                self.content.property_collector.arg("_this"),
                esc(kind)
            ),
            keep_raw,
        )?;
        let mut out = Vec::new();
        // An empty result has no returnval at all.
        while let Some(result) = reply.child("returnval") {
            out.extend(object_contents(result));
            let Some(token) = result.text_of("token").filter(|t| !t.is_empty()) else { break };
            reply = self.call_keeping(
                &format!(
                    "<ContinueRetrievePropertiesEx xmlns=\"urn:vim25\">{}<token>{}</token></ContinueRetrievePropertiesEx>",
                    self.content.property_collector.arg("_this"),
                    esc(token)
                ),
                keep_raw,
            )?;
        }
        Ok(out)
    }

    /// Waits for a task to end (polling its state, at most `limit`); its result on success, its
    /// fault on failure.
    pub fn wait_task(&self, task: &MoRef, limit: Duration) -> Result<Option<El>, SoapError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let info = self.retrieve_one(task, &["info.state", "info.error", "info.result"], &[])?;
            match info.text("info.state") {
                Some("success") => return Ok(info.props.get("info.result").cloned()),
                Some("error") => {
                    return Err(info.props.get("info.error").map(method_fault).unwrap_or(SoapError::Fault {
                        kind: "Fault".into(),
                        message: "the task failed without saying why".into(),
                    }))
                }
                _ if started.elapsed() > limit => {
                    return Err(SoapError::Protocol(format!("task {} did not end within {limit:?}", task.value)))
                }
                _ => std::thread::sleep(pause),
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Calls a method that starts a task and waits for it.
    pub fn run_task(&self, body: &str, limit: Duration) -> Result<Option<El>, SoapError> {
        let reply = self.call(body)?;
        let task = reply.moref_of("returnval").ok_or_else(|| SoapError::Protocol("the call started no task".into()))?;
        self.wait_task(&task, limit)
    }

    /// The URL of a datastore file through the host's /folder service.
    pub fn folder_url(&self, datacenter: &str, datastore: &str, path: &str) -> String {
        format!(
            "{}/folder/{}?dcPath={}&dsName={}",
            self.base,
            url_encode(path, true),
            url_encode(datacenter, false),
            url_encode(datastore, false)
        )
    }

    /// A client for transfers that carries this session's cookie, and logs in again through
    /// this session when the host says the cookie is no longer good.
    pub fn transfer(self: &Arc<Self>) -> Transfer {
        Transfer {
            http: self.http.clone(),
            upload: self.upload.clone(),
            cookie: self.cookie.clone(),
            session: Arc::downgrade(self),
        }
    }

    /// Logs in again unless another caller already did since `used` (the cookie a refused request
    /// carried): transfers on several threads then make one new session, not one each.
    fn login_again_after(&self, used: Option<&str>) -> Result<(), SoapError> {
        let _one = self.relogin.lock().expect("login lock");
        if self.cookie_header().as_deref() != used {
            return Ok(());
        }
        self.login()
    }
}

impl Drop for Soap {
    fn drop(&mut self) {
        self.logout();
    }
}

/// Datastore file transfers in this session (cloneable, for disk readers on other threads).
#[derive(Clone)]
pub struct Transfer {
    http: ureq::Agent,
    upload: ureq::Agent,
    cookie: Arc<Mutex<Option<String>>>,
    /// The session, to log in again when the host refuses the cookie (a session ended by an
    /// admin or a timeout while a long transfer ran without any SOAP call).
    session: std::sync::Weak<Soap>,
}

impl Transfer {
    fn with_cookie(&self, req: ureq::Request, cookie: Option<&str>) -> ureq::Request {
        match cookie {
            Some(c) => req.set("Cookie", c),
            None => req,
        }
    }

    fn cookie(&self) -> Option<String> {
        self.cookie.lock().expect("cookie lock").clone()
    }

    /// Fills `buf` from `offset` of the file at `url` (a byte-range GET).
    pub fn read_at(&self, url: &str, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64 - 1;
        // A deadline per read: a pooled connection has no socket timeouts of its own in ureq.
        let get = |cookie: Option<&str>| {
            self.with_cookie(
                self.http.get(url).timeout(CALL_TIMEOUT).set("Range", &format!("bytes={offset}-{end}")),
                cookie,
            )
            .call()
            .map_err(Box::new)
        };
        let used = self.cookie();
        let resp = match get(used.as_deref()) {
            // The session ended: log in again once, then ask again.
            Err(e) if matches!(*e, ureq::Error::Status(401, _)) => {
                let session = self.session.upgrade().ok_or("the session is closed")?;
                session.login_again_after(used.as_deref()).map_err(|e| {
                    format!("bytes {offset}-{end}: the host ended the session, and logging in again failed: {e}")
                })?;
                get(self.cookie().as_deref())
            }
            other => other,
        }
        .map_err(|e| http_failure(*e, &format!("bytes {offset}-{end}")))?;
        if resp.status() != 206 {
            return Err(format!(
                "bytes {offset}-{end}: the host answered HTTP {} {} instead of a byte range",
                resp.status(),
                resp.status_text()
            ));
        }
        resp.into_reader().read_exact(buf).map_err(|e| format!("bytes {offset}-{end}: {}", cause_chain(&e)))?;
        Ok(())
    }

    /// Writes a whole file at `url` from `body`, `len` bytes.
    /// The upload has no deadline (a bandwidth window may hold it for hours); it goes on a new
    /// connection, whose socket times out a read or write that waits `CALL_TIMEOUT` (a pooled
    /// one has no timeouts in ureq). The session is checked first (logging in again if it
    /// lapsed during an earlier upload), as a PUT cannot be sent twice.
    pub fn put(&self, url: &str, body: impl Read + Send + 'static, len: u64) -> Result<(), String> {
        if let Some(session) = self.session.upgrade() {
            session
                .call("<CurrentTime xmlns=\"urn:vim25\"><_this type=\"ServiceInstance\">ServiceInstance</_this></CurrentTime>")
                .map_err(|e| format!("checking the session before the upload: {e}"))?;
        }
        self.with_cookie(
            self.upload
                .put(url)
                .set("Content-Type", "application/octet-stream")
                .set("Content-Length", &len.to_string()),
            self.cookie().as_deref(),
        )
        .send(body)
        .map_err(|e| http_failure(e, "the upload"))?;
        Ok(())
    }
}

/// A transfer's failure: the host's HTTP status, or what broke the connection.
fn http_failure(e: ureq::Error, what: &str) -> String {
    match e {
        ureq::Error::Status(code, r) => format!("{what}: the host answered HTTP {code} {}", r.status_text()),
        ureq::Error::Transport(t) => format!("{what}: {}", tls_or_chain(&t)),
    }
}

fn capped_version(v: &str) -> &'static str {
    // vim25 versions this client's requests follow; newer hosts answer older versions too.
    const KNOWN: &[(u32, u32, &str)] = &[(6, 0, "6.0"), (6, 5, "6.5"), (6, 7, "6.7"), (7, 0, "7.0"), (8, 0, "8.0")];
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    KNOWN.iter().rev().find(|(a, b, _)| (*a, *b) <= have).map_or("6.0", |k| k.2)
}

fn service_content(reply: &El) -> Result<ServiceContent, SoapError> {
    let r = reply.child("returnval").ok_or_else(|| SoapError::Protocol("no service content in the reply".into()))?;
    let need =
        |name: &str| r.moref_of(name).ok_or_else(|| SoapError::Protocol(format!("the service content has no {name}")));
    let about = r.child("about");
    let about_text = |name: &str| about.and_then(|a| a.text_of(name)).unwrap_or_default().to_string();
    Ok(ServiceContent {
        root_folder: need("rootFolder")?,
        property_collector: need("propertyCollector")?,
        view_manager: need("viewManager")?,
        session_manager: need("sessionManager")?,
        full_name: about_text("fullName"),
        api_type: about_text("apiType"),
        api_version: about_text("apiVersion"),
    })
}

fn object_contents(result: &El) -> Vec<ObjectContent> {
    result
        .children("objects")
        .filter_map(|o| {
            let obj = o.moref_of("obj")?;
            let props = o
                .children("propSet")
                .filter_map(|p| Some((p.text_of("name")?.to_string(), p.child("val")?.clone())))
                .collect();
            Some(ObjectContent { obj, props })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: &str) -> String {
        format!(
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
        )
    }

    #[test]
    fn faults_are_named_by_their_type() {
        let text = env("<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Login failure</faultstring>\
             <detail><InvalidLoginFault xmlns=\"urn:vim25\" xsi:type=\"InvalidLogin\"></InvalidLoginFault></detail></soapenv:Fault>");
        assert_eq!(
            read_reply(&text, &[]),
            Err(SoapError::Fault { kind: "InvalidLogin".into(), message: "Login failure".into() })
        );
        let text = env("<soapenv:Fault><faultcode>x</faultcode><faultstring>gone</faultstring>\
             <detail><ManagedObjectNotFoundFault xmlns=\"urn:vim25\"><obj type=\"VirtualMachine\">vm-9</obj></ManagedObjectNotFoundFault></detail></soapenv:Fault>");
        assert_eq!(read_reply(&text, &[]).unwrap_err().fault_kind(), Some("ManagedObjectNotFound"));
        assert!(matches!(read_reply("<html>502 Bad Gateway</html>", &[]), Err(SoapError::Protocol(_))));
        assert!(matches!(read_reply(&env(""), &[]), Err(SoapError::Protocol(_))));
    }

    #[test]
    fn paged_results_and_missing_properties() {
        let text = env("<RetrievePropertiesExResponse xmlns=\"urn:vim25\"><returnval><token>7</token>\
             <objects><obj type=\"VirtualMachine\">vm-1</obj><propSet><name>name</name><val xsi:type=\"xsd:string\">a &amp; b</val></propSet></objects>\
             <objects><obj type=\"VirtualMachine\">vm-2</obj></objects><objects><propSet><name>x</name></propSet></objects>\
             </returnval></RetrievePropertiesExResponse>");
        let reply = read_reply(&text, &[]).unwrap();
        let result = reply.child("returnval").unwrap();
        assert_eq!(result.text_of("token"), Some("7"));
        let objs = object_contents(result);
        assert_eq!(objs.len(), 2, "an object without obj is skipped");
        assert_eq!(objs[0].text("name"), Some("a & b"));
        assert!(objs[1].props.is_empty());
    }

    #[test]
    fn task_errors_carry_the_fault_type() {
        let el = xml::parse(
            "<val xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><fault xsi:type=\"FileFault\"><file>x</file></fault>\
             <localizedMessage>Error caused by file x</localizedMessage></val>",
            &[],
        )
        .unwrap();
        assert_eq!(
            method_fault(&el),
            SoapError::Fault { kind: "FileFault".into(), message: "Error caused by file x".into() }
        );
    }

    #[test]
    fn thumbprints_match_in_either_form() {
        let t = Thumbprints::of(b"certificate");
        assert!(t.matches(&t.sha256) && t.matches(&t.sha1.replace(':', "").to_lowercase()));
        assert!(!t.matches("00:11"));
        assert!(check_thumbprint(&t.sha256).is_ok() && check_thumbprint(&t.sha1).is_ok());
        assert!(check_thumbprint("AB:CD").is_err() && check_thumbprint(&"ZZ".repeat(32)).is_err());
    }

    #[test]
    fn urls_are_encoded() {
        assert_eq!(url_encode("my vm/disk 1.vmdk", true), "my%20vm/disk%201.vmdk");
        assert_eq!(url_encode("DC 0/&x", false), "DC%200%2F%26x");
        assert_eq!(capped_version("8.0.2.0"), "8.0");
        assert_eq!(capped_version("6.5"), "6.5");
        assert_eq!(capped_version("9.1"), "8.0");
        assert_eq!(capped_version("5.5"), "6.0");
    }

    const REPLY: &str = "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
        xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><RetrievePropertiesExResponse xmlns=\"urn:vim25\">\
        <returnval><token>1</token><objects><obj type=\"VirtualMachine\">vm-1</obj><propSet><name>config</name>\
        <val xsi:type=\"VirtualMachineConfigInfo\"><name>a</name><hardware><numCPU>2</numCPU><device xsi:type=\"VirtualDisk\">\
        <key>2000</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>[ds] a/a.vmdk</fileName></backing>\
        <controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>1024</capacityInKB></device></hardware>\
        </val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>";

    /// Whatever a reply holds, reading it and its VM configuration ends in a value or an error.
    fn read_all(text: &str) {
        if let Ok(reply) = read_reply(text, &["val"]) {
            for o in reply.child("returnval").map(object_contents).unwrap_or_default() {
                if let Some(c) = o.props.get("config") {
                    let _ = super::super::config::parse(c);
                }
            }
        }
    }

    #[test]
    fn every_truncation_of_a_reply_is_an_error_or_a_value() {
        assert!(read_reply(REPLY, &[]).is_ok());
        for end in 0..REPLY.len() {
            if REPLY.is_char_boundary(end) {
                read_all(&REPLY[..end]);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn hostile_replies_never_panic(s in "[<>/a-zA-Z0-9 =\":&;!?\\-]{0,400}") {
            read_all(&s);
        }

        #[test]
        fn mutated_replies_never_panic(at in 0usize..2000, junk in "[<>/a-z0-9\"&;]{0,12}", cut in 0usize..64) {
            let at = at % REPLY.len();
            if REPLY.is_char_boundary(at) {
                let end = (at + cut).min(REPLY.len());
                let end = (end..=REPLY.len()).find(|e| REPLY.is_char_boundary(*e)).unwrap_or(REPLY.len());
                read_all(&format!("{}{junk}{}", &REPLY[..at], &REPLY[end..]));
            }
        }
    }
}
