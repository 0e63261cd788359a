//! The client against a real HTTP server on loopback (axum) that gives
//! canned answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::Value;
use shardline_api::manager::{KeyspaceInfo, RangeInfo};
use shardline_api::router::{
    ExecuteRequest, ExecuteResponse, RouteResponse, ShardKeyValue, StatementResult,
    TransactionRequest, TransactionResponse,
};
use shardline_api::{ApiError, ErrorBody, ErrorCode};
use shardline_client::{ClientError, HttpClient, ManagerClient, RetryPolicy, RouterClient};
use shardline_core::{Catalog, KeyType};

/// Serves `app` on 127.0.0.1 on a free port; returns its base URL. The
/// server task ends with the test's runtime.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn error(status: StatusCode, err: ApiError) -> Response {
    (status, Json(ErrorBody { error: err })).into_response()
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
    }
}

fn execute_request() -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Int(42),
        sql: "SELEC 1".into(),
        params: vec![],
        consistency: Default::default(),
    }
}

#[tokio::test]
async fn decodes_json_sends_bearer_and_encodes_path() {
    let app = Router::new().route(
        "/v1/keyspaces/{name}",
        get(|Path(name): Path<String>, headers: HeaderMap| async move {
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if auth != Some("Bearer admin-secret") {
                return error(
                    StatusCode::UNAUTHORIZED,
                    ApiError::new(ErrorCode::Unauthorized, "bad token"),
                );
            }
            Json(KeyspaceInfo {
                name,
                key_type: KeyType::Bigint,
                map: vec![RangeInfo {
                    range: "-".into(),
                    shard: "s1".into(),
                }],
                migrations: vec![],
                tables: Default::default(),
                frozen: vec![],
            })
            .into_response()
        }),
    );
    let base = serve(app).await;

    let client = ManagerClient::new(&base, Some("admin-secret".into())).unwrap();
    let name = "a b/c?d&é..";
    let ks = client.get_keyspace(name).await.unwrap();
    // The server decoded the one path segment back to the exact name.
    assert_eq!(ks.name, name);
    assert_eq!(ks.key_type, KeyType::Bigint);
    assert_eq!(ks.map[0].shard, "s1");
    // A dot segment stays a segment instead of walking up the path.
    assert_eq!(client.get_keyspace("..").await.unwrap().name, "..");

    for token in [None, Some("wrong".to_string())] {
        let err = ManagerClient::new(&base, token)
            .unwrap()
            .get_keyspace("x")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.api().unwrap().code, ErrorCode::Unauthorized);
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn error_body_becomes_api_error_and_400_is_not_retried() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/v1/execute",
        post(move |Json(req): Json<ExecuteRequest>| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                assert_eq!(req.sql, "SELEC 1");
                let mut e = ApiError::new(
                    ErrorCode::StatementFailed,
                    "syntax error at or near \"SELEC\"",
                );
                e.sqlstate = Some("42601".into());
                e.position = Some(1);
                e.hint = Some("check the spelling".into());
                e.shard = Some("s1".into());
                error(StatusCode::BAD_REQUEST, e)
            }
        }),
    );
    let base = serve(app).await;
    let client = RouterClient::new(&base, Some("app".into()))
        .unwrap()
        .with_retry(fast_retry(5));
    let err = client.execute(&execute_request()).await.unwrap_err();
    let ClientError::Api { status, error } = &err else {
        panic!("expected Api, got {err:?}");
    };
    assert_eq!(*status, 400);
    assert_eq!(error.code, ErrorCode::StatementFailed);
    assert_eq!(error.sqlstate.as_deref(), Some("42601"));
    assert_eq!(error.position, Some(1));
    assert_eq!(error.hint.as_deref(), Some("check the spelling"));
    assert_eq!(error.shard.as_deref(), Some("s1"));
    assert!(err.to_string().contains("SQLSTATE 42601"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 400 must not be retried");
}

#[tokio::test]
async fn non_json_502_gets_a_synthesised_error() {
    let app = Router::new().route(
        "/v1/status",
        get(|| async {
            (
                StatusCode::BAD_GATEWAY,
                [(header::RETRY_AFTER, "3")],
                "<html>upstream down</html>",
            )
        }),
    );
    let base = serve(app).await;
    let client = ManagerClient::new(&base, None).unwrap();
    let err = client.status().await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    let api = err.api().unwrap();
    assert_eq!(api.code, ErrorCode::Unavailable);
    assert!(api.retryable);
    assert_eq!(api.retry_after, Some(3));
    assert!(api.message.contains("upstream down"), "{}", api.message);
    assert!(err.is_retryable());

    // get_raw hands back any status as it is.
    let (status, body) = client.http().get_raw("/v1/status").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(&body[..], b"<html>upstream down</html>");
}

#[tokio::test]
async fn catalog_watch_304_is_none() {
    let app = Router::new().route(
        "/v1/catalog",
        get(|Query(q): Query<HashMap<String, String>>| async move {
            assert_eq!(q.get("wait_ms").map(String::as_str), Some("1500"));
            let after: u64 = q["after_version"].parse().unwrap();
            if after >= 5 {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                Json(Catalog {
                    version: 5,
                    ..Catalog::default()
                })
                .into_response()
            }
        }),
    );
    let base = serve(app).await;
    let client = ManagerClient::new(&base, Some("router".into())).unwrap();
    let wait = Duration::from_millis(1500);
    assert_eq!(client.watch_catalog(5, wait).await.unwrap(), None);
    let catalog = client.watch_catalog(4, wait).await.unwrap().unwrap();
    assert_eq!(catalog.version, 5);
    // A plain get treats an unasked-for 304 as an error, not a value.
    let err = client
        .http()
        .get::<Value>("/v1/catalog?after_version=9&wait_ms=1500")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn slow_answer_is_timeout_but_long_poll_gets_its_wait() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/v1/catalog",
            get(|| async {
                // Holds the poll open longer than the plain timeout, as a
                // manager with nothing new does.
                tokio::time::sleep(Duration::from_millis(300)).await;
                StatusCode::NOT_MODIFIED
            }),
        );
    let base = serve(app).await;
    let http = HttpClient::new(&base, None)
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    let err = http.get::<Value>("/slow").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    assert!(!err.is_retryable());

    let client = ManagerClient::from_http(http);
    let got = client
        .watch_catalog(1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, None);
}

