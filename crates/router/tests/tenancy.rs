//! Tenancy against real PostgreSQL: pools log in as the tenant's role,
//! the per-shard connection budget is shared and evicts idle connections,
//! pools follow password changes, and the HTTP API enforces tenant,
//! keyspace, key prefix and quotas with bounded metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{app, error_code, http, instance, migrate, pg_name, provision, shard_catalog, tenant};
use serde_json::{json, Value};
use shardline_api::ErrorCode;
use shardline_core::catalog::{App, Limits, Tenant};
use shardline_core::Catalog;
use shardline_router::pg::exec::execute;
use shardline_router::pg::{from_pool_error, PoolError, PooledConn};
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::RouterConfig;
use shardline_testkit::PgCluster;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// One text keyspace `shared` on shard `s1` at `dsn`.
fn catalog(dsn: &str, tenants: Vec<Tenant>, apps: Vec<App>) -> Catalog {
    shard_catalog(instance("s1-0", dsn), vec![], tenants, apps)
}

fn config() -> RouterConfig {
    let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    cfg.acquire_timeout = Duration::from_millis(300);
    cfg
}

async fn scalar(conn: &tokio_postgres::Client, sql: &str) -> anyhow::Result<String> {
    Ok(conn.query_one(sql, &[]).await?.get(0))
}

/// The one text value `sql` returns, run on a pooled session.
async fn pooled(conn: &mut PooledConn, sql: &str) -> anyhow::Result<String> {
    let result = execute(conn, sql, &[]).await?;
    match &result.rows[..] {
        [row] => Ok(row[0].as_str().unwrap_or_default().to_string()),
        rows => anyhow::bail!("{} rows", rows.len()),
    }
}

#[tokio::test]
async fn tenant_pools_log_in_as_the_tenant_role() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    provision(&pg, &[("acme", "pw-a"), ("beta", "pw-b")]).await?;
    let ctx = RouterContext::new(&config());
    let cat = catalog(
        &pg.dsn(),
        vec![tenant("acme", "pw-a"), tenant("beta", "pw-b")],
        vec![],
    );
    let routing = Routing::build(&cat, &Routing::default(), &ctx);
    let s1 = &routing.shards["s1"];

    // The role, database and schema are the record's `pg_name`.
    let (acme_pg, beta_pg) = (pg_name("acme"), pg_name("beta"));
    let mut acme = s1.primary.pool_for(&routing.tenants["acme"]).get().await?;
    assert_eq!(
        pooled(&mut acme, "SELECT current_user::text").await?,
        acme_pg
    );
    assert_eq!(pooled(&mut acme, "SHOW search_path").await?, acme_pg);
    assert_eq!(
        pooled(&mut acme, "SELECT current_database()::text").await?,
        acme_pg
    );
    acme.batch_execute("CREATE TABLE items (id int)").await?;
    let acme_db = tokio_postgres::connect(&format!("{} dbname={acme_pg}", pg.dsn()), NoTls).await?;
    tokio::spawn(acme_db.1);
    let placed = scalar(
        &acme_db.0,
        &format!("SELECT to_regclass('{acme_pg}.items')::text"),
    )
    .await?;
    assert_eq!(placed, format!("{acme_pg}.items"));

    let mut beta = s1.primary.pool_for(&routing.tenants["beta"]).get().await?;
    assert_eq!(
        pooled(&mut beta, "SELECT current_user::text").await?,
        beta_pg
    );
    // beta is in its own database: acme's table is not even there, and
    // beta may not connect to acme's database.
    let err = beta
        .batch_execute(&format!("SELECT * FROM {acme_pg}.items"))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|db| db.code.as_str()),
        Some("42P01"),
        "{err}"
    );
    assert_eq!(
        pooled(
            &mut beta,
            &format!("SELECT has_database_privilege('{acme_pg}', 'CONNECT')::text")
        )
        .await?,
        "false"
    );
    let stats = s1.stats();
    assert_eq!((stats.pools, stats.open, stats.in_use), (2, 2, 2));
    Ok(())
}

/// Sessions of the tenant roles on the server now.
async fn tenant_backends(admin: &Client) -> anyhow::Result<i64> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 't\\_%'",
            &[],
        )
        .await?
        .get(0))
}

