//! `serve_spread`: each HTTP connection is served on a thread of the
//! caller's (the router's lanes), and shutdown drains as `serve` does:
//! the listener closes at once, a request under way is answered, idle
//! connections close, and what is still open after the drain is cut.
//! Real sockets on loopback, a real axum app, a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use shardline_http::{serve_spread, Job, Spread};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Threads with a single-threaded runtime each, named `spread-N`, taking
/// jobs in turn.
struct Threads {
    senders: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Job>>>,
    next: AtomicUsize,
}

impl Threads {
    fn start(n: usize) -> Arc<Threads> {
        let mut senders = Vec::new();
        for i in 0..n {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            std::thread::Builder::new()
                .name(format!("spread-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                    });
                })
                .expect("thread");
            senders.push(tx);
        }
        Arc::new(Threads {
            senders: Mutex::new(senders),
            next: AtomicUsize::new(0),
        })
    }
}

impl Spread for Threads {
    fn run(&self, job: Job) -> bool {
        let senders = self.senders.lock().unwrap();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % senders.len();
        senders[i].send(job).is_ok()
    }
}

fn app() -> Router {
    Router::new()
        .route(
            "/where",
            get(|| async { std::thread::current().name().unwrap_or("?").to_string() }),
        )
        .route(
            "/sleep/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "slept".to_string()
                },
            ),
        )
}

/// Serves [`app`] on two threads with `drain`; returns the address, the
/// shutdown token and the serving task. The threads outlive the serving
/// (they are never stopped), so what ends a connection is the serving's
/// own doing.
async fn start(
    drain: Duration,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let threads = Threads::start(2);
    std::mem::forget(Arc::clone(&threads));
    let spread: Arc<dyn Spread> = threads;
    let task = tokio::spawn(serve_spread(
        listener,
        None,
        app(),
        stop.clone(),
        drain,
        spread,
    ));
    (addr, stop, task)
}

/// Sends `GET path` on `conn` and reads the answer: its status and body,
/// or `None` if the connection closed first.
async fn request(conn: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closes `conn` within `limit` (it reads end of
/// file or an error).
async fn closes_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, conn.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn each_connection_is_served_on_one_of_the_threads() {
    let (addr, stop, task) = start(Duration::from_secs(1)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        // Two requests on one connection: the same thread serves both.
        let (s1, first) = request(&mut conn, "/where").await.expect("answer");
        let (s2, second) = request(&mut conn, "/where").await.expect("answer");
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(first, second, "a connection moved between threads");
        seen.push(first);
    }
    assert_eq!(seen, ["spread-0", "spread-1", "spread-0", "spread-1"]);
    stop.cancel();
    task.await.expect("joins").expect("serves");
}

#[tokio::test]
async fn at_shutdown_a_request_under_way_is_answered_and_idle_connections_close() {
    let (addr, stop, task) = start(Duration::from_secs(3)).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(request(&mut idle, "/where").await.map(|a| a.0), Some(200));
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let under_way = tokio::spawn(async move {
        let answer = request(&mut busy, "/sleep/500").await;
        (answer, busy)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopped = Instant::now();
    stop.cancel();

    // The idle keep-alive connection is closed, well before the drain
    // ends; the request under way is answered, then its connection too.
    assert!(
        closes_within(&mut idle, Duration::from_secs(1)).await,
        "an idle connection stayed open at shutdown"
    );
    let (answer, mut busy) = under_way.await.expect("joins");
    assert_eq!(answer, Some((200, "slept".to_string())));
    assert!(closes_within(&mut busy, Duration::from_secs(1)).await);
    // New connections are refused.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "accepted after shutdown"
    );
    task.await.expect("joins").expect("serves");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "the drain waited for nothing: {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn a_request_still_running_when_the_drain_ends_is_cut() {
    let drain = Duration::from_millis(400);
    let (addr, stop, task) = start(drain).await;
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let under_way = tokio::spawn(async move { request(&mut busy, "/sleep/5000").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopped = Instant::now();
    stop.cancel();
    task.await.expect("joins").expect("serves");
    let waited = stopped.elapsed();
    assert!(
        waited >= drain,
        "returned after {waited:?}, before the drain"
    );
    assert!(waited < Duration::from_secs(3), "returned after {waited:?}");
    let answer = under_way.await.expect("joins");
    assert_eq!(answer, None, "a request outlived the drain");
    assert!(stopped.elapsed() < Duration::from_secs(3));
}
