//! Failover end to end, with real streaming replication: a writer sends
//! numbered inserts through the router and records every acknowledged
//! one, a reader sends `eventual` reads, and the primary is killed
//! (`kill -9`), hung (`SIGSTOP`) or switched over on purpose. The tests
//! check what must hold — no acknowledged write lost with synchronous
//! replication or a planned switchover, eventual reads never fail, the
//! old primary never gets another request — and print the timings
//! (docs/benchmarks.md quotes them; nothing here asserts a duration).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::load::{
    first_ack_after, longest_pause, lost_after, lost_sent_after, missing, mode, req,
    watch_failover, Load, TABLE,
};
use common::{eventually, Stack, StackOptions};
use serde_json::json;
use shardline_api::manager::FailoverRequest;
use shardline_api::router::Consistency;
use shardline_client::{RetryPolicy, RouterClient};
use shardline_testkit::PgCluster;

/// The old primary's (`stack.shards[0]`) tenant traffic before and after
/// 50 writes through the router (numbered from `first`), each followed by
/// an eventual read with `reads`.
async fn traffic_during_requests(
    stack: &Stack,
    first: i64,
    reads: bool,
) -> ((i64, i64), (i64, i64)) {
    let db = stack.pg_name("default").await;
    let before = tenant_traffic(&stack.shards[0], &db).await;
    let router = RouterClient::new(&stack.router_url, Some(stack.app_token.clone())).unwrap();
    for i in 0..50 {
        router
            .execute(&req(
                "INSERT INTO writes (n) VALUES ($1)",
                vec![json!(first + i)],
                Consistency::Strong,
            ))
            .await
            .unwrap();
        if reads {
            router
                .execute(&req("SELECT 1", vec![], Consistency::Eventual))
                .await
                .unwrap();
        }
    }
    // Statistics reach the shared view within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (before, tenant_traffic(&stack.shards[0], &db).await)
}

