//! Replicas and failover against real PostgreSQL streaming replication:
//! eventual reads go to caught-up replicas and fall back to the primary,
//! writes never reach a replica, and requests for a primary that is
//! failing over are held until the new primary is in the catalog, or
//! answered 503 with Retry-After once the hold window has passed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    app, error_code, header, http, instance, migrate, pg_name, provision, shard_catalog, tenant,
    Served,
};
use serde_json::{json, Value};
use shardline_api::manager::{HealthInfo, HealthSnapshot, InstanceHealth};
use shardline_core::catalog::{Failover, FailoverKind, Limits};
use shardline_core::Catalog;
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::RouterConfig;
use shardline_testkit::PgCluster;

const SCHEMA: &str = "CREATE TABLE kv (k text PRIMARY KEY, v text);
CREATE FUNCTION bump() RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO kv VALUES ('bumped', 'x'); SELECT pg_is_in_recovery() $$;";

/// A primary with tenant `acme` (table `kv`, function `bump`), and
/// `replicas` streaming replicas of it.
async fn shard_with_replicas(replicas: usize) -> anyhow::Result<(PgCluster, Vec<PgCluster>)> {
    let primary = PgCluster::start().await?;
    provision(&primary, &[("acme", "pw-a")]).await?;
    migrate(&primary, "acme", "pw-a", SCHEMA).await?;
    let mut out = Vec::new();
    for _ in 0..replicas {
        out.push(PgCluster::start_replica_of(&primary).await?);
    }
    Ok((primary, out))
}

/// Shard `s1`: `primary` as `s1-0`, replicas `s1-1`, `s1-2`, ...; app
/// `a1` of tenant `acme`.
fn catalog(primary: &PgCluster, replicas: &[PgCluster]) -> Catalog {
    let replicas = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| instance(&format!("s1-{}", i + 1), &r.dsn()))
        .collect();
    shard_catalog(
        instance("s1-0", &primary.dsn()),
        replicas,
        vec![tenant("acme", "pw-a")],
        vec![app("a1", "acme", None, Limits::default())],
    )
}

/// Default timeouts: a loaded test machine can take a while to open a
/// connection, and the dead servers here refuse at once anyway.
fn config() -> RouterConfig {
    RouterConfig::new("http://127.0.0.1:1", "t")
}

/// A health answer for shard `s1`'s replicas: (id, up, lag seconds).
fn health(replicas: &[(&str, bool, f64)]) -> HealthSnapshot {
    HealthSnapshot {
        round: 1,
        instances: replicas
            .iter()
            .map(|(id, up, lag)| InstanceHealth {
                shard: "s1".into(),
                instance: (*id).into(),
                role: "replica".into(),
                health: HealthInfo {
                    up: *up,
                    in_recovery: Some(true),
                    lag_seconds: Some(*lag),
                    ..HealthInfo::default()
                },
            })
            .collect(),
    }
}

/// Routing state with `cat` installed, served over HTTP.
async fn serve(
    cfg: &RouterConfig,
    cat: &Catalog,
) -> anyhow::Result<(Arc<RouterContext>, Arc<RoutingCell>, Served)> {
    let ctx = Arc::new(RouterContext::new(cfg));
    let cell = Arc::new(RoutingCell::default());
    cell.set(Routing::build(cat, &Routing::default(), &ctx));
    let served = Served::start(&cell, &ctx, Duration::from_secs(20)).await?;
    Ok((ctx, cell, served))
}

/// `POST /v1/execute` as app a1: status, headers, body as JSON.
async fn exec(
    served: &Served,
    sql: &str,
    consistency: &str,
) -> anyhow::Result<(u16, Vec<(String, String)>, Value)> {
    let body = json!({"shard_key": "k", "sql": sql, "consistency": consistency});
    let (status, headers, text) = http(
        served.addr,
        "POST",
        "/v1/execute",
        Some("tok-a1"),
        Some(&body),
    )
    .await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, headers, value))
}