#[tokio::test]
async fn connection_refused_is_connect_and_retryable() {
    // A port that was free a moment ago and has no listener now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = RouterClient::new(&format!("http://127.0.0.1:{port}"), None)
        .unwrap()
        .with_retry(fast_retry(3));
    let err = client.route("default", "k").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

#[tokio::test]
async fn retries_503_with_retry_after_and_stops_after_max_attempts() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/v1/execute",
        post(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ApiError::new(ErrorCode::ShardUnavailable, "failing over").with_retry_after(1),
                )
            }
        }),
    );
    let base = serve(app).await;
    let client = RouterClient::new(&base, None)
        .unwrap()
        .with_retry(fast_retry(3));
    let started = Instant::now();
    let err = client.execute(&execute_request()).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.api().unwrap().code, ErrorCode::ShardUnavailable);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // retry_after (1s) capped at max_delay (20ms) is waited twice; plain
    // backoff would have waited at most 1ms + 2ms. A lower bound from
    // sleeps, so it cannot flake.
    assert!(started.elapsed() >= Duration::from_millis(40));
}

#[tokio::test]
async fn retries_429_then_succeeds() {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/v1/transaction",
        post(move |Json(req): Json<TransactionRequest>| {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) < 2 {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        "slow down",
                    )
                        .into_response();
                }
                Json(TransactionResponse {
                    shard: "s2".into(),
                    results: vec![StatementResult::default(); req.statements.len()],
                })
                .into_response()
            }
        }),
    );
    let base = serve(app).await;
    let client = RouterClient::new(&base, None)
        .unwrap()
        .with_retry(fast_retry(4));
    let req = TransactionRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text("t".into()),
        statements: vec![
            shardline_api::router::Statement {
                sql: "SELECT 1".into(),
                params: vec![],
            };
            2
        ],
        consistency: Default::default(),
    };
    let resp = client.transaction(&req).await.unwrap();
    assert_eq!(resp.shard, "s2");
    assert_eq!(resp.results.len(), 2);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn execute_and_route_decode() {
    let app = Router::new()
        .route(
            "/v1/execute",
            post(|Json(req): Json<ExecuteRequest>| async move {
                Json(ExecuteResponse {
                    shard: "s1".into(),
                    result: StatementResult {
                        columns: vec![],
                        rows: vec![vec![serde_json::json!(req.shard_key.to_string())]],
                        rows_affected: 1,
                    },
                })
            }),
        )
        .route(
            "/v1/route",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                Json(RouteResponse {
                    keyspace: q["keyspace"].clone(),
                    shard: q["key"].clone(),
                    range: "40-80".into(),
                    hash: "0c8440b74fd699b0".into(),
                    catalog_version: 7,
                })
            }),
        );
    let base = serve(app).await;
    let client = RouterClient::new(&base, Some("app".into())).unwrap();
    let resp = client.execute(&execute_request()).await.unwrap();
    assert_eq!(resp.shard, "s1");
    assert_eq!(resp.result.rows, vec![vec![serde_json::json!("42")]]);
    assert_eq!(resp.result.rows_affected, 1);

    let key = "a&b=c d/é+%";
    let route = client.route("ks #1", key).await.unwrap();
    assert_eq!(route.keyspace, "ks #1");
    assert_eq!(route.shard, key);
    assert_eq!(route.catalog_version, 7);
}

