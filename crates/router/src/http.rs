//! The router's HTTP API: `/v1/execute`, `/v1/transaction`, `/v1/route`,
//! probes and metrics. Each API request is authenticated before its body
//! is read, then admitted ([`crate::auth::admit_app`]), routed within its
//! tenant's keyspace (held while its key range is being moved:
//! [`crate::reroute`]), and run on the tenant's pool for the shard's
//! primary or a replica ([`crate::dispatch`]). Statements PostgreSQL's
//! protocol cannot carry (a NUL, more than 65,535 parameters) are refused
//! before routing, as the client's error.
//!
//! This is the HTTP front end's edge: the router's own errors
//! ([`crate::error::RouterError`]) become the HTTP error body
//! ([`ApiError`]) here, and nowhere deeper.
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`: every
//! status it can answer); `RouterApi` here assembles them, with what
//! [`openapi`] adds, into the document served at `/openapi.json` and
//! checked in as `docs/openapi/router.json`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shardline_api::checks::MAX_PARAMS;
use shardline_api::probe::ProbeStatus;
use shardline_api::router::{
    Consistency, ExecuteRequest, ExecuteResponse, RouteQuery, RouteResponse, ShardKeyValue,
    TransactionRequest, TransactionResponse,
};
use shardline_api::{ApiError, ErrorBody, ErrorCode};
use shardline_core::hash::format_hash;
use shardline_http::{bearer_token, Api, ErrorResponse, JsonBody, QueryParams, RequestId};

use crate::auth::{admit_app, Admission, AppAuth, Now, RejectReason, Rejection};
use crate::classify;
use crate::dispatch::{self, Plan};
use crate::error::Reason;
use crate::reroute::{self, Keyed};
use crate::state::{RouterContext, Routing, RoutingCell};

pub mod openapi;

use openapi::AppToken;

/// What the handlers share.
pub struct RouterState {
    pub routing: Arc<RoutingCell>,
    pub ctx: Arc<RouterContext>,
    pub request_timeout: Duration,
    /// Name each request's PostgreSQL session after its id (see
    /// [`crate::RouterConfig::name_sessions`]).
    pub name_sessions: bool,
    /// The lanes connections are served on, if any (for the metrics).
    pub lanes: Option<Arc<crate::lanes::Lanes>>,
}

type Shared = State<Arc<RouterState>>;

/// The router's HTTP API: its routes, served with request ids, the JSON
/// fallbacks and the body limit.
pub fn router(state: Arc<RouterState>, body_limit: usize) -> Api {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/execute", post(execute))
        .route("/v1/transaction", post(transaction))
        .route("/v1/route", get(route))
        .with_state(state);
    Api::new(api, body_limit)
}

/// The authenticated client app. Runs before the body is read, so an
/// unauthenticated request learns nothing about its body.
pub struct Authenticated {
    pub app: Arc<AppAuth>,
    pub routing: Arc<Routing>,
}

/// The endpoint label of a path (a fixed list: never the client's text).
fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/execute" => "execute",
        "/v1/transaction" => "transaction",
        "/v1/route" => "route",
        _ => "other",
    }
}

impl FromRequestParts<Arc<RouterState>> for Authenticated {
    type Rejection = ErrorResponse;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<RouterState>,
    ) -> Result<Self, Self::Rejection> {
        let endpoint = endpoint_of(parts.uri.path());
        if !st.routing.is_loaded() {
            let e = ApiError::new(
                ErrorCode::Unavailable,
                "the router has not loaded its catalog yet",
            )
            .with_retry_after(1);
            st.ctx
                .metrics
                .anonymous()
                .request("http", "", endpoint, "", e.code.as_str());
            return Err(ErrorResponse(e));
        }
        let routing = st.routing.get();
        let authenticated = match bearer_token(&parts.headers) {
            Some(token) => routing.authenticate(token, Now::current().unix_ms),
            None => Err(Rejection {
                error: Reason::NoToken.into(),
                reason: RejectReason::Unauthorized,
                app: None,
            }),
        };
        match authenticated {
            Ok(app) => Ok(Authenticated {
                app: Arc::clone(app),
                routing: Arc::clone(&routing),
            }),
            Err(rej) => Err(refused(&st.ctx, endpoint, rej)),
        }
    }
}

/// Counts a refused request and makes its answer.
fn refused(ctx: &RouterContext, endpoint: &'static str, rej: Rejection) -> ErrorResponse {
    let (pm, keyspace) = match &rej.app {
        Some(app) => (&app.metrics, app.tenant.keyspace.as_str()),
        None => (ctx.metrics.anonymous(), ""),
    };
    pm.rejected(rej.reason.as_str());
    pm.request("http", keyspace, endpoint, "", rej.error.code().as_str());
    ErrorResponse(rej.error.into())
}

/// Checks the request against its tenant and app and takes their quotas.
fn admit(
    st: &RouterState,
    endpoint: &'static str,
    app: &Arc<AppAuth>,
    keyspace: Option<&str>,
    key: &ShardKeyValue,
) -> Result<Admission, ErrorResponse> {
    admit_app(app, keyspace, key, &st.ctx.quotas, Instant::now())
        .map_err(|rej| refused(&st.ctx, endpoint, rej))
}

/// The router's OpenAPI document: every handler's description, with
/// what [`openapi`] adds.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "shardline router",
        description = "The data plane's HTTP API: statements and transactions on the shard \
            owning a key, routing, probes. Errors are `ErrorBody`; see docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        execute,
        transaction,
        route,
        healthz,
        readyz,
        metrics,
        openapi_json,
    ),
    modifiers(&AppToken),
    tags(
        (name = "data", description = "Statements on the shard owning a key"),
        (name = "probes", description = "Liveness, readiness, metrics, this document"),
    )
)]
struct RouterApi;

/// The router's OpenAPI document as JSON (the checked-in form).
pub fn openapi_document() -> String {
    shardline_http::openapi::document_json(<RouterApi as utoipa::OpenApi>::openapi())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", responses(
    (status = 200, description = "This OpenAPI document", body = Object, content_type = "application/json"),
))]
async fn openapi_json() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    shardline_http::openapi::answer(&JSON, openapi_document)
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The router is alive", body = ProbeStatus)))]
async fn healthz() -> Json<ProbeStatus> {
    Json(ProbeStatus::ok())
}

/// Ready once a catalog is loaded.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "A catalog is loaded", body = ProbeStatus),
    (status = 503, description = "No catalog loaded yet (`unavailable`)", body = ErrorBody,
        headers(("Retry-After" = u64, description = "Seconds to wait"))),
))]
async fn readyz(State(st): Shared) -> Response {
    if st.routing.is_loaded() {
        Json(ProbeStatus::ready(st.routing.get().version)).into_response()
    } else {
        ErrorResponse(
            ApiError::new(ErrorCode::Unavailable, "no catalog loaded yet").with_retry_after(1),
        )
        .into_response()
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
))]
async fn metrics(State(st): Shared) -> Response {
    let routing = st.routing.get();
    let m = &st.ctx.metrics;
    m.connections.clear();
    m.tenant_pools.clear();
    for (id, target) in &routing.shards {
        let stats = target.stats();
        m.connections.with(&[id, "in_use"]).set(stats.in_use as f64);
        m.connections.with(&[id, "idle"]).set(stats.idle as f64);
        m.tenant_pools.with(&[id]).set(stats.pools as f64);
    }
    if let Some(lanes) = &st.lanes {
        for (lane, open) in lanes.open_connections().into_iter().enumerate() {
            m.lane_connections
                .with(&[&lane.to_string()])
                .set(open as f64);
        }
    }
    m.set_tenant_in_flight(routing.tenants.values().map(|t| {
        let limit = t.config.limits.max_concurrent;
        (t.metric_label.as_str(), t.quota.in_flight(), limit)
    }));
    m.sample_process();
    m.catalog_version.with(&[]).set(routing.version as f64);
    (
        [(header::CONTENT_TYPE, shardline_metrics::CONTENT_TYPE)],
        m.registry.render(),
    )
        .into_response()
}

/// Labels of one request, for the metrics: all from the catalog.
struct Observed {
    endpoint: &'static str,
    app: Arc<AppAuth>,
    shard: String,
}

impl Observed {
    fn new(endpoint: &'static str, admission: &Admission) -> Self {
        Self {
            endpoint,
            app: Arc::clone(admission.app()),
            shard: String::new(),
        }
    }
}

/// An answer naming the shard that served it (which may differ from the
/// shard first routed to: see [`reroute`]).
trait Served {
    fn shard(&self) -> &str;
}

impl Served for ExecuteResponse {
    fn shard(&self) -> &str {
        &self.shard
    }
}

impl Served for TransactionResponse {
    fn shard(&self) -> &str {
        &self.shard
    }
}

impl Served for RouteResponse {
    fn shard(&self) -> &str {
        &self.shard
    }
}

/// Runs a routed request under the request timeout and records it,
/// labelled by the shard that answered (or failed).
async fn observe<T, F>(st: &RouterState, obs: &mut Observed, fut: F) -> Result<T, ErrorResponse>
where
    T: Served,
    F: Future<Output = Result<T, ApiError>>,
{
    let started = Instant::now();
    let in_flight = st.ctx.metrics.in_flight.with(&[]);
    in_flight.inc();
    let res = match tokio::time::timeout(st.request_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            format!("request took longer than {:?}", st.request_timeout),
        )),
    };
    in_flight.dec();
    let outcome = match &res {
        Ok(out) => {
            obs.shard = out.shard().to_string();
            "ok"
        }
        Err(e) => {
            if let Some(shard) = &e.shard {
                obs.shard.clone_from(shard);
            }
            e.code.as_str()
        }
    };
    let pm = &obs.app.metrics;
    pm.duration(&obs.shard, started.elapsed().as_secs_f64());
    pm.request(
        "http",
        &obs.app.tenant.keyspace,
        obs.endpoint,
        &obs.shard,
        outcome,
    );
    res.map_err(|mut e| {
        if e.shard.is_none() && !obs.shard.is_empty() {
            e.shard = Some(std::mem::take(&mut obs.shard));
        }
        ErrorResponse(e)
    })
}

/// The shard `key` routes to by `routing`, for the metrics of requests
/// that fail before reaching one (empty if it cannot be routed).
fn first_shard(routing: &Routing, keyspace: &str, key: &ShardKeyValue) -> String {
    routing
        .route(keyspace, key)
        .map(|r| r.range.shard.clone())
        .unwrap_or_default()
}

/// Refuses, as the client's error, a statement that refers to a
/// parameter above 65,535 (`$65536`): PostgreSQL would describe it with a
/// parameter count its protocol cannot carry, which breaks the session
/// (see [`shardline_api::checks`]).
fn check_param_refs(field: &str, sql: &str, scan: &classify::Scan) -> Result<(), ApiError> {
    match scan.highest_param_at(sql) {
        Some((n, at)) if n > MAX_PARAMS as u64 => {
            let mut e = ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "{field} refers to parameter ${n} at character {at}; PostgreSQL takes at \
                     most {MAX_PARAMS} parameters per statement"
                ),
            );
            e.position = u32::try_from(at).ok();
            e.hint = Some("pass many values as one array parameter, e.g. = ANY($1)".into());
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Runs one statement on the shard owning `shard_key`.
#[utoipa::path(post, path = "/v1/execute", tag = "data", security(("app_token" = [])),
    request_body = ExecuteRequest,
    responses(
    (status = 200, description = "The statement's result", body = ExecuteResponse),
    (status = 400, description = "Malformed body (`invalid_request`), bad shard key (`invalid_shard_key`), parameter (`invalid_parameter`), or the statement failed in PostgreSQL (`statement_failed`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or an unknown, deleted or expired one (`unauthorized`)", body = ErrorBody),
    (status = 403, description = "The tenant is being deleted or unknown, another keyspace is named, or the key does not start with the app's `key_prefix` (`forbidden`)", body = ErrorBody),
    (status = 404, description = "Unknown keyspace (`not_found`)", body = ErrorBody),
    (status = 409, description = "Constraint violation (`constraint_violation`) or serialization failure, deadlock (`transaction_conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 429, description = "Over the tenant's or app's rate or in-flight limit (`rate_limited`, `concurrency_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 503, description = "The shard cannot be reached, is failing over or its range is being moved (`shard_unavailable`), or the router has no catalog (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 504, description = "Statement or request timeout (`timeout`)", body = ErrorBody),
))]
async fn execute(
    State(st): Shared,
    id: RequestId,
    auth: Authenticated,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ErrorResponse> {
    let admission = admit(
        &st,
        "execute",
        &auth.app,
        req.keyspace.as_deref(),
        &req.shard_key,
    )?;
    let mut obs = Observed::new("execute", &admission);
    obs.shard = first_shard(&auth.routing, admission.keyspace(), &req.shard_key);
    let (cell, ctx) = (Arc::clone(&st.routing), Arc::clone(&st.ctx));
    let named = st.name_sessions;
    let work = async move {
        req.check()?;
        let scan = classify::scan(&req.sql);
        check_param_refs("sql", &req.sql, &scan)?;
        let plan = Plan {
            read: scan.read,
            eventual: req.consistency == Consistency::Eventual,
            session_clean: !scan.changes_session,
        };
        let job = dispatch::Statement {
            sql: &req.sql,
            params: &req.params,
            read: scan.read,
            request_id: named.then_some(id.as_str()),
        };
        let to = Keyed {
            keyspace: admission.keyspace(),
            key: &req.shard_key,
        };
        let (shard, result) = reroute::run(
            &cell,
            &ctx,
            auth.routing,
            to,
            admission.tenant(),
            &job,
            plan,
        )
        .await?;
        drop(admission);
        Ok(ExecuteResponse { shard, result })
    };
    observe(&st, &mut obs, work).await.map(Json)
}

/// Runs statements all-or-nothing in one transaction on the shard owning
/// `shard_key`.
#[utoipa::path(post, path = "/v1/transaction", tag = "data", security(("app_token" = [])),
    request_body = TransactionRequest,
    responses(
    (status = 200, description = "One result per statement", body = TransactionResponse),
    (status = 400, description = "Malformed body or no statements (`invalid_request`), bad shard key (`invalid_shard_key`), parameter (`invalid_parameter`), or a statement failed in PostgreSQL (`statement_failed`, with `statement_index`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or an unknown, deleted or expired one (`unauthorized`)", body = ErrorBody),
    (status = 403, description = "The tenant is being deleted or unknown, another keyspace is named, or the key does not start with the app's `key_prefix` (`forbidden`)", body = ErrorBody),
    (status = 404, description = "Unknown keyspace (`not_found`)", body = ErrorBody),
    (status = 409, description = "Constraint violation (`constraint_violation`) or serialization failure, deadlock (`transaction_conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 429, description = "Over the tenant's or app's rate or in-flight limit (`rate_limited`, `concurrency_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 503, description = "The shard cannot be reached, is failing over or its range is being moved (`shard_unavailable`), or the router has no catalog (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 504, description = "Statement or request timeout (`timeout`)", body = ErrorBody),
))]
async fn transaction(
    State(st): Shared,
    id: RequestId,
    auth: Authenticated,
    JsonBody(req): JsonBody<TransactionRequest>,
) -> Result<Json<TransactionResponse>, ErrorResponse> {
    let admission = admit(
        &st,
        "transaction",
        &auth.app,
        req.keyspace.as_deref(),
        &req.shard_key,
    )?;
    let mut obs = Observed::new("transaction", &admission);
    obs.shard = first_shard(&auth.routing, admission.keyspace(), &req.shard_key);
    let (cell, ctx) = (Arc::clone(&st.routing), Arc::clone(&st.ctx));
    let named = st.name_sessions;
    let work = async move {
        if req.statements.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "statements is empty; a transaction needs at least one",
            ));
        }
        req.check()?;
        let (mut read, mut session_clean) = (true, true);
        for (i, s) in req.statements.iter().enumerate() {
            let scan = classify::scan(&s.sql);
            check_param_refs(&format!("statements[{i}].sql"), &s.sql, &scan).map_err(|mut e| {
                e.statement_index = Some(i);
                e
            })?;
            read &= scan.read;
            session_clean &= !scan.changes_session_in_transaction;
        }
        let plan = Plan {
            read,
            eventual: req.consistency == Consistency::Eventual,
            session_clean,
        };
        let stmts: Vec<(String, Vec<serde_json::Value>)> = req
            .statements
            .into_iter()
            .map(|s| (s.sql, s.params))
            .collect();
        let job = dispatch::Transaction {
            statements: &stmts,
            request_id: named.then_some(id.as_str()),
        };
        let to = Keyed {
            keyspace: admission.keyspace(),
            key: &req.shard_key,
        };
        let (shard, results) = reroute::run(
            &cell,
            &ctx,
            auth.routing,
            to,
            admission.tenant(),
            &job,
            plan,
        )
        .await?;
        drop(admission);
        Ok(TransactionResponse { shard, results })
    };
    observe(&st, &mut obs, work).await.map(Json)
}

/// Where a key is routed (not held during failovers or resharding).
#[utoipa::path(get, path = "/v1/route", tag = "data", security(("app_token" = [])),
    params(RouteQuery),
    responses(
    (status = 200, description = "The owning shard and range", body = RouteResponse),
    (status = 400, description = "Bad query string (`invalid_request`) or key (`invalid_shard_key`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or an unknown, deleted or expired one (`unauthorized`)", body = ErrorBody),
    (status = 403, description = "The tenant is being deleted or unknown, another keyspace is named, or the key does not start with the app's `key_prefix` (`forbidden`)", body = ErrorBody),
    (status = 404, description = "Unknown keyspace (`not_found`)", body = ErrorBody),
    (status = 429, description = "Over the tenant's or app's rate or in-flight limit (`rate_limited`, `concurrency_limited`)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 503, description = "The router has no catalog (`unavailable`) or the keyspace has no map", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    (status = 504, description = "Request timeout (`timeout`)", body = ErrorBody),
))]
async fn route(
    State(st): Shared,
    auth: Authenticated,
    QueryParams(q): QueryParams<RouteQuery>,
) -> Result<Json<RouteResponse>, ErrorResponse> {
    let key = ShardKeyValue::Text(q.key);
    let admission = admit(&st, "route", &auth.app, q.keyspace.as_deref(), &key)?;
    let mut obs = Observed::new("route", &admission);
    let keyspace = admission.keyspace();
    let answer = auth.routing.route(keyspace, &key).map(|route| {
        obs.shard = route.range.shard.clone();
        RouteResponse {
            keyspace: keyspace.to_string(),
            shard: route.range.shard.clone(),
            range: route.range.range.to_string(),
            hash: format_hash(route.hash),
            catalog_version: auth.routing.version,
        }
    });
    drop(admission);
    let answer = answer.map_err(ApiError::from);
    observe(&st, &mut obs, std::future::ready(answer))
        .await
        .map(Json)
}