/// The single value a successful statement returned.
async fn one(served: &Served, sql: &str, consistency: &str) -> anyhow::Result<Value> {
    let (status, _, body) = exec(served, sql, consistency).await?;
    assert_eq!(status, 200, "{sql}: {body}");
    assert_eq!(body["shard"], "s1");
    Ok(body["rows"][0][0].clone())
}

async fn metrics(served: &Served) -> anyhow::Result<String> {
    Ok(http(served.addr, "GET", "/metrics", None, None).await?.2)
}

/// Waits (bounded) until the router has a request in flight.
async fn until_in_flight(ctx: &RouterContext) {
    for _ in 0..500 {
        if ctx.metrics.in_flight.with(&[]).get() >= 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no request in flight");
}

async fn has_row(pg: &PgCluster, k: &str) -> anyhow::Result<bool> {
    let name = pg_name("acme");
    let (client, conn) = tokio_postgres::connect(
        &format!("{} dbname={name}", pg.dsn()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {name}.kv WHERE k = $1"),
            &[&k],
        )
        .await?
        .get(0);
    Ok(n == 1)
}

#[tokio::test]
async fn eventual_reads_go_to_caught_up_replicas_and_writes_to_the_primary() -> anyhow::Result<()> {
    let (primary, replicas) = shard_with_replicas(2).await?;
    let cfg = config();
    let (ctx, _cell, served) = serve(&cfg, &catalog(&primary, &replicas)).await?;
    ctx.health.install(
        &health(&[("s1-1", true, 0.0), ("s1-2", true, 0.2)]),
        Instant::now(),
    );

    // Eventual reads: a replica, each in turn; replica sessions are
    // read-only.
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(one(&served, "SELECT current_setting('port')", "eventual").await?);
    }
    for _ in 0..4 {
        assert_eq!(
            one(&served, "SELECT pg_is_in_recovery()", "eventual").await?,
            json!(true)
        );
    }
    let replica_ports: Vec<Value> = replicas
        .iter()
        .map(|r| json!(r.port().to_string()))
        .collect();
    for p in &replica_ports {
        assert!(ports.contains(p), "{p} never chosen: {ports:?}");
    }
    assert_eq!(
        one(&served, "SHOW default_transaction_read_only", "eventual").await?,
        json!("on")
    );

    // Strong reads, writes sent as eventual, and row-locking reads: the
    // primary.
    assert_eq!(
        one(&served, "SELECT pg_is_in_recovery()", "strong").await?,
        json!(false)
    );
    assert_eq!(
        one(
            &served,
            "INSERT INTO kv VALUES ('w', 'v') RETURNING pg_is_in_recovery()",
            "eventual"
        )
        .await?,
        json!(false)
    );
    assert!(has_row(&primary, "w").await?);
    assert_eq!(
        one(
            &served,
            "WITH d AS (DELETE FROM kv WHERE k = 'nothing' RETURNING k) SELECT pg_is_in_recovery()",
            "eventual"
        )
        .await?,
        json!(false)
    );
    assert_eq!(
        one(
            &served,
            "SELECT pg_is_in_recovery() FROM kv WHERE k = 'w' FOR UPDATE",
            "eventual"
        )
        .await?,
        json!(false)
    );

    // A write the classifier cannot see (inside a function) is refused
    // by the replica (25006) and runs on the primary instead.
    assert_eq!(
        one(&served, "SELECT bump()", "eventual").await?,
        json!(false)
    );
    assert!(has_row(&primary, "bumped").await?);

    // A replica too far behind is skipped.
    ctx.health.install(
        &health(&[("s1-1", true, 5.0), ("s1-2", true, 0.0)]),
        Instant::now(),
    );
    for _ in 0..3 {
        assert_eq!(
            one(&served, "SELECT current_setting('port')", "eventual").await?,
            replica_ports[1]
        );
    }

    let text = metrics(&served).await?;
    let served_by = |instance: &str| -> u64 {
        let prefix = format!(r#"router_replica_reads_total{{shard="s1",instance="{instance}"}} "#);
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // 8 + 1 + 3 eventual reads on replicas; bump() fell back.
    assert_eq!(served_by("s1-1") + served_by("s1-2"), 12, "{text}");
    // Turns: 4 or 5 each of the first 9, then 3 more for s1-2.
    assert!(served_by("s1-1") >= 4 && served_by("s1-2") >= 7, "{text}");
    served.stop().await
}

#[tokio::test]
async fn eventual_reads_fall_back_to_the_primary() -> anyhow::Result<()> {
    let (primary, mut replicas) = shard_with_replicas(1).await?;
    let cfg = config();
    let (ctx, _cell, served) = serve(&cfg, &catalog(&primary, &replicas)).await?;
    let read = "SELECT pg_is_in_recovery()";

    // No health answer yet: the primary.
    assert_eq!(one(&served, read, "eventual").await?, json!(false));
    // A stale answer is no answer.
    let long_ago = Instant::now().checked_sub(Duration::from_secs(10));
    if let Some(at) = long_ago {
        ctx.health.install(&health(&[("s1-1", true, 0.0)]), at);
        assert_eq!(one(&served, read, "eventual").await?, json!(false));
    }
    // Fresh: the replica.
    ctx.health
        .install(&health(&[("s1-1", true, 0.0)]), Instant::now());
    assert_eq!(one(&served, read, "eventual").await?, json!(true));
    // Down by the health feed: the primary.
    ctx.health
        .install(&health(&[("s1-1", false, 0.0)]), Instant::now());
    assert_eq!(one(&served, read, "eventual").await?, json!(false));

    // The replica dies, and the health feed has not noticed yet: the
    // connection fails and the read runs on the primary.
    replicas[0].kill9().await;
    ctx.health
        .install(&health(&[("s1-1", true, 0.0)]), Instant::now());
    for _ in 0..3 {
        assert_eq!(one(&served, read, "eventual").await?, json!(false));
    }
    let text = metrics(&served).await?;
    assert!(
        text.contains(r#"router_replica_reads_total{shard="s1",instance="s1-1"} 1"#),
        "{text}"
    );
    served.stop().await
}

/// The catalog after `s1-1` (the first replica) was promoted.
fn promoted(before: &Catalog) -> Catalog {
    let mut cat = before.clone();
    cat.version += 1;
    let s = cat.shards.get_mut("s1").unwrap();
    let old = s.primary.clone();
    s.primary = s.replicas.remove(0);
    s.fenced.push(old);
    s.generation += 1;
    s.failover = None;
    cat
}

fn with_intent(before: &Catalog) -> Catalog {
    let mut cat = before.clone();
    cat.version += 1;
    cat.shards.get_mut("s1").unwrap().failover = Some(Failover {
        kind: FailoverKind::Automatic,
        from: "s1-0".into(),
        to: "s1-1".into(),
        started_at_ms: 1,
    });
    cat
}

#[tokio::test]
async fn requests_held_during_a_failover_resume_on_the_new_primary() -> anyhow::Result<()> {
    let (primary, replicas) = shard_with_replicas(1).await?;
    let cfg = config();
    let intent = with_intent(&catalog(&primary, &replicas));
    let (ctx, cell, served) = serve(&cfg, &intent).await?;
    ctx.health
        .install(&health(&[("s1-1", true, 0.0)]), Instant::now());
    let served = Arc::new(served);

    // A write while the catalog shows the failover: held, though the old
    // primary still answers.
    let write = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            exec(
                &served,
                "INSERT INTO kv VALUES ('held', 'v') RETURNING current_setting('port')",
                "strong",
            )
            .await
        })
    };
    until_in_flight(&ctx).await;
    // Eventual reads keep being served by the replica meanwhile.
    assert_eq!(
        one(&served, "SELECT pg_is_in_recovery()", "eventual").await?,
        json!(true)
    );
    assert!(!write.is_finished());

    // The manager promotes s1-1 and publishes the new primary.
    let new_primary = replicas[0].connect().await?;
    let ok: bool = new_primary
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await?
        .get(0);
    assert!(ok);
    cell.set(Routing::build(&promoted(&intent), &cell.get(), &ctx));

    let (status, _, body) = write.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!(replicas[0].port().to_string()));
    assert!(has_row(&replicas[0], "held").await?);
    assert!(
        !has_row(&primary, "held").await?,
        "the old primary took the write"
    );
    let text = metrics(&served).await?;
    assert!(
        text.contains(r#"router_held_requests_total{shard="s1",outcome="resumed"} 1"#),
        "{text}"
    );
    Arc::try_unwrap(served)
        .map_err(|_| anyhow::anyhow!("server still shared"))?
        .stop()
        .await
}

#[tokio::test]
async fn statements_running_on_the_old_primary_are_cancelled_when_a_failover_begins(
) -> anyhow::Result<()> {
    let (primary, replicas) = shard_with_replicas(1).await?;
    let cfg = config();
    let before = catalog(&primary, &replicas);
    let (ctx, cell, served) = serve(&cfg, &before).await?;
    let served = Arc::new(served);
    let send = |sql: &'static str| {
        let served = Arc::clone(&served);
        tokio::spawn(async move { exec(&served, sql, "strong").await })
    };
    // A slow write and a slow read, running on the primary.
    let write = send("INSERT INTO kv SELECT 'slow', 'v' FROM pg_sleep(3) /* fenced-write */");
    let read = send("SELECT current_setting('port') FROM pg_sleep(3) /* fenced-read */");
    let admin = primary.connect().await?;
    let running = |tag: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' \
                     AND pid <> pg_backend_pid()",
                    &[&tag],
                )
                .await
                .map(|r| r.get::<_, i64>(0))
        }
    };
    for _ in 0..300 {
        if running("fenced-write").await? == 1 && running("fenced-read").await? == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running("fenced-write").await?, 1, "the write runs");
    assert_eq!(running("fenced-read").await?, 1, "the read runs");

    // The failover begins: the write is answered at once, retryable, and
    // its statement is cancelled on the old primary.
    let intent = with_intent(&before);
    cell.set(Routing::build(&intent, &cell.get(), &ctx));
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(2), write).await???;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!("shard_unavailable"), "{body}");
    assert_eq!(body["error"]["retryable"], json!(true), "{body}");
    assert!(header(&headers, "retry-after").is_some(), "{body}");
    let mut gone = false;
    for _ in 0..200 {
        if running("fenced-write").await? == 0 && running("fenced-read").await? == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the statements were cancelled on the old primary");
    assert!(
        !has_row(&primary, "slow").await?,
        "the write did not commit"
    );

    // The read is held and runs again on the new primary.
    assert!(!read.is_finished());
    let new_primary = replicas[0].connect().await?;
    new_primary
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await?;
    cell.set(Routing::build(&promoted(&intent), &cell.get(), &ctx));
    let (status, _, body) = read.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!(replicas[0].port().to_string()));
    Arc::try_unwrap(served)
        .map_err(|_| anyhow::anyhow!("server still shared"))?
        .stop()
        .await
}

