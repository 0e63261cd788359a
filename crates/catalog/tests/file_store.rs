//! The file store: the conformance suite, persistence, damage, locking,
//! watch history limits, and crash safety under `kill -9`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_catalog::{
    conformance, CatalogStore, FileStore, FileStoreOptions, Op, Precondition, StoreError,
    WatchBatch,
};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(10);

fn put(key: &str, value: impl Into<Vec<u8>>) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

async fn recv(watch: &mut shardline_catalog::Watch) -> Option<Result<WatchBatch, StoreError>> {
    tokio::time::timeout(WAIT, watch.recv())
        .await
        .expect("watch did not answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let dirs: Arc<Mutex<Vec<TempDir>>> = Arc::default();
    conformance::run_all(|| {
        let dirs = dirs.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let store = FileStore::open(dir.path().join("catalog.json"))
                .await
                .unwrap();
            dirs.lock().unwrap().push(dir);
            store
        }
    })
    .await;
}

/// What the suite leaves to each store: a new file store is at revision 0.
#[tokio::test]
async fn a_new_store_is_empty_at_revision_0() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("catalog.json"))
        .await
        .unwrap();
    let snap = store.snapshot("").await.unwrap();
    assert_eq!(snap.revision, 0, "a fresh store is at revision 0");
    assert!(snap.entries.is_empty(), "{snap:?}");
}

#[tokio::test]
async fn open_creates_the_file_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(store.path(), path);
    assert!(path.exists(), "open creates the file");
    assert_eq!(store.revision(), 0);
    store
        .txn(&[], &[put("a", "1"), put("bin", vec![0xff, 0])])
        .await
        .unwrap();
    store.txn(&[], &[put("b", "2")]).await.unwrap();
    let r3 = store
        .txn(&[], &[Op::Delete { key: "a".into() }])
        .await
        .unwrap();
    assert_eq!(r3, 3);
    let before = store.snapshot("").await.unwrap();
    drop(store);

    let store = FileStore::open(&path).await.unwrap();
    let after = store.snapshot("").await.unwrap();
    assert_eq!(
        after, before,
        "reopen restores entries, mod_revisions and revision"
    );
    let r4 = store.txn(&[], &[put("c", "3")]).await.unwrap();
    assert_eq!(r4, 4, "the revision continues after reopen");
    let c = store.get("c").await.unwrap().unwrap();
    assert_eq!(c.mod_revision, 4);
}

#[tokio::test]
async fn open_in_a_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let result = FileStore::open(dir.path().join("no/such/dir/catalog.json")).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

