//! Resharding cutover as the router sees it, against real PostgreSQL:
//! requests for a frozen key range are held until a routing table moves
//! the range to its new owner (or answered 503 after the window), and a
//! statement the old owner refuses with SQLSTATE SLM01 runs again on the
//! new owner once the new table arrives; a tenant that is moving is held
//! until it is not, then served in its new keyspace. A source fenced by
//! a cutover this router missed refuses its writes, and its reads once
//! the manager has not answered for longer than a lease.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    app, error_code, header, http, instance, pg_name, shard_catalog, tenant, Served, TIMEOUT,
};
use serde_json::{json, Value};
use shardline_core::catalog::{Limits, Migration, Shard};
use shardline_core::fence::{claim_key, verify_claim};
use shardline_core::hash::routing_hash;
use shardline_core::shardmap::ShardRange;
use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};
use shardline_manager::reshard::sql;
use shardline_manager::tenant_pg;
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::RouterConfig;
use shardline_testkit::PgCluster;

const SCHEMA: &str = "CREATE TABLE kv (k text PRIMARY KEY, v text)";

/// What the manager installs on a source at cutover: every write to the
/// table is refused as moved (here for all keys, not just a range). Run
/// in acme's schema ([`acme_db`]).
const REFUSE: &str = "
CREATE FUNCTION refuse_moved() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'key range moved; retry' USING ERRCODE = 'SLM01'; END $$;
CREATE TRIGGER refuse_moved BEFORE INSERT OR UPDATE OR DELETE ON kv
  FOR EACH ROW EXECUTE FUNCTION refuse_moved();";

/// A PostgreSQL server as shard `shard`, with tenant `acme` and its
/// table `kv`, provisioned by the manager's own code.
async fn shard(id: &str) -> anyhow::Result<PgCluster> {
    let pg = PgCluster::start().await?;
    let admin = pg.connect().await?;
    tenant_pg::prepare_database(&admin, id).await?;
    let m = Migration {
        name: "001".into(),
        checksum: shardline_manager::migrations::checksum(SCHEMA),
        sql: SCHEMA.into(),
    };
    let acme = tenant("acme", "pw-a");
    tenant_pg::apply_migration(&admin, id, &pg.dsn(), &acme, &m, TIMEOUT).await?;
    Ok(pg)
}

/// A superuser session in acme's database, in its schema.
async fn acme_db(pg: &PgCluster) -> anyhow::Result<tokio_postgres::Client> {
    let name = pg_name("acme");
    let (client, conn) = tokio_postgres::connect(
        &format!("{} dbname={name}", pg.dsn()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path = {name}"))
        .await?;
    Ok(client)
}

async fn has_row(pg: &PgCluster, k: &str) -> anyhow::Result<bool> {
    let n: i64 = acme_db(pg)
        .await?
        .query_one("SELECT count(*) FROM kv WHERE k = $1", &[&k])
        .await?
        .get(0);
    Ok(n == 1)
}

/// The half of the routing space (`-80` or `80-`) holding `key`.
fn half_of(key: &str) -> KeyRange {
    let upper = routing_hash(ShardKey::Text(key)) >> 63 == 1;
    KeyRange::parse(if upper { "80-" } else { "-80" }).unwrap()
}

/// A key in the other half than `key`.
fn other_half_key(key: &str) -> String {
    (0..1000)
        .map(|i| format!("other-{i}"))
        .find(|k| half_of(k) != half_of(key))
        .unwrap()
}

/// Keyspace `shared` split in halves, the half holding `key` on `owner`
/// and `frozen` or not, the other on s1; shards s1 and (if given) s2;
/// app a1 of tenant acme.
fn catalog(
    version: u64,
    s1: &PgCluster,
    s2: Option<&PgCluster>,
    key: &str,
    owner: &str,
    frozen: bool,
) -> Catalog {
    let mut cat = shard_catalog(
        instance("s1-0", &s1.dsn()),
        vec![],
        vec![tenant("acme", "pw-a")],
        vec![app("a1", "acme", None, Limits::default())],
    );
    cat.version = version;
    let moving = half_of(key);
    let ranges = ["-80", "80-"]
        .iter()
        .map(|r| {
            let range = KeyRange::parse(r).unwrap();
            let shard = if range == moving { owner } else { "s1" };
            ShardRange {
                range,
                shard: shard.into(),
            }
        })
        .collect();
    let ks = cat.keyspaces.get_mut("shared").unwrap();
    ks.map = Some(ShardMap::new(ranges).unwrap());
    ks.frozen = if frozen { vec![moving] } else { vec![] };
    if let Some(s2) = s2 {
        let mut shard: Shard = cat.shards["s1"].clone();
        shard.id = "s2".into();
        shard.primary = instance("s2-0", &s2.dsn());
        cat.shards.insert("s2".into(), shard);
    }
    cat
}

async fn serve(
    cfg: &RouterConfig,
    cat: &Catalog,
) -> anyhow::Result<(Arc<RouterContext>, Arc<RoutingCell>, Arc<Served>)> {
    let ctx = Arc::new(RouterContext::new(cfg));
    let cell = Arc::new(RoutingCell::default());
    cell.set(Routing::build(cat, &Routing::default(), &ctx));
    let served = Served::start(&cell, &ctx, Duration::from_secs(30)).await?;
    Ok((ctx, cell, Arc::new(served)))
}

async fn stop(served: Arc<Served>) -> anyhow::Result<()> {
    Arc::try_unwrap(served)
        .map_err(|_| anyhow::anyhow!("server still shared"))?
        .stop()
        .await
}

/// An answer: status, headers, body as JSON.
type Answer = (u16, Vec<(String, String)>, Value);

/// `POST path` with `body` as app a1.
async fn post(served: &Served, path: &str, body: Value) -> anyhow::Result<Answer> {
    let (status, headers, text) =
        http(served.addr, "POST", path, Some("tok-a1"), Some(&body)).await?;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, headers, value))
}

