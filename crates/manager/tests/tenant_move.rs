//! Tenant move against real PostgreSQL shards and an in-process manager:
//! tenant `acme` leaves the shared keyspace `ks` (shards s0, s1, shared
//! with tenant `bee`) for a dedicated keyspace over s2 and s3 while a
//! writer keeps inserting, updating and deleting acme's rows directly in
//! its databases, following the catalog like a router (held while the
//! tenant is moving, retried on `SLM01` or a dropped database).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::reshard::{hash, small_batches, Env, TENANT};
use common::sqlstate;
use shardline_catalog::CatalogStore as _;
use shardline_core::catalog::{keys, Keyspace, ReshardPhase, Shard, Tenant};
use shardline_core::hash::sql_in_range;
use shardline_core::KeyType;
use tokio_util::sync::CancellationToken;

const OTHER: &str = "bee";

async fn stored<T: serde::de::DeserializeOwned>(env: &Env, key: &str) -> Option<T> {
    let e = env.st.store.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&e.value).unwrap())
}

/// Where acme's key lives now: `None` while the tenant is moving.
async fn owner_of(env: &Env, key: &str) -> Option<String> {
    let t: Tenant = stored(env, &keys::tenant(TENANT)).await.unwrap();
    if t.moving {
        return None;
    }
    let ks: Keyspace = stored(env, &keys::keyspace(&t.keyspace)).await.unwrap();
    Some(ks.map.unwrap().lookup(hash(key)).shard.clone())
}

/// Rows of `bee` per shard: (count, checksum).
async fn other_rows(env: &Env) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    let bee: Tenant = stored(env, &keys::tenant(OTHER)).await.unwrap();
    for s in ["s0", "s1"] {
        let c = common::tenant_db(&env.pgs[s], &bee).await;
        let sql = format!(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text \
             FROM {}.items t",
            bee.pg_name()
        );
        let r = c.query_one(&sql, &[]).await.unwrap();
        out.insert(s.to_string(), (r.get(0), r.get(1)));
    }
    out
}

/// Waits (bounded) until the writer has done 20 more operations; a
/// writer that stalls fails the test.
async fn a_few_more(ops: &AtomicU64) {
    let from = ops.load(Ordering::Relaxed);
    for _ in 0..2000 {
        if ops.load(Ordering::Relaxed) > from + 20 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the writer stalled: {} operations in 10 s",
        ops.load(Ordering::Relaxed) - from
    );
}

