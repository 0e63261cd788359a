//! Resharding routes: table shard keys and jobs.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use shardline_api::manager::{JobInfo, KeyspaceInfo, ReshardRequest, TableSpec};
use shardline_api::{ErrorBody, ErrorCode};
use shardline_http::{ErrorResponse, JsonBody, PathParam};

use super::state::{keyspace_info, ApiResult, Shared};

/// `PUT /v1/keyspaces/{name}/tables/{table}`: records a table's shard-key
/// column.
#[utoipa::path(put, path = "/v1/keyspaces/{name}/tables/{table}", tag = "reshard", security(("admin_token" = [])), params(("name" = String, Path, description = "Keyspace name", example = "default"), ("table" = String, Path, description = "Table name", example = "events")), request_body = TableSpec, responses(
    (status = 200, description = "The keyspace", body = KeyspaceInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn set_table(
    State(st): Shared,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    JsonBody(spec): JsonBody<TableSpec>,
) -> ApiResult<Json<KeyspaceInfo>> {
    st.admin.check(&headers)?;
    let Path((keyspace, table)) = path.map_err(|e| {
        ErrorResponse::new(
            ErrorCode::InvalidRequest,
            format!("invalid path: {}", e.body_text()),
        )
    })?;
    let ks = st.reshards.set_table(&keyspace, &table, &spec).await?;
    Ok(Json(keyspace_info(&ks)))
}

/// `POST /v1/reshard`: starts a job; it runs in the background (202).
#[utoipa::path(post, path = "/v1/reshard", tag = "reshard", security(("admin_token" = [])), request_body = ReshardRequest, responses(
    (status = 202, description = "The job, started", body = JobInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 413, description = "Body over the limit (`payload_too_large`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn start_job(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ReshardRequest>,
) -> ApiResult<(StatusCode, Json<JobInfo>)> {
    st.admin.check(&headers)?;
    let job = st.reshards.start(&req).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(get, path = "/v1/reshard", tag = "reshard", security(("admin_token" = [])), responses(
    (status = 200, description = "Every job, oldest first", body = Vec<JobInfo>),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn list_jobs(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<JobInfo>>> {
    st.admin.check(&headers)?;
    Ok(Json(st.reshards.list()))
}

#[utoipa::path(get, path = "/v1/reshard/{id}", tag = "reshard", security(("admin_token" = [])), params(("id" = String, Path, description = "Job id", example = "rs-0")), responses(
    (status = 200, description = "The job", body = JobInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn get_job(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<JobInfo>> {
    st.admin.check(&headers)?;
    Ok(Json(st.reshards.get(&id)?))
}

/// `POST /v1/reshard/{id}/cancel`: before the cutover published the new
/// map; 409 after.
#[utoipa::path(post, path = "/v1/reshard/{id}/cancel", tag = "reshard", security(("admin_token" = [])), params(("id" = String, Path, description = "Job id", example = "rs-0")), responses(
    (status = 200, description = "The job, cancelled", body = JobInfo),
    (status = 400, description = "Malformed or invalid input (`invalid_request`)", body = ErrorBody),
    (status = 401, description = "No bearer token, or a wrong one (`unauthorized`)", body = ErrorBody),
    (status = 404, description = "No such object (`not_found`)", body = ErrorBody),
    (status = 409, description = "Exists already, in use, or in another state (`conflict`)", body = ErrorBody),
    (status = 503, description = "A shard or the catalog store cannot be reached, or no manager leads now (`shard_unavailable`, `unavailable`; `X-Shardline-No-Leader: 1` when nothing was run)", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
))]
pub(super) async fn cancel_job(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<JobInfo>> {
    st.admin.check(&headers)?;
    Ok(Json(st.reshards.cancel(&id).await?))
}