/// Transactions committed in the tenant database `db` (the tenant's
/// `pg_name`) on `pg`, and the tenant's open sessions there.
async fn tenant_traffic(pg: &PgCluster, db: &str) -> (i64, i64) {
    let c = pg.connect().await.unwrap();
    let row = c
        .query_one(
            "SELECT coalesce((SELECT xact_commit FROM pg_stat_database \
               WHERE datname = $1), 0), \
             (SELECT count(*) FROM pg_stat_activity WHERE usename = $1)",
            &[&db],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn kill9_failover(synchronous: bool, replicas: usize) {
    let mut stack = Stack::start(StackOptions {
        shards: 1,
        replicas,
        synchronous,
        health_interval: None,
        ..StackOptions::default()
    })
    .await;
    stack.migrate("001_writes", TABLE).await;
    let load = Load::start(&[&stack.router_url], &stack.app_token).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The whole server dies at once: postmaster and every backend (a
    // postmaster killed alone leaves its backends serving their sessions
    // for a while).
    stack.shards[0].signal_all(libc::SIGKILL);
    let killed = Instant::now();
    stack.shards[0].kill9().await;
    let w = watch_failover(&stack.admin, "s0", 1, Duration::from_secs(30)).await;
    assert!(w.committed.is_some(), "no failover within 30 s");
    // Writes resume on the new primary.
    assert!(
        eventually(Duration::from_secs(15), || async {
            first_ack_after(&load.log, killed).is_some()
        })
        .await,
        "no write acknowledged after the kill"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = load.finish().await;
    let lost = missing(&stack.router, &log).await;
    let acked = log.acks().len();
    let mode = mode(synchronous);
    println!(
        "kill -9 ({mode}, {replicas} replica(s)): detection {:?}, promotion {:?}, \
         first write acknowledged {:?} after the kill; {acked} writes acknowledged, \
         {} lost (numbers {:?}), {} write errors; eventual reads {} ok, {} failed",
        w.intent.unwrap() - killed,
        w.committed.unwrap() - w.intent.unwrap(),
        first_ack_after(&log, killed).unwrap(),
        lost.len(),
        lost.first().zip(lost.last()),
        log.write_errors.load(Ordering::Relaxed),
        log.reads_ok.load(Ordering::Relaxed),
        log.read_errors.load(Ordering::Relaxed),
    );
    if synchronous {
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
    assert_eq!(
        log.read_errors.load(Ordering::Relaxed),
        0,
        "eventual reads failed during the failover"
    );
    let shard = stack.admin.get_shard("s0").await.unwrap();
    let roles: Vec<&str> = shard.instances.iter().map(|i| i.role.as_str()).collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "primary").count(),
        1,
        "{roles:?}"
    );
    assert!(roles.contains(&"fenced"), "{roles:?}");

    // The old primary comes back: no request may reach it.
    stack.shards[0].restart().await.unwrap();
    let (before, after) = traffic_during_requests(&stack, 1_000_000, true).await;
    println!(
        "old primary, tenant commits and sessions before/after 100 requests: {before:?} {after:?}"
    );
    assert_eq!(before.0, after.0, "requests reached the fenced old primary");
    assert_eq!(after.1, 0, "tenant sessions on the fenced old primary");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_synchronous_replication_loses_no_acknowledged_write() {
    kill9_failover(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_asynchronous_replication_fails_over_and_reports_loss() {
    kill9_failover(false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_loses_nothing() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        replicas: 2,
        health_interval: None,
        ..StackOptions::default()
    })
    .await;
    stack.migrate("001_writes", TABLE).await;
    let load = Load::start(&[&stack.router_url], &stack.app_token).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let result = stack
        .admin
        .failover("s0", &FailoverRequest::default())
        .await
        .expect("switchover");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = load.finish().await;
    let lost = missing(&stack.router, &log).await;
    println!(
        "planned switchover {} -> {}: took {took:?}, write pause {} ms (manager), longest gap \
         between acknowledged writes {:?}; {} acknowledged, {} lost, {} write errors; \
         repointed {:?}, needs re-clone {:?}; eventual reads {} ok, {} failed",
        result.from,
        result.to,
        result.write_pause_ms,
        longest_pause(&log),
        log.acks().len(),
        lost.len(),
        log.write_errors.load(Ordering::Relaxed),
        result.repointed,
        result.needs_reclone,
        log.reads_ok.load(Ordering::Relaxed),
        log.read_errors.load(Ordering::Relaxed),
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(log.read_errors.load(Ordering::Relaxed), 0);
    assert!(first_ack_after(&log, started + took).is_some());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_replaced_and_never_used_again() {
    hang_failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_with_synchronous_replication_loses_no_acknowledged_write() {
    hang_failover(true).await;
}

/// The primary hangs (SIGSTOP of all its processes) until the failover
/// has committed, then resumes: the statements it had in flight may now
/// commit there, but none may be acknowledged (the router fenced it when
/// the failover began), and nothing more reaches it. Counts printed:
/// acknowledged, lost, lost among those sent after the hang began,
/// lost that were in flight at the stop, acknowledged by the old primary
/// after the failover began (never two writable instances), write errors.
///
/// "After the hang began" is judged by when a write was sent, not when
/// its answer arrived: a write PostgreSQL committed and answered just
/// before the stop reaches the writer a moment later, and with
/// asynchronous replication it may be lost like any write acknowledged
/// before the fault. Such a write must have been answered while the old
/// primary was still stopped (it cannot answer then, so the answer left
/// before the stop); one answered after the resume would be a write the
/// fence let through.
async fn hang_failover(synchronous: bool) {
    let stack = Stack::start(StackOptions {
        shards: 1,
        replicas: 1,
        synchronous,
        health_interval: None,
        ..StackOptions::default()
    })
    .await;
    stack.migrate("001_writes", TABLE).await;
    let old_port = i64::from(stack.shards[0].port());
    let load = Load::start(&[&stack.router_url], &stack.app_token).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The whole server hangs: postmaster, backends, WAL sender.
    let stopping = Instant::now();
    stack.shards[0].pause();
    let stopped = Instant::now();
    let w = watch_failover(&stack.admin, "s0", 1, Duration::from_secs(30)).await;
    // Longer than the failover took, then it wakes up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resuming = Instant::now();
    stack.shards[0].resume();
    assert!(w.committed.is_some(), "no failover within 30 s");
    assert!(
        eventually(Duration::from_secs(15), || async {
            first_ack_after(&load.log, w.committed.unwrap()).is_some()
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = load.finish().await;
    let lost = missing(&stack.router, &log).await;
    // Once the failover began, only one instance may acknowledge writes:
    // none from the old primary (a write it committed just before the
    // hang may be answered a moment after the hang began).
    let intent = w.intent.unwrap();
    let acks = log.acks();
    let sent_after = lost_sent_after(&log, &lost, stopped);
    // In flight at the stop: sent before it, answered after it began.
    let in_flight: Vec<i64> = lost_after(&log, &lost, stopping)
        .into_iter()
        .filter(|n| !sent_after.contains(n))
        .collect();
    let answered_after_resume: Vec<i64> = acks
        .iter()
        .filter(|a| in_flight.contains(&a.n) && a.at >= resuming)
        .map(|a| a.n)
        .collect();
    let by_old_after = acks
        .iter()
        .filter(|a| a.port == Some(old_port) && a.at > intent)
        .count();
    let mode = mode(synchronous);
    println!(
        "SIGSTOP ({mode}, 1 replica): detection {:?}, promotion {:?}, first write acknowledged {:?} \
         after the stop; {} writes acknowledged, {} lost ({} of them sent after the hang \
         began, {} in flight at the stop), {by_old_after} acknowledged by the old primary \
         after the failover began, \
         {} write errors; \
         eventual reads {} ok, {} failed",
        w.intent.unwrap() - stopped,
        w.committed.unwrap() - w.intent.unwrap(),
        first_ack_after(&log, stopped).unwrap(),
        acks.len(),
        lost.len(),
        sent_after.len(),
        in_flight.len(),
        log.write_errors.load(Ordering::Relaxed),
        log.reads_ok.load(Ordering::Relaxed),
        log.read_errors.load(Ordering::Relaxed),
    );
    assert!(
        sent_after.is_empty(),
        "sent after the hang began, acknowledged, then lost: {sent_after:?}"
    );
    assert!(
        answered_after_resume.is_empty(),
        "in flight at the stop, answered after the resume, then lost: \
         {answered_after_resume:?}"
    );
    assert_eq!(
        by_old_after, 0,
        "the old primary acknowledged writes after the failover began"
    );
    if synchronous {
        assert!(
            lost.is_empty(),
            "lost with synchronous replication: {lost:?}"
        );
    }
    assert_eq!(log.read_errors.load(Ordering::Relaxed), 0);
    // The old primary woke up, still a primary in its own eyes: nothing
    // of the tenant's reaches it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, after) = traffic_during_requests(&stack, 2_000_000, false).await;
    assert_eq!(before.0, after.0, "writes reached the old primary");
    // Statistics can lag: the rows themselves are not there either.
    let db = stack.pg_name("default").await;
    let (old, conn) = tokio_postgres::connect(
        &format!("{} dbname={db}", stack.shards[0].dsn()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let reached: i64 = old
        .query_one(
            &format!("SELECT count(*) FROM \"{db}\".writes WHERE n >= 2000000"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        reached, 0,
        "rows written through the router on the old primary"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_survive_replicas_dying() {
    let mut stack = Stack::start(StackOptions {
        shards: 1,
        replicas: 2,
        ..StackOptions::default()
    })
    .await;
    let router = RouterClient::new(&stack.router_url, Some(stack.app_token.clone()))
        .unwrap()
        .with_retry(RetryPolicy::none());
    let in_recovery = || {
        let router = router.clone();
        async move {
            router
                .execute(&req(
                    "SELECT pg_is_in_recovery()",
                    vec![],
                    Consistency::Eventual,
                ))
                .await
                .map(|r| r.result.rows[0][0] == json!(true))
        }
    };
    // Served by replicas once the router has their health.
    assert!(
        eventually(Duration::from_secs(10), || async {
            in_recovery().await.unwrap_or(false)
        })
        .await,
        "eventual reads reach a replica"
    );
    // Strong reads never do.
    let strong = router
        .execute(&req(
            "SELECT pg_is_in_recovery()",
            vec![],
            Consistency::Strong,
        ))
        .await
        .unwrap();
    assert_eq!(strong.result.rows[0][0], json!(false));
    // One replica dies, then the other: every read still succeeds.
    let mut failures = 0;
    for r in 0..2 {
        stack.replicas[0][r].kill9().await;
        for _ in 0..100 {
            if in_recovery().await.is_err() {
                failures += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(failures, 0, "eventual reads failed while replicas died");
    // With no replica left they are served by the primary.
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(in_recovery().await, Ok(false))
        })
        .await
    );
    stack.stop().await;
}
