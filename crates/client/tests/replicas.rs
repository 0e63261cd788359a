//! The replica, failover and health verbs of the manager client against a
//! real HTTP server on loopback (axum) that decodes the requests with the
//! API types and records what it was sent.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shardline_api::manager::{
    AddReplicaRequest, FailoverRequest, FailoverResult, HealthInfo, HealthSnapshot, InstanceHealth,
    InstanceInfo, ShardInfo,
};
use shardline_api::{ApiError, ErrorBody, ErrorCode};
use shardline_client::ManagerClient;

/// What the server saw: `METHOD path body-or-token` per request.
type Seen = Arc<Mutex<Vec<String>>>;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn instance(id: &str, role: &str) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        role: role.into(),
        dsn: format!("host=127.0.0.1 port=5432 user=postgres password=*** application_name={id}"),
        health: None,
    }
}

fn conflict(message: &str) -> Response {
    (
        StatusCode::CONFLICT,
        Json(ErrorBody {
            error: ApiError::new(ErrorCode::Conflict, message),
        }),
    )
        .into_response()
}

async fn add_replica(
    State(seen): State<Seen>,
    Path(id): Path<String>,
    Json(req): Json<AddReplicaRequest>,
) -> Response {
    seen.lock()
        .unwrap()
        .push(format!("POST /v1/shards/{id}/replicas {}", req.dsn));
    Json(ShardInfo {
        id: id.clone(),
        keyspace: Some("default".into()),
        ranges: vec![],
        generation: 1,
        instances: vec![
            instance(&format!("{id}-1"), "primary"),
            instance(&format!("{id}-2"), "replica"),
        ],
        reserved_for: None,
        failover: None,
        synchronous: false,
    })
    .into_response()
}

async fn failover(
    State(seen): State<Seen>,
    Path(id): Path<String>,
    Json(req): Json<FailoverRequest>,
) -> Response {
    seen.lock()
        .unwrap()
        .push(format!("POST /v1/shards/{id}/failover {:?}", req.to));
    if id == "busy" {
        return conflict("a failover of shard busy is under way");
    }
    Json(FailoverResult {
        shard: id.clone(),
        from: format!("{id}-1"),
        to: req.to.unwrap_or_else(|| format!("{id}-2")),
        generation: 2,
        write_pause_ms: 140,
        repointed: vec![format!("{id}-3")],
        needs_reclone: vec![],
    })
    .into_response()
}

async fn health(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(format!("GET /v1/health {auth}"));
    Json(HealthSnapshot {
        round: 7,
        instances: vec![InstanceHealth {
            shard: "shard-0".into(),
            instance: "shard-0-2".into(),
            role: "replica".into(),
            health: HealthInfo {
                up: true,
                checked_at: "2024-01-01T00:00:00Z".into(),
                in_recovery: Some(true),
                lsn: Some("0/3000060".into()),
                lag_bytes: Some(128),
                lag_seconds: Some(0.25),
                ..HealthInfo::default()
            },
        }],
    })
    .into_response()
}

fn server(seen: Seen) -> Router {
    Router::new()
        .route("/v1/shards/{id}/replicas", post(add_replica))
        .route("/v1/shards/{id}/failover", post(failover))
        .route("/v1/health", get(health))
        .with_state(seen)
}

#[tokio::test]
async fn add_replica_and_failover_send_the_api_bodies() {
    let seen: Seen = Arc::default();
    let base = serve(server(seen.clone())).await;
    let client = ManagerClient::new(&base, Some("adm".into())).unwrap();

    let dsn = "host=127.0.0.1 port=6001 user=postgres";
    let shard = client
        .add_replica("shard-0", &AddReplicaRequest { dsn: dsn.into() })
        .await
        .unwrap();
    let roles: Vec<(&str, &str)> = shard
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.role.as_str()))
        .collect();
    assert_eq!(roles, [("shard-0-1", "primary"), ("shard-0-2", "replica")]);

    let res = client
        .failover("shard-0", &FailoverRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (res.from.as_str(), res.to.as_str()),
        ("shard-0-1", "shard-0-2")
    );
    assert_eq!(res.generation, 2);
    assert_eq!(res.write_pause_ms, 140);
    assert_eq!(res.repointed, ["shard-0-3"]);
    let res = client
        .failover(
            "shard-0",
            &FailoverRequest {
                to: Some("shard-0-3".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(res.to, "shard-0-3");

    // A conflict is the manager's answer, passed up with its code.
    let err = client
        .failover("busy", &FailoverRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.api().unwrap().code, ErrorCode::Conflict);

    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!("POST /v1/shards/shard-0/replicas {dsn}"),
            "POST /v1/shards/shard-0/failover None".to_string(),
            "POST /v1/shards/shard-0/failover Some(\"shard-0-3\")".to_string(),
            "POST /v1/shards/busy/failover None".to_string(),
        ]
    );
}

#[tokio::test]
async fn health_uses_the_clients_token() {
    let seen: Seen = Arc::default();
    let base = serve(server(seen.clone())).await;
    let client = ManagerClient::new(&base, Some("rtr_secret".into())).unwrap();
    let snap = client.health().await.unwrap();
    assert_eq!(snap.round, 7);
    let h = &snap.instances[0];
    assert_eq!((h.shard.as_str(), h.role.as_str()), ("shard-0", "replica"));
    assert_eq!(h.health.lag_bytes, Some(128));
    assert_eq!(h.health.lag_seconds, Some(0.25));
    assert_eq!(*seen.lock().unwrap(), ["GET /v1/health Bearer rtr_secret"]);
}
