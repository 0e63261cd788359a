//! What a TLS client trusts, and its rustls configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::server::read_certs;
use crate::{provider, TlsError};

/// The CAs a client trusts: those of the PEM file `ca_file`, or the
/// system's (the bundle OpenSSL would read, `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` honoured) without one.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for ca in read_certs(path, "CA certificate")? {
                store.add(ca).map_err(|source| TlsError::Config {
                    context: format!("use CA certificate file {}", path.display()),
                    source,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            // Unreadable entries are skipped, as OpenSSL does; only a
            // store with nothing usable is an error.
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "no CA certificate found; give a CA file".into());
                return Err(TlsError::SystemRoots(why));
            }
        }
    }
    Ok(store)
}

/// A client configuration that verifies servers' certificates against
/// `roots` and their names, offering the ALPN protocols `alpn`.
pub fn config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            context: "choose TLS protocol versions".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// [`config`] of [`roots`], shared.
pub fn config_for(ca_file: Option<&Path>, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(config(roots(ca_file)?, alpn)?))
}
