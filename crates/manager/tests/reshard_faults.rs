//! Failure injection for online resharding, on real PostgreSQL shards:
//! the target down during the copy, the manager killed during catch-up
//! (a failpoint in a child manager process), the source primary failing
//! over during the copy, and a cancel in each phase before the publish
//! (refused once the new map is out). Afterwards every row is checked to
//! live exactly once on its owner by the published map, or, for a
//! cancelled job, to be back on the source alone.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::reshard::{crash_and_resume_with, failpoint_child, key_in, stuck_router, Env, LIMIT};
use common::{http, sqlstate};
use shardline_api::manager::JobInfo;
use shardline_core::catalog::ReshardPhase;
use shardline_core::hash::routing_hash;
use shardline_core::{KeyRange, KeyType, ShardKey, ShardMap};
use shardline_manager::reshard::sql;
use shardline_manager::reshard::{FAILPOINT_DURING_CATCHUP, FAILPOINT_DURING_COPY};
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

/// Every row of every shard, keyed by id (each must be on one shard).
async fn all_rows(env: &Env) -> BTreeMap<String, i64> {
    env.rows().await.into_values().flatten().collect()
}

/// `n` keys whose routing hash is in `range`.
fn keys_in(range: &KeyRange, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| range.contains(routing_hash(ShardKey::Text(k))))
        .take(n)
        .collect()
}

/// Writes to the moving range on `shard` as superuser: inserts `new`,
/// bumps ten existing rows of the range and deletes ten others; applies
/// the same to `model`.
async fn write_range(
    env: &Env,
    shard: &str,
    range: &KeyRange,
    new: &[String],
    model: &mut BTreeMap<String, i64>,
) {
    let c = env.db(shard).await;
    for k in new {
        c.execute("INSERT INTO items VALUES ($1, 7)", &[k])
            .await
            .unwrap();
        model.insert(k.clone(), 7);
    }
    let inside: Vec<String> = model
        .keys()
        .filter(|k| k.starts_with('k') && range.contains(routing_hash(ShardKey::Text(k))))
        .take(20)
        .cloned()
        .collect();
    assert_eq!(inside.len(), 20);
    for k in &inside[..10] {
        let n = c
            .execute("UPDATE items SET v = v + 100 WHERE id = $1", &[k])
            .await
            .unwrap();
        assert_eq!(n, 1);
        *model.get_mut(k).unwrap() += 100;
    }
    for k in &inside[10..] {
        let n = c
            .execute("DELETE FROM items WHERE id = $1", &[k])
            .await
            .unwrap();
        assert_eq!(n, 1);
        model.remove(k);
    }
}

/// Splits s0 onto s1 and, once the copy is under way, writes to the
/// moving range (10 new keys starting with `prefix`, updates, deletes;
/// `model` follows). The job.
async fn split_writing_in_copy(
    env: &Env,
    prefix: &str,
    model: &mut BTreeMap<String, i64>,
) -> JobInfo {
    let job = env.start("split", "s0", &["s1"]).await;
    let moving = KeyRange::parse(&job.moves[0].range).unwrap();
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    write_range(env, "s0", &moving, &keys_in(&moving, prefix, 10), model).await;
    job
}

/// A cancel sent now, answered when the job lets go.
fn cancel_in_background(env: &Env, id: &str) -> tokio::task::JoinHandle<common::Answer> {
    let addr = env.st.addr();
    let path = format!("/v1/reshard/{id}/cancel");
    tokio::spawn(async move { http(addr, "POST", &path, Some(common::ADMIN_TOKEN), None).await })
}

