//! A writer and a reader per router for fault tests: each writer sends
//! numbered inserts one at a time (`INSERT INTO writes (n) ...
//! RETURNING inet_server_port()`) without client retries and records
//! every acknowledged one, with when it was sent and answered and which
//! server port ran it; each reader sends `eventual` counts.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use shardline_api::router::{Consistency, ExecuteRequest, ShardKeyValue};
use shardline_client::{RetryPolicy, RouterClient};

/// The table the writers fill (one migration).
pub const TABLE: &str = "CREATE TABLE writes (n bigint PRIMARY KEY, at timestamptz DEFAULT now())";

/// Writer `i` numbers its inserts from `i * WRITER_SPAN + 1`.
pub const WRITER_SPAN: i64 = 100_000_000;

/// A statement for shard key `w`.
pub fn req(sql: &str, params: Vec<serde_json::Value>, consistency: Consistency) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text("w".into()),
        sql: sql.into(),
        params,
        consistency,
    }
}

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub n: i64,
    pub sent: Instant,
    pub at: Instant,
    /// The server port that ran it (`inet_server_port()`).
    pub port: Option<i64>,
    /// Which writer (router) sent it.
    pub writer: usize,
}

/// What the writers and readers saw.
#[derive(Default)]
pub struct Log {
    /// Acknowledged writes, in the order their answers came.
    pub acked: Mutex<Vec<Ack>>,
    /// Writes answered with an error: number, sent, answered, error.
    pub failed: Mutex<Vec<(i64, Instant, Instant, String)>>,
    pub write_errors: AtomicU64,
    pub reads_ok: AtomicU64,
    pub read_errors: AtomicU64,
}

impl Log {
    pub fn acks(&self) -> Vec<Ack> {
        self.acked.lock().unwrap().clone()
    }
}

pub struct Load {
    pub log: Arc<Log>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A client of `url` without retries.
pub fn no_retry_client(url: &str, token: &str) -> RouterClient {
    RouterClient::new(url, Some(token.to_string()))
        .unwrap()
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(20))
}

impl Load {
    /// A writer and a reader through each router at `urls`; starts once
    /// eventual reads through the first find the table (replicas have
    /// replayed the migration).
    pub async fn start(urls: &[&str], token: &str) -> Load {
        let first = no_retry_client(urls[0], token);
        let mut replayed = 0;
        for _ in 0..500 {
            let r = first
                .execute(&req(
                    "SELECT count(*) FROM writes",
                    vec![],
                    Consistency::Eventual,
                ))
                .await;
            replayed = if r.is_ok() { replayed + 1 } else { 0 };
            if replayed >= 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(replayed >= 20, "replicas never replayed the migration");
        let log = Arc::new(Log::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (writer, url) in urls.iter().enumerate() {
            let router = no_retry_client(url, token);
            tasks.push(tokio::spawn(write(
                router.clone(),
                writer,
                log.clone(),
                stop.clone(),
            )));
            tasks.push(tokio::spawn(read(router, log.clone(), stop.clone())));
        }
        Load { log, stop, tasks }
    }

    pub async fn finish(self) -> Arc<Log> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.log
    }
}

async fn write(router: RouterClient, writer: usize, log: Arc<Log>, stop: Arc<AtomicBool>) {
    let mut n = writer as i64 * WRITER_SPAN;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = Instant::now();
        let r = router
            .execute(&req(
                "INSERT INTO writes (n) VALUES ($1) RETURNING inet_server_port()",
                vec![json!(n)],
                Consistency::Strong,
            ))
            .await;
        match r {
            Ok(r) => {
                // An acknowledged insert that reports no row is a lost
                // write.
                assert_eq!(r.result.rows_affected, 1, "insert of {n} acknowledged");
                log.acked.lock().unwrap().push(Ack {
                    n,
                    sent,
                    at: Instant::now(),
                    port: r.result.rows[0][0].as_i64(),
                    writer,
                });
            }
            Err(e) => {
                log.write_errors.fetch_add(1, Ordering::Relaxed);
                log.failed
                    .lock()
                    .unwrap()
                    .push((n, sent, Instant::now(), e.to_string()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn read(router: RouterClient, log: Arc<Log>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let r = router
            .execute(&req(
                "SELECT count(*) FROM writes",
                vec![],
                Consistency::Eventual,
            ))
            .await;
        match r {
            Ok(_) => log.reads_ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("eventual read failed: {e}");
                log.read_errors.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Acknowledged writes missing from the shard's primary (read through
/// `router`).
pub async fn missing(router: &RouterClient, log: &Log) -> Vec<i64> {
    let rows = router
        .execute(&req("SELECT n FROM writes", vec![], Consistency::Strong))
        .await
        .expect("read back");
    let present: std::collections::HashSet<i64> = rows
        .result
        .rows
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    log.acks()
        .iter()
        .map(|a| a.n)
        .filter(|n| !present.contains(n))
        .collect()
}

/// Time from `t` to the acknowledgement of the first write sent after
/// it (a write already in flight at `t` does not count).
pub fn first_ack_after(log: &Log, t: Instant) -> Option<Duration> {
    log.acks()
        .iter()
        .filter(|a| a.sent > t)
        .map(|a| a.at - t)
        .min()
}

/// Longest gap between consecutive acknowledgements.
pub fn longest_pause(log: &Log) -> Duration {
    let mut at: Vec<Instant> = log.acks().iter().map(|a| a.at).collect();
    at.sort();
    at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// When the catalog first showed a failover intent on `shard`, and when
/// its generation moved past `generation` (polled every 10 ms).
pub struct Watched {
    pub intent: Option<Instant>,
    pub committed: Option<Instant>,
}

/// Polls `shard` until its failover commits, up to `limit`.
pub async fn watch_failover(
    admin: &shardline_client::ManagerClient,
    shard: &str,
    generation: u64,
    limit: Duration,
) -> Watched {
    let mut w = Watched {
        intent: None,
        committed: None,
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(s) = admin.get_shard(shard).await {
            if s.failover.is_some() && w.intent.is_none() {
                w.intent = Some(Instant::now());
            }
            if s.generation > generation {
                w.committed = Some(Instant::now());
                w.intent.get_or_insert(Instant::now());
                return w;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w
}

/// The writes of `lost` that were acknowledged after `t`.
pub fn lost_after(log: &Log, lost: &[i64], t: Instant) -> Vec<i64> {
    let acked_at: std::collections::HashMap<i64, Instant> =
        log.acks().iter().map(|a| (a.n, a.at)).collect();
    lost.iter().copied().filter(|n| acked_at[n] > t).collect()
}

/// The writes of `lost` that were sent after `t`.
pub fn lost_sent_after(log: &Log, lost: &[i64], t: Instant) -> Vec<i64> {
    let sent_at: std::collections::HashMap<i64, Instant> =
        log.acks().iter().map(|a| (a.n, a.sent)).collect();
    lost.iter().copied().filter(|n| sent_at[n] > t).collect()
}

/// The replication mode, as the tests print it.
pub fn mode(synchronous: bool) -> &'static str {
    if synchronous {
        "synchronous"
    } else {
        "asynchronous"
    }
}
