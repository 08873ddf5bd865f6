//! Serving the API over HTTPS: rustls in front of hyper's HTTP/1.1, one task per connection.

use axum::Router;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::rustls;

fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<rustls::ServerConfig> {
    let bad = |what: &str, e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("reading the TLS certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("reading the TLS key", e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setting up TLS", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad("the TLS certificate", e.to_string()))
}

/// Serves `app` over HTTPS on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cert_pem: &[u8],
    key_pem: &[u8],
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert_pem, key_pem)?));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that fails the handshake (plain HTTP, a scanner) only loses its connection.
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |req| {
                let mut app = app.clone();
                async move { tower::Service::call(&mut app, req).await }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}