/// Inserts `k` and returns the port of the server that took it.
async fn insert(served: &Served, k: &str) -> anyhow::Result<Answer> {
    let body = json!({
        "shard_key": k,
        "sql": "INSERT INTO kv VALUES ($1, 'v') RETURNING current_setting('port')",
        "params": [k],
    });
    post(served, "/v1/execute", body).await
}

/// [`insert`] run in the background.
fn spawn_insert(served: &Arc<Served>, k: &str) -> tokio::task::JoinHandle<anyhow::Result<Answer>> {
    let (served, k) = (Arc::clone(served), k.to_string());
    tokio::spawn(async move { insert(&served, &k).await })
}

/// Waits (bounded) until the router has `n` requests in flight.
async fn until_in_flight(ctx: &RouterContext, n: f64) {
    for _ in 0..1000 {
        if ctx.metrics.in_flight.with(&[]).get() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fewer than {n} requests in flight");
}

async fn held(served: &Served, shard: &str, outcome: &str) -> anyhow::Result<u64> {
    let text = http(served.addr, "GET", "/metrics", None, None).await?.2;
    let prefix = format!(r#"router_held_requests_total{{shard="{shard}",outcome="{outcome}"}} "#);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

fn assert_unavailable(status: u16, headers: &[(String, String)], body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body.to_string()), "shard_unavailable", "{body}");
    assert_eq!(body["error"]["retryable"], json!(true), "{body}");
    assert_eq!(header(headers, "retry-after"), Some("1"), "{body}");
}

#[tokio::test]
async fn requests_for_a_frozen_range_wait_for_the_new_owner() -> anyhow::Result<()> {
    let (s1, s2) = (shard("s1").await?, shard("s2").await?);
    let key = "moving-key";
    let frozen = catalog(1, &s1, Some(&s2), key, "s1", true);
    let (ctx, cell, served) = serve(&RouterConfig::new("http://127.0.0.1:1", "t"), &frozen).await?;

    let write = spawn_insert(&served, key);
    until_in_flight(&ctx, 1.0).await;
    // Keys outside the frozen range are served meanwhile.
    let other = other_half_key(key);
    let (status, _, body) = insert(&served, &other).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "s1");
    assert!(!write.is_finished());
    assert!(!has_row(&s1, key).await?);

    // The cutover publishes the new map: the range on s2, unfrozen.
    let moved = catalog(2, &s1, Some(&s2), key, "s2", false);
    cell.set(Routing::build(&moved, &cell.get(), &ctx));
    let (status, _, body) = write.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "s2");
    assert_eq!(body["rows"][0][0], json!(s2.port().to_string()));
    assert!(has_row(&s2, key).await?);
    assert!(!has_row(&s1, key).await?, "the old owner took the write");
    assert_eq!(held(&served, "s1", "resumed").await?, 1);
    let text = http(served.addr, "GET", "/metrics", None, None).await?.2;
    assert!(
        text.contains(r#"endpoint="execute",shard="s2",outcome="ok",protocol="http"}"#),
        "the request is counted on the shard that served it: {text}"
    );
    stop(served).await
}

