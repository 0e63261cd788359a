//! Request ids: every answer carries `x-request-id`, the client's (when
//! it sent a well-formed one) or one made here, and every log line of the
//! request carries it (a `request` span around the handler). The router
//! also names the PostgreSQL session a statement runs on after it
//! (`application_name`), so a slow query in the server's log or in
//! `pg_stat_activity` leads back to the request and its client.

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use shardline_api::{ApiError, ErrorCode};
use tracing::Instrument;

use crate::extract::BodyLimit;
use crate::ErrorResponse;

/// The header, in both directions.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a client. (PostgreSQL keeps the first 63
/// bytes of an `application_name`; the logs and the answer keep it all.)
pub const MAX_LEN: usize = 128;

/// One request's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The client's id, if it is 1 to [`MAX_LEN`] characters of letters,
    /// digits and `-_.:/+=@` (UUIDs, ULIDs, base64, trace ids): nothing
    /// that needs quoting in a log line or a PostgreSQL setting.
    pub fn parse(value: &[u8]) -> Result<Self, ApiError> {
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b);
        if value.is_empty() || value.len() > MAX_LEN || !value.iter().all(allowed) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "x-request-id must be 1 to {MAX_LEN} letters, digits or -_.:/+=@ \
                     (leave it out to have one made)"
                ),
            ));
        }
        let text = std::str::from_utf8(value).expect("checked ASCII");
        Ok(Self(Arc::from(text)))
    }

    /// A new id, unique across processes: a random 64-bit prefix chosen
    /// once per process, then a counter (32 hex digits in all).
    pub fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| RandomState::new().build_hasher().finish());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Written by hand: `format!` costs a formatter and a second
        // allocation on every request.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, byte) in text.iter_mut().enumerate() {
            let word = if i < 16 { prefix } else { n };
            *byte = HEX[((word >> (60 - 4 * (i % 16))) & 0xf) as usize];
        }
        Self(Arc::from(std::str::from_utf8(&text).expect("hex digits")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id [`with_request_ids`] gave the request; one made now if the
/// layer is missing, so extracting it never fails.
impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

/// Gives every request of `router` an id (see the module docs); a
/// malformed `x-request-id` is refused (400) with a fresh id of its own.
/// (A layer on each of `router`'s routes; [`Api`] is the leaner way to
/// serve.)
pub fn with_request_ids(router: Router) -> Router {
    router.layer(axum::middleware::from_fn(identify))
}

async fn identify(req: Request, next: Next) -> Response {
    identified(req, |req| next.run(req)).await
}

/// A service's routes with the JSON 404/405 fallbacks, the request-body
/// limit and request ids, as one service around them.
///
/// The same as [`with_request_ids`] over [`with_fallbacks`](crate::with_fallbacks),
/// at less cost per request: `Router::layer` wraps every route in
/// another boxed service, which each request clones (an allocation per
/// layer and per route level), and a `from_fn` middleware boxes its inner
/// service again. Around the router, a request costs one boxed future.
#[derive(Clone)]
pub struct Api {
    routes: Router,
    limit: BodyLimit,
}

impl Api {
    pub fn new(routes: Router, body_limit: usize) -> Self {
        Self {
            routes: crate::serve::fallbacks(routes),
            limit: BodyLimit(body_limit),
        }
    }
}

impl tower_service::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        req.extensions_mut().insert(self.limit);
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let answer = identified(req, |req| async move {
                match routes.call(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            });
            Ok(answer.await)
        })
    }
}

/// Names the request, runs it with `run` inside its `request` span, logs
/// its outcome and puts its id on the answer.
async fn identified<F, Fut>(mut req: Request, run: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let (id, refused) = match req.headers().get(&REQUEST_ID) {
        None => (RequestId::generate(), None),
        Some(v) => match RequestId::parse(v.as_bytes()) {
            Ok(id) => (id, None),
            Err(e) => (RequestId::generate(), Some(e)),
        },
    };
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = req.uri().path(),
    );
    let mut resp = match refused {
        Some(e) => ErrorResponse(e).into_response(),
        None => {
            req.extensions_mut().insert(id.clone());
            run(req).instrument(span.clone()).await
        }
    };
    let status = resp.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, micros, "answered with a server error");
        } else {
            tracing::debug!(status, micros, "answered");
        }
    });
    let value = HeaderValue::from_str(id.as_str()).expect("ids are visible ASCII");
    resp.headers_mut().insert(REQUEST_ID, value);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_or_refused_by_their_characters() {
        for ok in [
            "a",
            "3f2c9a4e-5b1d-4c2e-9f00-1a2b3c4d5e6f",
            "01HZX8K3Q7TB2M5N6P7R8S9T0V",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "abc+/=@:._",
        ] {
            assert_eq!(RequestId::parse(ok.as_bytes()).unwrap().as_str(), ok);
        }
        let long = "x".repeat(MAX_LEN);
        assert!(RequestId::parse(long.as_bytes()).is_ok());
        for bad in [
            "".to_string(),
            "x".repeat(MAX_LEN + 1),
            "a b".into(),
            "a'b".into(),
            "a\\b".into(),
            "é".into(),
            "a\"b".into(),
        ] {
            let e = RequestId::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_differ_and_parse() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(RequestId::parse(a.as_str().as_bytes()).unwrap(), a);
        // The process's prefix, then a counter, in fixed-width hex.
        let (a, b) = (a.as_str(), b.as_str());
        assert_eq!(a[..16], b[..16]);
        let count = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(count(b) > count(a), "{a} {b}");
        assert_eq!(format!("{:016x}", count(a)), a[16..]);
        let prefix = u64::from_str_radix(&a[..16], 16).unwrap();
        assert_eq!(format!("{prefix:016x}"), a[..16]);
    }
}
