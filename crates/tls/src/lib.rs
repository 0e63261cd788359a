//! TLS for every shardline connection, on one stack: rustls 0.23 with the
//! ring provider (the one etcd-client's rustls already builds), so no
//! second TLS library or crypto provider is compiled.
//!
//! Servers (the router's and manager's HTTP listeners, the router's
//! PostgreSQL wire listener) serve a certificate that is reloaded when
//! its files change; clients (the Rust client and CLI over HTTPS, the
//! router and manager towards shards) trust a CA file or the system's
//! roots.
//!
//! # Layout
//! - [`server`]: [`ServerTls`], a certificate and key from PEM files,
//!   reloaded on change, a broken new pair keeping the old one.
//! - [`client`]: [`client::roots`] and [`client::config`], the CAs a
//!   client trusts and its rustls configuration.
//! - [`pg`] (feature `pg`): TLS towards PostgreSQL servers: the DSN's
//!   `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, the `SSLRequest`
//!   on a raw stream, and a tokio-postgres connector.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub mod client;
#[cfg(feature = "pg")]
pub mod pg;
pub mod server;

pub use rustls;
pub use server::ServerTls;

/// Why a TLS setting could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("read {what} file {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A certificate file without a certificate.
    #[error("TLS certificate file {0} holds no certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the configuration (a key that does not match its
    /// certificate, an unusable CA).
    #[error("{context}: {source}")]
    Config {
        context: String,
        source: rustls::Error,
    },
    /// The system's CA store could not be read, or holds no CA.
    #[error("read the system's trusted CAs: {0}")]
    SystemRoots(String),
    /// A DSN's TLS settings are not usable (an unknown `sslmode`, a
    /// verifying mode without a CA).
    #[error("{0}")]
    Dsn(String),
}

/// The crypto provider of every configuration here: ring.
pub fn provider() -> Arc<CryptoProvider> {
    // ring, the provider etcd-client's rustls already builds: aws-lc
    // (rustls's choice, with post-quantum key exchange) would build a
    // second, C, crypto library. Deprecated in 0.23.48 for that reason
    // only.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}