#[tokio::test]
async fn frozen_and_moved_keys_answer_503_after_the_window() -> anyhow::Result<()> {
    let s1 = shard("s1").await?;
    let key = "stuck-key";
    let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    cfg.failover_hold = Duration::from_millis(300);
    let frozen = catalog(1, &s1, None, key, "s1", true);
    let (ctx, cell, served) = serve(&cfg, &frozen).await?;

    // Frozen, and no new table within the window.
    let (status, headers, body) = insert(&served, key).await?;
    assert_unavailable(status, &headers, &body);
    assert!(!has_row(&s1, key).await?);
    assert_eq!(held(&served, "s1", "timed_out").await?, 1);

    // Unfrozen, but the shard refuses the key as moved and no newer
    // table comes: 503, retryable, never the client's 400.
    acme_db(&s1).await?.batch_execute(REFUSE).await?;
    let unfrozen = catalog(2, &s1, None, key, "s1", false);
    cell.set(Routing::build(&unfrozen, &cell.get(), &ctx));
    let (status, headers, body) = insert(&served, key).await?;
    assert_unavailable(status, &headers, &body);
    assert_eq!(body["error"]["shard"], "s1", "{body}");
    assert_eq!(held(&served, "s1", "timed_out").await?, 2);
    assert!(!has_row(&s1, key).await?);
    stop(served).await
}

#[tokio::test]
async fn statements_refused_as_moved_run_again_on_the_new_owner() -> anyhow::Result<()> {
    let (s1, s2) = (shard("s1").await?, shard("s2").await?);
    let key = "refused-key";
    let before = catalog(1, &s1, Some(&s2), key, "s1", false);
    let (ctx, cell, served) = serve(&RouterConfig::new("http://127.0.0.1:1", "t"), &before).await?;
    // The source refuses writes; this router has not seen the new map.
    acme_db(&s1).await?.batch_execute(REFUSE).await?;

    let write = spawn_insert(&served, key);
    let tx = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let body = json!({
                "shard_key": key,
                "statements": [
                    {"sql": "UPDATE kv SET v = 'tx' WHERE k = $1", "params": [key]},
                    {"sql": "INSERT INTO kv VALUES ($1 || '-tx', 'v') RETURNING current_setting('port')", "params": [key]},
                ],
            });
            post(&served, "/v1/transaction", body).await
        })
    };
    // Both were authenticated by the old table (version 1, key on s1).
    until_in_flight(&ctx, 2.0).await;
    let after = catalog(2, &s1, Some(&s2), key, "s2", false);
    cell.set(Routing::build(&after, &cell.get(), &ctx));

    let (status, _, body) = write.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "s2");
    assert_eq!(body["rows"][0][0], json!(s2.port().to_string()));
    let (status, _, body) = tx.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "s2");
    assert_eq!(
        body["results"][1]["rows"][0][0],
        json!(s2.port().to_string()),
        "{body}"
    );
    assert!(has_row(&s2, key).await? && has_row(&s2, &format!("{key}-tx")).await?);
    assert!(!has_row(&s1, key).await?);

    // Refused again after the newer table: retried once only, then 503.
    acme_db(&s2).await?.batch_execute(REFUSE).await?;
    let again = spawn_insert(&served, "refused-twice");
    until_in_flight(&ctx, 1.0).await;
    let newer = catalog(3, &s1, Some(&s2), key, "s2", false);
    cell.set(Routing::build(&newer, &cell.get(), &ctx));
    let (status, headers, body) = again.await??;
    assert_unavailable(status, &headers, &body);
    // The 503 of the one retry, not of a hold that ran out while the
    // router kept retrying.
    for shard in ["s1", "s2"] {
        assert_eq!(held(&served, shard, "timed_out").await?, 0, "{shard}");
    }
    stop(served).await
}