/// Writes a valid store with a few entries and returns its file's bytes.
async fn valid_file(path: &Path) -> Vec<u8> {
    let store = FileStore::open(path).await.unwrap();
    for i in 0..5 {
        store
            .txn(&[], &[put(&format!("key/{i}"), format!("{{\"n\":{i}}}"))])
            .await
            .unwrap();
    }
    drop(store);
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_damaged_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let good = valid_file(&path).await;
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated to half", good[..good.len() / 2].to_vec()),
        ("missing last byte", good[..good.len() - 1].to_vec()),
        ("garbage", b"\x00\x01garbage\xff not a catalog\n".to_vec()),
        ("one byte changed", flipped),
        ("plain JSON", b"{\"revision\":1,\"entries\":[]}\n".to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        match FileStore::open(&path).await {
            Err(StoreError::Corrupt(message)) => {
                assert!(
                    message.contains(&path.display().to_string()),
                    "{what}: the message names the file: {message}"
                );
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
    std::fs::write(&path, &good).unwrap();
    let store = FileStore::open(&path).await.unwrap();
    assert_eq!(store.revision(), 5, "the undamaged file still opens");
}

#[tokio::test]
async fn a_second_open_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let first = FileStore::open(&path).await.unwrap();
    match FileStore::open(&path).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("locked by another process"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    first.txn(&[], &[put("k", "v")]).await.unwrap();
    drop(first);
    let second = FileStore::open(&path).await.unwrap();
    assert_eq!(second.revision(), 1, "opens once the first is closed");
}

#[tokio::test]
async fn watches_before_the_kept_history_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let options = FileStoreOptions { history: 5 };
    let store = FileStore::open_with(&path, options.clone()).await.unwrap();
    for i in 1..=10 {
        store.txn(&[], &[put("k", i.to_string())]).await.unwrap();
    }
    match store.watch("", 4).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (4, 5));
        }
        other => panic!("watch from 4 with 5 kept of 10: {other:?}"),
    }
    let mut watch = store.watch("", 5).await.unwrap();
    let first = recv(&mut watch).await.unwrap().unwrap();
    assert_eq!(first.revision, 6, "the oldest kept batch");
    drop(store);

    let store = FileStore::open_with(&path, options).await.unwrap();
    for after in [0, 9] {
        let result = store.watch("", after).await;
        assert!(
            matches!(result, Err(StoreError::Compacted { oldest: 10, .. })),
            "after reopen, watch from {after}: {result:?}"
        );
    }
    let mut watch = store.watch("", 10).await.unwrap();
    store.txn(&[], &[put("k", "11")]).await.unwrap();
    let batch = recv(&mut watch).await.unwrap().unwrap();
    assert_eq!(
        batch.revision, 11,
        "a watch from the revision at open sees later batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_does_not_block_writers() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileStoreOptions { history: 20 };
    let store = FileStore::open_with(dir.path().join("catalog.json"), options)
        .await
        .unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    // Nobody reads the watch while 300 commits go through.
    tokio::time::timeout(Duration::from_secs(120), async {
        for i in 1..=300 {
            store.txn(&[], &[put("k", i.to_string())]).await.unwrap();
        }
    })
    .await
    .expect("commits stalled behind a watcher that does not read");
    let mut expected = 1;
    loop {
        match recv(&mut watch).await {
            Some(Ok(batch)) => {
                assert_eq!(
                    batch.revision, expected,
                    "batches before the end have no gaps"
                );
                expected += 1;
                assert!(expected <= 301, "too many batches");
            }
            Some(Err(StoreError::Compacted { requested, oldest })) => {
                assert_eq!(
                    requested,
                    expected - 1,
                    "compacted at the last delivered batch"
                );
                assert_eq!(oldest, 280, "history keeps the last 20 of 300");
                break;
            }
            other => panic!("expected batches then Compacted, got {other:?}"),
        }
    }
    assert!(recv(&mut watch).await.is_none(), "Compacted ends the watch");
    assert_eq!(store.revision(), 300);
}

#[tokio::test]
async fn watches_end_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("catalog.json"))
        .await
        .unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    drop(store);
    assert!(
        recv(&mut watch).await.is_none(),
        "the watch ends with the store"
    );
}

#[tokio::test]
async fn values_are_readable_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let store = FileStore::open(&path).await.unwrap();
    store
        .txn(
            &[],
            &[
                put("tenants/t1", r#"{"name":"acme"}"#),
                put("raw", vec![0xff]),
            ],
        )
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(r#""key":"tenants/t1""#), "{text}");
    assert!(
        text.contains(r#""text":"{\"name\":\"acme\"}""#),
        "JSON values stay text: {text}"
    );
    assert!(
        text.contains(r#""base64":"/w==""#),
        "binary values are base64: {text}"
    );
}

/// Prints the cost of one commit on a catalog of 10,000 entries of ~300
/// bytes (each commit rewrites the whole file). A benchmark: no assertion
/// on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_cost_with_10k_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    let store = FileStore::open(&path).await.unwrap();
    let value = format!("{{\"payload\":\"{}\"}}", "x".repeat(285));
    let ops: Vec<Op> = (0..10_000)
        .map(|i| put(&format!("entries/{i:05}"), value.clone()))
        .collect();
    store.txn(&[], &ops).await.unwrap();
    let mut times = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        store
            .txn(&[], &[put(&format!("entries/{i:05}"), value.clone())])
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    drop(store);
    let started = Instant::now();
    let store = FileStore::open(&path).await.unwrap();
    let open = started.elapsed();
    assert_eq!(
        store.snapshot("entries/").await.unwrap().entries.len(),
        10_000
    );
    times.sort();
    println!(
        "file store, 10k entries, {} KiB file: commit min {:?} median {:?} max {:?}; open {:?}",
        std::fs::metadata(&path).unwrap().len() / 1024,
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        open
    );
}

// Crash safety: a child process (this test binary, running only
// `crash_writer_child`) commits in a loop and acknowledges each revision
// on stdout; the parent kills it with SIGKILL at random moments and checks
// that the file opens and holds every acknowledged commit.

const CHILD_ENV: &str = "SHARDLINE_CATALOG_CRASH_WRITER";
const BLOBS: u64 = 500;

/// Does nothing unless started by `crash_safety_under_kill_9`.
#[test]
fn crash_writer_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = FileStore::open(PathBuf::from(path)).await.unwrap();
        let mut out = std::io::stdout().lock();
        // Bounded, in case the parent dies without killing us.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let counter = store.get("counter").await.unwrap().unwrap();
            let n: u64 = std::str::from_utf8(&counter.value)
                .unwrap()
                .parse()
                .unwrap();
            let blob = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "p".repeat(280));
            let revision = store
                .txn(
                    &[Precondition::ModRevision(
                        "counter".into(),
                        counter.mod_revision,
                    )],
                    &[
                        put("counter", (n + 1).to_string()),
                        put(&format!("blob/{}", n % BLOBS), blob),
                    ],
                )
                .await
                .unwrap();
            // A line of its own: libtest may have printed a partial line.
            writeln!(out, "\nACK {revision} {}", n + 1).unwrap();
            out.flush().unwrap();
        }
    });
}

