//! Online resharding against real PostgreSQL shards and an in-process
//! manager: split, merge back and move while a writer keeps inserting,
//! updating and deleting directly in the tenant databases (as the tenant
//! role and as superuser, following the map like a router: held while a
//! range is frozen, retried on `SLM01`); cancel during the copy;
//! verification catching a tampered target; resume after a crash in
//! Copy and in Cutover (failpoints in a child manager process); a router
//! that never acknowledges the freeze. Shared helpers: `common::reshard`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reshard::{
    crash_and_resume, crash_and_resume_job, failpoint_child, key_in, served_version, small_batches,
    start_writer, to_map, Env, LIMIT,
};
use common::{http, sqlstate, ROUTER_TOKEN};
use shardline_api::manager::JobInfo;
use shardline_core::catalog::{ReshardKind, ReshardPhase};
use shardline_core::fence::{claim, claim_key};
use shardline_core::KeyRange;
use shardline_manager::reshard::{
    FAILPOINT_AFTER_CLEANUP, FAILPOINT_AFTER_COPY, FAILPOINT_DURING_CLEANUP,
    FAILPOINT_DURING_CUTOVER,
};

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
    let ops_at_start = writer.ops.load(Ordering::Relaxed);
    let job = env.start("merge", "s2", &["s1"]).await;
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    assert!(
        writer.ops.load(Ordering::Relaxed) > ops_at_start,
        "writes went on during the merge"
    );
    println!(
        "merge: {} rows, cutover pause {:?} ms",
        done.rows_copied, done.cutover_pause_ms
    );
    let merged = env.map().await;
    assert_eq!(merged, before);
    let a = env.st.admin("GET", "/v1/shards/s2", None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json()["keyspace"],
        serde_json::Value::Null,
        "s2 left: {}",
        a.body
    );

    // Move all of s1 to s2.
    let ops_at_start = writer.ops.load(Ordering::Relaxed);
    let job = env.start("move", "s1", &["s2"]).await;
    let done = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(done.phase, ReshardPhase::Done, "{done:?}");
    assert!(
        writer.ops.load(Ordering::Relaxed) > ops_at_start,
        "writes went on during the move"
    );
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
    // Row triggers never see a TRUNCATE: refused while changes are
    // captured, with a clear error.
    let e = env
        .as_tenant("s0")
        .await
        .batch_execute("TRUNCATE items")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("55000"), "{e:?}");
    assert!(format!("{e:?}").contains("resharding"), "{e:?}");
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
    // And allowed again (here inside a transaction rolled back).
    env.as_tenant("s0")
        .await
        .batch_execute("BEGIN; TRUNCATE items; ROLLBACK")
        .await
        .unwrap();
    // Again: 409; unknown: 404; bad bodies: 400.
    let a = env
        .st
        .admin("POST", &format!("/v1/reshard/{}/cancel", job.id), None)
        .await;
    a.assert_conflict();
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
        .batch_execute("CREATE TABLE loose (id int)")
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

