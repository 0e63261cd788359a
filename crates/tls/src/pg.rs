//! TLS towards PostgreSQL servers, as libpq's `sslmode` says.
//!
//! A shard's DSN may carry `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of CAs, or
//! `system`). tokio-postgres parses neither the verifying modes nor
//! `sslrootcert`, so [`parse_dsn`] takes both out of the DSN before
//! tokio-postgres reads the rest, and returns them as a [`PgTls`]: the
//! router hands it to its raw sessions ([`PgTls::start`], an
//! `SSLRequest` before the startup message), the manager to
//! tokio-postgres (`PgTls` is a `MakeTlsConnect`).
//!
//! What each mode checks, as libpq does:
//! - `disable`: plain TCP. **Also the default when the DSN names no
//!   `sslmode`** (libpq's is `prefer`): shardline connected in plain
//!   text before, and a mode that verifies nothing protects against no
//!   active attacker; ask for TLS by name.
//! - `prefer`: TLS if the server offers it, else plain; `require`: TLS or
//!   nothing. Neither verifies the certificate, unless `sslrootcert` is
//!   given: then the chain is verified as in `verify-ca`.
//! - `verify-ca`: the chain must lead to a CA of `sslrootcert`;
//!   `verify-full`: that, and the certificate must name the DSN's host.
//!   Both need `sslrootcert` (libpq falls back to
//!   `~/.postgresql/root.crt`; a service has no such home, so the file is
//!   named).
//!
//! Unix-socket hosts never use TLS (PostgreSQL refuses it there).
//! Channel binding is not offered (SCRAM's `n` flag): the
//! `tls-server-end-point` hash depends on the certificate's signature
//! algorithm, which would need an X.509 parser.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::{client, provider, TlsError};

/// The ALPN protocol PostgreSQL 17 and later servers name.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) is not offered:
            // it only ever helps servers that refuse plain logins.
            other => {
                return Err(TlsError::Dsn(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How to connect to one PostgreSQL server: its DSN's `sslmode` and the
/// client configuration that checks what that mode checks. Cheap to
/// clone.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    /// `None` exactly when `mode` is `Disable`.
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.mode).finish()
    }
}

/// Why TLS to a PostgreSQL server failed.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    // The io errors are shown in the message, not as sources: their own
    // sources repeat their text.
    #[error("TLS request: {0}")]
    Io(io::Error),
    #[error("the server does not accept TLS (sslmode={0})")]
    Refused(&'static str),
    #[error("the server answered the TLS request with {0:#04x}, not S or N")]
    Unexpected(u8),
    #[error("host {0:?} cannot be checked against a certificate")]
    ServerName(String),
    /// The handshake failed; the message says why (an unknown CA, a
    /// certificate for another name).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
}

/// A stream to a server: as it was, or TLS over it.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl PgTls {
    /// Plain TCP.
    pub fn disabled() -> PgTls {
        PgTls {
            mode: SslMode::Disable,
            config: None,
        }
    }

    /// The TLS of `mode` with the CAs of `root_cert` (a PEM file, or
    /// `system`).
    pub fn new(mode: SslMode, root_cert: Option<&str>) -> Result<PgTls, TlsError> {
        if mode == SslMode::Disable {
            return Ok(PgTls::disabled());
        }
        let roots = match root_cert {
            Some("system") => Some(client::roots(None)?),
            Some(path) => Some(client::roots(Some(Path::new(path)))?),
            None => None,
        };
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::Dsn(format!(
                    "sslmode={} needs sslrootcert (a PEM file of CAs, or system)",
                    mode.name()
                )))
            }
            (SslMode::Disable, _) => return Ok(PgTls::disabled()),
            (SslMode::Prefer | SslMode::Require, None) => {
                Arc::new(Unverified(Arc::clone(&provider)))
            }
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
                Arc::new(CaOnly(webpki(roots, &provider)?))
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                context: "choose TLS protocol versions".into(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(PgTls {
            mode,
            config: Some(Arc::new(config)),
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The mode tokio-postgres is given with this connector: it sends the
    /// `SSLRequest`, this connector verifies.
    pub fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// Negotiates TLS on a fresh connection to `host`, before the startup
    /// message: `Plain` untouched when the mode is `disable` (nothing is
    /// sent), or when the server refuses and the mode is `prefer`.
    pub async fn start<S>(&self, mut stream: S, host: &str) -> Result<MaybeTls<S>, PgTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(config) = &self.config else {
            return Ok(MaybeTls::Plain(stream));
        };
        stream
            .write_all(&SSL_REQUEST)
            .await
            .map_err(PgTlsError::Io)?;
        match stream.read_u8().await.map_err(PgTlsError::Io)? {
            b'S' => {}
            b'N' if self.mode == SslMode::Prefer => return Ok(MaybeTls::Plain(stream)),
            b'N' => return Err(PgTlsError::Refused(self.mode.name())),
            other => return Err(PgTlsError::Unexpected(other)),
        }
        let name = server_name(host).ok_or_else(|| PgTlsError::ServerName(host.to_string()))?;
        // `read_u8` on the unbuffered stream took exactly the answer
        // byte: whatever came after it (CVE-2021-23222's injected bytes)
        // goes to the handshake, never to the protocol as plain text.
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await
            .map_err(PgTlsError::Handshake)?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}

fn webpki(
    roots: rustls::RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::Dsn(format!("use sslrootcert: {e}")))
}

/// `verify-ca`: the chain is verified, the name is not.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name only once the chain is good, so a name
        // error means a good chain.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encryption without
/// knowing who answers. The handshake's signatures are still checked
/// (they prove the server holds the certificate's key).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Parses a DSN (key/value or URL form) into tokio-postgres's settings
/// and its TLS (see the module docs), reading `sslrootcert`.
pub fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, PgTls), TlsError> {
    let (mut cfg, mode, root_cert) = split_dsn(dsn)?;
    let tls = PgTls::new(mode, root_cert.as_deref())?;
    cfg.ssl_mode(tls.tokio_postgres_mode());
    Ok((cfg, tls))
}