/// A tiny xorshift generator, so kill times vary without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn crash_safety_under_kill_9() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.json");
    // Revision 1: the counter at 0 and enough entries that each commit
    // writes a few hundred KiB, so kills land mid-write.
    runtime.block_on(async {
        let store = FileStore::open(&path).await.unwrap();
        let mut ops = vec![put("counter", "0")];
        ops.extend((0..BLOBS).map(|i| put(&format!("blob/{i}"), "p".repeat(300))));
        assert_eq!(store.txn(&[], &ops).await.unwrap(), 1);
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut acked: (u64, u64) = (1, 0);
    let exe = std::env::current_exe().unwrap();
    for round in 0..16 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
                    let ack = (parts.next().unwrap(), parts.next().unwrap());
                    if tx.send(ack).is_err() {
                        break;
                    }
                }
            }
        });
        // Even rounds kill while committing; odd ones at any moment from
        // the start, open included.
        if round % 2 == 0 {
            let first = rx.recv_timeout(Duration::from_secs(60));
            let first = first.expect("the writer acknowledged nothing within 60s");
            acked = acked.max(first);
            std::thread::sleep(Duration::from_millis(rng.below(300)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(100)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let mut count = 0;
        for ack in rx.try_iter() {
            assert!(
                ack > acked,
                "acknowledgements out of order: {ack:?} after {acked:?}"
            );
            acked = ack;
            count += 1;
        }
        let (ack_revision, ack_counter) = acked;
        // Shows how often a kill cut a write short (the open removes it).
        let mid_write = Path::new(&format!("{}.tmp", path.display())).exists();
        runtime.block_on(async {
            let store = FileStore::open(&path)
                .await
                .unwrap_or_else(|e| panic!("round {round}: reopen after kill -9: {e}"));
            let snap = store.snapshot("").await.unwrap();
            let counter = store.get("counter").await.unwrap().unwrap();
            let n: u64 = std::str::from_utf8(&counter.value)
                .unwrap()
                .parse()
                .unwrap();
            println!(
                "round {round}: {count} more acks, last acked revision {ack_revision}, \
                 store at {}, killed mid-write: {mid_write}",
                snap.revision
            );
            assert!(
                snap.revision >= ack_revision,
                "round {round}: store at {} lost acknowledged revision {ack_revision}",
                snap.revision
            );
            assert!(
                n >= ack_counter,
                "round {round}: counter {n} < acknowledged {ack_counter}"
            );
            // Every commit after the first writes the counter once.
            assert_eq!(
                counter.mod_revision, snap.revision,
                "round {round}: counter revision"
            );
            assert_eq!(
                n + 1,
                snap.revision,
                "round {round}: counter matches the revision"
            );
            assert_eq!(
                snap.entries.len() as u64,
                BLOBS + 1,
                "round {round}: every entry present"
            );
        });
    }
    assert!(acked.0 > 1, "the writers committed something");
}
