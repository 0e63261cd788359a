//! A raw connection to a PostgreSQL server, for both front ends: the
//! router logs in as the tenant's role (SCRAM-SHA-256, MD5, cleartext or
//! trust, as the server asks); the wire front end then passes protocol
//! messages through unchanged, the HTTP front end writes its own (see
//! [`super::pool`]). It keeps what the front ends need about the
//! session: the backend's key (for cancel requests and version claims),
//! the parameters the server reported, the prepared statements it holds
//! for each front end, and the routing version it last stated.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use shardline_tls::pg::{MaybeTls, PgTls, PgTlsError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::frame::{read_frame, Fields, Frame};
use super::statements::StatementCache;

/// A byte stream to a server (TCP or a Unix socket).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Why a server connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {0}: timed out")]
    Timeout(String),
    #[error("server connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the login (its own error).
    #[error("server refused the login: {}", .0.message)]
    Refused(Box<DbFields>),
    #[error("the server asked for an authentication method the router does not speak ({0})")]
    Unsupported(i32),
    #[error("the shard's DSN names no host")]
    NoHost,
    /// TLS as the DSN's `sslmode` asks could not be had: refused, or
    /// the certificate is not the one the mode accepts.
    #[error("connect to {addr}: {source}")]
    Tls { addr: String, source: PgTlsError },
}

/// An error PostgreSQL sent: the fields of an `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbFields {
    /// The untranslated severity (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the client's statement (`P`; an
    /// internal query's position, `p`, is not kept).
    pub position: Option<u32>,
}

impl DbFields {
    /// The fields of an `ErrorResponse` (or `NoticeResponse`) body.
    pub fn parse(body: &[u8]) -> DbFields {
        let mut out = DbFields::default();
        let mut localized = String::new();
        let mut f = Fields::new(body);
        while let Ok(c) = f.u8() {
            if c == 0 {
                break;
            }
            let Ok(v) = f.cstr() else { break };
            match c {
                b'V' => out.severity = v.to_string(),
                b'S' => localized = v.to_string(),
                b'C' => out.code = v.to_string(),
                b'M' => out.message = v.to_string(),
                b'D' => out.detail = Some(v.to_string()),
                b'H' => out.hint = Some(v.to_string()),
                b'P' => out.position = v.parse().ok(),
                _ => {}
            }
        }
        if out.severity.is_empty() {
            // Servers before 9.6 send only the localized severity.
            out.severity = localized;
        }
        if out.message.is_empty() {
            out.message = "unknown error".into();
        }
        out
    }

    /// Whether the error ended the session.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

/// The longest a cancel request may take to send, TLS handshake
/// included.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send a cancel request for a session, and how: over TLS
/// with the session's own verification when the session runs over TLS
/// (a cancel request then follows an `SSLRequest` and a handshake, as
/// PostgreSQL allows), in plain TCP when it does not.
#[derive(Debug, Clone)]
pub struct CancelKey {
    pub host: Host,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
    /// The session's TLS when the session went over TLS, else disabled
    /// (`prefer` refused by the server asks again for nothing).
    pub tls: PgTls,
}

/// Prepared statements a session holds, by the router's name for them.
/// Bounded: the least recently used is closed when it is full.
#[derive(Debug, Default)]
pub struct Prepared {
    names: HashMap<String, u64>,
    tick: u64,
}

impl Prepared {
    /// Whether the session holds `name`, marking it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name`; returns the name to close to stay within `cap`.
    pub fn insert(&mut self, name: String, cap: usize) -> Option<String> {
        self.tick += 1;
        self.names.insert(name, self.tick);
        if self.names.len() <= cap.max(1) {
            return None;
        }
        let oldest = self
            .names
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&oldest);
        Some(oldest)
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// Forgets every statement (the session deallocated them all).
    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// An open, logged-in server session, idle between transactions.
pub struct ServerConn {
    pub stream: Pin<Box<dyn Stream>>,
    /// Bytes read from the server and not yet taken as messages.
    pub rbuf: BytesMut,
    /// Shared with the client sessions it serves, one at a time (a
    /// count, not a copy, at each attach).
    pub cancel: Arc<CancelKey>,
    /// `ParameterStatus` values the server sent at login.
    pub params: Vec<(String, String)>,
    pub prepared: Prepared,
    /// The routing version this session last stated (0: never).
    pub map_version: u64,
    /// The `shardline.map_version` value that stated it, which the HTTP
    /// front end's reset restores.
    pub claim: Option<String>,
    /// The HTTP front end's prepared statements.
    pub statements: StatementCache,
    /// Whether the HTTP front end's reset check is prepared.
    pub reset_check: bool,
    /// Whether the HTTP front end's [request naming](crate::pg::PooledConn::prepare_naming)
    /// is prepared.
    pub naming: bool,
    pub idle_since: Instant,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("pid", &self.cancel.pid)
            .field("prepared", &self.prepared.len())
            .finish_non_exhaustive()
    }
}

impl ServerConn {
    /// Opens a session with `cfg`'s first host, user, database, password
    /// and options, over TLS as `tls` says (TCP hosts only), and reads
    /// until the server is ready.
    pub async fn connect(
        cfg: &tokio_postgres::Config,
        tls: &PgTls,
        timeout: Duration,
    ) -> Result<ServerConn, ServerError> {
        let host = cfg
            .get_hosts()
            .first()
            .cloned()
            .ok_or(ServerError::NoHost)?;
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let addr = match &host {
            Host::Tcp(h) => format!("{h}:{port}"),
            #[cfg(unix)]
            Host::Unix(p) => format!("{}/.s.PGSQL.{port}", p.display()),
        };
        // Boxed either way, as before TLS: a plain session reads through
        // the same one indirection it always had.
        let (stream, cancel_tls) = tokio::time::timeout(timeout, async {
            let s: (Pin<Box<dyn Stream>>, PgTls) =
                match &host {
                    Host::Tcp(h) => {
                        let s = tokio::net::TcpStream::connect((h.as_str(), port))
                            .await
                            .map_err(|source| ServerError::Connect {
                                addr: addr.clone(),
                                source,
                            })?;
                        s.set_nodelay(true)?;
                        match tls.start(s, h).await {
                            Ok(MaybeTls::Plain(s)) => (Box::pin(s), PgTls::disabled()),
                            Ok(MaybeTls::Tls(s)) => (Box::pin(s), tls.clone()),
                            Err(source) => {
                                return Err(ServerError::Tls {
                                    addr: addr.clone(),
                                    source,
                                })
                            }
                        }
                    }
                    #[cfg(unix)]
                    Host::Unix(_) => (
                        Box::pin(tokio::net::UnixStream::connect(&addr).await.map_err(
                            |source| ServerError::Connect {
                                addr: addr.clone(),
                                source,
                            },
                        )?),
                        PgTls::disabled(),
                    ),
                };
            Ok::<_, ServerError>(s)
        })
        .await
        .map_err(|_| ServerError::Timeout(addr.clone()))??;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            cancel: Arc::new(CancelKey {
                host,
                port,
                pid: 0,
                secret: 0,
                tls: cancel_tls,
            }),
            params: Vec::new(),
            prepared: Prepared::default(),
            map_version: 0,
            claim: None,
            statements: StatementCache::default(),
            reset_check: false,
            naming: false,
            idle_since: Instant::now(),
        };
        tokio::time::timeout(timeout, conn.login(cfg))
            .await
            .map_err(|_| ServerError::Timeout(addr))??;
        Ok(conn)
    }