#[tokio::test]
async fn shard_budget_is_shared_and_evicts_idle_connections() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let admin = pg.connect().await?;
    provision(&pg, &[("acme", "pw-a"), ("beta", "pw-b")]).await?;
    let mut cfg = config();
    cfg.shard_max_connections = 2;
    cfg.tenant_pool_size = 2;
    let ctx = RouterContext::new(&cfg);
    let cat = catalog(
        &pg.dsn(),
        vec![tenant("acme", "pw-a"), tenant("beta", "pw-b")],
        vec![],
    );
    let routing = Routing::build(&cat, &Routing::default(), &ctx);
    let s1 = Arc::clone(&routing.shards["s1"]);
    let acme = s1.primary.pool_for(&routing.tenants["acme"]);
    let beta = s1.primary.pool_for(&routing.tenants["beta"]);

    // acme fills the budget, then leaves both connections idle.
    let (a, b) = (acme.get().await?, acme.get().await?);
    drop((a, b));
    assert_eq!((acme.stats().idle, s1.primary.budget().open()), (2, 2));

    // beta's first connection closes one of acme's idle ones.
    let mut c = beta.get().await?;
    assert_eq!(
        pooled(&mut c, "SELECT current_user::text").await?,
        pg_name("beta")
    );
    assert_eq!((acme.stats().size, beta.stats().size), (1, 1));
    assert_eq!(s1.primary.budget().open(), 2);

    // Both connections in use: a third waits for the acquire timeout,
    // then is a 503 with Retry-After.
    let d = acme.get().await?;
    let err = beta.get().await.err().unwrap();
    assert!(matches!(err, PoolError::BudgetExhausted(_)), "{err:?}");
    let api = from_pool_error(&err);
    assert_eq!(
        (api.code(), api.http_status(), api.retry_after()),
        (ErrorCode::ShardUnavailable, 503, Some(1))
    );

    // A waiter gets room as soon as another tenant's connection goes
    // idle: that one is closed for it.
    let waiter = {
        let beta = beta.clone();
        tokio::spawn(async move {
            let mut conn = beta.get().await?;
            pooled(&mut conn, "SELECT current_user::text").await
        })
    };
    // Wait (bounded) until it holds beta's second slot, i.e. it waits
    // for the budget.
    for _ in 0..200 {
        if beta.stats().in_use == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(beta.stats().in_use, 2);
    drop(d);
    assert_eq!(waiter.await??, pg_name("beta"));
    assert_eq!(acme.stats().size, 0);
    assert!(s1.primary.budget().open() <= 2);
    drop(c);

    // The router's own count stayed within the budget at each step
    // (above); the server's count agrees once closing settles (quick
    // but not instant: wait, bounded).
    let mut backends = tenant_backends(&admin).await?;
    for _ in 0..100 {
        if backends <= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        backends = tenant_backends(&admin).await?;
    }
    assert!(backends <= 2, "{backends} tenant sessions");
    Ok(())
}

/// Both front ends borrow one pool of sessions per tenant and instance:
/// a session the HTTP front end returns is the next one the wire front
/// end gets, and a hog holding its pool size through HTTP gets no wire
/// session, while another tenant still does.
#[tokio::test]
async fn both_front_ends_share_one_pool() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    provision(&pg, &[("acme", "pw-a"), ("beta", "pw-b")]).await?;
    let mut cfg = config();
    cfg.shard_max_connections = 10;
    cfg.tenant_pool_size = 2;
    let ctx = RouterContext::new(&cfg);
    let cat = catalog(
        &pg.dsn(),
        vec![tenant("acme", "pw-a"), tenant("beta", "pw-b")],
        vec![],
    );
    let routing = Routing::build(&cat, &Routing::default(), &ctx);
    let s1 = Arc::clone(&routing.shards["s1"]);
    let (acme, beta) = (&routing.tenants["acme"], &routing.tenants["beta"]);

    // acme holds its two sessions through the HTTP front end.
    let http = s1.primary.pool_for(acme);
    let (mut a1, a2) = (http.get().await?, http.get().await?);
    assert_eq!(
        pooled(&mut a1, "SELECT current_user::text").await?,
        pg_name("acme")
    );
    let a1_pid = pooled(&mut a1, "SELECT pg_backend_pid()::text").await?;
    // The wire front end's view of the pool has no free session: it
    // waits for the acquire timeout and is refused, with the instance's
    // budget far from used up.
    let raw = s1.primary.raw_pool_for(acme);
    let err = raw.get().await.expect_err("a third session of acme");
    assert!(matches!(err, PoolError::Timeout(_)), "{err:?}");
    assert_eq!(s1.primary.budget().open(), 2);

    // beta still gets a wire session and an HTTP one.
    let b_raw = s1.primary.raw_pool_for(beta).get().await?;
    let b_http = s1.primary.pool_for(beta).get().await?;
    assert_eq!(s1.primary.budget().open(), 4);

    // The session HTTP gives back is the one the wire gets: no new
    // session is opened.
    drop(a2);
    drop(a1);
    let a_raw = raw.get().await?;
    assert_eq!(a_raw.conn.cancel.pid.to_string(), a1_pid);
    assert_eq!(http.stats().size, 2);
    assert_eq!(s1.primary.tenant_budget(&acme.id, 2).open(), 2);
    drop((a_raw, b_raw, b_http));
    Ok(())
}

