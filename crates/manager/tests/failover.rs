//! Failover with real streaming replicas, the manager's default settings
//! (checks every 500 ms, 500 ms timeout, 3 failures): a killed or hung
//! primary is replaced by the most caught-up replica, the others follow
//! it, the old one is fenced; a planned switchover loses no acknowledged
//! write; nothing happens without a replica. Durations are printed, never
//! asserted.

mod common;

use std::time::{Duration, Instant};

use common::stack::{ids, ids_with_role, in_recovery, role_of, wait_row, Stack};
use common::{eventually, sqlstate};
use shardline_api::manager::FailoverResult;
use shardline_testkit::PgCluster;

const LIMIT: Duration = Duration::from_secs(30);

/// Fetches `GET /v1/shards/{id}` until the failover is committed
/// (generation `generation`, no intent).
async fn wait_committed(
    st: &Stack,
    generation: u64,
) -> (shardline_api::manager::ShardInfo, Instant) {
    st.wait_shard("s1", LIMIT, |s| {
        s.generation == generation && s.failover.is_none()
    })
    .await
    .unwrap_or_else(|| panic!("shard s1 reaches generation {generation}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_fails_over_to_the_most_caught_up_replica() {
    let mut primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let r2 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[&r1, &r2]).await;
    st.wait_healthy("s1", 3).await;

    // r2 stops streaming, so r1 is the most caught up.
    let c2 = r2.connect().await.unwrap();
    c2.batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
        .await
        .unwrap();
    c2.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let stopped = eventually(LIMIT, || async {
        let n: i64 = c2
            .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(stopped, "r2's WAL receiver stops");
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    assert!(wait_row(&r1, 1000, LIMIT).await);
    assert!(ids(&r2).await.is_empty(), "r2 is behind");

    let killed = Instant::now();
    primary.kill9().await;
    let (_, seen) = st
        .wait_shard("s1", LIMIT, |s| s.failover.is_some() || s.generation > 1)
        .await
        .expect("a failover starts");
    let (shard, committed) = wait_committed(&st, 2).await;
    eprintln!(
        "kill -9 -> intent seen {:?}; -> committed {:?} (intent -> commit <= {:?})",
        seen - killed,
        committed - killed,
        committed - seen
    );
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "replica"), ["s1-2"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);

    // The new primary takes writes, and the other replica follows it.
    assert!(!in_recovery(&r1).await);
    let c1 = r1.connect().await.unwrap();
    c1.batch_execute("INSERT INTO t VALUES (1001)")
        .await
        .unwrap();
    assert!(
        wait_row(&r2, 1001, LIMIT).await,
        "the repointed replica streams from the new primary"
    );
    assert_eq!(ids(&r2).await.len(), 1001);
    assert_eq!(ids(&r1).await.len(), 1001, "nothing lost: r1 was caught up");

    // Health follows the new roles; the fenced one is not checked.
    let roles = eventually(LIMIT, || async {
        let h = st.health().await;
        let mut seen: Vec<_> = h
            .instances
            .iter()
            .map(|i| (i.instance.clone(), i.role.clone(), i.health.up))
            .collect();
        seen.sort();
        seen == [
            ("s1-1".to_string(), "primary".to_string(), true),
            ("s1-2".to_string(), "replica".to_string(), true),
        ]
    })
    .await;
    assert!(roles, "{:?}", st.health().await);
    let metrics = st.metrics().await;
    assert!(
        metrics
            .contains("manager_failovers_total{shard=\"s1\",kind=\"automatic\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_fails_over_too() {
    let primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[&r1]).await;
    st.wait_healthy("s1", 2).await;
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert!(wait_row(&r1, 1, LIMIT).await);

    // SIGSTOP of the whole server: connections open but nothing answers.
    let hung = Instant::now();
    primary.pause();
    let (shard, committed) = wait_committed(&st, 2).await;
    eprintln!("SIGSTOP -> committed {:?}", committed - hung);
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    let c1 = r1.connect().await.unwrap();
    c1.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();

    // The old primary comes back: it stays fenced and unchecked.
    primary.resume();
    assert!(primary.is_ready().await);
    let round = st.health().await.round;
    let later = eventually(LIMIT, || async { st.health().await.round >= round + 3 }).await;
    assert!(later);
    let h = st.health().await;
    assert!(h.instances.iter().all(|i| i.instance != "s1-0"), "{h:?}");
    let shard = st.shard("s1").await;
    assert_eq!(shard.generation, 2);
    assert_eq!(role_of(&shard, "s1-0").as_deref(), Some("fenced"));
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_loses_no_acknowledged_write() {
    // Asynchronous replication (the testkit's default).
    let primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let r2 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[&r1, &r2]).await;
    st.wait_healthy("s1", 3).await;

    for (path, body, status) in [
        ("/v1/shards/nope/failover", "{}", 404),
        ("/v1/shards/s1/failover", r#"{"to":"s1-0"}"#, 409),
        ("/v1/shards/s1/failover", r#"{"to":"s1-9"}"#, 404),
        ("/v1/shards/s1/failover", r#"{"bogus":1}"#, 400),
    ] {
        let a = st.admin("POST", path, Some(body)).await;
        assert_eq!(a.status, status, "{path} {body}: {}", a.body);
    }

    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    // A writer straight on the primary, recording every acknowledged row,
    // until the primary refuses (read-only) or ends its session.
    let dsn = primary.dsn();
    let writer = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut acked = Vec::new();
        for i in 1..=2_000_000i32 {
            match c.execute("INSERT INTO t VALUES ($1)", &[&i]).await {
                Ok(_) => acked.push(i),
                Err(e) => {
                    let why = sqlstate(&e).map_or_else(|| format!("closed: {e}"), str::to_string);
                    return (acked, Some(why));
                }
            }
        }
        (acked, None)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = st.admin("POST", "/v1/shards/s1/failover", Some("{}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let result: FailoverResult = serde_json::from_str(&a.body).unwrap();
    let (acked, stopped_by) = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("the writer is stopped")
        .unwrap();
    let (new, other) = match result.to.as_str() {
        "s1-1" => (&r1, &r2),
        "s1-2" => (&r2, &r1),
        to => panic!("unexpected target {to}"),
    };
    let present = ids(new).await;
    let missing = acked.iter().filter(|i| !present.contains(i)).count();
    eprintln!(
        "planned switchover: {} writes acknowledged, {missing} missing, write pause {} ms, \
         writer stopped by {stopped_by:?}",
        acked.len(),
        result.write_pause_ms
    );
    assert!(acked.len() > 10, "the writer wrote");
    // Stopped by the switchover (the old primary read-only, or its
    // session ended), so its writes overlapped it.
    assert!(
        matches!(stopped_by.as_deref(), Some("25006" | "57P01"))
            || stopped_by
                .as_deref()
                .is_some_and(|s| s.starts_with("closed")),
        "writer stopped by {stopped_by:?}"
    );
    assert_eq!(missing, 0, "no acknowledged write is lost");
    assert_eq!(result.from, "s1-0");
    assert_eq!(result.generation, 2);
    let other_id = if result.to == "s1-1" { "s1-2" } else { "s1-1" };
    assert_eq!(result.repointed, [other_id]);
    assert!(result.needs_reclone.is_empty(), "{result:?}");

    // The old primary is read-only and fenced.
    let old = primary.connect().await.unwrap();
    let ro: String = old
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ro, "on");
    let e = old
        .batch_execute("INSERT INTO t VALUES (-1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("25006"), "{e}");
    let shard = st.shard("s1").await;
    assert_eq!(ids_with_role(&shard, "primary"), [result.to.as_str()]);
    assert_eq!(ids_with_role(&shard, "replica"), [other_id]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    assert_eq!(shard.generation, 2);

    // The new primary takes writes and the other replica follows it.
    let c = new.connect().await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (-2)").await.unwrap();
    assert!(wait_row(other, -2, LIMIT).await);
    // A fenced instance is never promoted.
    let a = st
        .admin("POST", "/v1/shards/s1/failover", Some(r#"{"to":"s1-0"}"#))
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("fenced"), "{}", a.body);
    let metrics = st.metrics().await;
    assert!(
        metrics.contains("manager_failovers_total{shard=\"s1\",kind=\"planned\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_failover_without_a_replica() {
    let mut primary = PgCluster::start().await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[]).await;
    st.wait_healthy("s1", 1).await;
    let a = st.admin("POST", "/v1/shards/s1/failover", Some("{}")).await;
    assert_eq!(a.status, 409, "{}", a.body);

    primary.kill9().await;
    let down = eventually(LIMIT, || async {
        st.health()
            .await
            .instances
            .iter()
            .any(|i| i.instance == "s1-0" && !i.health.up && i.health.consecutive_failures >= 6)
    })
    .await;
    assert!(down, "{:?}", st.health().await);
    let shard = st.shard("s1").await;
    assert_eq!(shard.generation, 1);
    assert!(shard.failover.is_none());
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-0"]);
    assert!(ids_with_role(&shard, "fenced").is_empty());
    let h = st.health().await;
    assert_eq!(h.instances[0].role, "primary");
    assert!(!st.metrics().await.contains("manager_failovers_total{"));
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_failover_promotes_only_once_live_routers_hold_or_their_leases_end() {
    let lease = Duration::from_secs(2);
    let mut primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    let mut cfg = st.config();
    cfg.router_lease = lease;
    st.start_with(cfg).await;
    st.register("s1", &primary, &[&r1]).await;
    st.wait_healthy("s1", 2).await;

    // A live router that never applies another catalog (its feed is
    // stuck) while its heartbeats get through: it would go on sending
    // writes to the old primary, so the promotion waits for its lease.
    let stop = tokio_util::sync::CancellationToken::new();
    let beats = common::reshard::stuck_router(st.addr(), "stuck", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    primary.kill9().await;
    let intent = st
        .wait_shard("s1", LIMIT, |s| s.failover.is_some())
        .await
        .expect("a failover intent");
    let since_intent = intent.1;
    let (shard, committed) = wait_committed(&st, 2).await;
    let waited = committed - since_intent;
    stop.cancel();
    let not_renewed = beats.await.unwrap();
    println!("intent -> committed {waited:?} with a live router behind (lease {lease:?}); {not_renewed} heartbeats not renewed");
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert!(
        waited >= lease - Duration::from_millis(500),
        "promoted before the stuck router's lease ended: {waited:?}"
    );
    assert!(not_renewed > 0, "the stuck router's lease was not renewed");
    st.stop().await;
}

/// `SHOW synchronous_standby_names` on `pg`.
async fn standby_names(pg: &PgCluster) -> String {
    pg.connect()
        .await
        .unwrap()
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether a write on `pg` (session `synchronous_commit = on`; the test
/// clusters turn it off) waits for a synchronous standby: the write runs
/// in the background, and the session's wait event is looked at.
async fn write_waits_for_a_standby(pg: &PgCluster) -> bool {
    let w = pg.connect().await.unwrap();
    w.batch_execute("CREATE TABLE IF NOT EXISTS sync_probe (id int)")
        .await
        .unwrap();
    let pid: i32 = w
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let write = tokio::spawn(async move {
        w.batch_execute("SET synchronous_commit = on; INSERT INTO sync_probe VALUES (1)")
            .await
    });
    let admin = pg.connect().await.unwrap();
    let mut waited = false;
    for _ in 0..100 {
        if write.is_finished() {
            break;
        }
        let event: Option<String> = admin
            .query_one(
                "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if event.as_deref() == Some("SyncRep") {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let it go (a waiting commit is committed locally already).
    admin
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let _ = write.await;
    waited
}

/// The application names of the replicas streaming from `pg` as quorum
/// standbys, sorted.
async fn quorum(pg: &PgCluster) -> Vec<String> {
    let rows = pg
        .connect()
        .await
        .unwrap()
        .query(
            "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'quorum' \
             ORDER BY application_name",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The names in a `synchronous_standby_names` value of the form
/// `ANY 1 ("a", "b")`, sorted.
fn listed(value: &str) -> Vec<String> {
    let inner = value
        .strip_prefix("ANY 1 (")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not ANY 1 (...): {value:?}"));
    let mut names: Vec<String> = inner
        .split(", ")
        .map(|n| n.trim_matches('"').to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_shard_stays_synchronous_after_a_failover() {
    let mut primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let r2 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    // Without replicas it is refused; with them the primary waits for
    // any one.
    let body = serde_json::json!({"id": "s0", "primary": primary.dsn(), "synchronous": true});
    let a = st
        .admin("POST", "/v1/shards", Some(&body.to_string()))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let body = serde_json::json!({"id": "s1", "primary": primary.dsn(),
        "replicas": [r1.dsn(), r2.dsn()], "synchronous": true});
    let a = st
        .admin("POST", "/v1/shards", Some(&body.to_string()))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(st.shard("s1").await.synchronous);
    st.wait_healthy("s1", 3).await;
    // Both replicas stream as quorum standbys, listed by the names they
    // stream under; with both stopped, a commit waits.
    assert!(eventually(LIMIT, || async { quorum(&primary).await.len() == 2 }).await);
    assert_eq!(
        listed(&standby_names(&primary).await),
        quorum(&primary).await
    );
    r1.pause();
    r2.pause();
    assert!(
        write_waits_for_a_standby(&primary).await,
        "the primary waits"
    );
    r1.resume();
    r2.resume();
    // A replica added later joins the list.
    let r3 = PgCluster::start_replica_of(&primary).await.unwrap();
    let body = serde_json::json!({ "dsn": r3.dsn() }).to_string();
    let a = st
        .admin("POST", "/v1/shards/s1/replicas", Some(&body))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(
        eventually(LIMIT, || async { quorum(&primary).await.len() == 3 }).await,
        "the added replica is a quorum standby: {:?}",
        quorum(&primary).await
    );
    assert_eq!(
        listed(&standby_names(&primary).await),
        quorum(&primary).await
    );

    // The primary dies; the new one lists the replica that follows it.
    primary.kill9().await;
    let (shard, _) = wait_committed(&st, 2).await;
    let new_id = ids_with_role(&shard, "primary")[0].clone();
    let by_id = [("s1-1", &r1), ("s1-2", &r2), ("s1-3", &r3)];
    let new = by_id
        .iter()
        .find(|(id, _)| *id == new_id)
        .map(|(_, pg)| *pg)
        .unwrap_or_else(|| panic!("promoted {new_id}"));
    let others: Vec<&PgCluster> = by_id
        .iter()
        .filter(|(id, _)| *id != new_id)
        .map(|(_, pg)| *pg)
        .collect();
    assert!(
        eventually(LIMIT, || async { quorum(new).await.len() == 2 }).await,
        "the remaining replicas are the new primary's synchronous standbys"
    );
    assert_eq!(listed(&standby_names(new).await), quorum(new).await);
    // Writes commit while they stream, and wait when they stop.
    let c = new.connect().await.unwrap();
    c.batch_execute(
        "SET synchronous_commit = on; CREATE TABLE after (id int); INSERT INTO after VALUES (1)",
    )
    .await
    .unwrap();
    for o in &others {
        o.pause();
    }
    assert!(
        write_waits_for_a_standby(new).await,
        "the new primary waits"
    );
    for o in &others {
        o.resume();
    }
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_answers_again_is_fenced_before_the_promotion() {
    // The primary hangs long enough to fail its checks, and answers
    // again while the failover waits for a router: the manager makes it
    // read-only and ends its sessions before promoting the replica.
    let lease = Duration::from_secs(2);
    let primary = PgCluster::start().await.unwrap();
    let r1 = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    let mut cfg = st.config();
    cfg.router_lease = lease;
    st.start_with(cfg).await;
    st.register("s1", &primary, &[&r1]).await;
    st.wait_healthy("s1", 2).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let beats = common::reshard::stuck_router(st.addr(), "stuck", stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A session of a client that could write, open on the old primary.
    let writer = primary.connect().await.unwrap();
    writer
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Inside a transaction, which the fence must end (an idle superuser
    // session it leaves; its next transaction is read-only anyway).
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();

    primary.pause();
    st.wait_shard("s1", LIMIT, |s| s.failover.is_some())
        .await
        .expect("a failover intent");
    primary.resume();
    let (shard, _) = wait_committed(&st, 2).await;
    stop.cancel();
    beats.await.unwrap();
    assert_eq!(ids_with_role(&shard, "primary"), ["s1-1"]);
    assert_eq!(ids_with_role(&shard, "fenced"), ["s1-0"]);
    // The old primary is read-only, and the writer's session was ended.
    let admin = primary.connect().await.unwrap();
    let read_only: String = admin
        .query_one("SHOW default_transaction_read_only", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(read_only, "on", "the old primary was fenced");
    let e = writer
        .batch_execute("COMMIT")
        .await
        .expect_err("the old session's transaction committed");
    assert!(
        writer.is_closed() || sqlstate(&e) == Some("57P01"),
        "the old session is gone: {e:?}"
    );
    assert!(
        !ids(&r1).await.contains(&2),
        "its row reached the new primary"
    );
    let e = admin
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("25006"), "{e:?}");
    // And the replica had its rows before it was promoted.
    assert!(wait_row(&r1, 1, LIMIT).await);
    st.stop().await;
}
