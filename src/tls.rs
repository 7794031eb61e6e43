//! TLS client set-up shared by every outbound transport: the system trust roots plus an
//! optional extra PEM file (a simulator's CA), rustls with the ring provider, and a pooled
//! HTTP/1.1 + HTTP/2 client for the JSON APIs (FCM, SMS gateways).

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// The process-wide crypto provider (ring); installing it twice is harmless.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust store: the system roots plus every certificate in `ca_file` (if not empty).
pub fn root_store(ca_file: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if !ca_file.is_empty() {
        let ca_err = |message: String| TlsError::CaFile {
            path: ca_file.to_string(),
            message,
        };
        let pem = std::fs::read(ca_file).map_err(|e| ca_err(e.to_string()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(ca_err("no PEM certificate in it".into()));
        }
    }
    Ok(roots)
}

/// A rustls client configuration offering the given ALPN protocols.
pub fn client_config(ca_file: &str, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A pooled HTTPS (and plain HTTP) client: HTTP/2 when the server offers it, TCP_NODELAY.
pub type JsonClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub fn json_client(ca_file: &str) -> Result<JsonClient, TlsError> {
    // hyper-rustls sets ALPN itself (`enable_all_versions` offers h2 and http/1.1) and
    // panics when the config already carries protocols, so none are given here.
    let tls = client_config(ca_file, &[])?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(https))
}