#[tokio::test]
async fn pool_is_replaced_when_the_password_changes() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    // Passwords checked for everyone but the superuser.
    std::fs::write(
        pg.data_dir().join("pg_hba.conf"),
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )?;
    let admin = pg.connect().await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    provision(&pg, &[("acme", "first")]).await?;
    let ctx = RouterContext::new(&config());

    // A wrong password is refused: the password matters.
    let wrong = catalog(&pg.dsn(), vec![tenant("acme", "wrong")], vec![]);
    let bad = Routing::build(&wrong, &Routing::default(), &RouterContext::new(&config()));
    let err = bad.shards["s1"]
        .primary
        .pool_for(&bad.tenants["acme"])
        .get()
        .await
        .err()
        .unwrap();
    assert_eq!(
        from_pool_error(&err).code(),
        ErrorCode::Unavailable,
        "{err:?}"
    );

    let mut cat = catalog(&pg.dsn(), vec![tenant("acme", "first")], vec![]);
    let r1 = Routing::build(&cat, &Routing::default(), &ctx);
    let old = r1.shards["s1"].primary.pool_for(&r1.tenants["acme"]);
    let mut held = old.get().await?;
    assert_eq!(
        pooled(&mut held, "SELECT current_user::text").await?,
        pg_name("acme")
    );

    // The manager sets a new password; the next catalog carries it.
    admin
        .batch_execute(&format!("ALTER ROLE {} PASSWORD 'second'", pg_name("acme")))
        .await?;
    cat.version = 2;
    cat.tenants.get_mut("acme").unwrap().role_password = "second".into();
    let r2 = Routing::build(&cat, &r1, &ctx);
    assert!(old.is_closed());
    let new = r2.shards["s1"].primary.pool_for(&r2.tenants["acme"]);
    assert!(!new.ptr_eq(&old));
    let mut conn = new.get().await?;
    assert_eq!(
        pooled(&mut conn, "SELECT current_user::text").await?,
        pg_name("acme")
    );
    // The connection in use when the pool closed finishes its work, then
    // is closed rather than returned.
    assert_eq!(pooled(&mut held, "SELECT 'still'::text").await?, "still");
    drop(held);
    assert_eq!(old.stats().size, 0);
    Ok(())
}

