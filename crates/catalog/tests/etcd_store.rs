//! The etcd store against a real etcd (one throwaway member per test):
//! the conformance suite, prefixes sharing one cluster, watches that
//! survive an etcd restart, compaction, and an unreachable etcd.
//!
//! Each test names in its docs the control run that showed it can fail:
//! the store was broken on purpose, the test run, and the store restored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shardline_catalog::{
    conformance, CatalogStore, EtcdStore, EtcdStoreOptions, Op, Revision, StoreError, Watch,
    WatchBatch, WatchEvent,
};
use shardline_testkit::EtcdServer;

/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

/// Options with short timeouts, so tests of an etcd that is down are
/// quick.
fn options(etcd: &EtcdServer, prefix: &str) -> EtcdStoreOptions {
    let mut options = EtcdStoreOptions::new([etcd.endpoint()]).with_prefix(prefix);
    options.request_timeout = Duration::from_secs(2);
    options.connect_timeout = Duration::from_secs(1);
    options.reconnect_max = Duration::from_millis(500);
    options
}

async fn store(etcd: &EtcdServer, prefix: &str) -> EtcdStore {
    EtcdStore::connect(options(etcd, prefix)).await.unwrap()
}

async fn recv(watch: &mut Watch) -> Option<Result<WatchBatch, StoreError>> {
    tokio::time::timeout(WAIT, watch.recv())
        .await
        .expect("watch did not answer in time")
}

async fn next(watch: &mut Watch, what: &str) -> WatchBatch {
    match recv(watch).await {
        Some(Ok(batch)) => batch,
        other => panic!("{what}: expected a batch, got {other:?}"),
    }
}

/// Commits, retrying while etcd comes back (bounded).
async fn commit_when_up(store: &EtcdStore, ops: &[Op]) -> Revision {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match store.txn(&[], ops).await {
            Ok(revision) => return revision,
            Err(StoreError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                println!("etcd not back yet: {why}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("commit {ops:?}: {e}"),
        }
    }
}

/// The whole suite, each store on a fresh prefix of one etcd.
///
/// Control: with `Absent` mapped to `create_revision != 0` it failed at
/// its first check, `empty_store` (`txn [Absent("missing")] []:
/// conflict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let etcd = EtcdServer::start().await.unwrap();
    let stores = AtomicUsize::new(0);
    conformance::run_all(|| {
        let prefix = format!("conformance/{}/", stores.fetch_add(1, Ordering::Relaxed));
        let options = options(&etcd, &prefix);
        async move { EtcdStore::connect(options).await.unwrap() }
    })
    .await;
}

/// Two prefixes on one etcd keep their keys apart, while the revision is
/// etcd's, shared by both: a write under one prefix advances the other's
/// revision, and its watches do not see the write.
///
/// Control: with the store prefix left off the watched range, the watch
/// of `b/` received `a/`'s key and failed ("b's batch: expected a batch,
/// got Some(Err(Corrupt(\"etcd returned a key outside the prefix\")))").
#[tokio::test]
async fn prefixes_share_one_etcd() {
    let etcd = EtcdServer::start().await.unwrap();
    let a = store(&etcd, "a/").await;
    let b = store(&etcd, "b/").await;
    let start = b.snapshot("").await.unwrap().revision;
    assert!(start >= 1, "etcd's revision starts at 1: {start}");
    let mut watch_b = b.watch("", start).await.unwrap();
    let ra = a.txn(&[], &[put("k", "from a")]).await.unwrap();
    assert_eq!(ra, start + 1, "one write, one revision");
    let snap_b = b.snapshot("").await.unwrap();
    assert!(snap_b.entries.is_empty(), "b sees none of a's keys");
    assert_eq!(snap_b.revision, ra, "the revision is the cluster's");
    assert_eq!(b.get("k").await.unwrap(), None);
    let rb = b.txn(&[], &[put("k", "from b")]).await.unwrap();
    assert_eq!(rb, ra + 1);
    let batch = next(&mut watch_b, "b's batch").await;
    assert_eq!(batch.revision, rb, "only b's own batch: {batch:?}");
    let a_k = a.get("k").await.unwrap().unwrap();
    assert_eq!((a_k.value, a_k.mod_revision), (b"from a".to_vec(), ra));
    let full = a.snapshot("").await.unwrap();
    assert_eq!(full.entries.len(), 1, "a sees only its key: {full:?}");
    assert_eq!(
        full.entries[0].key, "k",
        "keys come back without the prefix"
    );
}

