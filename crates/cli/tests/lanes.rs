//! Lanes with both front ends on a real router: an HTTP request and a
//! wire transaction served on the same lane borrow from the same pools,
//! so with one lane a tenant limited to one connection per shard gets
//! the same PostgreSQL session from either front end. Were HTTP served
//! off the lanes, it would use pools of its own, and the tenant's one
//! connection would be closed and reopened between the front ends (a
//! new backend pid each time). A client on the router's Unix-domain
//! socket is served on the lanes too, and shares the same session.

mod common;

use common::{raw, Stack, StackOptions};
use shardline_api::manager::{CreateTenantRequest, TenantConfig};

fn one_lane(cfg: &mut shardline_router::RouterConfig) {
    cfg.pg_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.pg_unix_dir = Some(socket_dir());
    cfg.lanes = 1;
}

/// This test process's directory for the router's socket.
fn socket_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardline-lanes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the socket directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_lane_http_and_wire_share_the_tenants_sessions() {
    let stack = Stack::start(StackOptions {
        tune_router: one_lane,
        ..StackOptions::default()
    })
    .await;
    let solo = stack
        .tenant(CreateTenantRequest {
            id: "solo".into(),
            config: TenantConfig {
                max_connections_per_shard: Some(1),
                ..TenantConfig::default()
            },
            ..CreateTenantRequest::default()
        })
        .await;
    let http_pid = || async {
        let r = solo
            .exec("k", "SELECT pg_backend_pid()", vec![])
            .await
            .expect("HTTP answers");
        r.result.rows[0][0].as_i64().expect("a pid")
    };
    let addr = stack.router_pg.expect("the router listens for PostgreSQL");
    let mut login = tokio_postgres::Config::new();
    login
        .port(addr.port())
        .user("solo-app")
        .password(solo.token.as_str())
        .dbname("default");
    let (wire, conn) = login
        .clone()
        .host(addr.ip().to_string())
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the wire logs in");
    tokio::spawn(conn);
    let (local, conn) = login
        .clone()
        .host_path(socket_dir())
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the wire logs in on the local socket");
    tokio::spawn(conn);

    let mut pids = Vec::new();
    for _ in 0..3 {
        pids.push(http_pid().await);
        pids.push(wire_pid(&wire).await);
        pids.push(wire_pid(&local).await);
    }
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one session for both front ends, got backend pids {pids:?}"
    );

    // The lane's connections in the metrics: at least the wire client
    // and the scrape's own.
    let metrics = raw(&stack.router_url, "GET", "/metrics", None, b"", &[])
        .await
        .text;
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"router_lane_connections{lane="0"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lane series in:\n{metrics}"));
    assert!(open >= 3.0, "lane 0 serves {open} connections");
    assert!(!metrics.contains(r#"lane="1""#), "one lane only");
    stack.stop().await;
    let _ = std::fs::remove_dir_all(socket_dir());
}

async fn wire_pid(client: &tokio_postgres::Client) -> i64 {
    let row = client
        .query_one(
            "/* shardline.shard_key='k' */ SELECT pg_backend_pid()::bigint",
            &[],
        )
        .await
        .expect("the wire answers");
    row.get::<_, i64>(0)
}