/// A router's heartbeat task (every `interval`, and at once after each
/// new routing table) against a stand-in manager serving `app`.
struct Heartbeating {
    ctx: Arc<RouterContext>,
    cell: Arc<RoutingCell>,
    stop: tokio_util::sync::CancellationToken,
    beat: tokio::task::JoinHandle<()>,
    manager: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Heartbeating {
    async fn start(app: axum::Router, interval: Duration) -> anyhow::Result<Heartbeating> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = tokio_util::sync::CancellationToken::new();
        let manager = tokio::spawn(shardline_http::serve(
            listener,
            app,
            stop.clone(),
            Duration::from_secs(1),
        ));
        let ctx = Arc::new(RouterContext::new(&RouterConfig::new(&url, "t")));
        let cell = Arc::new(RoutingCell::default());
        let beat = tokio::spawn(shardline_router::follow::heartbeat(
            shardline_client::ManagerClient::new(&url, Some("t".into()))?,
            Arc::clone(&cell),
            Arc::clone(&ctx),
            "r1".into(),
            "127.0.0.1:1".into(),
            interval,
            stop.clone(),
        ));
        Ok(Heartbeating {
            ctx,
            cell,
            stop,
            beat,
            manager,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.beat.await?;
        self.manager.await??;
        Ok(())
    }
}

#[tokio::test]
async fn a_new_catalog_is_acknowledged_at_once() -> anyhow::Result<()> {
    use shardline_api::manager::{HeartbeatResponse, RouterHeartbeat};
    use std::sync::Mutex;

    // A manager that records the versions routers report.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/v1/routers/heartbeat",
        axum::routing::post(move |axum::Json(hb): axum::Json<RouterHeartbeat>| {
            let record = Arc::clone(&record);
            async move {
                record.lock().unwrap().push(hb.applied_version);
                axum::Json(HeartbeatResponse {
                    lease_ms: 10_000,
                    live_routers: 1,
                    renewed: true,
                })
            }
        }),
    );
    // The periodic heartbeat is an hour apart: only the one sent on a
    // new table can report version 7.
    let hb = Heartbeating::start(app, Duration::from_secs(3600)).await?;
    let (ctx, cell) = (Arc::clone(&hb.ctx), Arc::clone(&hb.cell));
    let reported = |v: u64| seen.lock().unwrap().contains(&v);
    for _ in 0..500 {
        if reported(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reported(0), "no first heartbeat");
    let mut cat = Catalog {
        version: 7,
        ..Catalog::default()
    };
    cell.set(Routing::build(&cat, &cell.get(), &ctx));
    for _ in 0..500 {
        if reported(7) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*seen.lock().unwrap(), [0, 7]);
    cat.version = 8;
    cell.set(Routing::build(&cat, &cell.get(), &ctx));
    for _ in 0..500 {
        if reported(8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*seen.lock().unwrap(), [0, 7, 8]);
    hb.stop().await
}

#[tokio::test]
async fn a_router_whose_lease_is_not_renewed_counts_itself_cut_off() -> anyhow::Result<()> {
    use shardline_api::manager::HeartbeatResponse;
    use std::sync::atomic::{AtomicBool, Ordering};

    // A manager that renews 400 ms leases until told not to (as for a
    // router behind the catalog a cutover waits for).
    let renew = Arc::new(AtomicBool::new(true));
    let answer = Arc::clone(&renew);
    let app = axum::Router::new().route(
        "/v1/routers/heartbeat",
        axum::routing::post(move || {
            let renewed = answer.load(Ordering::SeqCst);
            async move {
                axum::Json(HeartbeatResponse {
                    lease_ms: 400,
                    live_routers: 1,
                    renewed,
                })
            }
        }),
    );
    let hb = Heartbeating::start(app, Duration::from_millis(50)).await?;
    let ctx = &hb.ctx;
    // Renewed: within its lease, however long it runs.
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    let mut seen_cut_off = false;
    while tokio::time::Instant::now() < until {
        seen_cut_off |= ctx.contact.cut_off();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!seen_cut_off, "cut off while renewed");
    // Not renewed, though every heartbeat is answered: cut off within
    // the lease.
    renew.store(false, Ordering::SeqCst);
    let mut cut_off = false;
    for _ in 0..100 {
        if ctx.contact.cut_off() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cut_off, "still counts on its lease");
    // Renewed again: back in contact.
    renew.store(true, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..100 {
        if !ctx.contact.cut_off() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "in contact again");
    hb.stop().await
}

/// `catalog` with tenant acme `moving` out of `shared`, or (`moved`) in
/// its dedicated keyspace `acme`, all of whose keys are on s2.
fn tenant_move_catalog(
    version: u64,
    s1: &PgCluster,
    s2: &PgCluster,
    moving: bool,
    moved: bool,
) -> Catalog {
    let mut cat = catalog(version, s1, Some(s2), "any", "s1", false);
    let acme = cat.tenants.get_mut("acme").unwrap();
    acme.moving = moving;
    if moved {
        acme.keyspace = "acme".into();
        acme.dedicated = true;
        let mut ks = cat.keyspaces["shared"].clone();
        ks.name = "acme".into();
        ks.map = Some(ShardMap::even(&["s2".to_string()]).unwrap());
        cat.keyspaces.insert("acme".into(), ks);
        let s2 = cat.shards.get_mut("s2").unwrap();
        s2.keyspace = Some("acme".into());
        s2.reserved_for = Some("acme".into());
    }
    cat
}

#[tokio::test]
async fn a_moving_tenant_resumes_in_its_new_keyspace() -> anyhow::Result<()> {
    let (s1, s2) = (shard("s1").await?, shard("s2").await?);
    let moving = tenant_move_catalog(1, &s1, &s2, true, false);
    let (ctx, cell, served) = serve(&RouterConfig::new("http://127.0.0.1:1", "t"), &moving).await?;

    // Named the old keyspace explicitly: still runs in the new one.
    let key = "tenant-key";
    let write = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let body = json!({
                "keyspace": "shared",
                "shard_key": key,
                "sql": "INSERT INTO kv VALUES ($1, 'v') RETURNING current_setting('port')",
                "params": [key],
            });
            post(&served, "/v1/execute", body).await
        })
    };
    until_in_flight(&ctx, 1.0).await;
    // A newer table in which acme still moves: still held.
    let still = tenant_move_catalog(2, &s1, &s2, true, false);
    cell.set(Routing::build(&still, &cell.get(), &ctx));
    // Time for a wrongly released request to reach a shard and answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!write.is_finished());
    assert!(!has_row(&s1, key).await? && !has_row(&s2, key).await?);

    let moved = tenant_move_catalog(3, &s1, &s2, false, true);
    cell.set(Routing::build(&moved, &cell.get(), &ctx));
    let (status, _, body) = write.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard"], "s2");
    assert_eq!(body["rows"][0][0], json!(s2.port().to_string()));
    assert!(has_row(&s2, key).await?);
    assert!(!has_row(&s1, key).await?, "the old keyspace took the write");
    assert_eq!(held(&served, "s1", "resumed").await?, 1);
    stop(served).await
}

#[tokio::test]
async fn a_tenant_moving_past_the_window_gets_503() -> anyhow::Result<()> {
    let (s1, s2) = (shard("s1").await?, shard("s2").await?);
    let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    cfg.failover_hold = Duration::from_millis(300);
    let moving = tenant_move_catalog(1, &s1, &s2, true, false);
    let (_ctx, _cell, served) = serve(&cfg, &moving).await?;
    let (status, headers, body) = insert(&served, "late-key").await?;
    assert_unavailable(status, &headers, &body);
    assert!(!has_row(&s1, "late-key").await?);
    assert_eq!(held(&served, "s1", "timed_out").await?, 1);
    stop(served).await
}

/// `shardline.map_version` as a session of the router sees it.
async fn map_version_seen(served: &Served, key: &str) -> anyhow::Result<Answer> {
    let body = json!({
        "shard_key": key,
        "sql": "SELECT current_setting('shardline.map_version', true), pg_backend_pid()",
    });
    post(served, "/v1/execute", body).await
}

#[tokio::test]
async fn sessions_say_their_map_version_and_a_fenced_source_refuses_older_ones(
) -> anyhow::Result<()> {
    let s1 = shard("s1").await?;
    let key = "fenced-key";
    let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    cfg.failover_hold = Duration::from_millis(300);
    let (ctx, cell, served) = serve(&cfg, &catalog(7, &s1, None, key, "s1", false)).await?;
    // The session states version 7 as a claim bound to its backend and
    // the tenant's key.
    let (status, _, body) = map_version_seen(&served, key).await?;
    assert_eq!(status, 200, "{body}");
    let claim = body["rows"][0][0].as_str().unwrap_or_default();
    let pid = body["rows"][0][1].as_i64().unwrap_or_default() as i32;
    assert_eq!(
        verify_claim(&claim_key("pw-a"), pid, claim),
        Some(7),
        "{body}"
    );
    let (status, _, body) = insert(&served, key).await?;
    assert_eq!(status, 200, "{body}");

    // The manager's fence at catalog 8 (as at a cutover this router
    // missed): every write of a session at 7 is refused, even one that
    // matches no row, and the router, finding no newer table, answers
    // 503 (retryable) with nothing written.
    let admin = acme_db(&s1).await?;
    let meta = sql::table_meta(&admin, &pg_name("acme"), "kv", "k")
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    sql::install_refuse(&admin, &meta, KeyType::Text, &[KeyRange::FULL]).await?;
    sql::set_fence(&admin, 8, &claim_key("pw-a")).await?;
    let update = |k: &str| {
        json!({
            "shard_key": key,
            "sql": "UPDATE kv SET v = 'x' WHERE k = $1 \
                    RETURNING current_setting('shardline.map_version')",
            "params": [k],
        })
    };
    for k in [key, "no-such-row"] {
        let (status, headers, body) = post(&served, "/v1/execute", update(k)).await?;
        assert_unavailable(status, &headers, &body);
    }
    let (status, headers, body) = insert(&served, "fenced-insert").await?;
    assert_unavailable(status, &headers, &body);
    let v: String = admin
        .query_one("SELECT v FROM kv WHERE k = $1", &[&key])
        .await?
        .get(0);
    assert_eq!(v, "v", "nothing written");
    assert!(!has_row(&s1, "fenced-insert").await?);
    assert_eq!(held(&served, "s1", "timed_out").await?, 3);

    // Reads meet no trigger. While the manager answers, they are served;
    // once it has not answered for longer than its lease (it may have cut
    // over without this router), reads check the fence first.
    let read = json!({
        "shard_key": key,
        "sql": "SELECT v FROM kv WHERE k = $1",
        "params": [key],
    });
    ctx.contact.answered(60_000);
    let (status, _, body) = post(&served, "/v1/execute", read.clone()).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!("v"), "{body}");
    ctx.contact.answered(0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(ctx.contact.cut_off());
    let (status, headers, body) = post(&served, "/v1/execute", read.clone()).await?;
    assert_unavailable(status, &headers, &body);
    assert_eq!(held(&served, "s1", "timed_out").await?, 4, "held, then 503");

    // Writes stop while cut off (the manager may have failed the primary
    // over without this router): refused at once, nothing sent.
    let (status, headers, body) = post(&served, "/v1/execute", update(key)).await?;
    assert_unavailable(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not heard from the manager")),
        "{body}"
    );
    assert_eq!(held(&served, "s1", "timed_out").await?, 4, "not held");

    // A table at 9 (the same owner): the router's sessions say 9 and
    // pass the fence, for writes (in contact again) and, cut off, for
    // reads.
    let newer = catalog(9, &s1, None, key, "s1", false);
    cell.set(Routing::build(&newer, &cell.get(), &ctx));
    ctx.contact.answered(60_000);
    let (status, _, body) = post(&served, "/v1/execute", update(key)).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["rows"][0][0]
            .as_str()
            .is_some_and(|c| c.starts_with("9:")),
        "{body}"
    );
    ctx.contact.answered(0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, _, body) = post(&served, "/v1/execute", read).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!("x"), "{body}");
    stop(served).await
}