/// etcd refuses a txn that writes one key twice; the store sends only the
/// last op on each key, so the final state is what the ops say, in one
/// revision with one event per key.
///
/// Control: with every op sent as given, the txn failed with
/// `Unavailable("... etcdserver: duplicate key given in txn request")`.
#[tokio::test]
async fn a_txn_may_write_one_key_twice() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "dup/").await;
    let start = store.txn(&[], &[put("gone", "x")]).await.unwrap();
    let mut watch = store.watch("", start).await.unwrap();
    let ops = [
        put("k", "1"),
        put("gone", "y"),
        put("k", "2"),
        Op::Delete { key: "gone".into() },
    ];
    let r = store.txn(&[], &ops).await.unwrap();
    assert_eq!(r, start + 1);
    let k = store.get("k").await.unwrap().unwrap();
    assert_eq!(k.value, b"2", "the last put wins");
    assert_eq!(
        store.get("gone").await.unwrap(),
        None,
        "the last op deletes"
    );
    let batch = next(&mut watch, "the txn's batch").await;
    let keys: Vec<&str> = batch
        .events
        .iter()
        .map(|event| match event {
            WatchEvent::Put(entry) => entry.key.as_str(),
            WatchEvent::Delete { key, .. } => key.as_str(),
        })
        .collect();
    assert_eq!(keys, ["k", "gone"], "one event per key, in last-op order");
}

/// A watch survives etcd being killed and restarted on the same data: it
/// reconnects and resumes from the last batch it delivered, so every batch
/// arrives once, in order, including those committed while it was
/// disconnected.
///
/// Controls: with a broken stream ending the watch instead of
/// reconnecting, it failed with "batch after the restart: expected a
/// batch, got None"; with the reconnect resuming from the watch's start
/// revision instead of the last delivered one, r2 came again ("round 0:
/// first batch after the restart", revision 3 where 5 was due). (Only
/// reopening from the start revision, with the delivered revision still
/// kept, passed: the task also drops events at or before the last batch
/// it delivered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_etcd_restarts() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "restart/").await;
    let r1 = store.txn(&[], &[put("k", "1")]).await.unwrap();
    let mut watch = store.watch("", r1).await.unwrap();
    let r2 = store.txn(&[], &[put("k", "2")]).await.unwrap();
    let r3 = store
        .txn(&[], &[put("k", "3"), put("other", "3")])
        .await
        .unwrap();
    assert_eq!(next(&mut watch, "r2").await.revision, r2);
    assert_eq!(next(&mut watch, "r3").await.revision, r3);

    for round in 0..2 {
        etcd.kill();
        etcd.restart().await.unwrap();
        // Committed as soon as etcd is back, usually before the watch has
        // reconnected: it must replay these.
        let before = commit_when_up(&store, &[put("k", &format!("a{round}"))]).await;
        let after = store
            .txn(
                &[],
                &[
                    Op::Delete {
                        key: "other".into(),
                    },
                    put("x", "1"),
                ],
            )
            .await
            .unwrap();
        let got = next(&mut watch, "batch after the restart").await;
        assert_eq!(
            got.revision, before,
            "round {round}: first batch after the restart: {got:?}"
        );
        assert_eq!(
            got.events,
            vec![WatchEvent::Put(shardline_catalog::Entry {
                key: "k".into(),
                value: format!("a{round}").into_bytes(),
                mod_revision: before,
            })]
        );
        let got = next(&mut watch, "second batch after the restart").await;
        assert_eq!(got.revision, after, "round {round}: {got:?}");
        assert_eq!(got.events.len(), 2, "delete and put, one batch: {got:?}");
        // `other` is put back for the next round's delete.
        store.txn(&[], &[put("other", "again")]).await.unwrap();
        next(&mut watch, "the put-back").await;
    }
}

