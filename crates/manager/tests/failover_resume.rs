//! A manager that stopped in the middle of a failover left its intent in
//! the catalog; the next one resumes or rolls it back, never leaving two
//! primaries: a promoted target is committed; an unpromoted one is
//! promoted when the old primary is down; an automatic failover whose old
//! primary answers is rolled back; a planned one is drained and finished.
//!
//! The crash is simulated by stopping the first manager and writing the
//! intent into the catalog store, as the failover would have; and for
//! real with the test-only failpoints, in a manager child process (this
//! test binary run again) that aborts at the step.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::stack::{catalog_path, ids, ids_with_role, in_recovery, Stack};
use common::{eventually, ADMIN_TOKEN, ROUTER_TOKEN};
use shardline_core::catalog::{Failover, FailoverKind};
use shardline_manager::apps::now_ms;
use shardline_manager::failover::{FAILPOINT_AFTER_INTENT, FAILPOINT_AFTER_PROMOTE, FAILPOINT_ENV};
use shardline_manager::ManagerConfig;
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

/// A primary with one replica, registered as shard `s1` (`s1-0`,
/// `s1-1`) by a manager that is then stopped.
async fn shard_with_replica() -> (Stack, PgCluster, PgCluster) {
    let primary = PgCluster::start().await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[&replica]).await;
    st.wait_healthy("s1", 2).await;
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    st.stop().await;
    (st, primary, replica)
}

/// Writes the intent a failover from `s1-0` to `s1-1` records first.
async fn leave_intent(st: &Stack, kind: FailoverKind) {
    st.edit_shard("s1", |s| {
        s.failover = Some(Failover {
            kind,
            from: "s1-0".into(),
            to: "s1-1".into(),
            started_at_ms: now_ms(),
        })
    })
    .await;
}

