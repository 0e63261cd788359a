//! Resharding routes: table shard keys and jobs.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use shardline_api::manager::{JobInfo, KeyspaceInfo, ReshardRequest, TableSpec};
use shardline_api::ErrorCode;
use shardline_http::{ErrorResponse, JsonBody, PathParam};

use super::state::{keyspace_info, ApiResult, Shared};

/// `PUT /v1/keyspaces/{name}/tables/{table}`: records a table's shard-key
/// column.
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
pub(super) async fn start_job(
    State(st): Shared,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ReshardRequest>,
) -> ApiResult<(StatusCode, Json<JobInfo>)> {
    st.admin.check(&headers)?;
    let job = st.reshards.start(&req).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

pub(super) async fn list_jobs(
    State(st): Shared,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<JobInfo>>> {
    st.admin.check(&headers)?;
    Ok(Json(st.reshards.list()))
}

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
pub(super) async fn cancel_job(
    State(st): Shared,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> ApiResult<Json<JobInfo>> {
    st.admin.check(&headers)?;
    Ok(Json(st.reshards.cancel(&id).await?))
}