/// A watch from before etcd's compaction revision is `Compacted`, naming
/// that revision as the oldest start; from the compaction revision on, it
/// works.
///
/// Control: with the start probe's answer ignored, `watch` from before
/// the compaction returned `Ok` ("watch from 0 after compacting at 5:
/// Ok(Receiver ..)").
#[tokio::test]
async fn a_watch_from_before_a_compaction_is_compacted() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "compact/").await;
    let mut revisions = Vec::new();
    for i in 1..=5 {
        revisions.push(store.txn(&[], &[put("k", &i.to_string())]).await.unwrap());
    }
    let (r2, r4, r5) = (revisions[1], revisions[3], revisions[4]);
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client
        .compact(
            i64::try_from(r4).unwrap(),
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    for after in [0, r2, r4 - 1] {
        match store.watch("", after).await {
            Err(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (after, r4), "watch from {after}");
            }
            other => panic!("watch from {after} after compacting at {r4}: {other:?}"),
        }
    }
    let mut watch = store.watch("", r4).await.unwrap();
    let batch = next(&mut watch, "the batch after the compaction revision").await;
    assert_eq!(batch.revision, r5);
    let snap = store.snapshot("").await.unwrap();
    assert_eq!(snap.entries.len(), 1, "a snapshot still reads: {snap:?}");
}

/// A watch whose last delivered revision is compacted while it is
/// disconnected cannot resume: it ends with `Compacted` on the stream (the
/// manager's follower then re-reads and watches again).
///
/// Control: with etcd's compaction cancel treated as a broken stream,
/// the watch kept reconnecting and the test failed with "watch did not
/// answer in time".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_a_compaction_ends_with_compacted() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let quiet = store(&etcd, "quiet/").await;
    let busy = store(&etcd, "busy/").await;
    let start = quiet.txn(&[], &[put("k", "1")]).await.unwrap();
    let mut watch = quiet.watch("", start).await.unwrap();
    let seen = quiet.txn(&[], &[put("k", "2")]).await.unwrap();
    assert_eq!(next(&mut watch, "quiet batch").await.revision, seen);
    let mut last = seen;
    for i in 0..5 {
        last = busy.txn(&[], &[put("n", &i.to_string())]).await.unwrap();
    }
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    // A connected watch is not disturbed by a compaction; its resume
    // point after a reconnect is.
    client
        .compact(i64::try_from(last).unwrap(), None)
        .await
        .unwrap();
    drop(client);
    etcd.kill();
    etcd.restart().await.unwrap();
    match recv(&mut watch).await {
        Some(Err(StoreError::Compacted { requested, oldest })) => {
            assert_eq!((requested, oldest), (seen, last));
        }
        other => panic!("expected Compacted on the stream, got {other:?}"),
    }
    assert!(recv(&mut watch).await.is_none(), "Compacted ends the watch");
    // What the caller does next works.
    let snap = quiet.snapshot("").await.unwrap();
    let mut watch = quiet.watch("", snap.revision).await.unwrap();
    let r = quiet.txn(&[], &[put("k", "3")]).await.unwrap();
    assert_eq!(next(&mut watch, "after the re-read").await.revision, r);
}

/// Every call fails with `Unavailable` while etcd is down (connections
/// refused), and works again once it is back, on the same store and on
/// one made while etcd was down.
///
/// Control: with etcd's errors classified as `Conflict`, it failed with
/// "snapshot: expected Unavailable, got Err(Conflict)". (Connections are
/// refused at once here; `calls_to_a_hung_etcd_time_out` covers the
/// etcd that does not answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_unavailable_while_etcd_is_down() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "down/").await;
    store.txn(&[], &[put("k", "1")]).await.unwrap();
    etcd.kill();
    let bounded = |what: &'static str| {
        move |result: Result<Result<(), StoreError>, tokio::time::error::Elapsed>| match result {
            Ok(Err(StoreError::Unavailable(message))) => {
                println!("{what}: {message}");
            }
            Ok(other) => panic!("{what}: expected Unavailable, got {other:?}"),
            Err(_) => panic!("a call while etcd is down ({what}) did not return"),
        }
    };
    let limit = WAIT;
    bounded("snapshot")(
        tokio::time::timeout(limit, async { store.snapshot("").await.map(drop) }).await,
    );
    bounded("get")(tokio::time::timeout(limit, async { store.get("k").await.map(drop) }).await);
    bounded("txn")(
        tokio::time::timeout(limit, async {
            store.txn(&[], &[put("k", "2")]).await.map(drop)
        })
        .await,
    );
    bounded("watch")(
        tokio::time::timeout(limit, async { store.watch("", 0).await.map(drop) }).await,
    );

    // A store made while etcd is down fails the same way, then works.
    let late = self::store(&etcd, "down/").await;
    bounded("get on a new store")(
        tokio::time::timeout(limit, async { late.get("k").await.map(drop) }).await,
    );
    etcd.restart().await.unwrap();
    let r = commit_when_up(&store, &[put("k", "3")]).await;
    let k = late.get("k").await.unwrap().unwrap();
    assert_eq!(
        (k.value, k.mod_revision),
        (b"3".to_vec(), r),
        "both stores work again"
    );
}

