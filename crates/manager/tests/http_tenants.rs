//! The tenant and app routes over HTTP: status codes and error codes,
//! the admin token, metrics, status and the heartbeat's router count.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{http, Answer, ADMIN_TOKEN, ROUTER_TOKEN};
use shardline_catalog::FileStore;
use shardline_manager::ManagerConfig;
use tokio_util::sync::CancellationToken;

struct Manager {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Manager {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ManagerConfig::new(dir.path().join("catalog.json"), ADMIN_TOKEN, ROUTER_TOKEN);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.health_interval = Duration::from_millis(200);
    let store = FileStore::open(&cfg.catalog_path).await.unwrap();
    let bound = shardline_manager::bind_with_store(cfg, Arc::new(store))
        .await
        .unwrap();
    let addr = bound.local_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    Manager {
        addr,
        stop,
        task,
        _dir: dir,
    }
}

impl Manager {
    async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        http(self.addr, method, path, Some(ADMIN_TOKEN), body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_routes() {
    let m = start().await;
    // The admin token is required.
    let a = http(m.addr, "GET", "/v1/tenants", None, None).await;
    assert_eq!((a.status, a.code().as_str()), (401, "unauthorized"));
    let a = http(m.addr, "GET", "/v1/tenants", Some(ROUTER_TOKEN), None).await;
    assert_eq!(a.status, 401);

    let a = m
        .admin("POST", "/v1/tenants", Some(r#"{"id":"acme"}"#))
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (404, "not_found"),
        "{}",
        a.body
    );
    let a = m
        .admin("POST", "/v1/keyspaces", Some(r#"{"name":"default"}"#))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = m
        .admin(
            "POST",
            "/v1/tenants",
            Some(r#"{"id":"acme","name":"Acme","config":{"limits":{"requests_per_second":50}}}"#),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let t = a.json();
    // Its PostgreSQL name is random: `t_` and 24 hex digits.
    let pg_name = t["pg_name"].as_str().unwrap_or_default();
    assert!(
        pg_name.len() == 26
            && pg_name.starts_with("t_")
            && pg_name[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{pg_name}"
    );
    assert_eq!(t["keyspace"], "default");
    assert_eq!(t["state"], "active");
    assert_eq!(t["config"]["limits"]["requests_per_second"], 50);
    assert!(!a.body.contains("password"), "{}", a.body);

    for (body, status, code) in [
        (r#"{"id":"acme"}"#, 409, "conflict"),
        (r#"{"id":"x","bogus":1}"#, 400, "invalid_request"),
        (r#"{"id":"Upper"}"#, 400, "invalid_request"),
        (r#"{"id":"d","dedicated":true}"#, 400, "invalid_request"),
        (
            r#"{"id":"big","dedicated":true,"shards":3,"config":{"limits":{"max_shards":2}}}"#,
            429,
            "quota_exceeded",
        ),
        (r#"{"id":"d","dedicated":true,"shards":1}"#, 409, "conflict"),
        (
            r#"{"id":"z","config":{"limits":{"burst":0}}}"#,
            400,
            "invalid_request",
        ),
        ("not json", 400, "invalid_request"),
    ] {
        let a = m.admin("POST", "/v1/tenants", Some(body)).await;
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "{body}: {}",
            a.body
        );
    }

    let a = m.admin("GET", "/v1/tenants/nope", None).await;
    assert_eq!(a.status, 404);
    let a = m
        .admin("PATCH", "/v1/tenants/acme", Some(r#"{"name":"Acme Inc"}"#))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["name"], "Acme Inc");
    assert_eq!(a.json()["config"]["limits"]["requests_per_second"], 50);

    // Apps of the tenant.
    let a = m
        .admin(
            "POST",
            "/v1/apps",
            Some(r#"{"name":"web","tenant":"acme","key_prefix":"acme:"}"#),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let first = a.json()["token"].as_str().unwrap().to_string();
    let a = m
        .admin("POST", "/v1/apps", Some(r#"{"name":"solo"}"#))
        .await;
    assert_eq!(a.status, 404, "no tenant default: {}", a.body);
    let a = m.admin("GET", "/v1/apps?tenant=acme", None).await;
    assert_eq!(a.json().as_array().map(Vec::len), Some(1), "{}", a.body);
    assert_eq!(
        m.admin("GET", "/v1/apps?tenant=nope", None).await.status,
        404
    );
    assert_eq!(m.admin("GET", "/v1/apps?bogus=1", None).await.status, 400);
    let a = m
        .admin(
            "PATCH",
            "/v1/apps/web",
            Some(r#"{"limits":{"max_shards":1}}"#),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = m
        .admin("PATCH", "/v1/apps/web", Some(r#"{"key_prefix":""}"#))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json().get("key_prefix").is_none(), "{}", a.body);

    // Rotation: empty body = default grace; the old token's expiry shown.
    let a = m.admin("POST", "/v1/apps/web/rotate", None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let second = a.json()["token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert!(
        a.json()["previous_token_expires_at"].is_string(),
        "{}",
        a.body
    );
    let a = m.admin("GET", "/v1/apps/web", None).await;
    assert!(
        a.json()["previous_token_expires_at"].is_string(),
        "{}",
        a.body
    );
    assert!(!a.body.contains(&second) && !a.body.contains("token_hash"));
    let a = m
        .admin(
            "POST",
            "/v1/apps/web/rotate",
            Some(r#"{"grace_seconds":0}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json().get("previous_token_expires_at").is_none());
    // JSON `null` is the defaults, as the OpenAPI document says.
    let a = m.admin("POST", "/v1/apps/web/rotate", Some("null")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.json()["previous_token_expires_at"].is_string(),
        "{}",
        a.body
    );
    let a = m
        .admin(
            "POST",
            "/v1/apps/web/rotate",
            Some(r#"{"grace_seconds":604801}"#),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        m.admin("POST", "/v1/apps/nope/rotate", None).await.status,
        404
    );

    // Status and metrics show the tenant.
    let a = m.admin("GET", "/v1/status", None).await;
    assert_eq!(a.json()["tenants"][0]["id"], "acme", "{}", a.body);
    assert_eq!(a.json()["tenants"][0]["apps"], 1);
    let metrics = m.admin("GET", "/metrics", None).await.body;
    assert!(
        metrics.contains("manager_tenant_shards{tenant=\"acme\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("manager_tenants 1"), "{metrics}");

    // Delete: bad query 400; then gone with its apps and its series.
    let a = m
        .admin("DELETE", "/v1/tenants/acme?drop_data=maybe", None)
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = m.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(m.admin("GET", "/v1/apps/web", None).await.status, 404);
    assert_eq!(m.admin("GET", "/v1/tenants/acme", None).await.status, 404);
    let metrics = m.admin("GET", "/metrics", None).await.body;
    assert!(!metrics.contains("tenant=\"acme\""), "{metrics}");
    assert!(metrics.contains("manager_tenants 0"), "{metrics}");
    let a = m.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(a.status, 404);

    m.stop.cancel();
    m.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn heartbeat_counts_live_routers() {
    let m = start().await;
    for (id, n) in [("r1", 1), ("r2", 2), ("r1", 2)] {
        let body = format!(r#"{{"id":"{id}","address":"127.0.0.1:1","applied_version":0}}"#);
        let a = http(
            m.addr,
            "POST",
            "/v1/routers/heartbeat",
            Some(ROUTER_TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["live_routers"], n, "{}", a.body);
    }
    m.stop.cancel();
    m.task.await.unwrap().unwrap();
}

/// `GET /v1/leader`: a manager on the file store is the only one of its
/// catalog and leads; routers and operators may ask, nobody else.
#[tokio::test]
async fn a_manager_on_the_file_store_leads_and_says_so() {
    let m = start().await;
    let a = http(m.addr, "GET", "/v1/leader", Some(ROUTER_TOKEN), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let body = a.json();
    assert_eq!(body["is_leader"], true, "{}", a.body);
    assert_eq!(body["leader"], body["this_manager"], "{}", a.body);
    assert_eq!(
        body["this_manager"]["url"],
        format!("http://{}", m.addr),
        "{}",
        a.body
    );
    assert_eq!(body["term"], 1, "{}", a.body);
    let a = http(m.addr, "GET", "/v1/leader", Some(ADMIN_TOKEN), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = http(m.addr, "GET", "/v1/leader", None, None).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = http(m.addr, "GET", "/metrics", Some(ADMIN_TOKEN), None).await;
    assert!(a.body.contains("manager_is_leader 1"), "{}", a.body);
    assert!(
        a.body.contains("manager_leader_changes_total 1"),
        "{}",
        a.body
    );
    m.stop.cancel();
    m.task.await.unwrap().unwrap();
}
