//! Online resharding against real PostgreSQL shards and an in-process
//! manager: split, merge back and move while a writer keeps inserting,
//! updating and deleting directly in the tenant databases (as the tenant
//! role and as superuser, following the map like a router: held while a
//! range is frozen, retried on `SLM01`); cancel during the copy;
//! verification catching a tampered target; resume after a crash in
//! Copy and in Cutover (failpoints in a child manager process); a router
//! that never acknowledges the freeze.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stack::{catalog_path, Stack};
use common::{http, sqlstate, ADMIN_TOKEN, ROUTER_TOKEN};
use shardline_api::manager::{JobInfo, KeyspaceInfo, ReshardRequest};
use shardline_catalog::{CatalogStore, Op, Precondition};
use shardline_core::catalog::{keys, ReshardJob, ReshardKind, ReshardPhase, Tenant};
use shardline_core::hash::{routing_hash, sql_in_range};
use shardline_core::shardmap::ShardRange;
use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};
use shardline_manager::reshard::{
    plan_job, FAILPOINT_AFTER_COPY, FAILPOINT_DURING_CUTOVER, FAILPOINT_ENV,
};
use shardline_manager::ManagerConfig;
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);
const TENANT: &str = "acme";
const DB: &str = "tenant_acme";

/// A manager, shards `s0..`, keyspace `ks` over the first ones, tenant
/// `acme` with `items (id text primary key, v bigint)` holding `k1..kN`.
struct Env {
    st: Stack,
    pgs: HashMap<String, PgCluster>,
    password: String,
}

