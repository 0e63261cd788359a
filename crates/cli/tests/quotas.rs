//! Quotas and per-app rules through a real manager, router and
//! PostgreSQL: rate and concurrency limits answer 429 with Retry-After and
//! their code while other tenants are served; limits change at runtime;
//! key prefixes, keyspaces and token rotation; shard-count quota; a
//! tenant's rate shared across live routers; tenant-labelled metrics.

mod common;

use std::time::Duration;

use common::{eventually, raw, start_router, wait_for_token, Stack, StackOptions, Tenant};
use serde_json::json;
use shardline_api::manager::{
    CreateAppRequest, CreateTenantRequest, Limits, RotateTokenRequest, TenantConfig,
    UpdateTenantRequest,
};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{ClientError, RouterClient};

fn limited(id: &str, limits: Limits) -> CreateTenantRequest {
    CreateTenantRequest {
        id: id.into(),
        config: TenantConfig {
            limits,
            ..TenantConfig::default()
        },
        ..CreateTenantRequest::default()
    }
}

async fn select(router: &RouterClient, key: &str, sql: &str) -> Result<(), ClientError> {
    router
        .execute(&ExecuteRequest {
            keyspace: None,
            shard_key: ShardKeyValue::Text(key.into()),
            sql: sql.into(),
            params: vec![],
            consistency: Default::default(),
        })
        .await
        .map(|_| ())
}

