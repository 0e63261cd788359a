//! Online resharding end to end: a shard holding 200,000 rows in two
//! tables is split onto a new shard, then merged back; a tenant with
//! 200,000 rows moves to dedicated shards and back — while writers send
//! inserts, updates and deletes through the router the whole time. Every
//! acknowledged write changed exactly its one row (an UPDATE or DELETE
//! answering 0 rows is a lost row), writes answered 5xx or not at all stay
//! within what the router's design allows (see `writers::check_answers`), and after
//! each job every acknowledged write is present exactly once, on the shard
//! that owns its key by PostgreSQL's own hash, nothing of the moved range
//! is left on the source, and the longest write pause is printed. A
//! router cut off from the manager during a split (a real router behind
//! a proxy the test cuts) delays the cutover by its lease and afterwards
//! cannot write to the old shard.

mod common;
#[path = "reshard/writers.rs"]
mod writers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::link::Link;
use common::{Stack, StackOptions};
use serde_json::json;
use shardline_api::manager::{JobInfo, ReshardKind, ReshardPhase, ReshardRequest, TableSpec};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{RetryPolicy, RouterClient};
use shardline_core::hash::sql_routing_hash;
use shardline_core::{KeyRange, KeyType, ShardKey};
use writers::{check_answers, writer, Answers, Truth, WRITERS};

const ACCOUNTS: i64 = 100_000;
const SCHEMA: &str = "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL, \
     note text NOT NULL DEFAULT ''); \
     CREATE TABLE events (id text PRIMARY KEY, account text NOT NULL, payload text NOT NULL)";

fn exec(sql: &str, key: &str, params: Vec<serde_json::Value>) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text(key.into()),
        sql: sql.into(),
        params,
        consistency: Default::default(),
    }
}

/// Every row of both tables on each shard, in the tenant database `db`:
/// (table:id, shard, routing hash as PostgreSQL computes it, balance).
async fn rows_by_shard(
    db: &str,
    shard_dsns: &BTreeMap<String, String>,
) -> Vec<(String, String, String, i64)> {
    let mut out = Vec::new();
    for (shard, dsn) in shard_dsns {
        if !has_database(dsn, db).await {
            continue;
        }
        let client = tenant_session(dsn, db).await;
        for (table, key, value) in [
            ("accounts", "id", "balance"),
            ("events", "account", "0::bigint"),
        ] {
            let hash = sql_routing_hash(KeyType::Text, key);
            let sql = format!("SELECT id, ({hash})::text, {value} FROM {table}");
            for row in client.query(&sql, &[]).await.unwrap() {
                out.push((
                    format!("{table}:{}", row.get::<_, String>(0)),
                    shard.clone(),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                ));
            }
        }
    }
    out
}

/// 200,000 rows (100,000 accounts, 100,000 events), loaded in the
/// tenant's database `db` as the tenant.
async fn load(dsn: &str, db: &str) {
    let load = tenant_session(dsn, db).await;
    load.batch_execute(&format!(
        "SET ROLE {db}; \
         INSERT INTO accounts (id, balance) SELECT 'acc-' || g, g FROM generate_series(0, {}) g; \
         INSERT INTO events (id, account, payload) \
           SELECT 'seed-' || g, 'acc-' || (g % {ACCOUNTS}), repeat('p', 40) FROM generate_series(0, {}) g; \
         ANALYZE accounts; ANALYZE events;",
        ACCOUNTS - 1,
        ACCOUNTS - 1
    ))
    .await
    .unwrap();
}

