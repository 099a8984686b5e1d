//! The HTTP clients of the service (LLM, gateways, Prometheus, the demo)
//! start here, so the TLS provider is installed before any is built.

/// Installs the one TLS provider (ring) every client shares. reqwest is
/// built without a provider of its own and panics when a client is built
/// before this (`http_client` sees to it); calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The builder every HTTP client of the service starts from (LLM, gateways,
/// Prometheus): it installs the TLS provider first, so no caller has to
/// remember to.
pub fn http_client() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}