#[tokio::test]
async fn delete_accepts_204_and_json_bodies() {
    let app = Router::new()
        .route(
            "/v1/shards/{id}",
            delete(|Path(id): Path<String>| async move {
                if id == "s/1" {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        ApiError::new(ErrorCode::NotFound, "no shard"),
                    )
                }
            }),
        )
        .route(
            "/v1/apps/{id}",
            delete(|| async { Json(serde_json::json!({"deleted": true})) }),
        );
    let base = serve(app).await;
    let client = ManagerClient::new(&base, None).unwrap();
    client.delete_shard("s/1").await.unwrap();
    let err = client.delete_shard("s2").await.unwrap_err();
    assert_eq!(err.api().unwrap().code, ErrorCode::NotFound);
    client.delete_app("app-1").await.unwrap();
}

#[tokio::test]
async fn bad_configuration_is_rejected() {
    for url in [
        "",
        "localhost:8080",
        "ftp://h:1",
        "http://",
        "http://h:1/?q=1",
        "http://h:1,",
        "http://h:1,http://h:1/",
    ] {
        let err = HttpClient::new(url, None).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{url}: {err:?}");
    }
    let err = HttpClient::new("http://127.0.0.1:1", Some("bad\ntoken".into())).unwrap_err();
    assert!(matches!(err, ClientError::Config(_)));
    let http = HttpClient::new("http://127.0.0.1:1/", None).unwrap();
    assert_eq!(http.base_url(), "http://127.0.0.1:1");
    let err = http.get::<Value>("no-slash").await.unwrap_err();
    assert!(matches!(err, ClientError::Config(_)));
}

/// A port nothing listens on (bound, then freed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// With several base URLs (the managers), a request goes to the one that
/// last answered and moves on when that one cannot be reached; a write is
/// never sent to a second instance once a byte of it may have reached
/// the first.
#[tokio::test]
async fn several_instances_are_tried_in_turn_and_the_answering_one_kept() {
    let hits = Arc::new(AtomicU32::new(0));
    let app = |name: &'static str, hits: Arc<AtomicU32>| {
        Router::new()
            .route(
                "/who",
                get(move || {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async move { Json(serde_json::json!(name)) }
                }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Json(serde_json::json!("late"))
                }),
            )
            .route(
                "/hangs-on-b",
                get(move || async move {
                    if name == "b" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Json(serde_json::json!(name))
                }),
            )
    };
    let b = serve(app("b", hits.clone())).await;
    let c = serve(app("c", Arc::new(AtomicU32::new(0)))).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let http = HttpClient::new(&format!("{dead}, {b},{c}"), None).unwrap();
    assert_eq!(http.base_urls().count(), 3);
    // The first cannot be reached: the second answers, and is kept.
    assert_eq!(http.get::<String>("/who").await.unwrap(), "b");
    assert_eq!(http.base_url(), b);
    assert_eq!(http.get::<String>("/who").await.unwrap(), "b");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // A clone shares which one answers.
    assert_eq!(http.clone().base_url(), b);
    // A write that timed out on the one in use may have been applied:
    // not sent again elsewhere.
    let slow = http.clone().with_timeout(Duration::from_millis(200));
    let err = slow.post::<_, String>("/slow", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    assert_eq!(slow.base_url(), b);
    // A read that hangs there changes nothing: the next instance answers.
    assert_eq!(slow.get::<String>("/hangs-on-b").await.unwrap(), "c");
    assert_eq!(slow.base_url(), c);
    // Nothing answers: the last error.
    let http =
        HttpClient::new(&format!("{dead},http://127.0.0.1:{}", closed_port()), None).unwrap();
    let err = http.get::<String>("/who").await.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
}