/// A superuser session in the tenant database `db` (the tenant's
/// `pg_name`) on the server at `dsn`, in the tenant's schema.
async fn tenant_session(dsn: &str, db: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("{dsn} dbname={db}"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path = {db}"))
        .await
        .unwrap();
    client
}

/// Whether the tenant database `db` exists on the server at `dsn`.
async fn has_database(dsn: &str, db: &str) -> bool {
    let (admin, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// The bank tables, with their shard-key columns declared.
async fn bank_schema(stack: &Stack) {
    stack.migrate("001_bank", SCHEMA).await;
    for (table, key) in [("accounts", "id"), ("events", "account")] {
        let spec = TableSpec {
            shard_key: key.into(),
        };
        stack
            .admin
            .set_table("default", table, &spec)
            .await
            .unwrap();
    }
}

/// Shard s0 of keyspace `default` split onto spare0 at the middle.
fn split_s0() -> ReshardRequest {
    ReshardRequest {
        keyspace: "default".into(),
        kind: ReshardKind::Split,
        source: "s0".into(),
        targets: vec!["spare0".into()],
        at: vec![],
        tenant: None,
        to_keyspace: None,
    }
}

async fn wait_job(stack: &Stack, job: &JobInfo) -> JobInfo {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "job {} not done in time", job.id);
        // While managers take over from one another, no one may answer.
        let Ok(j) = stack.admin.get_job(&job.id).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if matches!(
            j.phase,
            ReshardPhase::Done | ReshardPhase::Failed | ReshardPhase::Cancelled
        ) {
            return j;
        }
        assert!(Instant::now() < deadline, "job stuck in {:?}", j.phase);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one job under write load and checks every answer the writers got
/// (see [`check_answers`]).
async fn under_load(
    run: usize,
    stack: &Stack,
    token: &str,
    req: ReshardRequest,
    truth: &Arc<Mutex<Truth>>,
) -> JobInfo {
    under_load_with(run, stack, token, req, truth, async { Duration::ZERO }).await
}

/// The same, with `during` running beside the job from its start (faults
/// of the control plane); it returns how long the job's ranges may have
/// stayed frozen beyond the cutover pause the job reports (a leader that
/// crashed with them frozen), which widens the 503s allowed.
async fn under_load_with(
    run: usize,
    stack: &Stack,
    token: &str,
    req: ReshardRequest,
    truth: &Arc<Mutex<Truth>>,
    during: impl std::future::Future<Output = Duration>,
) -> JobInfo {
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Answers::default()));
    let router = RouterClient::new(&stack.router_url, Some(token.to_string()))
        .unwrap()
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(20));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                run,
                w,
                router.clone(),
                truth.clone(),
                answers.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let job = stack.admin.reshard(&req).await.expect("start job");
    let (done, frozen_longer) = tokio::join!(wait_job(stack, &job), during);
    // Seen done within a poll (100 ms) of its end.
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let t = truth.lock().unwrap();
    let f = answers.lock().unwrap();
    let copy_rate = done
        .copy_ms
        .map(|ms| format!("{:.0}", done.rows_copied as f64 * 1000.0 / ms.max(1) as f64));
    println!(
        "{:?} job {}: {:?} in {took:?} ({} rows copied, {:.0} rows/s over the whole job; \
         copy phase {:?} ms, {} rows/s), cutover pause {:?} ms; writers: {} writes acknowledged, each with rows_affected 1, \
         {} answered 5xx, {} not answered; longest write {:?}",
        done.kind,
        done.id,
        done.phase,
        done.rows_copied,
        done.rows_copied as f64 / took.as_secs_f64(),
        done.copy_ms,
        copy_rate.as_deref().unwrap_or("-"),
        done.cutover_pause_ms,
        f.one_row,
        f.server_errors.len(),
        f.unanswered.len(),
        t.longest
    );
    assert_eq!(done.phase, ReshardPhase::Done, "{:?}", done.error);
    let frozen = done.cutover_pause_ms.unwrap_or(0) + frozen_longer.as_millis() as u64;
    check_answers(&f, frozen);
    done
}

/// Checks the tenant's rows on every shard against the truth and the
/// keyspace's map.
async fn check(stack: &Stack, truth: &Truth, tenant: &str, keyspace: &str) {
    let ks = stack.admin.get_keyspace(keyspace).await.unwrap();
    let map: Vec<(KeyRange, String)> = ks
        .map
        .iter()
        .map(|r| (KeyRange::parse(&r.range).unwrap(), r.shard.clone()))
        .collect();
    let shards = stack.admin.list_shards().await.unwrap();
    let dsns: BTreeMap<String, String> = stack
        .shards
        .iter()
        .enumerate()
        .map(|(i, pg)| {
            let id = if i == 0 {
                "s0".to_string()
            } else {
                format!("spare{}", i - 1)
            };
            (id, pg.dsn())
        })
        .filter(|(id, _)| shards.iter().any(|s| &s.id == id))
        .collect();
    let rows = rows_by_shard(&stack.pg_name(tenant).await, &dsns).await;
    let mut seen: HashMap<String, (String, i64)> = HashMap::new();
    for (id, shard, hash, value) in rows {
        let h: u64 = hash.parse().unwrap();
        let owner = &map.iter().find(|(r, _)| r.contains(h)).unwrap().1;
        assert_eq!(
            &shard, owner,
            "{id} is on {shard} but its key belongs on {owner}"
        );
        assert!(
            seen.insert(id.clone(), (shard, value)).is_none(),
            "{id} is stored twice"
        );
    }
    for id in &truth.inserted {
        if truth.unknown.contains(id) {
            continue;
        }
        let present = seen.contains_key(&format!("accounts:{id}"));
        assert_eq!(present, !truth.deleted.contains(id), "account {id}");
    }
    for id in &truth.events {
        assert!(
            seen.contains_key(&format!("events:{id}")),
            "event {id} lost"
        );
    }
    for n in 0..ACCOUNTS {
        let id = format!("acc-{n}");
        if truth.unknown.contains(&id) {
            continue;
        }
        let want = n + truth.increments.get(&id).copied().unwrap_or(0);
        let got = seen.get(&format!("accounts:{id}")).map(|v| v.1);
        assert_eq!(got, Some(want), "balance of {id}");
    }
}