/// Splits a DSN into tokio-postgres's settings, its `sslmode` (default
/// `disable`) and its `sslrootcert`, checking they go together but
/// reading no file: for checking a DSN, or reading its host and user.
pub fn split_dsn(dsn: &str) -> Result<(tokio_postgres::Config, SslMode, Option<String>), TlsError> {
    let (rest, mode, root_cert) = take_tls_params(dsn);
    let cfg = tokio_postgres::Config::from_str(&rest).map_err(|e| TlsError::Dsn(e.to_string()))?;
    let mode = match mode {
        Some(m) => m.parse()?,
        None => SslMode::Disable,
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(TlsError::Dsn(format!(
            "sslmode={} needs sslrootcert (a PEM file of CAs, or system)",
            mode.name()
        )));
    }
    Ok((cfg, mode, root_cert))
}

/// The DSN without its `sslmode` and `sslrootcert`, and their values.
/// A DSN it cannot read is returned whole, for tokio-postgres to name
/// what is wrong.
fn take_tls_params(dsn: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root = Some(value);
            true
        }
        _ => false,
    };
    let rest = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        match dsn.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(&percent_decode(k), percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => dsn.to_string(),
        }
    } else {
        let mut kept = String::with_capacity(dsn.len());
        for (span, key, value) in KeyValues::new(dsn) {
            let Some(key) = key else {
                // Unreadable from here on: keep it for tokio-postgres.
                kept.push_str(&dsn[span.0..]);
                break;
            };
            if !take(key, value) {
                kept.push_str(&dsn[span.0..span.1]);
                kept.push(' ');
            }
        }
        kept
    };
    (rest, mode, root)
}

/// The `key=value` pairs of a key/value DSN: each pair's byte span, its
/// key and its unescaped value; `None` as the key where it stops making
/// sense.
struct KeyValues<'a> {
    s: &'a str,
    at: usize,
    done: bool,
}

impl<'a> KeyValues<'a> {
    fn new(s: &'a str) -> Self {
        KeyValues {
            s,
            at: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for KeyValues<'a> {
    type Item = ((usize, usize), Option<&'a str>, String);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let b = self.s.as_bytes();
        let skip_ws = |mut i: usize| {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        };
        let start = skip_ws(self.at);
        if start == b.len() {
            return None;
        }
        let mut i = start;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &self.s[start..i];
        i = skip_ws(i);
        if i == b.len() || b[i] != b'=' || key.is_empty() {
            self.done = true;
            return Some(((start, b.len()), None, String::new()));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        self.done = true;
                        return Some(((start, b.len()), None, String::new()));
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        self.at = i;
        Some((
            (start, i),
            Some(key),
            String::from_utf8_lossy(&value).into_owned(),
        ))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = PgTlsError;

    // tokio-postgres makes a connector for every host before it looks
    // at the mode, so `disable` gets one that is never used.
    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, PgTlsError> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: server_name(domain),
            domain: domain.to_string(),
        })
    }
}

/// One connection's handshake, for tokio-postgres.
pub struct PgTlsConnect {
    /// `None` with `sslmode=disable`, when tokio-postgres sends no
    /// `SSLRequest`.
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    domain: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, PgTlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self
                .config
                .ok_or(PgTlsError::Refused(SslMode::Disable.name()))?;
            let name = self.name.ok_or(PgTlsError::ServerName(self.domain))?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(|s| PgTlsStream(Box::new(s)))
                .map_err(PgTlsError::Handshake)
        })
    }
}

/// A TLS stream tokio-postgres speaks over.
pub struct PgTlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_leave_the_key_value_form() {
        let (rest, mode, root) = take_tls_params(
            "host=127.0.0.1 port=5432 sslmode=verify-full  sslrootcert='/etc/a b/ca.pem' user=x",
        );
        assert_eq!(rest.trim(), "host=127.0.0.1 port=5432 user=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/a b/ca.pem"));
        let (rest, mode, _) = take_tls_params("host=h password='it\\'s' sslmode = require");
        assert_eq!(rest.trim(), "host=h password='it\\'s'");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn tls_settings_leave_the_url_form() {
        let (rest, mode, root) = take_tls_params(
            "postgresql://u:p@localhost:5432/db?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgresql://u:p@localhost:5432/db?connect_timeout=3");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, _, _) = take_tls_params("postgres://h/db?sslmode=disable");
        assert_eq!(rest, "postgres://h/db");
    }

    #[test]
    fn modes_are_checked() {
        let e = parse_dsn("host=h sslmode=allow").err().unwrap().to_string();
        assert!(e.contains("\"allow\""), "{e}");
        let e = parse_dsn("host=h sslmode=verify-full")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs sslrootcert"), "{e}");
        let (cfg, tls) = parse_dsn("host=h user=u").unwrap();
        assert_eq!(tls.mode(), SslMode::Disable);
        assert_eq!(cfg.get_user(), Some("u"));
        let (_, tls) = parse_dsn("host=h sslmode=require").unwrap();
        assert_eq!(tls.mode(), SslMode::Require);
        // A broken DSN is tokio-postgres's to describe.
        assert!(parse_dsn("host=h 'oops").is_err());
    }
}