#[tokio::test]
async fn an_unreachable_primary_holds_requests_until_a_new_one() -> anyhow::Result<()> {
    let (mut primary, replicas) = shard_with_replicas(1).await?;
    let cfg = config();
    let before = catalog(&primary, &replicas);
    let (ctx, cell, served) = serve(&cfg, &before).await?;
    let served = Arc::new(served);
    // The whole primary dies (postmaster and backends, so no orphaned
    // backend can still answer a pooled session); the manager has not
    // noticed yet. The pause lets the pooled sessions see their sockets
    // close, as they would before a real request arrives.
    primary.signal_all(9);
    primary.kill9().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let write = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            exec(
                &served,
                "INSERT INTO kv VALUES ('after-kill', 'v') RETURNING current_setting('port')",
                "strong",
            )
            .await
        })
    };
    until_in_flight(&ctx).await;
    let intent = with_intent(&before);
    cell.set(Routing::build(&intent, &cell.get(), &ctx));
    let new_primary = replicas[0].connect().await?;
    new_primary
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await?;
    cell.set(Routing::build(&promoted(&intent), &cell.get(), &ctx));

    let (status, _, body) = write.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!(replicas[0].port().to_string()));
    assert!(has_row(&replicas[0], "after-kill").await?);
    Arc::try_unwrap(served)
        .map_err(|_| anyhow::anyhow!("server still shared"))?
        .stop()
        .await
}