/// Three managers on etcd; the leader of a split crashes in the copy
/// (after its first batch reached the target), the next one crashes in
/// the cutover (with the ranges frozen), and a third completes the job:
/// every acknowledged write is there exactly once, on its owner, and no
/// write was answered other than as the router's design allows for the
/// time the ranges stayed frozen.
///
/// Control: before no-op catalog updates returned a catalog version
/// (architecture.md), the third leader waited a lease for routers with
/// the ranges frozen and this failed with 61 writes answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_completes_under_a_third_leader_after_two_crashed() {
    use shardline_manager::reshard::{FAILPOINT_DURING_COPY, FAILPOINT_DURING_CUTOVER};
    split_with_leaders_crashing(FAILPOINT_DURING_COPY, FAILPOINT_DURING_CUTOVER).await;
}

/// The same, with the leaders crashing in the catch-up (after a batch of
/// changes reached the target) and in the cleanup (after the first batch
/// of moved rows was deleted from the source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_completes_after_leaders_crash_in_catch_up_and_cleanup() {
    use shardline_manager::reshard::{FAILPOINT_DURING_CATCHUP, FAILPOINT_DURING_CLEANUP};
    split_with_leaders_crashing(FAILPOINT_DURING_CATCHUP, FAILPOINT_DURING_CLEANUP).await;
}