/// Sends `n` requests one after another; returns (ok, rate_limited).
async fn burst(router: &RouterClient, n: usize) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        match select(router, &format!("k{i}"), "SELECT 1").await {
            Ok(()) => ok += 1,
            Err(ClientError::Api { status: 429, error }) => {
                assert_eq!(error.code.as_str(), "rate_limited");
                assert!(error.retry_after.unwrap_or(0) >= 1, "{error:?}");
                limited += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    (ok, limited)
}

fn no_retry(t: &Tenant) -> RouterClient {
    // The client library retries 429s by default; these tests count them.
    t.router
        .clone()
        .with_retry(shardline_client::RetryPolicy::none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_concurrency_and_runtime_changes() {
    let stack = Stack::start(StackOptions::default()).await;
    let slow = stack
        .tenant(limited(
            "slow",
            Limits {
                requests_per_second: Some(2),
                burst: Some(5),
                ..Limits::default()
            },
        ))
        .await;
    let other = stack.tenant(limited("other", Limits::default())).await;
    let slow_router = no_retry(&slow);

    // Burst of 5 (less the harness's one probe), then 429 with
    // Retry-After; the other tenant is served.
    let (ok, limited_n) = burst(&slow_router, 20).await;
    println!("rate 2/s burst 5: {ok} ok, {limited_n} rate_limited");
    assert!((4..=7).contains(&ok), "{ok} ok");
    assert_eq!(ok + limited_n, 20);
    let (other_ok, other_limited) = burst(&no_retry(&other), 20).await;
    assert_eq!((other_ok, other_limited), (20, 0));

    // The raw answer: 429, Retry-After header, the error body. (On a
    // loaded machine a token may have come back since the burst: the
    // bucket is emptied again first, within a bounded number of tries.)
    let mut r = None;
    for _ in 0..10 {
        let a = raw(
            &stack.router_url,
            "POST",
            "/v1/execute",
            Some(&slow.token),
            &common::exec_body("k", "SELECT 1", json!([])),
            &[],
        )
        .await;
        if a.status != 200 {
            r = Some(a);
            break;
        }
    }
    let r = r.expect("a 429 within 10 requests at 2/s");
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.retry_after.is_some());
    assert_eq!(r.body["error"]["code"], "rate_limited");
    assert_eq!(r.body["error"]["retryable"], true);

    // Raised at runtime: served again without a restart.
    stack
        .admin
        .update_tenant(
            "slow",
            &UpdateTenantRequest {
                config: Some(TenantConfig {
                    limits: Limits {
                        requests_per_second: Some(10_000),
                        burst: Some(10_000),
                        max_concurrent: Some(1),
                        ..Limits::default()
                    },
                    ..TenantConfig::default()
                }),
                ..UpdateTenantRequest::default()
            },
        )
        .await
        .unwrap();
    // Until the router has the new limits, a request may still pass on
    // a token the old rate refilled (a CI run saw one, then 20 refusals):
    // eight in a row are more than the old burst of five allows.
    assert!(
        eventually(Duration::from_secs(10), || async {
            burst(&slow_router, 8).await.0 == 8
        })
        .await
    );
    let (ok, _) = burst(&slow_router, 20).await;
    assert_eq!(ok, 20);

    // max_concurrent 1: a second request while one runs is refused.
    let long = {
        let r = slow_router.clone();
        tokio::spawn(async move { select(&r, "a", "SELECT pg_sleep(1)").await })
    };
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(ClientError::Api { status: 429, error }) =
            select(&slow_router, "b", "SELECT 1").await
        {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("a concurrent request was refused");
    assert_eq!(refused.code.as_str(), "concurrency_limited");
    assert!(refused.retry_after.is_some());
    long.await.unwrap().unwrap();
    select(&slow_router, "b", "SELECT 1").await.unwrap();
    // Meanwhile other tenants were never limited.
    select(&no_retry(&other), "b", "SELECT 1").await.unwrap();

    // Metrics by tenant, app and reason.
    let m = raw(&stack.router_url, "GET", "/metrics", None, b"", &[]).await;
    assert!(
        m.text
            .lines()
            .any(|l| l.starts_with("router_rejected_requests_total")
                && l.contains("tenant=\"slow\"")
                && l.contains("reason=\"rate_limited\"")),
        "{}",
        m.text
    );
    assert!(m
        .text
        .lines()
        .any(|l| l.starts_with("router_rejected_requests_total")
            && l.contains("reason=\"concurrency_limited\"")));
    assert!(m
        .text
        .lines()
        .any(|l| l.starts_with("router_requests_total")
            && l.contains("tenant=\"other\"")
            && l.contains("app=\"other-app\"")));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_limits_prefixes_keyspaces_and_rotation() {
    let stack = Stack::start(StackOptions {
        spare: 1,
        ..StackOptions::default()
    })
    .await;
    stack
        .admin
        .create_tenant(&limited("acme", Limits::default()))
        .await
        .unwrap();
    let app = stack
        .admin
        .create_app(&CreateAppRequest {
            name: "acme-orders".into(),
            tenant: Some("acme".into()),
            key_prefix: Some("orders:".into()),
            limits: Limits {
                requests_per_second: Some(1),
                burst: Some(3),
                ..Limits::default()
            },
            ..CreateAppRequest::default()
        })
        .await
        .unwrap();
    let router = RouterClient::new(&stack.router_url, Some(app.token.clone()))
        .unwrap()
        .with_retry(shardline_client::RetryPolicy::none());
    assert!(
        eventually(Duration::from_secs(10), || async {
            select(&router, "orders:1", "SELECT 1").await.is_ok()
        })
        .await
    );

    // The key prefix: 403 for any other key, nothing run.
    match select(&router, "invoices:1", "SELECT 1").await {
        Err(ClientError::Api { status: 403, error }) => {
            assert!(error.message.contains("orders:"), "{}", error.message)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Another keyspace than the tenant's: 403.
    let r = router
        .execute(&ExecuteRequest {
            keyspace: Some("elsewhere".into()),
            shard_key: ShardKeyValue::Text("orders:1".into()),
            sql: "SELECT 1".into(),
            params: vec![],
            consistency: Default::default(),
        })
        .await;
    assert!(
        matches!(r, Err(ClientError::Api { status: 403, .. })),
        "{r:?}"
    );
    // The app's own limit, tighter than the tenant's (none).
    let (mut ok, mut limited_n) = (0, 0);
    for i in 0..10 {
        match select(&router, &format!("orders:{i}"), "SELECT 1").await {
            Ok(()) => ok += 1,
            Err(ClientError::Api { status: 429, .. }) => limited_n += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!("app rate 1/s burst 3: {ok} ok, {limited_n} limited");
    assert!(ok <= 4 && limited_n >= 6, "{ok} ok");

    // Rotation with a grace period: both tokens work, then only the new.
    let rotated = stack
        .admin
        .rotate_app_token(
            "acme-orders",
            &RotateTokenRequest {
                grace_seconds: Some(3600),
            },
        )
        .await
        .unwrap();
    assert_ne!(rotated.token, app.token);
    assert!(rotated.app.previous_token_expires_at.is_some());
    let new_router = RouterClient::new(&stack.router_url, Some(rotated.token.clone())).unwrap();
    assert!(wait_for_token(&new_router).await);
    // The router's answer to a token: 200, or 429 from the app's rate
    // limit above (checked after the token), when it is taken; 401 when
    // refused. Anything else, no answer included, is neither.
    let status = |token: String| {
        let url = stack.router_url.clone();
        async move {
            raw(
                &url,
                "GET",
                "/v1/route?key=orders:1",
                Some(&token),
                b"",
                &[],
            )
            .await
            .status
        }
    };
    let auth_ok = |token: String| {
        let status = &status;
        async move { matches!(status(token).await, 200 | 429) }
    };
    assert!(auth_ok(app.token.clone()).await, "old token within grace");
    assert!(auth_ok(rotated.token.clone()).await);
    let again = stack
        .admin
        .rotate_app_token(
            "acme-orders",
            &RotateTokenRequest {
                grace_seconds: Some(0),
            },
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || auth_ok(again.token.clone())).await,
        "newest token accepted"
    );
    assert_eq!(
        status(app.token.clone()).await,
        401,
        "first token long gone"
    );
    assert_eq!(
        status(rotated.token.clone()).await,
        401,
        "rotated with no grace: refused at once"
    );

    // Shard-count quota of a dedicated tenant.
    let e = stack
        .admin
        .create_tenant(&CreateTenantRequest {
            id: "big".into(),
            dedicated: true,
            shards: Some(2),
            config: TenantConfig {
                limits: Limits {
                    max_shards: Some(1),
                    ..Limits::default()
                },
                ..TenantConfig::default()
            },
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap_err();
    match e {
        ClientError::Api { status: 429, error } => {
            assert_eq!(error.code.as_str(), "quota_exceeded")
        }
        other => panic!("expected quota_exceeded, got {other}"),
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_rate_is_shared_by_live_routers() {
    let stack = Stack::start(StackOptions::default()).await;
    let t = stack
        .tenant(limited(
            "shared",
            Limits {
                requests_per_second: Some(1),
                burst: Some(10),
                ..Limits::default()
            },
        ))
        .await;
    let (second_url, second_stop, second_task) =
        start_router(&stack.manager_url, &StackOptions::default()).await;
    // Both routers heartbeat and learn there are two of them.
    assert!(
        eventually(Duration::from_secs(15), || async {
            stack
                .admin
                .list_routers()
                .await
                .map(|r| r.len() == 2)
                .unwrap_or(false)
        })
        .await
    );
    // A heartbeat interval later both know it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = no_retry(&t);
    let second = RouterClient::new(&second_url, Some(t.token.clone()))
        .unwrap()
        .with_retry(shardline_client::RetryPolicy::none());
    assert!(wait_for_token(&second).await);
    let (ok1, _) = burst(&first, 12).await;
    let (ok2, _) = burst(&second, 12).await;
    println!("burst 10 over two routers: {ok1} + {ok2} ok");
    assert!(
        ok1 <= 6 && ok2 <= 6,
        "{ok1} + {ok2}: each router takes half"
    );
    assert!(ok1 >= 4 && ok2 >= 4, "{ok1} + {ok2}");
    second_stop.cancel();
    second_task.await.unwrap().unwrap();
    stack.stop().await;
}
