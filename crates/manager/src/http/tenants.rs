//! Tenant and client-app routes, and the tenant metrics.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use shardline_api::manager::{
    AppInfo, CreateAppRequest, CreateAppResponse, CreateTenantRequest, RotateTokenRequest,
    TenantInfo, UpdateAppRequest, UpdateTenantRequest,
};
use shardline_api::{ErrorBody, ErrorCode};
use shardline_core::catalog::{App, Tenant};
use shardline_core::Catalog;
use shardline_http::{ErrorResponse, JsonBody, PathParam, QueryParams};

use super::state::{ApiResult, AppState, Shared};

/// Largest body of a token rotation (a tiny JSON object).
const ROTATE_BODY_LIMIT: usize = 4096;
use crate::{apps, checks, tenants};

fn tenant_info(cat: &Catalog, t: &Tenant, apps: usize) -> TenantInfo {
    TenantInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        keyspace: t.keyspace.clone(),
        dedicated: t.dedicated,
        shards: checks::keyspace_shards(cat, &t.keyspace),
        pg_name: t.pg_name(),
        config: t.config,
        state: t.state,
        apps,
        created_at: t.created_at.clone(),
    }
}

/// Every tenant as the API shows it.
pub(super) fn tenant_infos(cat: &Catalog) -> Vec<TenantInfo> {
    let mut apps: HashMap<&str, usize> = HashMap::new();
    for a in cat.apps.values() {
        *apps.entry(a.tenant.as_str()).or_default() += 1;
    }
    cat.tenants
        .values()
        .map(|t| tenant_info(cat, t, apps.get(t.id.as_str()).copied().unwrap_or_default()))
        .collect()
}

fn find_tenant(st: &AppState, id: &str) -> ApiResult<TenantInfo> {
    let p = st.service.current();
    let cat = &p.catalog;
    let t = cat
        .tenants
        .get(id)
        .ok_or_else(|| ErrorResponse::new(ErrorCode::NotFound, format!("no tenant {id}")))?;
    let apps = cat.apps.values().filter(|a| a.tenant == id).count();
    Ok(tenant_info(cat, t, apps))
}

