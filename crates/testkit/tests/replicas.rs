//! Streaming replicas built by the testkit: replication, synchronous
//! commit, survival of the primary's death, promotion.

use std::time::{Duration, Instant};

use shardline_testkit::{PgCluster, SYNC_REPLICATION};
use tokio_postgres::Client;

/// Polls `sql` (one bigint) on `client` until it returns `want`, for up to
/// 30 s; returns the last value seen.
async fn poll_count(client: &Client, sql: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn in_recovery(client: &Client) -> bool {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn replica_streams_rows_and_is_read_only() {
    let primary = PgCluster::start().await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let p = primary.connect().await.unwrap();
    let r = replica.connect().await.unwrap();
    assert!(!in_recovery(&p).await);
    assert!(in_recovery(&r).await);

    p.batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let seen = poll_count(&r, "SELECT count(*) FROM pg_class WHERE relname = 't'", 1).await;
    assert_eq!(seen, 1, "table not replicated");
    assert_eq!(poll_count(&r, "SELECT count(*) FROM t", 2).await, 2);

    let err = r
        .execute("INSERT INTO t VALUES (3)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );

    // The primary sees the replica under its name.
    let name = replica.name().unwrap().to_string();
    let row = p
        .query_one(
            "SELECT state FROM pg_stat_replication WHERE application_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "streaming");
}

#[tokio::test]
async fn synchronous_commit_waits_for_the_replica() {
    let primary = PgCluster::start_with(SYNC_REPLICATION).await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let sync: String = p
        .query_one("SELECT sync_state FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, "sync");

    replica.pause();
    let mut insert =
        tokio::spawn(async move { p.execute("INSERT INTO t VALUES (2)", &[]).await.map(|_| p) });
    // The commit cannot be acknowledged while the replica is frozen.
    let waited = tokio::time::timeout(Duration::from_secs(2), &mut insert).await;
    assert!(
        waited.is_err(),
        "commit returned while the replica was paused"
    );

    replica.resume();
    let p = tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .expect("commit still blocked after the replica resumed")
        .unwrap()
        .unwrap();
    drop(p);
    let r = replica.connect().await.unwrap();
    // Synchronous: once acknowledged, the replica holds the row (flushed;
    // replay follows).
    assert_eq!(poll_count(&r, "SELECT count(*) FROM t", 2).await, 2);
}

#[tokio::test]
async fn replica_survives_primary_kill_and_promotes() {
    let mut primary = PgCluster::start().await.unwrap();
    let replica = PgCluster::start_replica_of(&primary).await.unwrap();
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let r = replica.connect().await.unwrap();
    assert_eq!(
        poll_count(&r, "SELECT count(*) FROM pg_class WHERE relname = 't'", 1).await,
        1
    );
    assert_eq!(poll_count(&r, "SELECT count(*) FROM t", 1).await, 1);

    primary.kill9().await;
    assert!(!primary.is_ready().await);
    assert!(replica.is_ready().await);
    assert!(in_recovery(&r).await);

    let promoted: bool = r
        .query_one("SELECT pg_promote(true, 30)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted);
    assert!(!in_recovery(&r).await);
    r.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    assert_eq!(poll_count(&r, "SELECT count(*) FROM t", 2).await, 2);
}

#[tokio::test]
async fn replica_restarts_as_a_replica() {
    let primary = PgCluster::start().await.unwrap();
    let mut replica = PgCluster::start_replica_of(&primary).await.unwrap();
    replica.restart().await.unwrap();
    let r = replica.connect().await.unwrap();
    assert!(in_recovery(&r).await);
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(
        poll_count(&r, "SELECT count(*) FROM pg_class WHERE relname = 't'", 1).await,
        1
    );
}

#[tokio::test]
async fn paused_primary_hangs_new_connections_and_resumes() {
    let primary = PgCluster::start().await.unwrap();
    primary.pause();
    let attempt = tokio::time::timeout(Duration::from_millis(1500), primary.connect()).await;
    assert!(attempt.is_err(), "a paused server accepted a session");
    primary.resume();
    let c = primary.connect().await.unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
}
