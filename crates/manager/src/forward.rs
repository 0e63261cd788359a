//! Requests a follower passes to the leader.
//!
//! Of the managers sharing one catalog, only the leader changes it and
//! only the leader knows what lives in its memory (health checks, router
//! leases and holds, the progress of running jobs). A follower answers
//! from its own copy of the catalog what the catalog alone answers — the
//! catalog watch, keyspaces, tenants, apps — and passes everything else
//! to the leader unchanged, answering with the leader's response. Why
//! forward rather than let every manager write with compare-and-swap: a
//! write to the catalog is often half of an operation whose other half
//! runs on the shards (a tenant's role, a migration), and those halves
//! are serialised in the leader; two managers provisioning at once could
//! interleave them.
//!
//! A request is forwarded at most once (a header marks it), so two
//! managers that each think the other leads answer 503 rather than loop.
//! A manager that knows no leader (an election, or it cannot reach the
//! store) answers the routers' catalog watch 503 too, rather than feed
//! them a catalog that may be behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shardline_api::manager::NO_LEADER_HEADER;
use shardline_api::{ApiError, ErrorCode};
use shardline_http::ErrorResponse;

use crate::leader::Leadership;

/// Marks a request a follower forwarded.
pub const FORWARDED_BY: &str = "x-shardline-forwarded-by";

/// The routers' catalog watch.
const CATALOG_FEED: &str = "/v1/catalog";

/// Time allowed to connect to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Passes requests to the leader.
#[derive(Clone)]
pub struct Forwarder {
    leadership: Arc<Leadership>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl Forwarder {
    /// A forwarder to leaders at `http://` or `https://` URLs, trusting
    /// the CAs of `ca_file`, else the system's.
    pub fn new(leadership: Arc<Leadership>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // No ALPN: hyper-rustls sets it and panics if it is set already.
        let tls = shardline_tls::client::config_for(ca_file, &[]);
        let tls = match (tls, ca_file) {
            (Ok(tls), _) => tls,
            (Err(e), Some(_)) => return Err(e).context("read the managers' CA file"),
            // No CA file and no system CAs: plain-HTTP managers still
            // forward; an https:// leader then fails to connect.
            (Err(e), None) => {
                tracing::debug!(error = %e, "no system CAs for forwarding over HTTPS");
                Arc::new(shardline_tls::client::config(
                    shardline_tls::rustls::RootCertStore::empty(),
                    &[],
                )?)
            }
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Ok(Forwarder {
            leadership,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

/// Whether any manager answers this request from its own catalog.
fn answered_locally(method: &Method, path: &str) -> bool {
    const ALWAYS: [&str; 6] = [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/leader",
        CATALOG_FEED,
    ];
    const CATALOG_READS: [&str; 3] = ["/v1/keyspaces", "/v1/tenants", "/v1/apps"];
    ALWAYS.contains(&path)
        || (method == Method::GET
            && CATALOG_READS
                .iter()
                .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'))))
}

/// The middleware: on a follower, forwards what only the leader answers.
pub async fn to_leader(State(f): State<Forwarder>, request: Request, next: Next) -> Response {
    let leading = f.leadership.is_leader();
    let path = request.uri().path();
    // A manager that knows no leader may be cut off from the store, its
    // catalog behind: it does not feed routers (they go to the next
    // manager), though it still answers one-off reads.
    let stale_feed = path == CATALOG_FEED && f.leadership.response().leader.is_none();
    if leading || (answered_locally(request.method(), path) && !stale_feed) {
        return next.run(request).await;
    }
    let unavailable = |message: String| {
        ErrorResponse(ApiError::new(ErrorCode::Unavailable, message).with_retry_after(1))
            .into_response()
    };
    // Answered without running the request anywhere: another manager may
    // take it.
    let not_run = |message: String| {
        let mut answer = unavailable(message);
        answer
            .headers_mut()
            .insert(NO_LEADER_HEADER, HeaderValue::from_static("1"));
        answer
    };
    if stale_feed {
        return not_run("this manager knows no leader: its catalog may be behind; retry".into());
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return not_run("forwarded to a manager that does not lead; retry".into());
    }
    let Some(leader) = f.leadership.response().leader else {
        return not_run("no manager leads now (an election is under way); retry".into());
    };
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = format!("{}{path}", leader.url.trim_end_matches('/'));
    parts.uri = match target.parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return unavailable(format!("the leader's URL {:?}: {e}", leader.url)),
    };
    parts.headers.remove(axum::http::header::HOST);
    if let Ok(me) = HeaderValue::from_str(&f.leadership.me().id) {
        parts.headers.insert(FORWARDED_BY, me);
    }
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(answer) => answer.map(Body::new),
        Err(e) => {
            tracing::warn!(leader = %leader.url, error = %e, "forward a request to the leader");
            let message = format!("the leader ({}) did not answer; retry", leader.id);
            // Not connected: nothing of the request reached the leader.
            if e.is_connect() {
                not_run(message)
            } else {
                unavailable(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_reads_stay_local_and_the_rest_goes_to_the_leader() {
        for (method, path) in [
            (Method::GET, "/v1/catalog"),
            (Method::GET, "/v1/leader"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v1/keyspaces"),
            (Method::GET, "/v1/keyspaces/orders"),
            (Method::GET, "/v1/tenants/acme"),
        ] {
            assert!(answered_locally(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/v1/keyspaces"),
            (Method::PUT, "/v1/keyspaces/orders/map"),
            (Method::GET, "/v1/shards"),
            (Method::GET, "/v1/health"),
            (Method::GET, "/v1/routers"),
            (Method::POST, "/v1/routers/heartbeat"),
            (Method::GET, "/v1/reshard/1"),
            (Method::GET, "/v1/keyspacesx"),
            (Method::DELETE, "/v1/tenants/acme"),
        ] {
            assert!(!answered_locally(&method, path), "{method} {path}");
        }
    }
}
