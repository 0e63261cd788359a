//! A server's certificate and key, read from PEM files and read again
//! when the files change, so a renewed certificate (cert-manager,
//! certbot, a rotated Kubernetes secret) is served without a restart.
//!
//! The files' metadata (modification time, size, inode) is looked at
//! when a connection is accepted: two `stat` calls, small beside the
//! handshake that follows, and a new connection sees a replaced
//! certificate at once, with no timer to wait for. Connections already
//! open keep the certificate they were accepted with. A new pair that
//! cannot be used (half written, a key that does not match) is logged
//! once and the old one kept; it is tried again when the files change
//! again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::{provider, TlsError};

/// What identifies a version of a file: replaced by a rename (a new
/// inode) or rewritten in place (a new time or size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// The certificate a server serves, reloaded when its files change.
/// Cheap to clone: clones share the current configuration.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    cert: PathBuf,
    key: PathBuf,
    alpn: Vec<Vec<u8>>,
    state: Mutex<State>,
}

struct State {
    config: Arc<ServerConfig>,
    /// The files' stamps when last looked at (loaded or not).
    seen: (Option<Stamp>, Option<Stamp>),
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM certificate chain (server certificate first) and
    /// private key (PKCS#8, PKCS#1 or SEC1), offering the ALPN protocols
    /// `alpn` (none: any client is served). The error names the file that
    /// could not be used.
    pub fn load(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let seen = (Stamp::of(cert), Stamp::of(key));
        let config = build(cert, key, &alpn)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                alpn,
                state: Mutex::new(State { config, seen }),
            }),
        })
    }

    /// The configuration to accept a new connection with: the files'
    /// current pair if they changed and can be used, else the last good
    /// one.
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = (Stamp::of(&self.inner.cert), Stamp::of(&self.inner.key));
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now != state.seen {
            state.seen = now;
            match build(&self.inner.cert, &self.inner.key, &self.inner.alpn) {
                Ok(config) => {
                    tracing::info!(cert = %self.inner.cert.display(), "TLS certificate reloaded");
                    state.config = config;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "TLS certificate files changed but cannot be used; serving the previous certificate"
                ),
            }
        }
        Arc::clone(&state.config)
    }

    /// A tokio-rustls acceptor with [`current`](Self::current)'s
    /// configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

/// Reads a PEM certificate chain; at least one certificate.
pub(crate) fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(chain)
}

fn build(cert: &Path, key: &Path, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(cert, "TLS certificate")?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "TLS key",
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let context = || {
        format!(
            "use TLS certificate {} with key {}",
            cert.display(),
            key.display()
        )
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            context: "choose TLS protocol versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| TlsError::Config {
            context: context(),
            source,
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("missing.crt");
        let key = dir.path().join("missing.key");
        let e = ServerTls::load(&cert, &key, &[]).err().unwrap().to_string();
        assert!(e.contains("missing.crt"), "{e}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = ServerTls::load(&empty, &key, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("empty.crt") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_broken_new_pair_keeps_the_old_one_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = shardline_testkit::TlsFiles::make(dir.path()).unwrap();
        let tls = ServerTls::load(&files.server_cert, &files.server_key, &[]).unwrap();
        let first = tls.current();
        assert!(
            Arc::ptr_eq(&first, &tls.current()),
            "unchanged files are not read again"
        );
        // A half-written certificate: the old configuration stays.
        std::fs::write(&files.server_cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
        assert!(Arc::ptr_eq(&first, &tls.current()));
        // A new pair from the same CA: taken.
        let other = files.issue("again", "IP:127.0.0.1,DNS:localhost").unwrap();
        std::fs::copy(&other.0, &files.server_cert).unwrap();
        std::fs::copy(&other.1, &files.server_key).unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.current()));
    }
}
