//! The manager's HTTP API. Handlers are short: authorise, parse, call
//! the operation, answer JSON. Tenants and apps are in [`tenants`];
//! resharding in [`reshard`].
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`: every
//! status it can answer); `ManagerApi` here assembles them, with what
//! [`openapi`] adds, into the document served at `/openapi.json` and
//! checked in as `docs/openapi/manager.json`.

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
use shardline_api::manager::{LeaderResponse, MigrationResult, RouterInfo};
use shardline_api::probe::ProbeStatus;
use shardline_api::{ErrorBody, ErrorCode};
use shardline_core::catalog::Shard;
use shardline_core::Catalog;
use shardline_http::{
    with_fallbacks, with_request_ids, ErrorResponse, JsonBody, PathParam, QueryParams,
};

use crate::error::ServiceError;
use crate::health::HealthTable;
use crate::{migrations, ops, replicas};

pub mod openapi;

use openapi::Tokens;
mod reshard;
mod state;
mod tenants;

pub use state::AppState;
use state::{keyspace_info, ApiResult, Shared};

/// The manager's routes.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
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

/// The manager's OpenAPI document: every handler's description, with
/// what [`openapi`] adds.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "shardline manager",
        description = "The control plane's HTTP API: keyspaces, shards, replicas and \
            failover, tenants and apps, resharding, the routers' catalog feed. Errors are \
            `ErrorBody`; see docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        status,
        leader,
        list_keyspaces,
        create_keyspace,
        get_keyspace,
        set_map,
        list_migrations,
        apply_migration,
        reshard::set_table,
        reshard::start_job,
        reshard::list_jobs,
        reshard::get_job,
        reshard::cancel_job,
        list_shards,
        register_shard,
        get_shard,
        remove_shard,
        add_replica,
        failover,
        health,
        tenants::list_tenants,
        tenants::create_tenant,
        tenants::get_tenant,
        tenants::update_tenant,
        tenants::delete_tenant,
        tenants::list_apps,
        tenants::create_app,
        tenants::get_app,
        tenants::update_app,
        tenants::rotate_app_token,
        tenants::delete_app,
        watch_catalog,
        list_routers,
        heartbeat,
        healthz,
        readyz,
        metrics,
        openapi_json,
    ),
    modifiers(&Tokens),
    tags(
        (name = "status", description = "The fleet at a glance, the leader"),
        (name = "keyspaces", description = "Keyspaces, their maps and migrations"),
        (name = "shards", description = "Shards, replicas, switchovers, health"),
        (name = "tenants", description = "Tenants"),
        (name = "apps", description = "Client apps and their tokens"),
        (name = "reshard", description = "Online resharding"),
        (name = "routers", description = "What routers use: the catalog feed, heartbeats"),
        (name = "probes", description = "Liveness, readiness, metrics, this document"),
    )
)]
struct ManagerApi;

/// The manager's OpenAPI document as JSON (the checked-in form).
pub fn openapi_document() -> String {
    shardline_http::openapi::document_json(<ManagerApi as utoipa::OpenApi>::openapi())
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
    responses((status = 200, description = "The manager is alive", body = ProbeStatus)))]
async fn healthz() -> Json<ProbeStatus> {
    Json(ProbeStatus::ok())
}

/// Ready: a manager serves once it is listening (it loaded its catalog
/// before).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "The manager serves", body = ProbeStatus)))]
async fn readyz() -> Json<ProbeStatus> {
    Json(ProbeStatus::ok())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "probes", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
))]
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

#[utoipa::path(get, path = "/v1/status", tag = "status", security(("admin_token" = [])), responses(
    (status = 200, description = "Catalog version, keyspaces, shards with health, live routers, tenants", body = StatusResponse),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/keyspaces", tag = "keyspaces", security(("admin_token" = [])), responses(
    (status = 200, description = "Every keyspace", body = Vec<KeyspaceInfo>),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/keyspaces/{name}", tag = "keyspaces", security(("admin_token" = [])), params(("name" = String, Path, description = "Keyspace name", example = "default")), responses(
    (status = 200, description = "The keyspace", body = KeyspaceInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn get_keyspace(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> ApiResult<Json<KeyspaceInfo>> {
    st.admin.check(&headers)?;
    find_keyspace(&st, &name).map(Json)
}

#[utoipa::path(post, path = "/v1/keyspaces", tag = "keyspaces", security(("admin_token" = [])), request_body = CreateKeyspaceRequest, responses(
    (status = 201, description = "The new keyspace", body = KeyspaceInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn create_keyspace(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateKeyspaceRequest>,
) -> ApiResult<(StatusCode, Json<KeyspaceInfo>)> {
    st.admin.check(&headers)?;
    ops::create_keyspace(&st.service, &req).await?;
    Ok((StatusCode::CREATED, Json(find_keyspace(&st, &req.name)?)))
}

#[utoipa::path(put, path = "/v1/keyspaces/{name}/map", tag = "keyspaces", security(("admin_token" = [])), params(("name" = String, Path, description = "Keyspace name", example = "default")), request_body = InitialMapRequest, responses(
    (status = 200, description = "The keyspace with its map", body = KeyspaceInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/keyspaces/{name}/migrations", tag = "keyspaces", security(("admin_token" = [])), params(("name" = String, Path, description = "Keyspace name", example = "default")), responses(
    (status = 200, description = "The keyspace's migrations", body = Vec<MigrationInfo>),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn list_migrations(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(name): PathParam,
) -> ApiResult<Json<Vec<MigrationInfo>>> {
    st.admin.check(&headers)?;
    find_keyspace(&st, &name).map(|k| Json(k.migrations))
}

#[utoipa::path(post, path = "/v1/keyspaces/{name}/migrations", tag = "keyspaces", security(("admin_token" = [])), params(("name" = String, Path, description = "Keyspace name", example = "default")), request_body = ApplyMigrationRequest, responses(
    (status = 200, description = "The migration's outcome on each shard", body = MigrationResult),
    (status = 400, description = "Malformed or invalid input (`invalid_request`), or the migration failed in PostgreSQL (`statement_failed`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/shards", tag = "shards", security(("admin_token" = [])), responses(
    (status = 200, description = "Every shard", body = Vec<ShardInfo>),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/shards/{id}", tag = "shards", security(("admin_token" = [])), params(("id" = String, Path, description = "Shard id", example = "s0")), responses(
    (status = 200, description = "The shard", body = ShardInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn get_shard(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<ShardInfo>> {
    st.admin.check(&headers)?;
    find_shard(&st, &id).map(Json)
}

#[utoipa::path(post, path = "/v1/shards", tag = "shards", security(("admin_token" = [])), request_body = RegisterShardRequest, responses(
    (status = 201, description = "The new shard", body = ShardInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn register_shard(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RegisterShardRequest>,
) -> ApiResult<(StatusCode, Json<ShardInfo>)> {
    st.admin.check(&headers)?;
    ops::register_shard(&st.service, &req).await?;
    Ok((StatusCode::CREATED, Json(find_shard(&st, &req.id)?)))
}

#[utoipa::path(delete, path = "/v1/shards/{id}", tag = "shards", security(("admin_token" = [])), params(("id" = String, Path, description = "Shard id", example = "s0")), responses(
    (status = 204, description = "Removed"),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn remove_shard(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    st.admin.check(&headers)?;
    ops::remove_shard(&st.service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/shards/{id}/replicas", tag = "shards", security(("admin_token" = [])), params(("id" = String, Path, description = "Shard id", example = "s0")), request_body = AddReplicaRequest, responses(
    (status = 201, description = "The shard with the new replica", body = ShardInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(post, path = "/v1/shards/{id}/failover", tag = "shards", security(("admin_token" = [])), params(("id" = String, Path, description = "Shard id", example = "s0")), request_body = FailoverRequest, responses(
    (status = 200, description = "The switchover is done", body = FailoverResult),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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
#[utoipa::path(get, path = "/v1/leader", tag = "status", security(("router_token" = []), ("admin_token" = [])), responses(
    (status = 200, description = "Which manager leads", body = LeaderResponse),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn leader(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<LeaderResponse>> {
    if st.router_auth.check(&headers).is_err() {
        st.admin.check(&headers)?;
    }
    Ok(Json(st.leadership.response()))
}

/// Every checked instance's last health check: routers pick replicas for
/// eventual reads from it.
#[utoipa::path(get, path = "/v1/health", tag = "shards", security(("router_token" = []), ("admin_token" = [])), responses(
    (status = 200, description = "Every checked instance's last health check", body = HealthSnapshot),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn health(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<HealthSnapshot>> {
    if st.router_auth.check(&headers).is_err() {
        st.admin.check(&headers)?;
    }
    Ok(Json(st.health.snapshot()))
}

/// Query of the catalog watch.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    /// Answer once the catalog is newer than this version (default 0).
    #[serde(default)]
    after_version: u64,
    /// How long to wait for a newer one, in milliseconds (at most the
    /// manager's `max_watch_wait`; default 0).
    #[serde(default)]
    wait_ms: u64,
}

/// Routers (or operators) follow the catalog: answers at once when the
/// catalog is newer than `after_version`, else holds the request until it
/// is or `wait_ms` passes (304).
#[utoipa::path(get, path = "/v1/catalog", tag = "routers", security(("router_token" = []), ("admin_token" = [])), params(WatchQuery), responses(
    (status = 200, description = "The catalog (its internal JSON form, for routers: not a stable API)", body = Object),
    (status = 304, description = "Not newer than `after_version` within `wait_ms`"),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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

#[utoipa::path(get, path = "/v1/routers", tag = "routers", security(("admin_token" = [])), responses(
    (status = 200, description = "Live routers", body = Vec<RouterInfo>),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
async fn list_routers(State(st): Shared, headers: HeaderMap) -> ApiResult<Json<Vec<RouterInfo>>> {
    st.admin.check(&headers)?;
    Ok(Json(st.routers.live()))
}

#[utoipa::path(post, path = "/v1/routers/heartbeat", tag = "routers", security(("router_token" = [])), request_body = RouterHeartbeat, responses(
    (status = 200, description = "The lease", body = HeartbeatResponse),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
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