/// The control of the comparison before the freeze: a copied row
/// changed on the target behind the engine's back (no change of the
/// source captures its key, so the check while held does not look at
/// it) fails the job before anything is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_on_the_target_before_the_freeze_fails_the_job() {
    let env = Env::setup(1, 2, 3_000, |c| {
        c.reshard_batch_rows = 100;
        c.reshard_batch_pause = Duration::from_millis(30);
    })
    .await;
    let before = env.rows().await;
    let job = env.start("split", "s0", &["s1"]).await;
    let moving = KeyRange::parse(&job.moves[0].range).unwrap();
    let key = before["s0"]
        .keys()
        .find(|k| moving.contains(common::reshard::hash(k)))
        .unwrap()
        .clone();
    env.wait_job(&job.id, |j| {
        j.phase == ReshardPhase::Copy && j.rows_copied > 0
    })
    .await;
    // Once the row is copied, its value changes on the target alone.
    let target = env.db("s1").await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = target
            .execute("UPDATE items SET v = v + 1000 WHERE id = $1", &[&key])
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "row {key} never copied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = env
        .wait_job(&job.id, |j| j.phase >= ReshardPhase::Done)
        .await;
    assert_eq!(failed.phase, ReshardPhase::Failed, "{failed:?}");
    assert!(failed.cutover_pause_ms.is_none(), "{failed:?}");
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("verification failed before the freeze") && error.contains("items"),
        "{error}"
    );
    assert_eq!(to_map(&env.keyspace().await).shards(), ["s0"]);
    assert_eq!(
        env.rows().await,
        before,
        "copies removed, the source intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_waits_for_a_silent_router_until_its_lease_ends() {
    let lease = Duration::from_secs(2);
    // Default batches, no throttle: the copy rate is printed too.
    let env = Env::setup(1, 2, 40_000, |c| c.router_lease = lease).await;
    // The router has the catalog as it is before the job, and never
    // applies another.
    let applied = served_version(env.st.addr()).await;
    let beat = format!(r#"{{"id": "r1", "address": "x", "applied_version": {applied}}}"#);
    let hb = async {
        http(
            env.st.addr(),
            "POST",
            "/v1/routers/heartbeat",
            Some(ROUTER_TOKEN),
            Some(&beat),
        )
        .await
    };
    let first = hb.await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains(r#""renewed":true"#), "{}", first.body);
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
            Some(&beat),
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

    // That router is still behind. Its sessions say so
    // (`shardline.map_version`), and the source fence refuses every
    // write of theirs, even those no row matches any more.
    let fence: i64 = env
        .db("s0")
        .await
        .query_one(
            "SELECT substring(prosrc from 'v::int8 < ([0-9]+)')::int8 FROM pg_proc \
             WHERE oid = 'shardline.reshard_fence()'::regprocedure",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fence > 0, "fence at {fence}");
    let moved = key_in(&KeyRange::parse("80-").unwrap(), "moved-");
    let kept = key_in(&KeyRange::parse("-80").unwrap(), "kept-");
    let key = claim_key(&env.password);
    let stale = env.as_tenant("s0").await;
    claim_version(&stale, &key, fence - 1).await;
    for (sql, key) in [
        ("UPDATE items SET v = v + 1 WHERE id = $1", &moved),
        ("DELETE FROM items WHERE id = $1", &moved),
        ("INSERT INTO items VALUES ($1, 1)", &kept),
        ("UPDATE items SET v = v + 1 WHERE id = $1", &kept),
    ] {
        let e = stale.execute(sql, &[key]).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("SLM01"), "{sql}: {e:?}");
    }
    let e = stale.batch_execute("TRUNCATE items").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("SLM01"), "{e:?}");
    // Sessions with a genuine claim at the fence or past it write as
    // before; so do superuser sessions (the manager's, an operator's).
    let fresh = env.as_tenant("s0").await;
    claim_version(&fresh, &key, fence).await;
    let n = fresh
        .execute("INSERT INTO items VALUES ($1, 1)", &[&kept])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = env
        .db("s0")
        .await
        .execute("DELETE FROM items WHERE id = $1", &[&kept])
        .await
        .unwrap();
    assert_eq!(n, 1);

    // A tenant's SQL cannot dodge the fence: not by saying no version,
    // not by saying a newer one, not with a claim copied from another
    // session, not with another tenant's key. Each is refused (42501)
    // and writes nothing.
    let copied = {
        let other = env.as_tenant("s0").await;
        claim_version(&other, &key, fence + 5).await;
        let row = other
            .query_one("SELECT current_setting('shardline.map_version')", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    let forger = env.as_tenant("s0").await;
    let pid: i32 = forger
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for (what, value) in [
        ("no version", String::new()),
        ("a plain newer version", format!("{}", fence + 5)),
        ("another session's claim", copied),
        (
            "a claim made with a guessed key",
            claim(&claim_key("guess"), pid, fence as u64 + 5),
        ),
        (
            "a claim with its version raised",
            claim(&key, pid, fence as u64 - 1).replacen(
                &format!("{}:", fence - 1),
                &format!("{}:", fence + 5),
                1,
            ),
        ),
    ] {
        let e = forger
            .execute(
                "SELECT set_config('shardline.map_version', $1, false)",
                &[&value],
            )
            .await
            .and(
                forger
                    .execute("INSERT INTO items VALUES ($1, 1)", &[&kept])
                    .await,
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), Some("42501"), "{what}: {e:?}");
    }
    // Also inside one DO block, and after RESET.
    for sql in [
        format!(
            "DO $$ BEGIN PERFORM set_config('shardline.map_version', '{}', false); \
             INSERT INTO items VALUES ('{kept}', 1); END $$",
            fence + 5
        ),
        format!("RESET shardline.map_version; INSERT INTO items VALUES ('{kept}', 1)"),
    ] {
        let e = forger.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("42501"), "{sql}: {e:?}");
    }
    let rows: i64 = env
        .db("s0")
        .await
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&kept])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing written by the forged sessions");
    the_tenant_cannot_touch_resharding_triggers(&env).await;
}

