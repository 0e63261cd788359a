//! TLS towards PostgreSQL servers, as libpq's `sslmode` says.
//!
//! A shard's DSN may carry `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a PEM file of CAs, or
//! `system`), and `sslcert` with `sslkey` (a client certificate chain
//! and its unencrypted key, PEM, for servers that ask for one:
//! `hostssl ... cert` or `clientcert=verify-full` in `pg_hba.conf`).
//! tokio-postgres parses none of these but `sslmode`, and not its
//! verifying values, so [`parse_dsn`] takes them out of the DSN before
//! tokio-postgres reads the rest, and returns them as a [`PgTls`]: the
//! router hands it to its raw sessions ([`PgTls::start`], an
//! `SSLRequest` before the startup message, also before a cancel
//! request), the manager to tokio-postgres (`PgTls` is a
//! `MakeTlsConnect`).
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
//! `sslcert` and `sslkey` go together (libpq falls back to files under
//! `~/.postgresql/`, which a service does not have); the certificate is
//! sent only when the server asks for one, and is ignored with
//! `disable`, as libpq does.
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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::server::read_certs;
use crate::{client, provider, TlsError};

/// The ALPN protocol PostgreSQL 17 and later servers name.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    #[default]
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
    /// libpq's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of a DSN, as written (no file read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnTls {
    /// `sslmode`; `disable` when the DSN names none.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CAs, or `system`.
    pub root_cert: Option<String>,
    /// `sslcert`: the client's PEM certificate chain.
    pub cert: Option<String>,
    /// `sslkey`: the key of `cert`, PEM, unencrypted.
    pub key: Option<String>,
}

impl DsnTls {
    /// Whether the settings go together: a verifying mode names its CAs,
    /// a client certificate its key and the other way round. Our own
    /// words, each starting with the setting's name.
    pub fn check(&self) -> Result<(), TlsError> {
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            return Err(TlsError::Dsn(format!(
                "sslmode={} needs sslrootcert (a PEM file of CAs, or system)",
                self.mode.name()
            )));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(TlsError::Dsn(
                "sslcert needs sslkey (the certificate's key, a PEM file)".into(),
            )),
            (None, Some(_)) => Err(TlsError::Dsn(
                "sslkey needs sslcert (the client certificate, a PEM file)".into(),
            )),
            _ => Ok(()),
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

    /// The TLS a DSN's settings ask for, reading their files.
    pub fn from_settings(settings: &DsnTls) -> Result<PgTls, TlsError> {
        let mode = settings.mode;
        if mode == SslMode::Disable {
            return Ok(PgTls::disabled());
        }
        settings.check()?;
        let roots = match settings.root_cert.as_deref() {
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
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                context: "choose TLS protocol versions".into(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(Path::new(cert), "sslcert")?;
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                    what: "sslkey",
                    path: key.into(),
                    message: e.to_string(),
                })?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|source| TlsError::Config {
                        context: format!("use sslcert {cert} with sslkey {key}"),
                        source,
                    })?
            }
            // `check` refused one without the other.
            _ => builder.with_no_client_auth(),
        };
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
/// and its TLS (see the module docs), reading `sslrootcert`, `sslcert`
/// and `sslkey`.
pub fn parse_dsn(dsn: &str) -> Result<(tokio_postgres::Config, PgTls), TlsError> {
    let (mut cfg, settings) = split_dsn(dsn)?;
    let tls = PgTls::from_settings(&settings)?;
    cfg.ssl_mode(tls.tokio_postgres_mode());
    Ok((cfg, tls))
}

/// Splits a DSN into tokio-postgres's settings and its TLS settings,
/// checking they go together but reading no file: for checking a DSN,
/// or reading its host and user.
pub fn split_dsn(dsn: &str) -> Result<(tokio_postgres::Config, DsnTls), TlsError> {
    let (rest, taken) = take_tls_params(dsn);
    let cfg = tokio_postgres::Config::from_str(&rest).map_err(|e| TlsError::Dsn(e.to_string()))?;
    let settings = DsnTls {
        mode: match taken.mode {
            Some(m) => m.parse()?,
            None => SslMode::Disable,
        },
        root_cert: taken.root_cert,
        cert: taken.cert,
        key: taken.key,
    };
    settings.check()?;
    Ok((cfg, settings))
}

/// The TLS settings taken out of a DSN, as written.
#[derive(Debug, Default)]
struct Taken {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// The DSN without its `sslmode`, `sslrootcert`, `sslcert` and `sslkey`,
/// and their values. A DSN it cannot read is returned whole, for
/// tokio-postgres to name what is wrong.
fn take_tls_params(dsn: &str) -> (String, Taken) {
    let mut taken = Taken::default();
    let mut take = |key: &str, value: String| {
        let slot = match key {
            "sslmode" => &mut taken.mode,
            "sslrootcert" => &mut taken.root_cert,
            "sslcert" => &mut taken.cert,
            "sslkey" => &mut taken.key,
            _ => return false,
        };
        *slot = Some(value);
        true
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
    (rest, taken)
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
        let (rest, t) = take_tls_params(
            "host=127.0.0.1 port=5432 sslmode=verify-full  sslrootcert='/etc/a b/ca.pem' user=x \
             sslcert=/etc/c.pem sslkey = '/etc/k.pem'",
        );
        assert_eq!(rest.trim(), "host=127.0.0.1 port=5432 user=x");
        assert_eq!(t.mode.as_deref(), Some("verify-full"));
        assert_eq!(t.root_cert.as_deref(), Some("/etc/a b/ca.pem"));
        assert_eq!(t.cert.as_deref(), Some("/etc/c.pem"));
        assert_eq!(t.key.as_deref(), Some("/etc/k.pem"));
        let (rest, t) = take_tls_params("host=h password='it\\'s' sslmode = require");
        assert_eq!(rest.trim(), "host=h password='it\\'s'");
        assert_eq!(t.mode.as_deref(), Some("require"));
        assert_eq!(t.cert, None);
    }

    #[test]
    fn tls_settings_leave_the_url_form() {
        let (rest, t) = take_tls_params(
            "postgresql://u:p@localhost:5432/db?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Ftmp%2Fca.pem\
             &sslcert=%2Ftmp%2Fc.pem&sslkey=%2Ftmp%2Fk.pem",
        );
        assert_eq!(rest, "postgresql://u:p@localhost:5432/db?connect_timeout=3");
        assert_eq!(t.mode.as_deref(), Some("verify-ca"));
        assert_eq!(t.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(t.cert.as_deref(), Some("/tmp/c.pem"));
        assert_eq!(t.key.as_deref(), Some("/tmp/k.pem"));
        let (rest, _) = take_tls_params("postgres://h/db?sslmode=disable");
        assert_eq!(rest, "postgres://h/db");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = split_dsn("host=h sslmode=require sslcert=/c.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("sslcert needs sslkey"), "{e}");
        let e = split_dsn("host=h sslmode=require sslkey=/k.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("sslkey needs sslcert"), "{e}");
        let (_, t) = split_dsn("host=h sslmode=require sslcert=/c.pem sslkey=/k.pem").unwrap();
        assert_eq!(t.cert.as_deref(), Some("/c.pem"));
        // The files are read when the TLS is made: a missing one is named.
        let e = parse_dsn("host=h sslmode=require sslcert=/nonexistent/c.pem sslkey=/k.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslcert file /nonexistent/c.pem"), "{e}");
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
