//! Replicas: health reports each instance's role, WAL position and lag
//! (API, router health snapshot, metrics); registering a replica checks
//! that it is one.

mod common;

use std::time::Duration;

use common::stack::{wait_row, Stack};
use common::{eventually, http};
use shardline_api::manager::{HealthSnapshot, InstanceHealth};
use shardline_testkit::PgCluster;

fn find<'a>(h: &'a HealthSnapshot, instance: &str) -> Option<&'a InstanceHealth> {
    h.instances.iter().find(|i| i.instance == instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_lsn_and_lag_of_a_replica() {
    let primary = PgCluster::start().await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[]).await;
    let a = st
        .admin(
            "POST",
            "/v1/shards/s1/replicas",
            Some(&serde_json::json!({ "dsn": replica.dsn() }).to_string()),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    st.wait_healthy("s1", 2).await;

    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    assert!(wait_row(&replica, 100, Duration::from_secs(20)).await);
    // Caught up (in a round that began after it was): same WAL position
    // as the primary, no lag.
    let after = st.health().await.round + 1;
    let caught_up = eventually(Duration::from_secs(20), || async {
        let h = st.health().await;
        if h.round <= after {
            return false;
        }
        let (Some(p), Some(r)) = (find(&h, "s1-0"), find(&h, "s1-1")) else {
            return false;
        };
        r.health.lag_bytes == Some(0)
            && r.health.lag_seconds == Some(0.0)
            && p.health.lsn == r.health.lsn
    })
    .await;
    let h = st.health().await;
    assert!(caught_up, "{h:?}");
    let (ph, rh) = (find(&h, "s1-0").unwrap(), find(&h, "s1-1").unwrap());
    assert_eq!((ph.shard.as_str(), ph.role.as_str()), ("s1", "primary"));
    assert_eq!(rh.role, "replica");
    assert_eq!(ph.health.in_recovery, Some(false));
    assert_eq!(rh.health.in_recovery, Some(true));
    assert!(
        ph.health.lsn.as_deref().is_some_and(|l| l.contains('/')),
        "{ph:?}"
    );
    assert_eq!(ph.health.lag_bytes, None, "a primary has no lag");
    assert_eq!(rh.health.consecutive_failures, 0);
    let round = h.round;

    // Replay paused while the primary writes: the replica falls behind.
    let r = replica.connect().await.unwrap();
    r.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    p.batch_execute("INSERT INTO t SELECT generate_series(101, 20000)")
        .await
        .unwrap();
    let behind = eventually(Duration::from_secs(20), || async {
        let h = st.health().await;
        find(&h, "s1-1").is_some_and(|r| {
            r.health.lag_bytes.is_some_and(|b| b > 100_000)
                && r.health.lag_seconds.is_some_and(|s| s > 0.0)
        })
    })
    .await;
    let h = st.health().await;
    assert!(behind, "{h:?}");
    assert!(h.round > round, "rounds grow: {} then {}", round, h.round);
    let metrics = st.metrics().await;
    for line in [
        "shard_health_status{shard=\"s1\",instance=\"s1-0\",role=\"primary\"} 1",
        "shard_health_status{shard=\"s1\",instance=\"s1-1\",role=\"replica\"} 1",
        "shard_replication_lag_bytes{shard=\"s1\",instance=\"s1-1\"}",
        "shard_replication_lag_seconds{shard=\"s1\",instance=\"s1-1\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    // The admin API shows the same per instance.
    let shard = st.shard("s1").await;
    let ri = shard.instances.iter().find(|i| i.id == "s1-1").unwrap();
    assert_eq!(ri.role, "replica");
    assert!(
        ri.health.as_ref().and_then(|h| h.lag_bytes).is_some(),
        "{ri:?}"
    );
    let status = st.admin("GET", "/v1/status", None).await.json();
    assert_eq!(status["shards"][0]["instances"][1]["id"], "s1-1");
    assert!(status["shards"][0]["instances"][1]["health"]["lag_bytes"].is_u64());

    // Replay resumed: back to no lag.
    r.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let back = eventually(Duration::from_secs(20), || async {
        let h = st.health().await;
        find(&h, "s1-1").is_some_and(|r| r.health.lag_bytes == Some(0))
    })
    .await;
    assert!(back, "{:?}", st.health().await);

    // Promoted behind the manager's back: no longer fit to be a replica.
    r.query_one("SELECT pg_promote(true, 30)", &[])
        .await
        .unwrap();
    let misfit = eventually(Duration::from_secs(20), || async {
        let h = st.health().await;
        find(&h, "s1-1").is_some_and(|r| {
            !r.health.up
                && r.health.in_recovery == Some(false)
                && r.health
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("not in recovery"))
        })
    })
    .await;
    assert!(misfit, "{:?}", st.health().await);

    // The snapshot is for routers and operators only.
    let a = http(st.addr(), "GET", "/v1/health", None, None).await;
    assert_eq!(a.status, 401);
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_replica_checks_it_is_one() {
    let primary = PgCluster::start().await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let other = PgCluster::start().await.unwrap();
    let others_replica = PgCluster::start_replica_of(&other).await.unwrap();
    let mut st = Stack::new().await;
    st.start().await;
    st.register("s1", &primary, &[]).await;
    let add = |dsn: String| {
        let st = &st;
        async move {
            let body = serde_json::json!({ "dsn": dsn }).to_string();
            st.admin("POST", "/v1/shards/s1/replicas", Some(&body))
                .await
        }
    };

    // A server that is not in recovery is no replica.
    let a = add(other.dsn()).await;
    a.assert_conflict();
    assert!(a.body.contains("not in recovery"), "{}", a.body);
    // Nor is the primary itself (already an instance).
    let a = add(primary.dsn()).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("s1-0"), "{}", a.body);
    // A replica of another cluster.
    let a = add(others_replica.dsn()).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("another cluster"), "{}", a.body);
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = add(format!(
        "host=127.0.0.1 port={closed} user=postgres connect_timeout=2"
    ))
    .await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (503, "shard_unavailable"),
        "{}",
        a.body
    );
    // Not a DSN.
    let a = add("host=x port=notaport".into()).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = st
        .admin(
            "POST",
            "/v1/shards/nope/replicas",
            Some(r#"{"dsn":"host=x"}"#),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(st.shard("s1").await.instances.len(), 1, "nothing was added");

    // A real replica of the primary gets the next id; not twice.
    let a = add(replica.dsn()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let shard: shardline_api::manager::ShardInfo = serde_json::from_str(&a.body).unwrap();
    let ids: Vec<_> = shard
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.role.as_str()))
        .collect();
    assert_eq!(ids, [("s1-0", "primary"), ("s1-1", "replica")]);
    let a = add(replica.dsn()).await;
    assert_eq!(a.status, 409, "{}", a.body);
    st.wait_healthy("s1", 2).await;
    st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_an_old_catalog_get_ids_at_startup() {
    use shardline_catalog::{CatalogStore, Op, Precondition};
    use shardline_core::catalog::{keys, Instance, Shard};

    let mut st = Stack::new().await;
    let inst = |port: u16| Instance {
        id: String::new(),
        dsn: format!("host=127.0.0.1 port={port} user=postgres"),
    };
    let shard = Shard {
        id: "s1".into(),
        keyspace: None,
        primary: inst(1),
        replicas: vec![inst(2)],
        generation: 3,
        reserved_for: None,
        fenced: vec![inst(3)],
        failover: None,
        synchronous: false,
    };
    let key = keys::shard("s1");
    st.store
        .txn(
            &[Precondition::Absent(key.clone())],
            &[Op::Put {
                key,
                value: serde_json::to_vec(&shard).unwrap(),
            }],
        )
        .await
        .unwrap();
    st.start().await;
    let info = st.shard("s1").await;
    let ids: Vec<_> = info
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.role.as_str()))
        .collect();
    assert_eq!(
        ids,
        [("s1-0", "primary"), ("s1-1", "replica"), ("s1-2", "fenced")]
    );
    assert_eq!(info.generation, 3);
    st.stop().await;
}