/// A write still running when the router's lease runs out is cancelled
/// and answered 503: past the lease the manager may promote a replica
/// without this router's word, and nothing of this router's may still
/// commit on the primary it knows. Reads are not cut short.
#[tokio::test]
async fn a_write_running_when_the_lease_runs_out_is_cancelled() -> anyhow::Result<()> {
    let s1 = shard("s1").await?;
    let key = "slow-key";
    let cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    let (ctx, _cell, served) = serve(&cfg, &catalog(7, &s1, None, key, "s1", false)).await?;
    // A lease of 1.2 s (margin 0.6 s): cut off 0.6 s from now.
    ctx.contact.answered(1_200);
    let slow_write = json!({
        "shard_key": key,
        "sql": "INSERT INTO kv SELECT $1, 'v' FROM pg_sleep(3)",
        "params": [key],
    });
    let slow_read = json!({
        "shard_key": key,
        "sql": "SELECT 1 FROM pg_sleep(1.5)",
    });
    let (write, read) = tokio::join!(
        post(&served, "/v1/execute", slow_write),
        post(&served, "/v1/execute", slow_read)
    );
    let (status, headers, body) = write?;
    assert_unavailable(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("lease ran out")),
        "{body}"
    );
    let (status, _, body) = read?;
    assert_eq!(status, 200, "{body}");
    // Cancelled in PostgreSQL: the row never commits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !has_row(&s1, key).await?,
        "the write committed after the lease"
    );
    stop(served).await
}
