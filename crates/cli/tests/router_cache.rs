//! A router that restarts while no manager answers: with its catalog
//! cache file it becomes ready and serves reads by the last catalog it
//! applied, and refuses writes (it may be behind a failover or a cutover
//! it cannot hear of) until a manager answers; without the file it is not
//! ready at all (the control). The router follows a list of managers and
//! uses whichever answers.

mod common;

use std::time::Duration;

use common::{eventually, raw, start_manager, start_router, Stack, StackOptions};
use serde_json::json;
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{ClientError, RetryPolicy, RouterClient};

fn req(sql: &str, params: Vec<serde_json::Value>) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text("k1".into()),
        sql: sql.into(),
        params,
        consistency: Default::default(),
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_without_managers_serves_reads_from_its_cached_catalog() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("router.catalog.json");
    let opts = || StackOptions {
        catalog_cache: Some(cache.clone()),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts()).await;
    stack
        .migrate("001_kv", "CREATE TABLE kv (k text PRIMARY KEY, v text)")
        .await;
    stack
        .router
        .execute(&req("INSERT INTO kv VALUES ($1, 'v')", vec![json!("k1")]))
        .await
        .unwrap();
    let version = stack.admin.status().await.unwrap().catalog_version;
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read(&cache).ok().is_some_and(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|c| c["version"].as_u64())
                    .is_some_and(|v| v >= version)
            })
        })
        .await,
        "the router keeps the catalog it applied"
    );
    // It holds the tenants' passwords: the router's user alone reads it.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    // Everything stops; the manager stays down.
    stack.router_stop.cancel();
    stack.router_task.take().unwrap().await.unwrap().unwrap();
    stack.manager_stop.cancel();
    stack.manager_task.take().unwrap().await.unwrap().unwrap();
    let managers = format!("http://127.0.0.1:{},{}", closed_port(), stack.manager_url);

    // Control: without the cache a router does not become ready.
    let (bare_url, bare_stop, bare_task) = start_router(&managers, &StackOptions::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = raw(&bare_url, "GET", "/readyz", None, b"", &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    bare_stop.cancel();
    bare_task.await.unwrap().unwrap();

    // With it: ready, reads served, writes refused.
    let (url, stop, task) = start_router(&managers, &opts()).await;
    let ready = raw(&url, "GET", "/readyz", None, b"", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let client = RouterClient::new(&url, Some(stack.app_token.clone()))
        .unwrap()
        .with_retry(RetryPolicy::none());
    let read = client
        .execute(&req("SELECT v FROM kv WHERE k = $1", vec![json!("k1")]))
        .await
        .expect("a read from the cached catalog");
    assert_eq!(read.result.rows, vec![vec![json!("v")]]);
    let write = client
        .execute(&req("INSERT INTO kv VALUES ($1, 'w')", vec![json!("k2")]))
        .await
        .unwrap_err();
    match &write {
        ClientError::Api { status: 503, error } => {
            assert!(
                error.message.contains("has not heard from the manager"),
                "{error:?}"
            )
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // The manager comes back on its address (the second in the list):
    // writes go through.
    let mut cfg = common::manager_config(stack.dir.path());
    cfg.listen = stack
        .manager_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (_, manager_stop, manager_task) = start_manager(cfg).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            client
                .execute(&req("INSERT INTO kv VALUES ($1, 'w')", vec![json!("k2")]))
                .await
                .is_ok()
        })
        .await,
        "writes resume once a manager answers"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    manager_stop.cancel();
    manager_task.await.unwrap().unwrap();
}

/// The same with the control plane of issue 12: three manager processes
/// on etcd. Every manager is killed (`kill -9`); a router restarted
/// meanwhile becomes ready from its cache, serves reads and refuses
/// writes (our choice: leases come from the leading manager, so the loss
/// of every manager stops writes once a lease ends, and at once for a
/// router that starts without one); one manager started again leads and
/// writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_while_every_etcd_manager_is_down_serves_reads() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("router.catalog.json");
    let opts = || StackOptions {
        catalog_cache: Some(cache.clone()),
        etcd_managers: vec![None, None, None],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(opts()).await;
    let ha = stack.ha.take().expect("managers on etcd");
    ha.start(1);
    ha.start(2);
    stack
        .migrate("001_kv", "CREATE TABLE kv (k text PRIMARY KEY, v text)")
        .await;
    stack
        .router
        .execute(&req("INSERT INTO kv VALUES ($1, 'v')", vec![json!("k1")]))
        .await
        .unwrap();
    let version = stack.admin.status().await.unwrap().catalog_version;
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read(&cache).ok().is_some_and(|b| {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|c| c["version"].as_u64())
                    .is_some_and(|v| v >= version)
            })
        })
        .await,
        "the router keeps the catalog it applied"
    );

    // The router stops, then every manager dies; etcd stays up.
    stack.router_stop.cancel();
    stack.router_task.take().unwrap().await.unwrap().unwrap();
    for i in 0..3 {
        ha.kill(i);
    }
    let managers = ha.urls().join(",");
    let started = std::time::Instant::now();
    let (url, stop, task) = start_router(&managers, &opts()).await;
    let ready = raw(&url, "GET", "/readyz", None, b"", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let to_ready = started.elapsed();
    let client = RouterClient::new(&url, Some(stack.app_token.clone()))
        .unwrap()
        .with_retry(RetryPolicy::none());
    let read = client
        .execute(&req("SELECT v FROM kv WHERE k = $1", vec![json!("k1")]))
        .await
        .expect("a read from the cached catalog");
    assert_eq!(read.result.rows, vec![vec![json!("v")]]);
    match client
        .execute(&req("INSERT INTO kv VALUES ($1, 'w')", vec![json!("k2")]))
        .await
    {
        Err(ClientError::Api { status: 503, error }) => assert!(
            error.message.contains("has not heard from the manager"),
            "{error:?}"
        ),
        other => panic!("expected 503, got {other:?}"),
    }

    // One manager comes back: it leads (etcd kept the catalog) and the
    // router's writes go through.
    let back = std::time::Instant::now();
    ha.start(2);
    assert!(
        ha.wait_leader(2, Duration::from_secs(30)).await,
        "{}",
        ha.log(2)
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            client
                .execute(&req("INSERT INTO kv VALUES ($1, 'w')", vec![json!("k2")]))
                .await
                .is_ok()
        })
        .await,
        "writes resume once a manager leads: {}",
        ha.log(2)
    );
    println!(
        "every manager killed: restarted router ready after {to_ready:?} (reads served, \
         writes 503); one manager started again, first write acknowledged {:?} after",
        back.elapsed()
    );
    let rows = client
        .execute(&req(
            "SELECT count(*) FROM kv WHERE k = $1",
            vec![json!("k2")],
        ))
        .await
        .unwrap();
    assert_eq!(rows.result.rows, vec![vec![json!(1)]]);
    stop.cancel();
    task.await.unwrap().unwrap();
}
