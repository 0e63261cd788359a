//! The manager's HTTP API. Handlers are short: authorise, parse, call
//! the operation, answer JSON. Tenants and apps are in [`tenants`];
//! resharding in [`reshard`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use shardline_api::manager::{
    AddReplicaRequest, ApplyMigrationRequest, CreateKeyspaceRequest, FailoverRequest,
    FailoverResult, HealthSnapshot, HeartbeatResponse, InitialMapRequest, InstanceInfo,
    KeyspaceInfo, MigrationInfo, RegisterShardRequest, RouterHeartbeat, ShardInfo, StatusResponse,
};
use shardline_api::ErrorCode;
use shardline_core::catalog::Shard;
use shardline_core::Catalog;
use shardline_http::{
    with_fallbacks, with_request_ids, ErrorResponse, JsonBody, PathParam, QueryParams,
};

use crate::error::ServiceError;
use crate::health::HealthTable;
use crate::{migrations, ops, replicas};

mod reshard;
mod state;
mod tenants;

pub use state::AppState;
use state::{keyspace_info, ApiResult, Shared};

/// The manager's routes.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/leader", get(leader))
        .route("/v1/keyspaces", get(list_keyspaces).post(create_keyspace))
        .route("/v1/keyspaces/{name}", get(get_keyspace))
        .route("/v1/keyspaces/{name}/map", put(set_map))
        .route(
            "/v1/keyspaces/{name}/migrations",
            get(list_migrations).post(apply_migration),
        )
        .route(
            "/v1/keyspaces/{name}/tables/{table}",
            put(reshard::set_table),
        )
        .route(
            "/v1/reshard",
            get(reshard::list_jobs).post(reshard::start_job),
        )
        .route("/v1/reshard/{id}", get(reshard::get_job))
        .route("/v1/reshard/{id}/cancel", post(reshard::cancel_job))
        .route("/v1/shards", get(list_shards).post(register_shard))
        .route("/v1/shards/{id}", get(get_shard).delete(remove_shard))
        .route("/v1/shards/{id}/replicas", post(add_replica))
        .route("/v1/shards/{id}/failover", post(failover))
        .route("/v1/health", get(health))
        .route(
            "/v1/tenants",
            get(tenants::list_tenants).post(tenants::create_tenant),
        )
        .route(
            "/v1/tenants/{id}",
            get(tenants::get_tenant)
                .patch(tenants::update_tenant)
                .delete(tenants::delete_tenant),
        )
        .route(
            "/v1/apps",
            get(tenants::list_apps).post(tenants::create_app),
        )
        .route(
            "/v1/apps/{id}",
            get(tenants::get_app)
                .patch(tenants::update_app)
                .delete(tenants::delete_app),
        )
        .route("/v1/apps/{id}/rotate", post(tenants::rotate_app_token))
        .route("/v1/catalog", get(watch_catalog))
        .route("/v1/routers", get(list_routers))
        .route("/v1/routers/heartbeat", post(heartbeat))
        .with_state(state);
    with_request_ids(with_fallbacks(api, body_limit))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(st): Shared) -> Response {
    st.catalog_version
        .with(&[])
        .set(st.service.current().catalog.version as f64);
    st.live_routers
        .with(&[])
        .set(st.routers.live_count() as f64);
    tenants::publish_metrics(&st);
    (
        [(header::CONTENT_TYPE, shardline_metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

/// Shows a DSN with its password replaced.
pub fn redact_dsn(dsn: &str) -> String {
    if let Some(rest) = dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        let scheme = &dsn[..dsn.len() - rest.len()];
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or_default();
            return format!("{scheme}{user}:***@{host}");
        }
        return dsn.to_string();
    }
    dsn.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn shard_info(cat: &Catalog, shard: &Shard, health: &HealthTable) -> ShardInfo {
    let ranges = shard
        .keyspace
        .as_ref()
        .and_then(|k| cat.keyspaces.get(k))
        .and_then(|ks| ks.map.as_ref())
        .map(|m| {
            m.ranges()
                .iter()
                .filter(|r| r.shard == shard.id)
                .map(|r| r.range.to_string())
                .collect()
        })
        .unwrap_or_default();
    let info = |inst: &shardline_core::catalog::Instance, role: &str, checked: bool| InstanceInfo {
        id: inst.id.clone(),
        role: role.into(),
        dsn: redact_dsn(&inst.dsn),
        health: checked.then(|| health.get(&shard.id, &inst.id)).flatten(),
    };
    let mut instances = vec![info(&shard.primary, "primary", true)];
    instances.extend(shard.replicas.iter().map(|r| info(r, "replica", true)));
    // Fenced ones are not checked: no health to show.
    instances.extend(shard.fenced.iter().map(|f| info(f, "fenced", false)));
    ShardInfo {
        id: shard.id.clone(),
        keyspace: shard.keyspace.clone(),
        ranges,
        generation: shard.generation,
        instances,
        reserved_for: shard.reserved_for.clone(),
        failover: shard.failover.clone(),
        synchronous: shard.synchronous,
    }
}

async fn status(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<StatusResponse>> {
    st.admin.check(&headers)?;
    let p = st.service.current();
    let cat = &p.catalog;
    Ok(Json(StatusResponse {
        catalog_version: cat.version,
        keyspaces: cat.keyspaces.values().map(keyspace_info).collect(),
        shards: cat
            .shards
            .values()
            .map(|s| shard_info(cat, s, &st.health))
            .collect(),
        routers: st.routers.live(),
        tenants: tenants::tenant_infos(cat),
    }))
}

async fn list_keyspaces(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<KeyspaceInfo>>> {
    st.admin.check(&headers)?;
    let p = st.service.current();
    Ok(Json(
        p.catalog.keyspaces.values().map(keyspace_info).collect(),
    ))
}

fn find_keyspace(st: &AppState, name: &str) -> ApiResult<KeyspaceInfo> {
    st.service
        .current()
        .catalog
        .keyspaces
        .get(name)
        .map(keyspace_info)
        .ok_or_else(|| ErrorResponse::new(ErrorCode::NotFound, format!("no keyspace {name}")))
}

async fn get_keyspace(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> ApiResult<Json<KeyspaceInfo>> {
    st.admin.check(&headers)?;
    find_keyspace(&st, &name).map(Json)
}

async fn create_keyspace(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateKeyspaceRequest>,
) -> ApiResult<(StatusCode, Json<KeyspaceInfo>)> {
    st.admin.check(&headers)?;
    ops::create_keyspace(&st.service, &req).await?;
    Ok((StatusCode::CREATED, Json(find_keyspace(&st, &req.name)?)))
}

async fn set_map(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<InitialMapRequest>,
) -> ApiResult<Json<KeyspaceInfo>> {
    st.admin.check(&headers)?;
    ops::set_initial_map(&st.service, &name, &req.shards, st.connect_timeout).await?;
    find_keyspace(&st, &name).map(Json)
}

async fn list_migrations(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> ApiResult<Json<Vec<MigrationInfo>>> {
    st.admin.check(&headers)?;
    find_keyspace(&st, &name).map(|k| Json(k.migrations))
}

async fn apply_migration(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<ApplyMigrationRequest>,
) -> ApiResult<Response> {
    st.admin.check(&headers)?;
    req.check().map_err(ErrorResponse)?;
    let result =
        migrations::apply_migration(&st.service, &st.routers, &name, &req, st.connect_timeout)
            .await?;
    Ok(Json(result).into_response())
}

async fn list_shards(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<Vec<ShardInfo>>> {
    st.admin.check(&headers)?;
    let p = st.service.current();
    Ok(Json(
        p.catalog
            .shards
            .values()
            .map(|s| shard_info(&p.catalog, s, &st.health))
            .collect(),
    ))
}

fn find_shard(st: &AppState, id: &str) -> ApiResult<ShardInfo> {
    let p = st.service.current();
    p.catalog
        .shards
        .get(id)
        .map(|s| shard_info(&p.catalog, s, &st.health))
        .ok_or_else(|| ErrorResponse::new(ErrorCode::NotFound, format!("no shard {id}")))
}

async fn get_shard(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<ShardInfo>> {
    st.admin.check(&headers)?;
    find_shard(&st, &id).map(Json)
}

async fn register_shard(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RegisterShardRequest>,
) -> ApiResult<(StatusCode, Json<ShardInfo>)> {
    st.admin.check(&headers)?;
    ops::register_shard(&st.service, &req).await?;
    Ok((StatusCode::CREATED, Json(find_shard(&st, &req.id)?)))
}

async fn remove_shard(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    st.admin.check(&headers)?;
    ops::remove_shard(&st.service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_replica(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<AddReplicaRequest>,
) -> ApiResult<(StatusCode, Json<ShardInfo>)> {
    st.admin.check(&headers)?;
    replicas::add_replica(&st.service, &id, &req, st.connect_timeout).await?;
    Ok((StatusCode::CREATED, Json(find_shard(&st, &id)?)))
}

async fn failover(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<FailoverRequest>,
) -> ApiResult<Json<FailoverResult>> {
    st.admin.check(&headers)?;
    Ok(Json(st.failovers.planned(&id, &req).await?))
}

/// Which manager leads, as this one knows it (routers and operators).
async fn leader(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<shardline_api::manager::LeaderResponse>> {
    if st.router_auth.check(&headers).is_err() {
        st.admin.check(&headers)?;
    }
    Ok(Json(st.leadership.response()))
}

/// Every checked instance's last health check: routers pick replicas for
/// eventual reads from it.
async fn health(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<HealthSnapshot>> {
    if st.router_auth.check(&headers).is_err() {
        st.admin.check(&headers)?;
    }
    Ok(Json(st.health.snapshot()))
}

/// Query of the catalog watch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    after_version: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// Routers (or operators) follow the catalog: answers at once when the
/// catalog is newer than `after_version`, else holds the request until it
/// is or `wait_ms` passes (304).
async fn watch_catalog(
    State(st): Shared,
    headers: HeaderMap,
    QueryParams(q): QueryParams<WatchQuery>,
) -> ApiResult<Response> {
    if st.router_auth.check(&headers).is_err() {
        st.admin.check(&headers)?;
    }
    let wait = Duration::from_millis(q.wait_ms).min(st.max_watch_wait);
    let mut rx = st.service.subscribe();
    let newer = |p: &Arc<crate::service::Published>| p.catalog.version > q.after_version;
    let published = match tokio::time::timeout(wait, rx.wait_for(newer)).await {
        Ok(Ok(p)) => p.clone(),
        Ok(Err(_)) | Err(_) => {
            let p = st.service.current();
            if !newer(&p) {
                return Ok(StatusCode::NOT_MODIFIED.into_response());
            }
            p
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        published.json(),
    )
        .into_response())
}

async fn list_routers(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<shardline_api::manager::RouterInfo>>> {
    st.admin.check(&headers)?;
    Ok(Json(st.routers.live()))
}

async fn heartbeat(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(hb): JsonBody<RouterHeartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    st.router_auth.check(&headers)?;
    if hb.id.is_empty() || hb.id.len() > 200 {
        return Err(ErrorResponse::new(
            ErrorCode::InvalidRequest,
            "router id must be 1-200 characters",
        ));
    }
    if let Some(book) = &st.router_book {
        // In the book before its first lease from this manager.
        book.record(&st.routers, &hb.id)
            .await
            .map_err(ServiceError::from)?;
    }
    let renewed = st.routers.heartbeat(&hb);
    Ok(Json(HeartbeatResponse {
        lease_ms: st.routers.lease().as_millis() as u64,
        // This router included, however the lease count races.
        live_routers: st.routers.live_count().max(1) as u32,
        renewed,
    }))
}

#[cfg(test)]
mod tests {
    use super::redact_dsn;

    #[test]
    fn redacts() {
        assert_eq!(
            redact_dsn("host=a port=1 user=u password=secret dbname=d"),
            "host=a port=1 user=u password=*** dbname=d"
        );
        assert_eq!(
            redact_dsn("postgresql://u:secret@h:5432/db"),
            "postgresql://u:***@h:5432/db"
        );
        assert_eq!(redact_dsn("postgres://h/db"), "postgres://h/db");
    }
}
