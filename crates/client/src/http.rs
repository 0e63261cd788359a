//! A JSON-over-HTTP/1 client for shardline's APIs: base URL, bearer token,
//! a timeout per request, and the error body decoded into
//! [`ClientError`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// A pooled HTTP/1 client bound to one base URL. Cheap to clone: clones
/// share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    base: Arc<str>,
    auth: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .field("token", &self.auth.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// A client for `base_url` (`http://host:port`, optionally with a path
    /// prefix), sending `token` as a bearer token when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .map_err(|e| ClientError::Config(format!("base URL {base_url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::Config(format!(
                "base URL {base_url:?}: expected http://host:port"
            )));
        }
        if uri.query().is_some() {
            return Err(ClientError::Config(format!(
                "base URL {base_url:?}: must not have a query"
            )));
        }
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
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            client,
            base: base.into(),
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

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
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

    /// Sends one request and reads the whole answer within `timeout`.
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
        let uri = format!("{}{}", self.base, path);
        let mut builder = Request::builder()
            .method(method)
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
                Full::new(Bytes::from(b))
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