#[tokio::test]
async fn http_api_enforces_tenants_and_quotas() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    provision(&pg, &[("acme", "pw-a"), ("beta", "pw-b")]).await?;
    for (t, pw) in [("acme", "pw-a"), ("beta", "pw-b")] {
        migrate(&pg, t, pw, "CREATE TABLE kv (k text PRIMARY KEY, v text)").await?;
    }
    let one_per_second = Limits {
        requests_per_second: Some(1),
        burst: Some(1),
        ..Limits::default()
    };
    let mut cat = catalog(
        &pg.dsn(),
        vec![tenant("acme", "pw-a"), tenant("beta", "pw-b")],
        vec![
            app("a1", "acme", Some("acme:"), Limits::default()),
            app("a2", "acme", None, one_per_second),
            app("b1", "beta", None, Limits::default()),
        ],
    );
    let ctx = Arc::new(RouterContext::new(&config()));
    let cell = Arc::new(RoutingCell::default());
    cell.set(Routing::build(&cat, &Routing::default(), &ctx));
    let state = Arc::new(shardline_router::http::RouterState {
        routing: Arc::clone(&cell),
        ctx: Arc::clone(&ctx),
        request_timeout: Duration::from_secs(10),
        name_sessions: false,
        lanes: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(shardline_http::serve(
        listener,
        shardline_router::http::router(state, 1 << 20),
        stop.clone(),
        Duration::from_secs(1),
    ));

    let exec = |token: &'static str, body: Value| async move {
        http(addr, "POST", "/v1/execute", Some(token), Some(&body)).await
    };
    let (status, _, body) = exec(
        "tok-a1",
        json!({"shard_key": "acme:1", "sql": "INSERT INTO kv VALUES ($1, 'a')", "params": ["acme:1"]}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = exec(
        "tok-b1",
        json!({"shard_key": "k", "sql": "SELECT count(*)::int AS n FROM kv"}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body)?;
    assert_eq!(rows["rows"], json!([[0]]), "beta sees only its own table");
    let (status, _, body) = exec(
        "tok-b1",
        json!({"shard_key": "k", "sql": format!("SELECT * FROM {}.kv", pg_name("acme"))}),
    )
    .await?;
    // Another database: acme's table does not exist for beta.
    assert_eq!(
        (status, error_code(&body)),
        (400, "statement_failed".into()),
        "{body}"
    );
    assert!(body.contains("42P01"), "{body}");

    // Prefix and keyspace checks.
    let (status, _, body) =
        exec("tok-a1", json!({"shard_key": "beta:1", "sql": "SELECT 1"})).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("acme:"), "{body}");
    let (status, _, _) = exec(
        "tok-a1",
        json!({"keyspace": "other", "shard_key": "acme:1", "sql": "SELECT 1"}),
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _, body) = exec("nope", json!({"shard_key": "k", "sql": "SELECT 1"})).await?;
    assert_eq!((status, error_code(&body)), (401, "unauthorized".into()));

    // a2 may send 1/s: of five quick requests at least one is refused
    // with Retry-After.
    let mut limited = None;
    for _ in 0..5 {
        let (status, headers, body) =
            exec("tok-a2", json!({"shard_key": "k", "sql": "SELECT 1"})).await?;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (headers, body) = limited.expect("a 429 within five requests");
    assert_eq!(error_code(&body), "rate_limited");
    let retry: u64 = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(retry >= 1);

    let (status, _, metrics) = http(addr, "GET", "/metrics", None, None).await?;
    assert_eq!(status, 200);
    for expected in [
        r#"router_requests_total{tenant="acme",app="a1",keyspace="shared",endpoint="execute",shard="s1",outcome="ok",protocol="http"} 1"#,
        r#"router_rejected_requests_total{tenant="acme",app="a2",reason="rate_limited"} 1"#,
        r#"router_rejected_requests_total{tenant="acme",app="a1",reason="forbidden_key_prefix"} 1"#,
        r#"router_rejected_requests_total{tenant="acme",app="a1",reason="forbidden_keyspace"} 1"#,
        r#"router_rejected_requests_total{tenant="",app="",reason="unauthorized"} 1"#,
        r#"router_tenant_in_flight_requests{tenant="acme"} 0"#,
        r#"router_tenant_pools{shard="s1"} 2"#,
        r#"router_request_duration_seconds_count{tenant="beta",app="b1",shard="s1"} 2"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains(r#"keyspace="other""#),
        "client-sent keyspace became a label"
    );
    promtool_check(&metrics)?;

    // beta leaves the catalog: its app is refused (403) and, once the app
    // goes too, its series are gone.
    cat.version = 2;
    cat.tenants.remove("beta");
    cell.set(Routing::build(&cat, &cell.get(), &ctx));
    let (status, _, body) = exec("tok-b1", json!({"shard_key": "k", "sql": "SELECT 1"})).await?;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden".into()),
        "{body}"
    );
    cat.version = 3;
    cat.apps.remove("b1");
    cell.set(Routing::build(&cat, &cell.get(), &ctx));
    let (_, _, metrics) = http(addr, "GET", "/metrics", None, None).await?;
    assert!(!metrics.contains(r#"app="b1""#), "{metrics}");
    assert!(!metrics.contains(r#"tenant="beta""#), "{metrics}");
    assert!(
        metrics.contains(r#"router_tenant_pools{shard="s1"} 1"#),
        "{metrics}"
    );
    promtool_check(&metrics)?;

    stop.cancel();
    server.await??;
    Ok(())
}

/// `promtool check metrics` on the text, when promtool is installed.
fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not found: exposition format not checked");
        return Ok(());
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