/// Sets `manager_tenants` and `manager_tenant_shards{tenant}`; series of
/// tenants that are gone disappear (one series per tenant, so the
/// cardinality is the tenant count).
pub(super) fn publish_metrics(st: &AppState) {
    let p = st.service.current();
    let cat = &p.catalog;
    st.tenants.with(&[]).set(cat.tenants.len() as f64);
    st.tenant_shards.clear();
    for t in cat.tenants.values() {
        st.tenant_shards
            .with(&[&t.id])
            .set(checks::keyspace_shards(cat, &t.keyspace).len() as f64);
    }
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("admin_token" = [])), responses(
    (status = 200, description = "Every tenant", body = Vec<TenantInfo>),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn list_tenants(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<TenantInfo>>> {
    st.admin.check(&headers)?;
    Ok(Json(tenant_infos(&st.service.current().catalog)))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", security(("admin_token" = [])), params(("id" = String, Path, description = "Tenant id", example = "default")), responses(
    (status = 200, description = "The tenant", body = TenantInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn get_tenant(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<TenantInfo>> {
    st.admin.check(&headers)?;
    find_tenant(&st, &id).map(Json)
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("admin_token" = [])), request_body = CreateTenantRequest, responses(
    (status = 201, description = "The new tenant", body = TenantInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 429, description = "More shards than the tenant's `max_shards` (`quota_exceeded`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn create_tenant(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateTenantRequest>,
) -> ApiResult<(StatusCode, Json<TenantInfo>)> {
    st.admin.check(&headers)?;
    tenants::create_tenant(&st.service, &req, st.connect_timeout).await?;
    Ok((StatusCode::CREATED, Json(find_tenant(&st, &req.id)?)))
}

#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants", security(("admin_token" = [])), params(("id" = String, Path, description = "Tenant id", example = "default")), request_body = UpdateTenantRequest, responses(
    (status = 200, description = "The tenant", body = TenantInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn update_tenant(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<UpdateTenantRequest>,
) -> ApiResult<Json<TenantInfo>> {
    st.admin.check(&headers)?;
    tenants::update_tenant(&st.service, &id, &req).await?;
    find_tenant(&st, &id).map(Json)
}

/// Query of `DELETE /v1/tenants/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteTenantQuery {
    /// Drop the tenant's schema even though it holds rows.
    #[serde(default)]
    drop_data: bool,
}

#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", security(("admin_token" = [])), params(("id" = String, Path, description = "Tenant id", example = "default"), DeleteTenantQuery), responses(
    (status = 204, description = "Deleted"),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn delete_tenant(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
    QueryParams(q): QueryParams<DeleteTenantQuery>,
) -> ApiResult<StatusCode> {
    st.admin.check(&headers)?;
    tenants::delete_tenant(&st.service, &id, q.drop_data, st.connect_timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An app as the API shows it: never a token or its hash.
pub(super) fn app_info(app: &App) -> AppInfo {
    let now = apps::now_ms();
    AppInfo {
        id: app.id.clone(),
        name: app.name.clone(),
        tenant: app.tenant.clone(),
        description: app.description.clone(),
        key_prefix: app.key_prefix.clone(),
        limits: app.limits,
        previous_token_expires_at: app
            .previous_token
            .as_ref()
            .filter(|p| p.expires_at_ms > now)
            .map(|p| {
                crate::time::rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.expires_at_ms),
                )
            }),
        created_at: app.created_at.clone(),
    }
}

/// Query of `GET /v1/apps`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AppsQuery {
    /// Only this tenant's apps.
    #[serde(default)]
    tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("admin_token" = [])), params(AppsQuery), responses(
    (status = 200, description = "Apps, without tokens", body = Vec<AppInfo>),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn list_apps(
    State(st): Shared,
    headers: HeaderMap,
    QueryParams(q): QueryParams<AppsQuery>,
) -> ApiResult<Json<Vec<AppInfo>>> {
    st.admin.check(&headers)?;
    let p = st.service.current();
    if let Some(t) = q.tenant.as_deref() {
        if !p.catalog.tenants.contains_key(t) {
            return Err(ErrorResponse::new(
                ErrorCode::NotFound,
                format!("no tenant {t}"),
            ));
        }
    }
    Ok(Json(
        p.catalog
            .apps
            .values()
            .filter(|a| q.tenant.as_deref().is_none_or(|t| a.tenant == t))
            .map(app_info)
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/apps/{id}", tag = "apps", security(("admin_token" = [])), params(("id" = String, Path, description = "App id", example = "test-app")), responses(
    (status = 200, description = "The app, without its token", body = AppInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn get_app(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<AppInfo>> {
    st.admin.check(&headers)?;
    st.service
        .current()
        .catalog
        .apps
        .get(&id)
        .map(|a| Json(app_info(a)))
        .ok_or_else(|| ErrorResponse::new(ErrorCode::NotFound, format!("no app {id}")))
}

#[utoipa::path(post, path = "/v1/apps", tag = "apps", security(("admin_token" = [])), request_body = CreateAppRequest, responses(
    (status = 201, description = "The new app and its token, shown this once", body = CreateAppResponse),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn create_app(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateAppRequest>,
) -> ApiResult<(StatusCode, Json<CreateAppResponse>)> {
    st.admin.check(&headers)?;
    let (app, token) = apps::create_app(&st.service, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateAppResponse {
            app: app_info(&app),
            token,
        }),
    ))
}

#[utoipa::path(patch, path = "/v1/apps/{id}", tag = "apps", security(("admin_token" = [])), params(("id" = String, Path, description = "App id", example = "test-app")), request_body = UpdateAppRequest, responses(
    (status = 200, description = "The app", body = AppInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn update_app(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
    JsonBody(req): JsonBody<UpdateAppRequest>,
) -> ApiResult<Json<AppInfo>> {
    st.admin.check(&headers)?;
    let app = apps::update_app(&st.service, &id, &req).await?;
    Ok(Json(app_info(&app)))
}

/// An empty body (or `null`) means the defaults; else a JSON object.
#[utoipa::path(post, path = "/v1/apps/{id}/rotate", tag = "apps", security(("admin_token" = [])), params(("id" = String, Path, description = "App id", example = "test-app")), request_body = Option<RotateTokenRequest>, responses(
    (status = 200, description = "The app and its new token", body = CreateAppResponse),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn rotate_app_token(
    State(st): Shared,
    PathParam(id): PathParam,
    request: Request,
) -> ApiResult<Json<CreateAppResponse>> {
    st.admin.check(request.headers())?;
    let bytes = axum::body::to_bytes(request.into_body(), ROTATE_BODY_LIMIT)
        .await
        .map_err(|_| {
            ErrorResponse::new(
                ErrorCode::InvalidRequest,
                format!("request body is unreadable or larger than {ROTATE_BODY_LIMIT} bytes"),
            )
        })?;
    // JSON `null` is the defaults too, as the OpenAPI document (an
    // optional, nullable body) says.
    let req: RotateTokenRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RotateTokenRequest::default()
    } else {
        serde_json::from_slice::<Option<RotateTokenRequest>>(&bytes)
            .map_err(|e| {
                ErrorResponse::new(ErrorCode::InvalidRequest, format!("invalid request: {e}"))
            })?
            .unwrap_or_default()
    };
    let (app, token) = apps::rotate_token(&st.service, &id, &req).await?;
    Ok(Json(CreateAppResponse {
        app: app_info(&app),
        token,
    }))
}

#[utoipa::path(delete, path = "/v1/apps/{id}", tag = "apps", security(("admin_token" = [])), params(("id" = String, Path, description = "App id", example = "test-app")), responses(
    (status = 204, description = "Deleted"),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn delete_app(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    st.admin.check(&headers)?;
    apps::delete_app(&st.service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
