//! The router's HTTP API: `/v1/execute`, `/v1/transaction`, `/v1/route`,
//! probes and metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shardline_api::router::{
    ExecuteRequest, ExecuteResponse, RouteQuery, RouteResponse, ShardKeyValue, TransactionRequest,
    TransactionResponse, DEFAULT_KEYSPACE,
};
use shardline_api::{ApiError, ErrorCode};
use shardline_core::hash::format_hash;
use shardline_http::{bearer_token, with_fallbacks, ErrorResponse, JsonBody, QueryParams};

use crate::metrics::RouterMetrics;
use crate::pg::exec;
use crate::state::{AppAuth, Routing, RoutingCell, ShardTarget};

/// What the handlers share.
pub struct RouterState {
    pub routing: Arc<RoutingCell>,
    pub metrics: RouterMetrics,
    pub request_timeout: Duration,
}

type Shared = State<Arc<RouterState>>;

/// The router's routes.
pub fn router(state: Arc<RouterState>, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/execute", post(execute))
        .route("/v1/transaction", post(transaction))
        .route("/v1/route", get(route))
        .with_state(state);
    with_fallbacks(api, body_limit)
}

/// The authenticated client app. Runs before the body is read, so an
/// unauthenticated request learns nothing about its body.
pub struct Authenticated {
    pub app: Arc<AppAuth>,
    pub routing: Arc<Routing>,
}

impl FromRequestParts<Arc<RouterState>> for Authenticated {
    type Rejection = ErrorResponse;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<RouterState>,
    ) -> Result<Self, Self::Rejection> {
        if !st.routing.is_loaded() {
            return Err(ErrorResponse(
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the router has not loaded its catalog yet",
                )
                .with_retry_after(1),
            ));
        }
        let Some(token) = bearer_token(&parts.headers) else {
            return Err(ErrorResponse::new(
                ErrorCode::Unauthorized,
                "missing bearer token (Authorization: Bearer <app token>)",
            ));
        };
        let routing = st.routing.get();
        let app = routing
            .authenticate(token)
            .cloned()
            .ok_or_else(|| ErrorResponse::new(ErrorCode::Unauthorized, "invalid token"))?;
        Ok(Authenticated { app, routing })
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(st): Shared) -> Response {
    if st.routing.is_loaded() {
        Json(serde_json::json!({"status": "ready", "catalog_version": st.routing.get().version}))
            .into_response()
    } else {
        ErrorResponse(
            ApiError::new(ErrorCode::Unavailable, "no catalog loaded yet").with_retry_after(1),
        )
        .into_response()
    }
}

async fn metrics(State(st): Shared) -> Response {
    let routing = st.routing.get();
    st.metrics.connections.clear();
    for (id, target) in &routing.shards {
        let stats = target.primary.stats();
        st.metrics
            .connections
            .with(&[id, "in_use"])
            .set(stats.in_use as f64);
        st.metrics
            .connections
            .with(&[id, "idle"])
            .set(stats.idle as f64);
    }
    st.metrics
        .catalog_version
        .with(&[])
        .set(routing.version as f64);
    (
        [(header::CONTENT_TYPE, shardline_metrics::CONTENT_TYPE)],
        st.metrics.registry.render(),
    )
        .into_response()
}

/// Labels of one request, for the metrics.
struct Observed {
    endpoint: &'static str,
    keyspace: String,
    shard: String,
}

/// Runs a routed request under the request timeout and records it.
async fn observe<T, F>(st: &RouterState, obs: &mut Observed, fut: F) -> Result<T, ErrorResponse>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let started = Instant::now();
    let in_flight = st.metrics.in_flight.with(&[]);
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
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    let labels = [obs.endpoint, obs.keyspace.as_str(), obs.shard.as_str()];
    st.metrics
        .duration
        .with(&labels)
        .observe(started.elapsed().as_secs_f64());
    st.metrics
        .requests
        .with(&[labels[0], labels[1], labels[2], outcome])
        .inc();
    res.map_err(|mut e| {
        if e.shard.is_none() && !obs.shard.is_empty() {
            e.shard = Some(std::mem::take(&mut obs.shard));
        }
        ErrorResponse(e)
    })
}

/// Resolves the shard that owns `key` and its pool.
fn resolve(
    routing: &Routing,
    keyspace: &str,
    key: &ShardKeyValue,
    obs: &mut Observed,
) -> Result<Arc<ShardTarget>, ApiError> {
    let route = routing.route(keyspace, key)?;
    obs.shard = route.range.shard.clone();
    routing
        .shards
        .get(&route.range.shard)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ShardUnavailable,
                format!("shard {} is not in the catalog", route.range.shard),
            )
            .with_retry_after(1)
        })
}

/// A connection to the shard's primary; pool failures become 503s.
async fn acquire(target: Arc<ShardTarget>) -> Result<crate::pg::PooledConn, ApiError> {
    target
        .primary
        .get()
        .await
        .map_err(|e| crate::pg::from_pool_error(&e))
}

fn observed(endpoint: &'static str, routing: &Routing, keyspace: &str) -> Observed {
    // Label only keyspaces that exist: a client must not be able to
    // create metric series by sending made-up names.
    let keyspace = if routing.keyspaces.contains_key(keyspace) {
        keyspace.to_string()
    } else {
        "unknown".to_string()
    };
    Observed {
        endpoint,
        keyspace,
        shard: String::new(),
    }
}

async fn execute(
    State(st): Shared,
    auth: Authenticated,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ErrorResponse> {
    let keyspace = req.keyspace.as_deref().unwrap_or(DEFAULT_KEYSPACE);
    let mut obs = observed("execute", &auth.routing, keyspace);
    let target = resolve(&auth.routing, keyspace, &req.shard_key, &mut obs);
    let shard = obs.shard.clone();
    let work = async move {
        let mut conn = acquire(target?).await?;
        let result = exec::execute(&mut conn, &req.sql, &req.params).await?;
        Ok(ExecuteResponse { shard, result })
    };
    observe(&st, &mut obs, work).await.map(Json)
}

async fn transaction(
    State(st): Shared,
    auth: Authenticated,
    JsonBody(req): JsonBody<TransactionRequest>,
) -> Result<Json<TransactionResponse>, ErrorResponse> {
    let keyspace = req.keyspace.as_deref().unwrap_or(DEFAULT_KEYSPACE);
    let mut obs = observed("transaction", &auth.routing, keyspace);
    let target = resolve(&auth.routing, keyspace, &req.shard_key, &mut obs);
    let shard = obs.shard.clone();
    let work = async move {
        if req.statements.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "statements is empty; a transaction needs at least one",
            ));
        }
        let mut conn = acquire(target?).await?;
        let stmts: Vec<(String, Vec<serde_json::Value>)> = req
            .statements
            .into_iter()
            .map(|s| (s.sql, s.params))
            .collect();
        let results = exec::transaction(&mut conn, &stmts)
            .await
            .map_err(|(index, mut e)| {
                e.statement_index = Some(index);
                e
            })?;
        Ok(TransactionResponse { shard, results })
    };
    observe(&st, &mut obs, work).await.map(Json)
}

async fn route(
    State(st): Shared,
    auth: Authenticated,
    QueryParams(q): QueryParams<RouteQuery>,
) -> Result<Json<RouteResponse>, ErrorResponse> {
    let keyspace = q.keyspace.as_deref().unwrap_or(DEFAULT_KEYSPACE);
    let mut obs = observed("route", &auth.routing, keyspace);
    let key = ShardKeyValue::Text(q.key.clone());
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
    observe(&st, &mut obs, std::future::ready(answer))
        .await
        .map(Json)
}