/// A split under writes whose first leader (m0) aborts at `first`, whose
/// second (m1, the only other manager running then) aborts at `second`,
/// and which a third (m2, started once m1 is gone) completes.
async fn split_with_leaders_crashing(first: &'static str, second: &'static str) {
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 1,
        etcd_managers: vec![Some(first), Some(second), None],
        ..StackOptions::default()
    })
    .await;
    let ha = stack.ha.as_ref().unwrap();
    // m1 follows from the start; m2 only once m1 is gone, so that m1 is
    // the one to take over from m0.
    ha.start(1);
    bank_schema(&stack).await;
    let db = stack.pg_name("default").await;
    load(&stack.shards[0].dsn(), &db).await;
    let truth = Arc::new(Mutex::new(Truth::default()));
    let faults = async {
        let limit = Duration::from_secs(120);
        assert!(
            ha.wait_exit(0, limit).await,
            "m0 did not crash at {first}: {}",
            ha.log(0)
        );
        let m0_died = Instant::now();
        assert!(
            ha.wait_exit(1, limit).await,
            "m1 did not crash at {second}: {}",
            ha.log(1)
        );
        let m1_died = Instant::now();
        ha.start(2);
        assert!(
            ha.wait_leader(2, limit).await,
            "m2 did not lead: {}",
            ha.log(2)
        );
        println!(
            "m0 crashed at {first}; m1 took over and crashed at {second} {:?} later; \
             m2 leads {:?} after that",
            m1_died - m0_died,
            m1_died.elapsed()
        );
        // Ranges frozen when m1 crashed stayed so until m2 resumed the
        // cutover (and m2's own pause is the job's).
        m1_died.elapsed()
    };
    let split = under_load_with(1, &stack, &stack.app_token, split_s0(), &truth, faults).await;
    assert_eq!(split.moves.len(), 1);
    // The copy's count outlives the manager that copied.
    assert!(split.rows_copied > 0, "rows copied: {}", split.rows_copied);
    let seen = truth.lock().unwrap().clone();
    check(&stack, &seen, "default", "default").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_then_merge_under_writes_loses_nothing() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 1,
        ..StackOptions::default()
    })
    .await;
    bank_schema(&stack).await;
    let db = stack.pg_name("default").await;
    load(&stack.shards[0].dsn(), &db).await;
    let truth = Arc::new(Mutex::new(Truth::default()));

    let split = under_load(1, &stack, &stack.app_token, split_s0(), &truth).await;
    assert_eq!(split.moves.len(), 1);
    let seen = truth.lock().unwrap().clone();
    check(&stack, &seen, "default", "default").await;
    // What the copy moved, in bytes of row data (the new shard holds the
    // moved rows plus the little written there since the cutover).
    let target = tenant_session(&stack.shards[1].dsn(), &db).await;
    let bytes: i64 = target
        .query_one(
            "SELECT ((SELECT coalesce(sum(pg_column_size(a.*)), 0) FROM accounts a) \
             + (SELECT coalesce(sum(pg_column_size(e.*)), 0) FROM events e))::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "split moved {:.1} MB of row data",
        bytes as f64 / 1_000_000.0
    );

    let merge = under_load(
        2,
        &stack,
        &stack.app_token,
        ReshardRequest {
            keyspace: "default".into(),
            kind: ReshardKind::Merge,
            source: "spare0".into(),
            targets: vec!["s0".into()],
            at: vec![],
            tenant: None,
            to_keyspace: None,
        },
        &truth,
    )
    .await;
    assert_eq!(merge.moves.len(), 1);
    let seen = truth.lock().unwrap().clone();
    check(&stack, &seen, "default", "default").await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_move_to_dedicated_shards_under_writes_loses_nothing() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 2,
        ..StackOptions::default()
    })
    .await;
    bank_schema(&stack).await;
    let acme = stack
        .tenant(shardline_api::manager::CreateTenantRequest {
            id: "acme".into(),
            ..Default::default()
        })
        .await;
    let db = stack.pg_name("acme").await;
    load(&stack.shards[0].dsn(), &db).await;
    // The default tenant's rows must not move.
    stack
        .router
        .execute(&exec(
            "INSERT INTO accounts (id, balance) VALUES ('stay', 7)",
            "stay",
            vec![],
        ))
        .await
        .unwrap();
    let truth = Arc::new(Mutex::new(Truth::default()));
    let job = under_load(
        1,
        &stack,
        &acme.token,
        ReshardRequest {
            keyspace: "default".into(),
            kind: ReshardKind::TenantMove,
            source: String::new(),
            targets: vec!["spare0".into(), "spare1".into()],
            at: vec![],
            tenant: Some("acme".into()),
            to_keyspace: None,
        },
        &truth,
    )
    .await;
    let seen = truth.lock().unwrap().clone();
    check(&stack, &seen, "acme", "acme").await;
    let t = stack.admin.get_tenant("acme").await.unwrap();
    assert_eq!((t.keyspace.as_str(), t.dedicated), ("acme", true));
    assert!(
        !has_database(&stack.shards[0].dsn(), &db).await,
        "acme's database is left on the shared shard"
    );
    let stay = stack
        .router
        .execute(&exec(
            "SELECT balance FROM accounts WHERE id = 'stay'",
            "stay",
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(stay.result.rows, vec![vec![json!(7)]]);
    println!("tenant move: {} moves", job.moves.len());

    // And back into the shared keyspace, still under writes.
    let back = under_load(
        2,
        &stack,
        &acme.token,
        ReshardRequest {
            keyspace: "acme".into(),
            kind: ReshardKind::TenantMove,
            source: String::new(),
            targets: vec![],
            at: vec![],
            tenant: Some("acme".into()),
            to_keyspace: Some("default".into()),
        },
        &truth,
    )
    .await;
    let seen = truth.lock().unwrap().clone();
    check(&stack, &seen, "acme", "default").await;
    let t = stack.admin.get_tenant("acme").await.unwrap();
    assert_eq!((t.keyspace.as_str(), t.dedicated), ("default", false));
    for pg in &stack.shards[1..] {
        assert!(
            !has_database(&pg.dsn(), &db).await,
            "acme's database is left on a former dedicated shard"
        );
    }
    println!("tenant move back: {} moves", back.moves.len());
    stack.stop().await;
}

/// One statement through the router at `url` as the default app.
async fn through(url: &str, token: &str, key: &str, sql: &str) -> common::Raw {
    common::raw(
        url,
        "POST",
        "/v1/execute",
        Some(token),
        &common::exec_body(key, sql, json!([key])),
        &[],
    )
    .await
}

/// The balance of account `id` in a tenant session on a shard (`None`:
/// no row).
async fn balance_on(db: &tokio_postgres::Client, id: &str) -> Option<i64> {
    db.query_opt("SELECT balance FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A second router, cut off from the manager (through a proxy) before a
/// split: the cutover waits for its lease, then goes on; afterwards that
/// router, still routing by the old map, cannot write to the old shard —
/// not an insert, nor an update or delete of a moved row (which no
/// longer exists there) — nor read a moved key there: each is answered
/// 503 (retryable) and nothing changes on either shard. Linked again, it follows the new map and the
/// same update lands on the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_cut_off_during_a_split_cannot_write_to_the_old_shard() {
    // Long enough that the split reaches its freeze well before the
    // silent router's lease runs out, even on a loaded machine (with 3 s,
    // of which up to 2 s may be gone at the cut, a slow copy reached the
    // freeze with under 500 ms left).
    let lease = Duration::from_secs(8);
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 1,
        router_lease: Some(lease),
        ..StackOptions::default()
    })
    .await;
    bank_schema(&stack).await;
    let token = stack.app_token.as_str();
    let ids: Vec<String> = (0..200).map(|i| format!("acct-{i}")).collect();
    for id in &ids {
        let sql = "INSERT INTO accounts (id, balance) VALUES ($1, 100)";
        let a = through(&stack.router_url, token, id, sql).await;
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let link = Link::to(&stack.manager_url).await;
    let (stale_url, stale_stop, stale_task) =
        common::start_router(&link.url, &StackOptions::default()).await;
    let stale = RouterClient::new(&stale_url, Some(stack.app_token.clone())).unwrap();
    assert!(common::wait_for_token(&stale).await);
    let a = through(
        &stale_url,
        token,
        &ids[0],
        "SELECT balance FROM accounts WHERE id = $1",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);

    link.set_cut(true);
    let job = stack.admin.reshard(&split_s0()).await.unwrap();
    let done = wait_job(&stack, &job).await;
    assert_eq!(done.phase, ReshardPhase::Done, "{:?}", done.error);
    let pause = done.cutover_pause_ms.unwrap();
    println!("split with a router cut off (lease {lease:?}): cutover pause {pause} ms");
    assert!(
        pause >= 500,
        "the cutover waited for the silent router: {pause} ms"
    );

    let moved = KeyRange::parse(&done.moves[0].range).unwrap();
    let is_moved =
        |id: &String| moved.contains(shardline_core::hash::routing_hash(ShardKey::Text(id)));
    let gone = ids.iter().find(|id| is_moved(id)).unwrap();
    let fresh = (0..1000)
        .map(|i| format!("new-{i}"))
        .find(|id| is_moved(id))
        .unwrap();
    let db = stack.pg_name("default").await;
    let old = tenant_session(&stack.shards[0].dsn(), &db).await;
    let new = tenant_session(&stack.shards[1].dsn(), &db).await;
    assert_eq!(
        balance_on(&old, gone).await,
        None,
        "cleaned up on the source"
    );
    assert_eq!(balance_on(&new, gone).await, Some(100));
    // Reads too: the router has not heard from the manager for longer
    // than its lease, so it checks the old shard's fence first.
    let write = "UPDATE accounts SET balance = balance + 1 WHERE id = $1";
    let remove = "DELETE FROM accounts WHERE id = $1";
    let add = "INSERT INTO accounts (id, balance) VALUES ($1, 7)";
    let read = "SELECT balance FROM accounts WHERE id = $1";
    let (update, delete, insert, select) = tokio::join!(
        through(&stale_url, token, gone, write),
        through(&stale_url, token, gone, remove),
        through(&stale_url, token, &fresh, add),
        through(&stale_url, token, gone, read),
    );
    for (what, a) in [
        ("update", &update),
        ("delete", &delete),
        ("insert", &insert),
        ("read", &select),
    ] {
        assert_eq!(a.status, 503, "{what}: {}", a.text);
        assert_eq!(
            a.body["error"]["code"], "shard_unavailable",
            "{what}: {}",
            a.text
        );
        assert_eq!(a.body["error"]["retryable"], true, "{what}: {}", a.text);
    }
    assert_eq!(balance_on(&old, gone).await, None);
    assert_eq!(balance_on(&new, gone).await, Some(100), "nothing changed");
    assert_eq!(balance_on(&old, &fresh).await, None);
    assert_eq!(balance_on(&new, &fresh).await, None);

    link.set_cut(false);
    let sql = "UPDATE accounts SET balance = balance + 1 WHERE id = $1 RETURNING balance";
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let followed = loop {
        let a = through(&stale_url, token, gone, sql).await;
        if a.status == 200 {
            break true;
        }
        last = a.text;
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(followed, "linked again, it follows the new map: {last:?}");
    let a = through(&stale_url, token, gone, read).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["rows"][0][0], 101, "{}", a.text);
    assert_eq!(balance_on(&new, gone).await, Some(101));
    assert_eq!(balance_on(&old, gone).await, None);
    stale_stop.cancel();
    let _ = stale_task.await;
    stack.stop().await;
}
