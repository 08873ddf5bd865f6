//! The API's own client, for the command line and scripts: HTTPS (rustls) with an API token,
//! JSON in and out. The server's certificate is checked against a file the admin gives: a
//! certificate equal to one in it is trusted as is (the appliance's self-signed one, pinned),
//! otherwise the chain must lead to one of them as a CA.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// Trusts exactly the given certificates, or chains to them as CAs.
#[derive(Debug)]
struct Pinned {
    pins: Vec<CertificateDer<'static>>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pins.iter().any(|p| p.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.chain {
            Some(v) => v.verify_server_cert(end_entity, intermediates, name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client of one appliance's API.
pub struct ApiClient {
    host: String,
    port: u16,
    token: String,
    tls: tokio_rustls::TlsConnector,
}

impl ApiClient {
    /// `server`: https://HOST[:PORT] (port 8443 when left out); `trusted_pem`: the appliance's
    /// certificate or its CA.
    pub fn new(server: &str, token: &str, trusted_pem: &[u8]) -> Result<ApiClient, String> {
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| format!("server {server:?}: use https://HOST[:PORT]"))?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                (h.to_string(), p.parse().map_err(|_| format!("server {server:?}: port {p:?} is not a number"))?)
            }
            _ => (rest.to_string(), 8443),
        };
        let pins = CertificateDer::pem_slice_iter(trusted_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading the trusted certificate: {e}"))?;
        if pins.is_empty() {
            return Err("the trusted certificate file holds no PEM certificate".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in &pins {
            let _ = roots.add(c.clone());
        }
        let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().ok();
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("setting up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pins, chain, provider }))
            .with_no_client_auth();
        Ok(ApiClient {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            token: token.to_string(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// One request; the reply's status and JSON body (null when empty). Transport failures
    /// name the server and the cause.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let server = format!("https://{}:{}", self.host, self.port);
        let failed = |what: &str, e: String| format!("{server}: {what}: {e}");
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed("connecting", e.to_string()))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| failed("server name", e.to_string()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| failed("TLS handshake", e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed("HTTP", e.to_string()))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| failed("building the request", e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| failed(&format!("{method} {path}"), e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| failed("reading the reply", e.to_string()))?.to_bytes();
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| failed(&format!("{method} {path}: the reply is not JSON"), e.to_string()))?
        };
        Ok((status, value))
    }
}
