//! A manager that stopped in the middle of a failover left its intent in
//! the catalog; the next one resumes or rolls it back, never leaving two
//! primaries: a promoted target is committed; an unpromoted one is
//! promoted when the old primary is down; an automatic failover whose old
//! primary answers is rolled back; a planned one is drained and finished.
//!
//! The crash is simulated by stopping the first manager and writing the
//! intent into the catalog store, as the failover would have.

mod common;

use std::time::Duration;

use common::eventually;
use common::stack::{ids, ids_with_role, in_recovery, Stack};
use shardline_core::catalog::{Failover, FailoverKind};
use shardline_manager::apps::now_ms;
use shardline_testkit::PgCluster;

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
    st.start().await;
    let shard = wait_resolved(&st).await;
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