#[tokio::test]
async fn holds_end_after_the_window() -> anyhow::Result<()> {
    let (mut primary, _) = shard_with_replicas(0).await?;
    let mut cfg = config();
    cfg.failover_hold = Duration::from_millis(300);
    let before = catalog(&primary, &[]);
    let intent = with_intent(&before);
    let (ctx, cell, served) = serve(&cfg, &intent).await?;

    // The failover never ends: after the window the write is answered
    // 503, retryable, and never reaches the primary the catalog still
    // shows (this router holds: the manager may promote any moment).
    let (status, headers, body) = exec(
        &served,
        "INSERT INTO kv VALUES ('past-the-hold', 'v')",
        "strong",
    )
    .await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body.to_string()), "shard_unavailable");
    assert_eq!(body["error"]["retryable"], json!(true), "{body}");
    assert!(header(&headers, "retry-after").is_some(), "{body}");
    assert!(
        !has_row(&primary, "past-the-hold").await?,
        "a write past the hold ran on the primary being replaced"
    );

    // The primary is down and nothing changes: 503 with Retry-After.
    // (A read: whether the pooled connection is seen closed before or
    // after it is used, the read is held and retried.)
    primary.kill9().await;
    let mut cat = before.clone();
    cat.version = intent.version + 1;
    cell.set(Routing::build(&cat, &cell.get(), &ctx));
    let (status, headers, body) = exec(&served, "SELECT count(*) FROM kv", "strong").await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body.to_string()), "shard_unavailable");
    assert_eq!(body["error"]["retryable"], json!(true), "{body}");
    let retry: u64 = header(&headers, "retry-after").unwrap_or("").parse()?;
    assert!(retry >= 1);

    let text = metrics(&served).await?;
    assert!(
        text.contains(r#"router_held_requests_total{shard="s1",outcome="timed_out"} 2"#),
        "{text}"
    );
    served.stop().await
}