/// Calls to an etcd that accepts connections but never answers (paused
/// with SIGSTOP) fail with `Unavailable` after the request timeout
/// instead of hanging, and work again once it answers.
///
/// Control: with the request timeout removed from the store's calls, it
/// failed with "a call to a paused etcd did not return" (after the test's
/// own 20s bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_hung_etcd_time_out() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "hung/").await;
    store.txn(&[], &[put("k", "1")]).await.unwrap();
    etcd.pause().unwrap();
    let result = tokio::time::timeout(WAIT, store.txn(&[], &[put("k", "2")])).await;
    let get = tokio::time::timeout(WAIT, store.get("k")).await;
    etcd.resume().unwrap();
    match result {
        Ok(Err(StoreError::Unavailable(message))) => println!("txn: {message}"),
        Ok(other) => panic!("txn to a paused etcd: expected Unavailable, got {other:?}"),
        Err(_) => panic!("a call to a paused etcd did not return"),
    }
    assert!(
        matches!(get, Ok(Err(StoreError::Unavailable(_)))),
        "get from a paused etcd: {get:?}"
    );
    // The timed-out txn may have committed once etcd went on; either way
    // the store answers again.
    let k = store.get("k").await.unwrap().unwrap();
    assert!(k.value == b"1" || k.value == b"2", "{k:?}");
}

/// Watches end when the last clone of the store is dropped.
///
/// Control: with the store's close signal not watched, the watch stayed
/// open and it failed with "watch did not answer in time".
#[tokio::test]
async fn watches_end_when_the_store_is_dropped() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = store(&etcd, "drop/").await;
    let mut watch = store.watch("", 0).await.unwrap();
    drop(store);
    assert!(
        recv(&mut watch).await.is_none(),
        "the watch ends with the store"
    );
}

/// Over TLS with client certificates (`--client-cert-auth`): a store
/// with the CA and a client certificate reads and writes; one without a
/// client certificate, or trusting another CA, gets nothing.
///
/// The refusals are the control: the same calls that succeed with the
/// right files fail with the wrong ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    use shardline_catalog::EtcdTls;
    let etcd = EtcdServer::start_tls().await.unwrap();
    let files = etcd.tls_files().unwrap().clone();
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    let with = |tls: EtcdTls| {
        let mut o = options(&etcd, "tls/");
        o.tls = Some(tls);
        o
    };
    let good = EtcdStore::connect(with(EtcdTls {
        ca: read(&files.ca),
        identity: Some((read(&files.client_cert), read(&files.client_key))),
    }))
    .await
    .unwrap();
    good.txn(&[], &[put("k", "v")])
        .await
        .expect("write over TLS");
    assert_eq!(good.get("k").await.unwrap().unwrap().value, b"v");

    let no_cert = EtcdStore::connect(with(EtcdTls {
        ca: read(&files.ca),
        identity: None,
    }))
    .await
    .unwrap();
    let got = no_cert.get("k").await;
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "read without a client certificate: {got:?}"
    );

    let other = tempfile::tempdir().unwrap();
    let other = shardline_testkit::EtcdTlsFiles::make(other.path()).unwrap();
    let wrong_ca = EtcdStore::connect(with(EtcdTls {
        ca: read(&other.ca),
        identity: Some((read(&files.client_cert), read(&files.client_key))),
    }))
    .await
    .unwrap();
    let got = wrong_ca.get("k").await;
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "read trusting another CA: {got:?}"
    );
}