    async fn login(&mut self, cfg: &tokio_postgres::Config) -> Result<(), ServerError> {
        let user = cfg.get_user().unwrap_or("postgres");
        let mut params: Vec<(&str, &str)> = vec![
            ("user", user),
            ("client_encoding", "UTF8"),
            ("application_name", "shardline-router"),
        ];
        if let Some(db) = cfg.get_dbname() {
            params.push(("database", db));
        }
        if let Some(o) = cfg.get_options() {
            params.push(("options", o));
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut out)?;
        self.stream.write_all(&out).await?;
        let password = cfg.get_password().unwrap_or_default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read().await?;
            let mut fields = Fields::new(&f.body);
            match f.tag {
                b'R' => {
                    let code = fields.i32()?;
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password, &mut out)?,
                        5 => {
                            let s = fields.bytes(4)?;
                            let hash =
                                md5_hash(user.as_bytes(), password, [s[0], s[1], s[2], s[3]]);
                            frontend::password_message(hash.as_bytes(), &mut out)?;
                        }
                        10 => {
                            let mut offers_scram = false;
                            while let Ok(m) = fields.cstr() {
                                if m.is_empty() {
                                    break;
                                }
                                offers_scram |= m == "SCRAM-SHA-256";
                            }
                            if !offers_scram {
                                return Err(ServerError::Unsupported(code));
                            }
                            let s = ScramSha256::new(password, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut out,
                            )?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or(ServerError::Unsupported(code))?;
                            s.update(fields.rest())?;
                            frontend::sasl_response(s.message(), &mut out)?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or(ServerError::Unsupported(code))?;
                            s.finish(fields.rest())?;
                            continue;
                        }
                        other => return Err(ServerError::Unsupported(other)),
                    }
                    self.stream.write_all(&out).await?;
                }
                b'K' => {
                    // Not shared yet: set in place.
                    let key = Arc::make_mut(&mut self.cancel);
                    key.pid = fields.i32()?;
                    key.secret = fields.i32()?;
                }
                b'S' => {
                    let name = fields.cstr()?.to_string();
                    let value = fields.cstr()?.to_string();
                    self.params.push((name, value));
                }
                b'E' => return Err(ServerError::Refused(Box::new(DbFields::parse(&f.body)))),
                b'Z' => return Ok(()),
                // Notices and anything else at login: not the client's.
                _ => {}
            }
        }
    }

    /// Reads one message from the server.
    pub async fn read(&mut self) -> Result<Frame, ServerError> {
        read_frame(&mut self.stream, &mut self.rbuf)
            .await?
            .ok_or_else(|| {
                ServerError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ))
            })
    }

    /// Sends bytes (whole messages) to the server.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Forgets what the session held for either front end after it was
    /// reset with `RESET ALL` and `DEALLOCATE ALL`: no version stated,
    /// no statement prepared.
    pub fn forget_session(&mut self) {
        self.map_version = 0;
        self.claim = None;
        self.prepared.clear();
        self.statements.clear();
        self.reset_check = false;
        self.naming = false;
    }

    /// Whether the server closed the idle session, or sent something on
    /// it (a session ended by the server sends its FATAL error first),
    /// looked at without waiting: no syscall unless the socket turned
    /// readable.
    pub fn closed_while_idle(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut buf = [0u8; 64];
        let mut read = tokio::io::ReadBuf::new(&mut buf);
        // Ready with nothing read is the end of the stream; with bytes,
        // an answer to nothing: either way the session is not idle.
        !matches!(
            self.stream.as_mut().poll_read(&mut cx, &mut read),
            std::task::Poll::Pending
        )
    }

    /// A round trip that runs nothing (`Sync`), to check the session
    /// still answers; `Ok` with it idle.
    pub async fn check(&mut self) -> Result<bool, ServerError> {
        let mut out = BytesMut::new();
        frontend::sync(&mut out);
        self.send(&out).await?;
        loop {
            let f = self.read().await?;
            if f.tag == b'Z' {
                return Ok(f.body.first() == Some(&b'I'));
            }
        }
    }

    /// Runs `sql` as a simple query and reads to `ReadyForQuery`: `Ok`
    /// with the transaction status, or the server's error message.
    pub async fn simple(&mut self, sql: &str) -> Result<Result<u8, String>, ServerError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out).await?;
        let mut failed = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'E' => failed = Some(error_message(&f.body)),
                b'Z' => {
                    let status = f.body.first().copied().unwrap_or(b'I');
                    return Ok(failed.map_or(Ok(status), Err));
                }
                _ => {}
            }
        }
    }
}