impl Env {
    async fn setup(
        in_keyspace: usize,
        total: usize,
        rows: usize,
        cfg: impl Fn(&mut ManagerConfig),
    ) -> Env {
        let mut st = Stack::new().await;
        let mut c = st.config();
        cfg(&mut c);
        st.start_with(c).await;
        let started = futures_util::future::join_all((0..total).map(|_| PgCluster::start())).await;
        let mut pgs = HashMap::new();
        for (i, pg) in started.into_iter().enumerate() {
            let pg = pg.unwrap();
            st.register(&format!("s{i}"), &pg, &[]).await;
            pgs.insert(format!("s{i}"), pg);
        }
        let shards: Vec<String> = (0..in_keyspace).map(|i| format!("s{i}")).collect();
        let body = serde_json::json!({"name": "ks", "key_type": "text", "shards": shards});
        let a = st
            .admin("POST", "/v1/keyspaces", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let a = st
            .admin(
                "POST",
                "/v1/tenants",
                Some(r#"{"id": "acme", "keyspace": "ks"}"#),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let m = r#"{"name": "001", "sql": "CREATE TABLE items (id text PRIMARY KEY, v bigint)"}"#;
        let a = st
            .admin("POST", "/v1/keyspaces/ks/migrations", Some(m))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = st
            .admin(
                "PUT",
                "/v1/keyspaces/ks/tables/items",
                Some(r#"{"shard_key": "id"}"#),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let e = st.store.get(&keys::tenant(TENANT)).await.unwrap().unwrap();
        let tenant: Tenant = serde_json::from_slice(&e.value).unwrap();
        let env = Env {
            st,
            pgs,
            password: tenant.role_password,
        };
        let map = env.map().await;
        for r in map.ranges() {
            let pred = sql_in_range(KeyType::Text, "'k' || i", &r.range);
            env.db(&r.shard)
                .await
                .batch_execute(&format!(
                    "INSERT INTO {DB}.items SELECT 'k' || i, i FROM generate_series(1, {rows}) i \
                     WHERE {pred}"
                ))
                .await
                .unwrap();
        }
        env
    }

    /// A superuser session in the tenant's database, in its schema.
    async fn db(&self, shard: &str) -> tokio_postgres::Client {
        let c = common::connect_db(&self.pgs[shard], DB).await;
        c.batch_execute(&format!("SET search_path = {DB}"))
            .await
            .unwrap();
        c
    }

    async fn as_tenant(&self, shard: &str) -> tokio_postgres::Client {
        common::connect_as(&self.pgs[shard], DB, &self.password, DB)
            .await
            .unwrap()
    }

    async fn keyspace(&self) -> KeyspaceInfo {
        let a = self.st.admin("GET", "/v1/keyspaces/ks", None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    async fn map(&self) -> ShardMap {
        to_map(&self.keyspace().await)
    }

    async fn start(&self, kind: &str, source: &str, targets: &[&str]) -> JobInfo {
        let body = serde_json::json!({"keyspace": "ks", "kind": kind, "source": source,
            "targets": targets});
        let a = self
            .st
            .admin("POST", "/v1/reshard", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    async fn job(&self, id: &str) -> JobInfo {
        let a = self
            .st
            .admin("GET", &format!("/v1/reshard/{id}"), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    async fn wait_job(&self, id: &str, done: impl Fn(&JobInfo) -> bool) -> JobInfo {
        let deadline = Instant::now() + LIMIT;
        loop {
            let j = self.job(id).await;
            if done(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} stuck: {j:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every row of every shard holding some (`shard -> id -> v`).
    async fn rows(&self) -> BTreeMap<String, BTreeMap<String, i64>> {
        let mut out = BTreeMap::new();
        for (id, pg) in &self.pgs {
            if !common::database_exists(pg, DB).await {
                continue;
            }
            let c = self.db(id).await;
            let rows = c.query("SELECT id, v FROM items", &[]).await.unwrap();
            if !rows.is_empty() {
                out.insert(
                    id.clone(),
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
                );
            }
        }
        out
    }

    /// Asserts each row lives once, on the shard owning its key by `map`
    /// (PostgreSQL's own hash decides), and equals `expected`.
    async fn assert_placed(&self, map: &ShardMap, expected: &BTreeMap<String, i64>) {
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        for (shard, rows) in self.rows().await {
            let owned: Vec<KeyRange> = map.ranges_of(&shard).collect();
            let c = self.db(&shard).await;
            let preds: Vec<String> = owned
                .iter()
                .map(|r| sql_in_range(KeyType::Text, "id", r))
                .collect();
            let inside = if preds.is_empty() {
                "false".into()
            } else {
                preds.join(" OR ")
            };
            let stray: i64 = c
                .query_one(
                    &format!("SELECT count(*) FROM items WHERE NOT ({inside})"),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(stray, 0, "rows on {shard} outside its ranges");
            for (id, v) in rows {
                assert!(seen.insert(id.clone(), v).is_none(), "{id} twice");
            }
        }
        assert_eq!(seen.len(), expected.len(), "row count");
        let diff: Vec<_> = expected
            .iter()
            .filter(|(k, v)| seen.get(*k) != Some(v))
            .take(5)
            .collect();
        assert!(diff.is_empty(), "rows differ (expected, first 5): {diff:?}");
    }

    async fn changes_objects(&self, shard: &str) -> i64 {
        let c = self.db(shard).await;
        c.query_one(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'shardline_reshard_capture') \
             + (SELECT count(*) FROM pg_class WHERE relname = 'reshard_changes')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    }
}

fn to_map(ks: &KeyspaceInfo) -> ShardMap {
    ShardMap::new(
        ks.map
            .iter()
            .map(|r| ShardRange {
                range: KeyRange::parse(&r.range).unwrap(),
                shard: r.shard.clone(),
            })
            .collect(),
    )
    .unwrap()
}

fn hash(key: &str) -> u64 {
    routing_hash(ShardKey::Text(key))
}

/// A key whose routing hash is in `range`.
fn key_in(range: &KeyRange, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| range.contains(hash(k)))
        .unwrap()
}

/// Writes like a client through a router: reads the map before each
/// write, waits while the key's range is frozen, retries on SLM01.
struct Writer {
    stop: CancellationToken,
    ops: Arc<AtomicU64>,
    moved_errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<BTreeMap<String, i64>>,
}

async fn start_writer(env: Arc<Env>, rows: usize) -> Writer {
    let stop = CancellationToken::new();
    let ops = Arc::new(AtomicU64::new(0));
    let moved_errors = Arc::new(AtomicU64::new(0));
    let mut model: BTreeMap<String, i64> =
        (1..=rows).map(|i| (format!("k{i}"), i as i64)).collect();
    let (s, o, m) = (stop.clone(), ops.clone(), moved_errors.clone());
    let task = tokio::spawn(async move {
        let mut conns: HashMap<(String, bool), tokio_postgres::Client> = HashMap::new();
        let mut n: u64 = 0;
        while !s.is_cancelled() {
            n += 1;
            let (sql, key, delta): (&str, String, Option<i64>) = match n % 3 {
                0 => ("INSERT INTO items VALUES ($1, $2)", format!("n{n}"), None),
                1 => (
                    "UPDATE items SET v = v + 1 WHERE id = $1",
                    format!("k{}", n * 7919 % rows as u64 + 1),
                    Some(1),
                ),
                _ => (
                    "DELETE FROM items WHERE id = $1",
                    format!("k{}", n * 104_729 % rows as u64 + 1),
                    None,
                ),
            };
            let as_role = n.is_multiple_of(2);
            let mut tries = 0;
            let affected = loop {
                tries += 1;
                assert!(tries < 500, "write to {key} kept failing");
                let ks = env.keyspace().await;
                let h = hash(&key);
                if ks
                    .frozen
                    .iter()
                    .any(|r| KeyRange::parse(r).unwrap().contains(h))
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let owner = to_map(&ks).lookup(h).shard.clone();
                let ck = (owner.clone(), as_role);
                if !conns.contains_key(&ck) {
                    let c = if as_role {
                        env.as_tenant(&owner).await
                    } else {
                        env.db(&owner).await
                    };
                    conns.insert(ck.clone(), c);
                }
                let c = &conns[&ck];
                let res = if sql.starts_with("INSERT") {
                    c.execute(sql, &[&key, &(n as i64)]).await
                } else {
                    c.execute(sql, &[&key]).await
                };
                match res {
                    Ok(a) => break a,
                    Err(e) if sqlstate(&e) == Some("SLM01") => {
                        m.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("{sql} {key} on {owner}: {e:?}"),
                }
            };
            let present = model.contains_key(&key);
            if sql.starts_with("INSERT") {
                assert_eq!(affected, 1);
                model.insert(key, n as i64);
            } else {
                assert_eq!(
                    affected,
                    u64::from(present),
                    "{sql} {key}: the row's presence"
                );
                if delta.is_some() {
                    if let Some(v) = model.get_mut(&key) {
                        *v += 1;
                    }
                } else {
                    model.remove(&key);
                }
            }
            o.fetch_add(1, Ordering::Relaxed);
        }
        model
    });
    Writer {
        stop,
        ops,
        moved_errors,
        task,
    }
}

fn small_batches(c: &mut ManagerConfig) {
    c.reshard_batch_rows = 200;
    c.reshard_batch_pause = Duration::from_millis(20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_merge_and_move_while_writing() {
    let rows = 20_000;
    let env = Arc::new(Env::setup(2, 3, rows, small_batches).await);
    let before = env.map().await;
    assert_eq!(before.shards(), ["s0", "s1"]);
    let writer = start_writer(Arc::clone(&env), rows).await;

    // Split s1 (80-) onto s2: s2 takes c0-.
    let t0 = Instant::now();
    let job = env.start("split", "s1", &["s2"]).await;
    assert_eq!(job.moves[0].range, "c0-");
    let copy = env
        .wait_job(&job.id, |j| {
            j.phase >= ReshardPhase::Copy && j.rows_copied > 0
        })
        .await;
    let ops_in_copy = writer.ops.load(Ordering::Relaxed);
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    let elapsed = t0.elapsed();
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let during = writer.ops.load(Ordering::Relaxed) - ops_in_copy;
    assert!(during > 0, "writes went on during the job");
    println!(
        "split: {} rows copied (estimated {}) in {elapsed:?} ({:.0} rows/s overall), cutover pause {:?} ms, {} writes during, {} SLM01 retries; copy seen at {} rows",
        done.rows_copied,
        done.rows_estimated,
        done.rows_copied as f64 / elapsed.as_secs_f64(),
        done.cutover_pause_ms,
        during,
        writer.moved_errors.load(Ordering::Relaxed),
        copy.rows_copied
    );
    assert!(done.rows_copied >= done.rows_estimated / 2 && done.rows_estimated > 0);
    let after = env.map().await;
    assert_eq!(after.lookup(u64::MAX).shard, "s2");
    assert_eq!(env.keyspace().await.frozen, Vec::<String>::new());
    assert_eq!(env.changes_objects("s1").await, 0, "capture dropped");
    // A write to a moved key on the source: refused, retryable.
    let moved = key_in(&KeyRange::parse("c0-").unwrap(), "moved-");
    let e = env
        .as_tenant("s1")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&moved])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("SLM01"), "{e:?}");
    // Keys s1 kept are still writable there.
    let kept = key_in(&KeyRange::parse("80-c0").unwrap(), "kept-");
    env.as_tenant("s1")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&kept])
        .await
        .unwrap();
    env.as_tenant("s1")
        .await
        .execute("DELETE FROM items WHERE id = $1", &[&kept])
        .await
        .unwrap();

    // Merge s2 back into s1.
    let job = env.start("merge", "s2", &["s1"]).await;
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    println!(
        "merge: {} rows, cutover pause {:?} ms",
        done.rows_copied, done.cutover_pause_ms
    );
    let merged = env.map().await;
    assert_eq!(merged, before);
    let a = env.st.admin("GET", "/v1/shards/s2", None).await;
    assert_eq!(
        a.json()["keyspace"],
        serde_json::Value::Null,
        "s2 left: {}",
        a.body
    );

    // Move all of s1 to s2.
    let job = env.start("move", "s1", &["s2"]).await;
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    println!(
        "move: {} rows, cutover pause {:?} ms",
        done.rows_copied, done.cutover_pause_ms
    );
    let moved_map = env.map().await;
    assert_eq!(moved_map.shards(), ["s0", "s2"]);

    writer.stop.cancel();
    let model = writer.task.await.unwrap();
    env.assert_placed(&moved_map, &model).await;
    assert!(!env.rows().await.contains_key("s1"), "nothing left on s1");
    let metrics = env.st.metrics().await;
    assert!(
        metrics.contains("reshard_rows_copied_total{job="),
        "{metrics}"
    );
    assert!(metrics.contains("reshard_phase{job="), "{metrics}");
    let list = env.st.admin("GET", "/v1/reshard", None).await;
    assert_eq!(list.json().as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_copy_leaves_the_source_as_it_was() {
    let env = Env::setup(1, 2, 5_000, |c| {
        c.reshard_batch_rows = 50;
        c.reshard_batch_pause = Duration::from_millis(50);
    })
    .await;
    let before = env.rows().await;
    let map = env.map().await;
    let job = env.start("split", "s0", &["s1"]).await;
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    let a = env
        .st
        .admin("POST", &format!("/v1/reshard/{}/cancel", job.id), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j: JobInfo = serde_json::from_str(&a.body).unwrap();
    assert_eq!(j.phase, ReshardPhase::Cancelled);
    assert_eq!(env.rows().await, before, "source unchanged, target empty");
    assert!(!before.contains_key("s1"));
    assert_eq!(env.changes_objects("s0").await, 0);
    assert_eq!(env.map().await, map);
    // Again: 409; unknown: 404; bad bodies: 400.
    let a = env
        .st
        .admin("POST", &format!("/v1/reshard/{}/cancel", job.id), None)
        .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (409, "conflict"),
        "{}",
        a.body
    );
    let a = env.st.admin("POST", "/v1/reshard/nope/cancel", None).await;
    assert_eq!(a.status, 404, "{}", a.body);
    for body in [
        r#"{"kind": "split"}"#,
        r#"{"kind": "zap", "source": "s0", "targets": []}"#,
        "[",
    ] {
        let a = env.st.admin("POST", "/v1/reshard", Some(body)).await;
        assert_eq!(a.status, 400, "{body}: {}", a.body);
    }
    let body = r#"{"keyspace": "ks", "kind": "split", "source": "s0", "targets": ["s0"]}"#;
    let a = env.st.admin("POST", "/v1/reshard", Some(body)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = env
        .st
        .admin(
            "PUT",
            "/v1/keyspaces/ks/tables/nope",
            Some(r#"{"shard_key": "id"}"#),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = env
        .st
        .admin(
            "PUT",
            "/v1/keyspaces/ks/tables/items",
            Some(r#"{"shard_key": "v"}"#),
        )
        .await;
    assert_eq!(
        a.status, 400,
        "a bigint column is no text shard key: {}",
        a.body
    );
    // A table without a shard key blocks a job.
    env.db("s0")
        .await
        .batch_execute("CREATE TABLE tenant_acme.loose (id int)")
        .await
        .unwrap();
    let body = r#"{"keyspace": "ks", "kind": "split", "source": "s0", "targets": ["s1"]}"#;
    let a = env.st.admin("POST", "/v1/reshard", Some(body)).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("loose"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_mismatch_aborts_the_cutover() {
    let env = Env::setup(1, 2, 3_000, |c| {
        c.reshard_batch_rows = 100;
        c.reshard_batch_pause = Duration::from_millis(30);
    })
    .await;
    let before = env.rows().await;
    let job = env.start("split", "s0", &["s1"]).await;
    let moving = KeyRange::parse(&job.moves[0].range).unwrap();
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    // A row that is on the target only.
    let extra = key_in(&moving, "extra-");
    env.db("s1")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&extra])
        .await
        .unwrap();
    let failed = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(failed.phase, ReshardPhase::Failed, "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("verification failed") && error.contains("items"),
        "{error}"
    );
    println!("verification error: {error}");
    let ks = env.keyspace().await;
    assert!(ks.frozen.is_empty());
    assert_eq!(
        to_map(&ks).shards(),
        ["s0"],
        "the source still owns everything"
    );
    assert_eq!(
        env.rows().await,
        before,
        "copies (and the stray row) removed"
    );
    // The source takes writes to the range again.
    let k = key_in(&moving, "after-");
    env.as_tenant("s0")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&k])
        .await
        .unwrap();
    assert_eq!(env.changes_objects("s0").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_waits_for_a_silent_router_until_its_lease_ends() {
    let lease = Duration::from_secs(2);
    // Default batches, no throttle: the copy rate is printed too.
    let env = Env::setup(1, 2, 40_000, |c| c.router_lease = lease).await;
    let hb = async {
        http(
            env.st.addr(),
            "POST",
            "/v1/routers/heartbeat",
            Some(ROUTER_TOKEN),
            Some(r#"{"id": "r1", "address": "x", "applied_version": 0}"#),
        )
        .await
    };
    assert_eq!(hb.await.status, 200);
    let t0 = Instant::now();
    let job = env.start("split", "s0", &["s1"]).await;
    let copied = env
        .wait_job(&job.id, |j| j.phase > ReshardPhase::Copy)
        .await;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "copy (prepare included): {} rows in {secs:.2}s = {:.0} rows/s",
        copied.rows_copied,
        copied.rows_copied as f64 / secs
    );
    // The router stays alive (never applying anything) until it sees the
    // freeze, then falls silent.
    let deadline = Instant::now() + LIMIT;
    loop {
        let a = http(
            env.st.addr(),
            "POST",
            "/v1/routers/heartbeat",
            Some(ROUTER_TOKEN),
            Some(r#"{"id": "r1", "address": "x", "applied_version": 0}"#),
        )
        .await;
        assert_eq!(a.status, 200);
        if !env.keyspace().await.frozen.is_empty() {
            break;
        }
        assert!(
            env.job(&job.id).await.phase < ReshardPhase::Cleanup,
            "cut over without waiting"
        );
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let pause = done.cutover_pause_ms.unwrap();
    println!("cutover pause with a silent router (lease {lease:?}): {pause} ms");
    assert!(pause >= 1_500, "waited for the lease: {pause} ms");
}

/// Tells [`reshard_failpoint_child`] which catalog to run a manager on.
const CHILD_CATALOG: &str = "SHARDLINE_TEST_RESHARD_CATALOG";
const SIGABRT: i32 = 6;

/// Not a test by itself: the manager process of the failpoint tests.
#[test]
fn reshard_failpoint_child() {
    let Ok(path) = std::env::var(CHILD_CATALOG) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ManagerConfig::new(path.into(), ADMIN_TOKEN, ROUTER_TOKEN);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.reshard_batch_rows = 100;
        let run = shardline_manager::run(cfg, CancellationToken::new());
        let _ = tokio::time::timeout(LIMIT, run).await;
    });
}

/// Sets up a split of `s0` onto `s1`, records the job with the manager
/// stopped, runs a manager process that aborts at `failpoint`, then
/// starts a manager again and lets it finish.
async fn crash_and_resume(failpoint: &str, expect: ReshardPhase) {
    let rows = 3_000;
    let mut env = Env::setup(1, 2, rows, |_| {}).await;
    let before = env.rows().await;
    env.st.stop().await;
    let snap = env.st.store.snapshot("").await.unwrap();
    let cat = Catalog::from_entries(
        snap.revision,
        snap.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice())),
    )
    .unwrap();
    let req = ReshardRequest {
        keyspace: "ks".into(),
        kind: ReshardKind::Split,
        source: "s0".into(),
        targets: vec!["s1".into()],
        at: vec![],
    };
    let job = plan_job(&cat, &req, "rs-crash").unwrap();
    let key = keys::job(&job.id);
    env.st
        .store
        .txn(
            &[Precondition::Absent(key.clone())],
            &[Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&job).unwrap(),
            }],
        )
        .await
        .unwrap();
    let Env { st, pgs, password } = env;
    let dir = st.close().await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "reshard_failpoint_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_CATALOG, catalog_path(dir.path()))
        .env(FAILPOINT_ENV, failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "aborted at {failpoint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut st = Stack::open(dir).await;
    let e = st.store.get(&key).await.unwrap().unwrap();
    let left: ReshardJob = serde_json::from_slice(&e.value).unwrap();
    assert_eq!(left.phase, expect);
    let env = Env {
        st: {
            st.start().await;
            st
        },
        pgs,
        password,
    };
    let moving = job.moves[0].range;
    if expect == ReshardPhase::Cutover {
        // The crash left the range frozen and the source refusing it.
        assert_eq!(env.keyspace().await.frozen, [moving.to_string()]);
    }
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let map = env.map().await;
    assert_eq!(map.lookup(u64::MAX).shard, "s1");
    let expected: BTreeMap<String, i64> = before
        .values()
        .flatten()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(expected.len(), rows);
    env.assert_placed(&map, &expected).await;
    let k = key_in(&moving, "late-");
    let e = env
        .as_tenant("s0")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&k])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("SLM01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_copy() {
    crash_and_resume(FAILPOINT_AFTER_COPY, ReshardPhase::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_cutover() {
    crash_and_resume(FAILPOINT_DURING_CUTOVER, ReshardPhase::Cutover).await;
}