/// Names of the non-internal triggers on `items` on a shard.
async fn triggers(env: &Env, shard: &str) -> Vec<String> {
    let c = env.db(shard).await;
    let rows = c
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal \
             AND tgrelid = 'items'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn cancel(env: &Env, id: &str) -> common::Answer {
    env.st
        .admin("POST", &format!("/v1/reshard/{id}/cancel"), None)
        .await
}

/// After a cancel: the job Cancelled, nothing frozen, the map as before,
/// `s0` holding exactly `expected` and the target nothing, no capture
/// left on the source (refuse and fence triggers may stay by design,
/// refusing nothing the source owns nor any up-to-date router's write),
/// and the source taking writes to the range.
async fn assert_undone(env: &Env, job: &JobInfo, map: &ShardMap, expected: &BTreeMap<String, i64>) {
    let j = env.job(&job.id).await;
    assert_eq!(j.phase, ReshardPhase::Cancelled, "{j:?}");
    let ks = env.keyspace().await;
    assert!(ks.frozen.is_empty(), "{:?}", ks.frozen);
    assert_eq!(&env.map().await, map);
    let rows = env.rows().await;
    assert!(!rows.contains_key("s1"), "the target range is empty");
    assert_eq!(rows.get("s0"), Some(expected), "the source as it was");
    assert_eq!(env.changes_objects("s0").await, 0, "capture removed");
    for t in triggers(env, "s0").await {
        assert!(
            ["shardline_reshard_fence", "shardline_reshard_refuse"].contains(&t.as_str()),
            "trigger {t} left on the source"
        );
    }
    let moving = KeyRange::parse(&job.moves[0].range).unwrap();
    let k = key_in(&moving, "after-cancel-");
    let c = env.as_tenant("s0").await;
    c.execute("INSERT INTO items VALUES ($1, 1)", &[&k])
        .await
        .unwrap();
    c.execute("DELETE FROM items WHERE id = $1", &[&k])
        .await
        .unwrap();
    let a = cancel(env, &job.id).await;
    assert_eq!(a.status, 409, "cancel again: {}", a.body);
}

fn slow_copy(c: &mut shardline_manager::ManagerConfig) {
    c.reshard_batch_rows = 50;
    c.reshard_batch_pause = Duration::from_millis(30);
    c.connect_timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_down_during_copy_delays_the_job_only() {
    let mut env = Env::setup(1, 2, 6_000, slow_copy).await;
    let before = all_rows(&env).await;
    let job = env.start("split", "s0", &["s1"]).await;
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    env.pgs.get_mut("s1").unwrap().kill9().await;
    // The job notices, keeps its phase and retries; the source is intact.
    let j = env.wait_job(&job.id, |j| j.error.is_some()).await;
    assert!(j.phase <= ReshardPhase::Copy, "{j:?}");
    assert!(j.error.as_deref().unwrap_or("").contains("s1"), "{j:?}");
    let src: BTreeMap<String, i64> = env
        .db("s0")
        .await
        .query("SELECT id, v FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(src, before, "the source keeps everything");
    assert_eq!(env.map().await.shards(), ["s0"]);
    // Back (a killed postmaster's backends may take a moment to go).
    let mut up = false;
    for _ in 0..20 {
        if env.pgs.get_mut("s1").unwrap().restart().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(up, "s1 restarts");
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let map = env.map().await;
    assert_eq!(map.shards(), ["s0", "s1"]);
    env.assert_placed(&map, &before).await;
    let a = cancel(&env, &job.id).await;
    assert_eq!(a.status, 409, "{}", a.body);
}

/// Not a test by itself: the manager process of the failpoint test.
#[test]
fn reshard_failpoint_child() {
    failpoint_child();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_catch_up() {
    crash_and_resume_with(FAILPOINT_DURING_CATCHUP, ReshardPhase::CatchUp, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_the_middle_of_the_copy() {
    crash_and_resume_with(FAILPOINT_DURING_COPY, ReshardPhase::Copy, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_failing_over_during_copy_loses_nothing() {
    let mut env = Env::setup_with_replica(1, 2, 6_000, true, |c| {
        slow_copy(c);
        c.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let mut expected = all_rows(&env).await;
    let job = env.start("split", "s0", &["s1"]).await;
    let moving = KeyRange::parse(&job.moves[0].range).unwrap();
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    // Changes captured on the primary reach the replica, change table
    // and all, before the primary dies.
    let new = keys_in(&moving, "f", 20);
    write_range(&env, "s0", &moving, &new, &mut expected).await;
    let lsn: String = env
        .db("s0")
        .await
        // The insert position: with the tests' asynchronous commits the
        // last commits may not be written (nor sent) yet; waiting for the
        // replica to replay past them makes the kill lose nothing
        // acknowledged here.
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let replica = env.replicas.remove("s0").unwrap();
    let r = common::connect_db(&replica, &env.pg_name).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let replayed: bool = r
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await
            .unwrap()
            .get(0);
        if replayed {
            break;
        }
        assert!(Instant::now() < deadline, "the replica catches up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let captured: i64 = r
        .query_one("SELECT count(*) FROM shardline.reshard_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert!(captured > 0, "the change table is replicated");
    drop(r);
    let j = env.job(&job.id).await;
    assert_eq!(j.phase, ReshardPhase::Copy, "killed during the copy: {j:?}");
    let mut old = env.pgs.insert("s0".into(), replica).unwrap();
    old.kill9().await;
    let failed_over = env
        .st
        .wait_shard("s0", LIMIT, |s| s.generation > 1 && s.failover.is_none())
        .await;
    assert!(failed_over.is_some(), "s0 fails over");
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let map = env.map().await;
    assert_eq!(map.shards(), ["s0", "s1"]);
    env.assert_placed(&map, &expected).await;
    assert_eq!(env.changes_objects("s0").await, 0);
    drop(old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_prepare() {
    let env = Env::setup(1, 2, 2_000, |c| {
        c.connect_timeout = Duration::from_secs(10);
    })
    .await;
    let before = all_rows(&env).await;
    let map = env.map().await;
    // The target hangs: Prepare waits on it.
    env.pgs["s1"].pause();
    let job = env.start("split", "s0", &["s1"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.job(&job.id).await.phase, ReshardPhase::Prepare);
    let pending = cancel_in_background(&env, &job.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.pgs["s1"].resume();
    let a = pending.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_undone(&env, &job, &map, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_copy() {
    let env = Env::setup(1, 2, 5_000, slow_copy).await;
    let mut expected = all_rows(&env).await;
    let map = env.map().await;
    let job = split_writing_in_copy(&env, "c", &mut expected).await;
    let a = cancel(&env, &job.id).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_undone(&env, &job, &map, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_catch_up() {
    let env = Env::setup(1, 2, 4_000, slow_copy).await;
    let mut expected = all_rows(&env).await;
    let map = env.map().await;
    let job = split_writing_in_copy(&env, "u", &mut expected).await;
    // Catch-up blocks reading the change table while this lock is held.
    let mut locker = env.db("s0").await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE shardline.reshard_changes IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    env.wait_job(&job.id, |j| j.phase == ReshardPhase::CatchUp)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.job(&job.id).await.phase, ReshardPhase::CatchUp);
    let pending = cancel_in_background(&env, &job.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.rollback().await.unwrap();
    let a = pending.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_undone(&env, &job, &map, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_cutover() {
    // A router that never acknowledges holds the cutover for its lease.
    let env = Env::setup(1, 2, 2_000, |c| c.router_lease = Duration::from_secs(20)).await;
    let expected = all_rows(&env).await;
    let map = env.map().await;
    let stop = CancellationToken::new();
    let router = stuck_router(env.st.addr(), "r1", stop.clone());
    let job = env.start("split", "s0", &["s1"]).await;
    let deadline = Instant::now() + LIMIT;
    while env.keyspace().await.frozen.is_empty() {
        assert!(Instant::now() < deadline, "the range freezes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(env.job(&job.id).await.phase, ReshardPhase::Cutover);
    // Frozen: the source refuses writes to the range.
    let k = key_in(&KeyRange::parse(&job.moves[0].range).unwrap(), "frozen-");
    let e = env
        .as_tenant("s0")
        .await
        .execute("INSERT INTO items VALUES ($1, 1)", &[&k])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("SLM01"), "{e:?}");
    let a = cancel(&env, &job.id).await;
    assert_eq!(a.status, 200, "{}", a.body);
    stop.cancel();
    router.await.unwrap();
    assert_undone(&env, &job, &map, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_the_publish_is_refused() {
    let env = Env::setup(1, 2, 2_000, |c| c.router_lease = Duration::from_secs(2)).await;
    let expected = all_rows(&env).await;
    let stop = CancellationToken::new();
    let router = stuck_router(env.st.addr(), "r1", stop.clone());
    let job = env.start("split", "s0", &["s1"]).await;
    let deadline = Instant::now() + LIMIT;
    while env.keyspace().await.frozen.is_empty() {
        assert!(Instant::now() < deadline, "the range freezes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Cleanup blocks dropping the capture trigger while this lock is held
    // (reads, as the verification's, go on).
    let mut locker = env.db("s0").await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE items IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let j = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Cleanup)
        .await;
    assert_eq!(j.phase, ReshardPhase::Cleanup, "{j:?}");
    let a = cancel(&env, &job.id).await;
    a.assert_conflict();
    assert!(a.body.contains("cut over"), "{}", a.body);
    tx.rollback().await.unwrap();
    stop.cancel();
    router.await.unwrap();
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let map = env.map().await;
    assert_eq!(map.shards(), ["s0", "s1"]);
    env.assert_placed(&map, &expected).await;
    assert_eq!(
        triggers(&env, "s0").await,
        ["shardline_reshard_fence", "shardline_reshard_refuse"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_moving_the_key_between_two_moving_ranges_is_a_delete_and_an_insert() {
    // A table whose primary key omits the shard key: an UPDATE keeps the
    // row's primary key while its shard key goes from a range moving to
    // one target to a range moving to another. The first target, which
    // has the row from the copy, must lose it.
    let pg = PgCluster::start().await.unwrap();
    let c = common::connect_db(&pg, "postgres").await;
    c.batch_execute(
        "CREATE SCHEMA t; CREATE TABLE t.acc (id bigint PRIMARY KEY, owner text NOT NULL, v int)",
    )
    .await
    .unwrap();
    let meta = sql::table_meta(&c, "t", "acc", "owner").await.unwrap();
    let a = KeyRange::new(0, Some(1 << 63)).unwrap();
    let b = KeyRange::new(1 << 63, None).unwrap();
    sql::install_capture(&c, "j", &meta, KeyType::Text, &[a, b])
        .await
        .unwrap();
    let (ka, kb) = (key_in(&a, "a-"), key_in(&b, "b-"));
    c.execute("INSERT INTO t.acc VALUES (1, $1, 1)", &[&ka])
        .await
        .unwrap();
    // As after a catch-up batch: the first target has the row.
    c.batch_execute("DELETE FROM shardline.reshard_changes")
        .await
        .unwrap();
    c.execute("UPDATE t.acc SET owner = $1, v = 2 WHERE id = 1", &[&kb])
        .await
        .unwrap();
    let changes = sql::read_changes(&c, "j", 100).await.unwrap();
    let metas = HashMap::from([("acc".to_string(), meta)]);
    let net = sql::net_changes(&changes, &metas, KeyType::Text, |h| {
        Some(if a.contains(h) { "ta" } else { "tb" }.to_string())
    })
    .unwrap();
    let of = |target: &str| {
        net.get(&(target.to_string(), "acc".to_string()))
            .map(|n| (n.deletes.len(), n.upserts.len()))
    };
    assert_eq!(of("ta"), Some((1, 0)), "the first target deletes the row");
    assert_eq!(of("tb"), Some((0, 1)), "the second target inserts it");
    // An update within one range, primary and shard key the same, stays
    // one upsert.
    c.batch_execute("DELETE FROM shardline.reshard_changes")
        .await
        .unwrap();
    c.execute("UPDATE t.acc SET v = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    let changes = sql::read_changes(&c, "j", 100).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.op.as_str()).collect::<Vec<_>>(),
        ["I"]
    );
}
