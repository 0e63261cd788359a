//! A JSON-over-HTTP/1 client for shardline's APIs: base URL (`http://`,
//! or `https://` with the system's CAs or a CA file's), bearer token, a
//! timeout per request, and the error body decoded into [`ClientError`].
//!
//! A client may be given several base URLs (comma-separated), the
//! instances of one replicated service such as the managers: it sends to
//! the one that last answered and moves to the next when that one cannot
//! be reached — only when no byte of the request was sent, or for a
//! `GET` (which changes nothing) that failed or timed out, or when a
//! manager answers that it ran nothing for want of a leader
//! ([`NO_LEADER_HEADER`]), so a write is never run twice.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shardline_api::manager::NO_LEADER_HEADER;

use crate::error::{api_error, ClientError};

/// The request timeout unless [`HttpClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer body read; a bigger one is a [`ClientError::Transport`]
/// (a whole catalog is the largest expected answer).
const MAX_BODY_BYTES: usize = 256 << 20;

/// Idle pooled connections are closed after this, well before a typical
/// server or proxy would drop them, so few requests meet a dead socket.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A status, headers and body as read off the wire.
type RawAnswer = (StatusCode, HeaderMap, Bytes);

/// A pooled HTTP/1 client bound to one base URL, or to several
/// instances of one service. Cheap to clone: clones share the connection
/// pool and which instance answers.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Each `http://host:port` or `https://host:port` plus any path
    /// prefix, without a trailing `/`.
    bases: Arc<[Arc<str>]>,
    /// Index into `bases` of the one in use.
    current: Arc<AtomicUsize>,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HttpClient")
            .field("bases", &self.bases)
            .field("token", &self.auth.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// A client for `base_url` (`http://host:port` or
    /// `https://host:port`, optionally with a path prefix; several
    /// comma-separated for instances of one service), sending `token` as
    /// a bearer token when given. `https://` servers must show a
    /// certificate of a CA the system trusts.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_ca_file(base_url, token, None)
    }

    /// [`new`](Self::new), trusting the CAs of the PEM file `ca_file` for
    /// `https://` servers instead of the system's.
    pub fn with_ca_file(
        base_url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let bases = base_urls(base_url)?;
        let auth = match token {
            Some(t) => {
                let mut v = HeaderValue::try_from(format!("Bearer {t}"))
                    .map_err(|_| ClientError::Config("token has invalid characters".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut connector = HttpConnector::new();
        // Requests are small and latency-bound.
        connector.set_nodelay(true);
        // The TLS layer below decides by the scheme.
        connector.enforce_http(false);
        let tls = tls_config(&bases, ca_file)?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            client,
            bases,
            current: Arc::new(AtomicUsize::new(0)),
            auth,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the time allowed for each request, from sending it to having
    /// read the whole answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL in use (the one that last answered), without a
    /// trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every base URL, in the order given.
    pub fn base_urls(&self) -> impl Iterator<Item = &str> {
        self.bases.iter().map(|b| &**b)
    }

    /// `GET`, decoding a 2xx answer as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        let raw = self
            .send(Method::GET, path_and_query, None, self.timeout)
            .await?;
        require(decode(raw)?)
    }

    /// `GET` where `304 Not Modified` is an expected answer: `Ok(None)`.
    pub async fn get_opt<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<Option<T>, ClientError> {
        self.get_opt_with_timeout(path_and_query, self.timeout)
            .await
    }

    /// [`HttpClient::get_opt`] with its own timeout, for long polls that
    /// the server may hold open for longer than the usual timeout.
    pub async fn get_opt_with_timeout<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        decode(
            self.send(Method::GET, path_and_query, None, timeout)
                .await?,
        )
    }

    /// `POST` with a JSON body.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::POST, path, body).await
    }

    /// `PUT` with a JSON body.
    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::PUT, path, body).await
    }

    /// `PATCH` with a JSON body.
    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::PATCH, path, body).await
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = encode(body)?;
        require(decode(
            self.send(method, path, Some(body), self.timeout).await?,
        )?)
    }

    /// `DELETE`. An empty answer decodes as JSON `null`, so `T` may be
    /// `()` for a 204.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        require(decode(
            self.send(Method::DELETE, path, None, self.timeout).await?,
        )?)
    }

    /// `GET` returning the status and body as they are, whatever the
    /// status (for `/metrics`, `/healthz` and the like).
    pub async fn get_raw(&self, path_and_query: &str) -> Result<(u16, Bytes), ClientError> {
        let (status, _, body) = self
            .send(Method::GET, path_and_query, None, self.timeout)
            .await?;
        Ok((status.as_u16(), body))
    }

    /// Sends one request and reads the whole answer within `timeout`,
    /// moving on to the next base URL when the one in use cannot be
    /// reached (see the module docs); each is tried once.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<RawAnswer, ClientError> {
        if !path.starts_with('/') {
            return Err(ClientError::Config(format!(
                "path {path:?} must start with '/'"
            )));
        }
        // Bytes: each try shares the one buffer.
        let body = body.map(Bytes::from);
        let first = self.current.load(Ordering::Relaxed);
        let n = self.bases.len();
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self
                .send_to(&self.bases[at], &method, path, body.clone(), timeout)
                .await
            {
                // A manager that knows no leader ran nothing: the next
                // one may (the last one's answer stands).
                Ok(answer)
                    if answer.0 == StatusCode::SERVICE_UNAVAILABLE
                        && answer.1.contains_key(NO_LEADER_HEADER)
                        && i + 1 < n =>
                {
                    last = Some(ClientError::Transport(format!(
                        "{}: no leader known there",
                        self.bases[at]
                    )));
                }
                Ok(answer) => {
                    if at != first {
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(answer);
                }
                Err(e) => {
                    let unsent = matches!(e, ClientError::Connect(_));
                    let harmless = method == Method::GET
                        && matches!(e, ClientError::Transport(_) | ClientError::Timeout);
                    if !(unsent || harmless) {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Timeout))
    }

    /// One request to one base URL.
    async fn send_to(
        &self,
        base: &str,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<RawAnswer, ClientError> {
        let uri = format!("{base}{path}");
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("shardline-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let body = match body {
            Some(b) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(b)
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| ClientError::Config(format!("request to {uri:?}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                // hyper-util marks errors from connecting, i.e. before any
                // byte of the request was written.
                if e.is_connect() {
                    ClientError::Connect(error_chain(&e))
                } else {
                    ClientError::Transport(error_chain(&e))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Transport(format!("read answer: {e}")))?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

/// The TLS configuration for `bases`: the CAs of `ca_file`, else (only
/// when some base is `https://`) the system's. Servers' names are
/// checked.
fn tls_config(
    bases: &[Arc<str>],
    ca_file: Option<&Path>,
) -> Result<shardline_tls::rustls::ClientConfig, ClientError> {
    let https = bases.iter().any(|b| b.starts_with("https://"));
    let roots = match (ca_file, https) {
        (Some(file), _) => shardline_tls::client::roots(Some(file)),
        (None, true) => shardline_tls::client::roots(None),
        // Plain HTTP only: nothing to trust, no file to read.
        (None, false) => Ok(shardline_tls::rustls::RootCertStore::empty()),
    }
    .map_err(|e| ClientError::Config(e.to_string()))?;
    // No ALPN here: hyper-rustls sets it (`enable_http1`) and panics if
    // it is set already.
    shardline_tls::client::config(roots, &[]).map_err(|e| ClientError::Config(e.to_string()))
}

/// The base URLs of a comma-separated list, each checked
/// (`http://host:port` or `https://host:port` with an optional path
/// prefix, no query).
fn base_urls(list: &str) -> Result<Arc<[Arc<str>]>, ClientError> {
    let mut bases: Vec<Arc<str>> = Vec::new();
    for one in list.split(',').map(str::trim) {
        let base = one.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| ClientError::Config(format!("base URL {one:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(ClientError::Config(format!(
                "base URL {one:?}: expected http://host:port or https://host:port"
            )));
        }
        if uri.query().is_some() {
            return Err(ClientError::Config(format!(
                "base URL {one:?}: must not have a query"
            )));
        }
        if bases.iter().any(|b| **b == *base) {
            return Err(ClientError::Config(format!(
                "base URL {one:?} is listed twice"
            )));
        }
        bases.push(base.into());
    }
    Ok(bases.into())
}

/// An error and its sources, `: `-separated: hyper's top-level messages
/// alone ("client error (Connect)") hide the cause.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn encode<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(|e| ClientError::Decode(format!("encode request body: {e}")))
}

/// A 2xx answer decoded (an empty body as JSON `null`), `None` for 304, an
/// error for anything else.
fn decode<T: DeserializeOwned>(raw: RawAnswer) -> Result<Option<T>, ClientError> {
    let (status, headers, body) = raw;
    if status == StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(api_error(status, &headers, &body));
    }
    let bytes: &[u8] = if body.is_empty() { b"null" } else { &body };
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| ClientError::Decode(format!("HTTP {status} answer: {e}")))
}

/// A 304 where none was asked for.
fn require<T>(answer: Option<T>) -> Result<T, ClientError> {
    answer.ok_or_else(|| ClientError::Decode("unexpected 304 Not Modified".into()))
}