/// Counters shared with the writer.
#[derive(Clone, Default)]
struct Counts {
    ops: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

/// The writer: acme's rows, directly in its databases, until `stop`;
/// `model` is what acme holds, `n` the last operation number (inserted
/// keys are `n{n}`). Returns both, for a later writer to go on from.
fn spawn_writer(
    env: Arc<Env>,
    stop: CancellationToken,
    counts: Counts,
    rows: usize,
    mut model: BTreeMap<String, i64>,
    mut n: u64,
) -> tokio::task::JoinHandle<(BTreeMap<String, i64>, u64)> {
    let Counts { ops, retries } = counts;
    tokio::spawn(async move {
        let mut conns: HashMap<String, tokio_postgres::Client> = HashMap::new();
        while !stop.is_cancelled() {
            n += 1;
            let (sql, key) = match n % 3 {
                0 => ("INSERT INTO items VALUES ($1, $2)", format!("n{n}")),
                1 => (
                    "UPDATE items SET v = v + 1 WHERE id = $1",
                    format!("k{}", n * 7919 % rows as u64 + 1),
                ),
                _ => (
                    "DELETE FROM items WHERE id = $1",
                    format!("k{}", n * 104_729 % rows as u64 + 1),
                ),
            };
            let mut tries = 0;
            let affected = loop {
                tries += 1;
                assert!(tries < 2000, "write to {key} kept failing");
                let Some(owner) = owner_of(&env, &key).await else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                if !conns.contains_key(&owner) {
                    if !common::database_exists(&env.pgs[&owner], &env.pg_name).await {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    conns.insert(owner.clone(), env.db(&owner).await);
                }
                let c = &conns[&owner];
                let res = if sql.starts_with("INSERT") {
                    c.execute(sql, &[&key, &(n as i64)]).await
                } else {
                    c.execute(sql, &[&key]).await
                };
                match res {
                    Ok(a) => break a,
                    // Moved, or the database dropped under us: nothing
                    // was written; ask the catalog again.
                    Err(e) if sqlstate(&e) == Some("SLM01") || c.is_closed() => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        conns.remove(&owner);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) if sqlstate(&e).is_some_and(|s| s.starts_with("57")) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        conns.remove(&owner);
                    }
                    Err(e) => panic!("{sql} {key} on {owner}: {e:?}"),
                }
            };
            if sql.starts_with("INSERT") {
                assert_eq!(affected, 1);
                model.insert(key, n as i64);
            } else {
                let present = model.contains_key(&key);
                assert_eq!(affected, u64::from(present), "{sql} {key}");
                if sql.starts_with("UPDATE") {
                    if let Some(v) = model.get_mut(&key) {
                        *v += 1;
                    }
                } else {
                    model.remove(&key);
                }
            }
            ops.fetch_add(1, Ordering::Relaxed);
        }
        (model, n)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_moves_to_dedicated_shards_while_writing() {
    let rows = 5_000usize;
    let env = Arc::new(Env::setup(2, 4, rows, small_batches).await);
    // A second tenant in the shared keyspace, with rows on both shards.
    let a = env
        .st
        .admin(
            "POST",
            "/v1/tenants",
            Some(r#"{"id": "bee", "keyspace": "ks"}"#),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let bee: Tenant = stored(&env, &keys::tenant(OTHER)).await.unwrap();
    let map = env.map().await;
    for r in map.ranges() {
        let pred = sql_in_range(KeyType::Text, "'b' || i", &r.range);
        common::tenant_db(&env.pgs[&r.shard], &bee)
            .await
            .batch_execute(&format!(
                "INSERT INTO {}.items SELECT 'b' || i, i FROM generate_series(1, 1000) i \
                 WHERE {pred}",
                bee.pg_name()
            ))
            .await
            .unwrap();
    }
    let other_before = other_rows(&env).await;
    assert!(other_before.values().all(|(n, _)| *n > 0));

    // Refusals: unknown tenant, a target in a keyspace, a shared tenant
    // "back" to shared.
    for (body, status) in [
        (
            r#"{"kind": "tenant_move", "source": "", "tenant": "nope", "targets": ["s2"]}"#,
            404,
        ),
        (
            r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "targets": ["s0"]}"#,
            409,
        ),
        (
            r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "to_keyspace": "ks", "targets": []}"#,
            409,
        ),
    ] {
        let a = env.st.admin("POST", "/v1/reshard", Some(body)).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
    }

    // The writer: acme's rows, directly in its databases.
    let stop = CancellationToken::new();
    let counts = Counts::default();
    let ops = Arc::clone(&counts.ops);
    let retries = Arc::clone(&counts.retries);
    let model: BTreeMap<String, i64> = (1..=rows).map(|i| (format!("k{i}"), i as i64)).collect();
    let writer = spawn_writer(
        Arc::clone(&env),
        stop.clone(),
        counts.clone(),
        rows,
        model,
        0,
    );

    let body =
        r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "targets": ["s2", "s3"]}"#;
    let job = env.start_body(body).await;
    assert_eq!(job.tenant.as_deref(), Some(TENANT));
    assert_eq!(job.moves.len(), 4, "2 sources x 2 targets: {job:?}");
    env.wait_job(&job.id, |j| {
        j.phase >= ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    let ops_in_copy = ops.load(Ordering::Relaxed);
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let ops_at_done = ops.load(Ordering::Relaxed);
    assert!(ops_at_done > ops_in_copy, "writes went on during the job");
    // Some writes after the move, on the new shards.
    a_few_more(&ops).await;
    stop.cancel();
    let (model, last) = writer.await.unwrap();
    let total = ops.load(Ordering::Relaxed);
    println!(
        "tenant move: {} rows copied (estimated {}), cutover pause {:?} ms, {} writes, {} retries",
        done.rows_copied,
        done.rows_estimated,
        done.cutover_pause_ms,
        total,
        retries.load(Ordering::Relaxed)
    );

    // The catalog: acme alone in keyspace acme over s2 and s3.
    let t: Tenant = stored(&env, &keys::tenant(TENANT)).await.unwrap();
    assert_eq!(t.keyspace, TENANT);
    assert!(t.dedicated && !t.moving, "{t:?}");
    let ks: Keyspace = stored(&env, &keys::keyspace(TENANT)).await.unwrap();
    let new_map = ks.map.clone().unwrap();
    assert_eq!(new_map.shards(), ["s2", "s3"]);
    assert!(ks.tables.contains_key("items"));
    assert_eq!(ks.migrations.len(), 1);
    for s in ["s2", "s3"] {
        let shard: Shard = stored(&env, &keys::shard(s)).await.unwrap();
        assert_eq!(shard.keyspace.as_deref(), Some(TENANT));
        assert_eq!(shard.reserved_for.as_deref(), Some(TENANT));
    }
    let old: Keyspace = stored(&env, &keys::keyspace("ks")).await.unwrap();
    assert_eq!(old.map.unwrap(), map, "the shared keyspace keeps its map");

    // The rows: each once, on its owner by the new map; none left behind.
    for s in ["s0", "s1"] {
        assert!(
            !common::database_exists(&env.pgs[s], &env.pg_name).await,
            "acme's database dropped from {s}"
        );
    }
    env.assert_placed(&new_map, &model).await;
    // bee untouched.
    assert_eq!(other_rows(&env).await, other_before);

    // And back to the shared keyspace, writing all along.
    let stop = CancellationToken::new();
    let writer = spawn_writer(
        Arc::clone(&env),
        stop.clone(),
        counts.clone(),
        rows,
        model,
        last,
    );
    let body = r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "to_keyspace": "ks", "targets": []}"#;
    let back = env.start_body(body).await;
    assert_eq!(back.moves.len(), 4, "2 sources x 2 ranges of ks: {back:?}");
    assert_eq!(back.to_keyspace.as_deref(), Some("ks"));
    // One job per keyspace, counting the one moved into.
    let split = r#"{"kind": "split", "keyspace": "ks", "source": "s1", "targets": ["s3"]}"#;
    let a = env.st.admin("POST", "/v1/reshard", Some(split)).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains(&back.id), "{}", a.body);
    let ops_at_start = ops.load(Ordering::Relaxed);
    let done = env
        .wait_job(&back.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    assert!(
        ops.load(Ordering::Relaxed) > ops_at_start,
        "writes went on during the move back"
    );
    a_few_more(&ops).await;
    stop.cancel();
    let (model, _) = writer.await.unwrap();
    println!(
        "tenant move back: {} rows copied, cutover pause {:?} ms, {} retries in all",
        done.rows_copied,
        done.cutover_pause_ms,
        retries.load(Ordering::Relaxed)
    );

    let t: Tenant = stored(&env, &keys::tenant(TENANT)).await.unwrap();
    assert!(t.keyspace == "ks" && !t.dedicated && !t.moving, "{t:?}");
    assert!(stored::<Keyspace>(&env, &keys::keyspace(TENANT))
        .await
        .is_none());
    let shared: Keyspace = stored(&env, &keys::keyspace("ks")).await.unwrap();
    assert_eq!(
        shared.map.unwrap(),
        map,
        "the shared keyspace keeps its map"
    );
    for s in ["s2", "s3"] {
        let shard: Shard = stored(&env, &keys::shard(s)).await.unwrap();
        assert_eq!(shard.keyspace, None, "{shard:?}");
        assert_eq!(shard.reserved_for, None, "{shard:?}");
        assert!(
            !common::database_exists(&env.pgs[s], &env.pg_name).await,
            "acme's database dropped from {s}"
        );
    }
    env.assert_placed(&map, &model).await;
    assert_eq!(other_rows(&env).await, other_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_tenant_move_leaves_everything_as_it_was() {
    let env = Env::setup(2, 3, 3_000, |c| {
        c.reshard_batch_rows = 50;
        c.reshard_batch_pause = Duration::from_millis(50);
    })
    .await;
    let before = env.rows().await;
    let body = r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "targets": ["s2"]}"#;
    let job = env.start_body(body).await;
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    // Not deleted while it moves (nor is anything dropped).
    let a = env
        .st
        .admin("DELETE", "/v1/tenants/acme?drop_data=true", None)
        .await;
    a.assert_conflict();
    assert!(a.body.contains(&job.id), "{}", a.body);
    let a = env
        .st
        .admin("POST", &format!("/v1/reshard/{}/cancel", job.id), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!common::database_exists(&env.pgs["s2"], &env.pg_name).await);
    assert_eq!(env.rows().await, before);
    for s in ["s0", "s1"] {
        assert_eq!(env.changes_objects(s).await, 0);
    }
    let t: Tenant = stored(&env, &keys::tenant(TENANT)).await.unwrap();
    assert!(t.keyspace == "ks" && !t.dedicated && !t.moving, "{t:?}");
    assert!(stored::<Keyspace>(&env, &keys::keyspace(TENANT))
        .await
        .is_none());
    let shard: Shard = stored(&env, &keys::shard("s2")).await.unwrap();
    assert_eq!(shard.keyspace, None);

    // Out to s2 for good, then a move back cancelled mid-copy: acme stays
    // dedicated on s2, and the copies on the shared shards are dropped.
    let job = env.start_body(body).await;
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    let dedicated = env.rows().await;
    assert_eq!(dedicated.keys().collect::<Vec<_>>(), ["s2"]);
    let back = r#"{"kind": "tenant_move", "source": "", "tenant": "acme", "to_keyspace": "ks", "targets": []}"#;
    let job = env.start_body(back).await;
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    let a = env
        .st
        .admin("POST", &format!("/v1/reshard/{}/cancel", job.id), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    for s in ["s0", "s1"] {
        assert!(
            !common::database_exists(&env.pgs[s], &env.pg_name).await,
            "{s}"
        );
    }
    assert_eq!(env.rows().await, dedicated);
    assert_eq!(env.changes_objects("s2").await, 0);
    let t: Tenant = stored(&env, &keys::tenant(TENANT)).await.unwrap();
    assert!(t.keyspace == TENANT && t.dedicated && !t.moving, "{t:?}");
    let shard: Shard = stored(&env, &keys::shard("s2")).await.unwrap();
    assert_eq!(shard.keyspace.as_deref(), Some(TENANT));
}
