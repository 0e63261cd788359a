//! The resharding verbs of the manager client (table shard keys, jobs)
//! against a real HTTP server on loopback (axum) that decodes the
//! requests with the API types and records what it was sent.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use shardline_api::manager::{
    JobInfo, KeyspaceInfo, MoveInfo, ReshardKind, ReshardPhase, ReshardRequest, TableSpec,
};
use shardline_api::{ApiError, ErrorBody, ErrorCode};
use shardline_client::{ClientError, ManagerClient};
use shardline_core::KeyType;

/// What the server saw: one `METHOD path` line per request, with the
/// decoded body where there is one.
type Seen = Arc<Mutex<Vec<String>>>;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn record(seen: &Seen, method: &Method, uri: &Uri, body: &str) {
    seen.lock()
        .unwrap()
        .push(format!("{method} {uri} {body}").trim_end().to_string());
}

fn job(id: &str, phase: ReshardPhase) -> JobInfo {
    JobInfo {
        id: id.into(),
        kind: ReshardKind::Split,
        keyspace: "default".into(),
        tenant: None,
        to_keyspace: None,
        moves: vec![MoveInfo {
            range: "80-".into(),
            from: "s1".into(),
            to: "s2".into(),
        }],
        phase,
        rows_copied: 10,
        rows_estimated: 40,
        changes_behind: 3,
        error: None,
        cutover_pause_ms: None,
        copy_ms: None,
        created_at: "2024-01-01T00:00:00Z".into(),
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ApiError::new(code, message),
        }),
    )
        .into_response()
}

fn server(seen: Seen) -> Router {
    Router::new()
        .route(
            "/v1/keyspaces/{ks}/tables/{table}",
            put(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Path((ks, table)): Path<(String, String)>,
                 Json(spec): Json<TableSpec>| async move {
                    record(&seen, &method, &uri, &spec.shard_key);
                    Json(KeyspaceInfo {
                        name: ks,
                        key_type: KeyType::Text,
                        map: vec![],
                        migrations: vec![],
                        tables: [(table, spec)].into_iter().collect(),
                        frozen: vec!["80-".into()],
                    })
                },
            ),
        )
        .route(
            "/v1/reshard",
            post(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Json(req): Json<ReshardRequest>| async move {
                    record(&seen, &method, &uri, &serde_json::to_string(&req).unwrap());
                    if req.source == "busy" {
                        return error(
                            StatusCode::CONFLICT,
                            ErrorCode::Conflict,
                            "a job is running in this keyspace",
                        );
                    }
                    let mut j = job("job-1", ReshardPhase::Prepare);
                    j.kind = req.kind;
                    j.keyspace = req.keyspace;
                    (StatusCode::ACCEPTED, Json(j)).into_response()
                },
            )
            .get(
                |State(seen): State<Seen>, method: Method, uri: Uri| async move {
                    record(&seen, &method, &uri, "");
                    Json(vec![
                        job("job-0", ReshardPhase::Done),
                        job("job-1", ReshardPhase::Copy),
                    ])
                },
            ),
        )
        .route(
            "/v1/reshard/{id}",
            get(
                |State(seen): State<Seen>, method: Method, uri: Uri, Path(id): Path<String>| async move {
                    record(&seen, &method, &uri, "");
                    if id == "missing" {
                        return error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such job");
                    }
                    Json(job(&id, ReshardPhase::CatchUp)).into_response()
                },
            ),
        )
        .route(
            "/v1/reshard/{id}/cancel",
            post(
                |State(seen): State<Seen>, method: Method, uri: Uri, Path(id): Path<String>| async move {
                    record(&seen, &method, &uri, "");
                    Json(job(&id, ReshardPhase::Cancelled))
                },
            ),
        )
        .with_state(seen)
}

#[tokio::test]
async fn reshard_verbs_send_what_the_api_expects() {
    let seen: Seen = Arc::default();
    let url = serve(server(Arc::clone(&seen))).await;
    let m = ManagerClient::new(&url, Some("admin".into())).unwrap();

    let ks = m
        .set_table(
            "default",
            "events",
            &TableSpec {
                shard_key: "account".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ks.tables["events"].shard_key, "account");
    assert_eq!(ks.frozen, ["80-"]);

    let req = ReshardRequest {
        keyspace: "default".into(),
        kind: ReshardKind::Merge,
        source: "s2".into(),
        targets: vec!["s1".into()],
        at: vec![],
        tenant: None,
        to_keyspace: None,
    };
    let started = m.reshard(&req).await.unwrap();
    assert_eq!(
        (started.id.as_str(), started.kind, started.phase),
        ("job-1", ReshardKind::Merge, ReshardPhase::Prepare)
    );
    let jobs = m.list_jobs().await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.phase).collect::<Vec<_>>(),
        [ReshardPhase::Done, ReshardPhase::Copy]
    );
    let one = m.get_job("job-1").await.unwrap();
    assert_eq!(
        (one.rows_copied, one.rows_estimated, one.changes_behind),
        (10, 40, 3)
    );
    assert_eq!(one.moves[0].to, "s2");
    let cancelled = m.cancel_job("job 1").await.unwrap();
    assert_eq!(cancelled.phase, ReshardPhase::Cancelled);
    assert_eq!(cancelled.id, "job 1");

    // Errors come back typed.
    match m.get_job("missing").await {
        Err(ClientError::Api { status, error }) => {
            assert_eq!((status, error.code), (404, ErrorCode::NotFound));
        }
        other => panic!("expected 404, got {other:?}"),
    }
    let busy = ReshardRequest {
        source: "busy".into(),
        ..req.clone()
    };
    match m.reshard(&busy).await {
        Err(ClientError::Api { status, error }) => {
            assert_eq!((status, error.code), (409, ErrorCode::Conflict));
        }
        other => panic!("expected 409, got {other:?}"),
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "PUT /v1/keyspaces/default/tables/events account".to_string(),
            format!("POST /v1/reshard {}", serde_json::to_string(&req).unwrap()),
            "GET /v1/reshard".into(),
            "GET /v1/reshard/job-1".into(),
            "POST /v1/reshard/job%201/cancel".into(),
            "GET /v1/reshard/missing".into(),
            format!("POST /v1/reshard {}", serde_json::to_string(&busy).unwrap()),
        ]
    );
}