#[tokio::test]
async fn the_health_feed_is_polled_with_the_router_token() -> anyhow::Result<()> {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    let snap = HealthSnapshot {
        round: 7,
        ..health(&[("s1-1", true, 0.0)])
    };
    let answer = snap.clone();
    let app = axum::Router::new().route(
        "/v1/health",
        axum::routing::get(move |headers: HeaderMap| {
            let answer = answer.clone();
            async move {
                let ok = headers
                    .get("authorization")
                    .is_some_and(|v| v.as_bytes() == b"Bearer router-token");
                if ok {
                    axum::Json(answer).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop_manager = tokio_util::sync::CancellationToken::new();
    let manager = tokio::spawn(shardline_http::serve(
        listener,
        app,
        stop_manager.clone(),
        Duration::from_secs(1),
    ));

    let table = Arc::new(shardline_router::health::HealthTable::new(
        Duration::from_millis(20),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(shardline_router::health::poll(
        shardline_client::ManagerClient::new(&url, Some("router-token".into()))?,
        Arc::clone(&table),
        Duration::from_millis(20),
        stop.clone(),
    ));
    for _ in 0..500 {
        if table.latest().round == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view = table.fresh(Instant::now()).expect("a fresh answer");
    assert_eq!(view.round, 7);
    assert!(view.replica_usable("s1", "s1-1", Duration::from_secs(1)));

    // The manager goes away: the last answer is kept.
    stop_manager.cancel();
    manager.await??;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(table.latest().round, 7);
    stop.cancel();
    poller.await?;
    Ok(())
}