/// The `M` (message) field of an `ErrorResponse` body.
pub fn error_message(body: &[u8]) -> String {
    error_field(body, b'M').unwrap_or_else(|| "unknown error".into())
}

/// One field of an `ErrorResponse` or `NoticeResponse` body.
pub fn error_field(body: &[u8], code: u8) -> Option<String> {
    let mut f = Fields::new(body);
    loop {
        let c = f.u8().ok()?;
        if c == 0 {
            return None;
        }
        let v = f.cstr().ok()?;
        if c == code {
            return Some(v.to_string());
        }
    }
}

/// Sends a cancel request for the session `key` names (best effort),
/// over TLS when the session went over TLS: the same `sslmode`, CAs and
/// host name check, so a cancel never goes where the session would not
/// have. The error of a failed handshake is an `io::Error` of its
/// message. Bounded by [`CANCEL_TIMEOUT`]: a hung server answers no
/// `SSLRequest`, and the task sending the cancel must end.
pub async fn send_cancel(key: &CancelKey) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(key.pid);
    out.put_i32(key.secret);
    match &key.host {
        Host::Tcp(h) => {
            let send = async {
                let s = tokio::net::TcpStream::connect((h.as_str(), key.port)).await?;
                s.set_nodelay(true)?;
                match key.tls.start(s, h).await.map_err(std::io::Error::other)? {
                    MaybeTls::Plain(mut s) => s.write_all(&out).await,
                    MaybeTls::Tls(mut s) => {
                        s.write_all(&out).await?;
                        // The request is in a TLS record only once flushed.
                        s.flush().await
                    }
                }
            };
            tokio::time::timeout(CANCEL_TIMEOUT, send)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel request timed out")
                })?
        }
        #[cfg(unix)]
        Host::Unix(p) => {
            let path = format!("{}/.s.PGSQL.{}", p.display(), key.port);
            let mut s = tokio::net::UnixStream::connect(path).await?;
            s.write_all(&out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_is_bounded_lru() {
        let mut p = Prepared::default();
        assert_eq!(p.insert("a".into(), 2), None);
        assert_eq!(p.insert("b".into(), 2), None);
        assert!(p.touch("a"));
        assert_eq!(p.insert("c".into(), 2), Some("b".into()));
        assert!(!p.touch("b"));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn db_fields() {
        let body = b"SERROR\0VERROR\0C42601\0Msyntax error\0P7\0Hcheck it\0\0";
        let db = DbFields::parse(body);
        assert_eq!(
            (db.code.as_str(), db.message.as_str(), db.position),
            ("42601", "syntax error", Some(7))
        );
        assert_eq!(db.hint.as_deref(), Some("check it"));
        assert!(!db.is_fatal());
        assert!(DbFields::parse(b"SFATAL\0C57P01\0Mbye\0\0").is_fatal());
        assert_eq!(DbFields::parse(b"").message, "unknown error");
    }

    #[test]
    fn error_fields() {
        let body = b"SERROR\0C42P01\0Mno such table\0\0";
        assert_eq!(error_field(body, b'C').as_deref(), Some("42P01"));
        assert_eq!(error_message(body), "no such table");
        assert_eq!(error_field(b"", b'M'), None);
    }
}