/// On a source after cutover (refuse and fence triggers on `items`), the
/// tenant, which owns the table, can neither drop, disable, rename nor
/// replace them; its own triggers it can; a superuser can.
async fn the_tenant_cannot_touch_resharding_triggers(env: &Env) {
    let tenant = env.as_tenant("s0").await;
    let enabled = || async {
        let rows = env
            .db("s0")
            .await
            .query(
                "SELECT tgname, tgenabled::text FROM pg_trigger \
                 WHERE tgrelid = 'items'::regclass AND tgname LIKE 'shardline%' ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let before = enabled().await;
    assert!(
        before.contains(&"shardline_reshard_fence=O".to_string())
            && before.contains(&"shardline_reshard_refuse=O".to_string()),
        "{before:?}"
    );
    // A trigger function of the tenant's, as a migration makes one (the
    // tenant may not); the database then holds code, so the guard
    // against new code stands aside (see `tenant_code`), and what
    // refuses below is the resharding triggers' own guard.
    let role = &env.pg_name;
    env.db("s0")
        .await
        .batch_execute(&format!(
            "SET ROLE {role}; CREATE FUNCTION mine() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NEW; END $$; RESET ROLE; DELETE FROM shardline.code_free"
        ))
        .await
        .unwrap();
    for sql in [
        "DROP TRIGGER shardline_reshard_refuse ON items",
        "DROP TRIGGER shardline_reshard_fence ON items",
        "ALTER TABLE items DISABLE TRIGGER shardline_reshard_fence",
        "ALTER TABLE items DISABLE TRIGGER USER",
        "ALTER TABLE items ENABLE REPLICA TRIGGER shardline_reshard_refuse",
        "ALTER TABLE items ENABLE ALWAYS TRIGGER shardline_reshard_refuse",
        "ALTER TRIGGER shardline_reshard_refuse ON items RENAME TO gone",
        "CREATE OR REPLACE TRIGGER shardline_reshard_refuse BEFORE INSERT ON items \
         FOR EACH ROW EXECUTE FUNCTION mine()",
        "CREATE TRIGGER shardline_mine BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION mine()",
        "DO $$ BEGIN EXECUTE 'ALTER TABLE items DISABLE TRIGGER USER'; END $$",
    ] {
        let e = tenant.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("42501"), "{sql}: {e:?}");
    }
    assert_eq!(enabled().await, before, "the triggers are unchanged");
    // Its own triggers are the tenant's to make and drop.
    tenant
        .batch_execute(
            "CREATE TRIGGER my_trigger BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION mine(); \
             ALTER TABLE items DISABLE TRIGGER my_trigger; DROP TRIGGER my_trigger ON items",
        )
        .await
        .unwrap();
    // The control: the same DDL as a superuser goes through.
    env.db("s0")
        .await
        .batch_execute("ALTER TABLE items DISABLE TRIGGER shardline_reshard_fence")
        .await
        .unwrap();
    assert_ne!(enabled().await, before, "a superuser may");
}

/// Makes `client`'s session claim catalog `version` as a router's does.
async fn claim_version(client: &tokio_postgres::Client, key: &str, version: i64) {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let value = claim(key, pid, version as u64);
    client
        .batch_execute(&format!("SET shardline.map_version = '{value}'"))
        .await
        .unwrap();
}

/// Not a test by itself: the manager process of the failpoint tests.
#[test]
fn reshard_failpoint_child() {
    failpoint_child();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_copy() {
    crash_and_resume(FAILPOINT_AFTER_COPY, ReshardPhase::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_cutover() {
    crash_and_resume(FAILPOINT_DURING_CUTOVER, ReshardPhase::Cutover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_in_cleanup_with_rows_partly_deleted() {
    // The first batch of moved rows is gone from the source when the
    // manager dies: the next one finishes the deletes, and every row is
    // once on its owner.
    crash_and_resume(FAILPOINT_DURING_CLEANUP, ReshardPhase::Cleanup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_at_the_end_of_cleanup_and_releases_the_source() {
    crash_and_resume_job(
        FAILPOINT_AFTER_CLEANUP,
        ReshardPhase::Cleanup,
        false,
        ReshardKind::Move,
    )
    .await;
}