async fn wait_resolved(st: &Stack) -> shardline_api::manager::ShardInfo {
    st.wait_shard("s1", LIMIT, |s| s.failover.is_none())
        .await
        .expect("the intent is resolved")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_target_is_committed() {
    let (mut st, primary, replica) = shard_with_replica().await;
    // Crashed after promoting: the target is out of recovery.
    let r = replica.connect().await.unwrap();
    let promoted: bool = r
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted);
    leave_intent(&st, FailoverKind::Automatic).await;
    st.start().await;
    let shard = wait_resolved(&st).await;
    // Even with the old primary up: the target was promoted already, so
    // only committing keeps one primary.
    assert!(primary.is_ready().await);
    assert_eq!(shard.generation, 2);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    assert!(ids_with_role(&shard, "replica").is_empty());
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpromoted_target_is_promoted_when_the_old_primary_is_down() {
    let (mut st, mut primary, replica) = shard_with_replica().await;
    assert!(eventually(LIMIT, || async { ids(&replica).await.len() == 100 }).await);
    primary.kill9().await;
    leave_intent(&st, FailoverKind::Automatic).await;
    let restarted = std::time::Instant::now();
    st.start().await;
    let shard = wait_resolved(&st).await;
    // Routers the crashed manager gave leases to may still be writing to
    // the old primary (this manager cannot reach it, they might): the
    // promotion waits until any such lease has run out.
    let waited = restarted.elapsed();
    let lease = st.config().router_lease;
    println!("resumed failover committed {waited:?} after the restart (lease {lease:?})");
    assert!(
        waited >= lease,
        "promoted {waited:?} after the restart, inside a lease the crashed manager may have given"
    );
    assert_eq!(shard.generation, 2);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    assert!(!in_recovery(&replica).await, "the target was promoted");
    let c = replica.connect().await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (101)").await.unwrap();
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_failover_is_rolled_back_when_the_old_primary_answers() {
    let (mut st, primary, replica) = shard_with_replica().await;
    leave_intent(&st, FailoverKind::Automatic).await;
    st.start().await;
    let shard = wait_resolved(&st).await;
    assert_eq!(shard.generation, 1);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-0"]);
    assert_eq!(ids_with_role(&shard, "replica"), ["s1-1"]);
    assert!(ids_with_role(&shard, "fenced").is_empty());
    assert!(in_recovery(&replica).await, "the target was not promoted");
    assert!(!in_recovery(&primary).await);
    // And nothing else happens while the primary is healthy.
    let round = st.health().await.round;
    assert!(eventually(LIMIT, || async { st.health().await.round >= round + 3 }).await);
    let shard = st.shard("s1").await;
    assert_eq!((shard.generation, shard.failover.is_none()), (1, true));
    let metrics = st.metrics().await;
    assert!(
        metrics.contains(
            "manager_failovers_total{shard=\"s1\",kind=\"automatic\",outcome=\"rolled_back\"} 1"
        ),
        "{metrics}"
    );
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_is_drained_and_finished() {
    let (mut st, primary, replica) = shard_with_replica().await;
    leave_intent(&st, FailoverKind::Planned).await;
    st.start().await;
    let shard = wait_resolved(&st).await;
    assert_eq!(shard.generation, 2);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    assert!(!in_recovery(&replica).await);
    assert_eq!(ids(&replica).await.len(), 100, "every row made it");
    let old = primary.connect().await.unwrap();
    let ro: String = old
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on", "the old primary was drained");
    st.stop().await;
}

/// Tells [`failpoint_child`] which catalog to run a manager on.
const CHILD_CATALOG: &str = "SHARDLINE_TEST_CHILD_CATALOG";
/// SIGABRT on Linux.
const SIGABRT: i32 = 6;

/// Not a test by itself: the manager process of the failpoint tests
/// (this binary run again, filtered to this function, with
/// `SHARDLINE_TEST_CHILD_CATALOG` and `SHARDLINE_FAILPOINT` set). Without
/// the variable it returns at once.
#[test]
fn failpoint_child() {
    let Ok(path) = std::env::var(CHILD_CATALOG) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cfg = ManagerConfig::new(path.into(), ADMIN_TOKEN, ROUTER_TOKEN);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        // Bounded: the failpoint aborts the process long before.
        let run = shardline_manager::run(cfg, CancellationToken::new());
        let _ = tokio::time::timeout(LIMIT, run).await;
    });
}

/// Kills the primary of a shard with a replica, then runs a manager
/// process that aborts at `failpoint` of the automatic failover it
/// starts; returns the catalog it left (no manager running).
async fn crash_at(failpoint: &str) -> (Stack, PgCluster, PgCluster) {
    let (st, mut primary, replica) = shard_with_replica().await;
    assert!(eventually(LIMIT, || async { ids(&replica).await.len() == 100 }).await);
    let dir = st.close().await;
    primary.kill9().await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "failpoint_child",
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
    let out = tokio::time::timeout(LIMIT * 2, child.wait_with_output())
        .await
        .expect("the manager process ends")
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "aborted at {failpoint}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (Stack::open(dir).await, primary, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_intent_then_resume_promotes() {
    let (mut st, _primary, replica) = crash_at(FAILPOINT_AFTER_INTENT).await;
    let left = st
        .stored_shard("s1")
        .await
        .failover
        .expect("the intent is left");
    assert_eq!(
        (left.kind, left.from.as_str(), left.to.as_str()),
        (FailoverKind::Automatic, "s1-0", "s1-1")
    );
    assert!(in_recovery(&replica).await, "not promoted before the crash");
    st.start().await;
    let shard = wait_resolved(&st).await;
    assert_eq!(shard.generation, 2);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    assert!(!in_recovery(&replica).await);
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_promotion_then_resume_commits() {
    let (mut st, mut primary, replica) = crash_at(FAILPOINT_AFTER_PROMOTE).await;
    assert!(st.stored_shard("s1").await.failover.is_some());
    assert_eq!(st.stored_shard("s1").await.generation, 1);
    assert!(!in_recovery(&replica).await, "promoted before the crash");
    // The old primary is back, writable, before the manager is: the
    // target was promoted, so it is the one the catalog keeps.
    primary.restart().await.unwrap();
    assert!(!in_recovery(&primary).await);
    st.start().await;
    let shard = wait_resolved(&st).await;
    assert_eq!(shard.generation, 2);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    // Checked in its new role from then on; the fenced one not at all.
    let checked = eventually(LIMIT, || async {
        let h = st.health().await;
        h.instances.len() == 1 && h.instances[0].instance == "s1-1" && h.instances[0].health.up
    })
    .await;
    assert!(checked, "{:?}", st.health().await);
    st.stop().await;
}
