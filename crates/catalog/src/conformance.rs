//! The conformance suite: what every [`CatalogStore`] must do.
//!
//! A store's tests call [`run_all`] with a function that makes a fresh,
//! empty store; each check gets its own. The checks are public so a
//! failing one can be run alone. Every wait is bounded by a timeout, so a
//! broken store fails with a message instead of hanging.
//!
//! Semantics pinned here (etcd's): one revision per committed transaction
//! that changes something; a transaction that changes nothing (no ops, or
//! only deletes of missing keys) returns the current revision and is not
//! seen by watches; events in a batch are in op order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{
    CatalogStore, Entry, Op, Precondition, Revision, StoreError, Watch, WatchBatch, WatchEvent,
};

/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(10);
/// The bound on the whole concurrent check.
const CONCURRENT_WAIT: Duration = Duration::from_secs(120);

/// Runs every check, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: CatalogStore,
{
    empty_store(&make().await).await;
    put_bumps_revision(&make().await).await;
    snapshot_by_prefix(&make().await).await;
    get_entry(&make().await).await;
    absent_precondition(&make().await).await;
    mod_revision_precondition(&make().await).await;
    conflict_writes_nothing(&make().await).await;
    delete(&make().await).await;
    txn_without_ops(&make().await).await;
    watch_replays_history(&make().await).await;
    watch_from_current(&make().await).await;
    watch_prefix_filter(&make().await).await;
    watch_delete_events(&make().await).await;
    concurrent_cas(Arc::new(make().await)).await;
}

/// A fresh store is empty, and a txn that changes nothing answers with
/// its revision.
///
/// Which revision a fresh store starts at is the backend's: a new file
/// store is at 0 (its own tests check that), while the etcd store keeps
/// etcd's cluster-wide revision, so a fresh prefix starts wherever the
/// cluster is. The suite pins only what both share.
pub async fn empty_store<S: CatalogStore>(store: &S) {
    let snap = snapshot(store, "").await;
    let unchanged = commit(store, &[absent("missing")], &[]).await;
    assert_eq!(
        unchanged, snap.revision,
        "a txn without ops on a fresh store answers with its revision"
    );
    assert!(
        snap.entries.is_empty(),
        "a fresh store has no entries: {snap:?}"
    );
    assert_eq!(get(store, "missing").await, None, "get of a missing key");
}

/// Each committed txn bumps the revision by one and stamps what it wrote.
pub async fn put_bumps_revision<S: CatalogStore>(store: &S) {
    let r0 = snapshot(store, "").await.revision;
    let r1 = commit(store, &[], &[put("a", "1")]).await;
    assert_eq!(r1, r0 + 1, "the first put is one revision later");
    let r2 = commit(store, &[], &[put("b", "2"), put("c", "3")]).await;
    assert_eq!(r2, r1 + 1, "a txn of two puts is one revision");
    assert_eq!(get(store, "a").await, Some(entry("a", "1", r1)));
    assert_eq!(get(store, "b").await, Some(entry("b", "2", r2)));
    assert_eq!(get(store, "c").await, Some(entry("c", "3", r2)));
    let r3 = commit(store, &[], &[put("a", "4")]).await;
    assert_eq!(r3, r2 + 1, "an overwrite is one revision later");
    assert_eq!(
        get(store, "a").await,
        Some(entry("a", "4", r3)),
        "an overwrite changes the value and mod_revision"
    );
    assert_eq!(snapshot(store, "").await.revision, r3, "snapshot revision");
}

/// A snapshot holds exactly the keys under its prefix, sorted.
pub async fn snapshot_by_prefix<S: CatalogStore>(store: &S) {
    let mut last = 0;
    for key in ["b/1", "a/2", "ab", "a/0", "a/1", "a"] {
        last = commit(store, &[], &[put(key, &format!("v-{key}"))]).await;
    }
    let keys = |snap: &crate::store::Snapshot| -> Vec<String> {
        snap.entries.iter().map(|e| e.key.clone()).collect()
    };
    let snap = snapshot(store, "a/").await;
    assert_eq!(keys(&snap), ["a/0", "a/1", "a/2"], "prefix a/");
    assert_eq!(snap.revision, last, "snapshot revision is the store's");
    for e in &snap.entries {
        assert_eq!(
            e.value,
            format!("v-{}", e.key).into_bytes(),
            "value of {}",
            e.key
        );
    }
    let snap = snapshot(store, "a").await;
    assert_eq!(keys(&snap), ["a", "a/0", "a/1", "a/2", "ab"], "prefix a");
    let snap = snapshot(store, "").await;
    assert_eq!(
        keys(&snap),
        ["a", "a/0", "a/1", "a/2", "ab", "b/1"],
        "empty prefix: all, sorted"
    );
    let snap = snapshot(store, "zz").await;
    assert!(snap.entries.is_empty(), "no key under zz: {snap:?}");
    assert_eq!(
        snap.revision, last,
        "an empty snapshot still has the revision"
    );
}

/// Get returns exact bytes, including empty and non-UTF-8 values.
pub async fn get_entry<S: CatalogStore>(store: &S) {
    let binary = vec![0u8, 0xff, 0x80, b'\n', b'"'];
    let r = commit(
        store,
        &[],
        &[
            Op::Put {
                key: "bin".into(),
                value: binary.clone(),
            },
            put("empty", ""),
            put("ключ/ü", "{\"json\":\"ok\\n\"}"),
        ],
    )
    .await;
    let got = get(store, "bin").await;
    assert_eq!(
        got.map(|e| e.value),
        Some(binary),
        "non-UTF-8 value round-trips"
    );
    assert_eq!(
        get(store, "empty").await,
        Some(entry("empty", "", r)),
        "empty value"
    );
    assert_eq!(
        get(store, "ключ/ü").await,
        Some(entry("ключ/ü", "{\"json\":\"ok\\n\"}", r)),
        "non-ASCII key and JSON value"
    );
    assert_eq!(
        get(store, "bi").await,
        None,
        "a key's prefix is not the key"
    );
    assert_eq!(get(store, "bin2").await, None, "missing key");
}

/// `Absent` fails when the key exists and holds when it does not.
pub async fn absent_precondition<S: CatalogStore>(store: &S) {
    let r1 = commit(store, &[], &[put("k", "1")]).await;
    let result = txn(store, &[absent("k")], &[put("k", "2")]).await;
    assert!(
        matches!(result, Err(StoreError::Conflict)),
        "Absent on an existing key conflicts: {result:?}"
    );
    assert_eq!(
        get(store, "k").await,
        Some(entry("k", "1", r1)),
        "a conflict writes nothing"
    );
    assert_eq!(
        snapshot(store, "").await.revision,
        r1,
        "a conflict is no revision"
    );
    let r2 = commit(store, &[absent("other")], &[put("other", "x")]).await;
    assert_eq!(r2, r1 + 1, "Absent on a missing key commits");
}

/// `ModRevision` conflicts when stale or missing and commits when current.
pub async fn mod_revision_precondition<S: CatalogStore>(store: &S) {
    let r1 = commit(store, &[], &[put("k", "1")]).await;
    let r2 = commit(store, &[], &[put("k", "2")]).await;
    let stale = txn(store, &[mod_rev("k", r1)], &[put("k", "3")]).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict)),
        "stale ModRevision: {stale:?}"
    );
    assert_eq!(
        get(store, "k").await,
        Some(entry("k", "2", r2)),
        "stale CAS writes nothing"
    );
    let r3 = commit(store, &[mod_rev("k", r2)], &[put("k", "3")]).await;
    assert_eq!(r3, r2 + 1, "current ModRevision commits");
    assert_eq!(get(store, "k").await, Some(entry("k", "3", r3)));
    let missing = txn(store, &[mod_rev("nope", r3)], &[put("nope", "x")]).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict)),
        "ModRevision on a missing key: {missing:?}"
    );
    assert_eq!(get(store, "nope").await, None, "a conflict writes nothing");
}

/// One failing precondition among several stops every op.
pub async fn conflict_writes_nothing<S: CatalogStore>(store: &S) {
    let ra = commit(store, &[], &[put("a", "1")]).await;
    let rb = commit(store, &[], &[put("b", "1")]).await;
    let mut watch = watch(store, "", rb).await;
    let result = txn(
        store,
        &[mod_rev("a", ra), absent("b")],
        &[put("a", "2"), Op::Delete { key: "b".into() }, put("c", "1")],
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::Conflict)),
        "one failing precondition: {result:?}"
    );
    assert_eq!(
        get(store, "a").await,
        Some(entry("a", "1", ra)),
        "a unchanged"
    );
    assert_eq!(
        get(store, "b").await,
        Some(entry("b", "1", rb)),
        "b not deleted"
    );
    assert_eq!(get(store, "c").await, None, "c not written");
    assert_eq!(
        snapshot(store, "").await.revision,
        rb,
        "no revision for a conflict"
    );
    let marker = commit(store, &[], &[put("marker", "1")]).await;
    assert_eq!(marker, rb + 1, "the next commit is the next revision");
    let batch = next(&mut watch, "the batch after a conflict").await;
    assert_eq!(
        batch.revision, marker,
        "watch saw nothing of the conflicting txn: {batch:?}"
    );
}

/// Deletes remove keys; deleting a missing key succeeds and changes nothing.
pub async fn delete<S: CatalogStore>(store: &S) {
    commit(store, &[], &[put("a", "1"), put("b", "1")]).await;
    let before = snapshot(store, "").await.revision;
    let rd = commit(store, &[], &[Op::Delete { key: "a".into() }]).await;
    assert_eq!(rd, before + 1, "a delete is one revision");
    assert_eq!(get(store, "a").await, None, "deleted key is gone");
    let snap = snapshot(store, "").await;
    assert_eq!(
        snap.entries,
        vec![entry("b", "1", before)],
        "only b is left"
    );
    let again = txn(store, &[], &[Op::Delete { key: "a".into() }]).await;
    assert!(
        matches!(again, Ok(r) if r == rd),
        "deleting a missing key is Ok at the current revision: {again:?}"
    );
    assert_eq!(
        snapshot(store, "").await.revision,
        rd,
        "no new revision for a no-op delete"
    );
    let rp = commit(store, &[absent("a")], &[put("a", "2")]).await;
    assert_eq!(
        get(store, "a").await,
        Some(entry("a", "2", rp)),
        "a deleted key can be put again"
    );
}

/// A txn without ops checks its preconditions and writes nothing.
pub async fn txn_without_ops<S: CatalogStore>(store: &S) {
    let rk = commit(store, &[], &[put("k", "1")]).await;
    let ok = txn(store, &[mod_rev("k", rk), absent("other")], &[]).await;
    assert!(
        matches!(ok, Ok(r) if r == rk),
        "holding preconditions, no ops: {ok:?}"
    );
    let conflict = txn(store, &[absent("k")], &[]).await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict)),
        "failing precondition, no ops: {conflict:?}"
    );
    let nothing = txn(store, &[], &[]).await;
    assert!(
        matches!(nothing, Ok(r) if r == rk),
        "an empty txn: {nothing:?}"
    );
    assert_eq!(
        snapshot(store, "").await.revision,
        rk,
        "no ops, no revision"
    );
}

/// A watch from 0 on a fresh store replays every batch, then goes live.
pub async fn watch_replays_history<S: CatalogStore>(store: &S) {
    let r1 = commit(store, &[], &[put("a/1", "x")]).await;
    let r2 = commit(store, &[], &[put("a/2", "y"), put("b/1", "z")]).await;
    let r3 = commit(store, &[], &[Op::Delete { key: "a/1".into() }]).await;
    let mut watch = watch(store, "", 0).await;
    let expected = [
        batch(r1, vec![put_event("a/1", "x", r1)]),
        batch(
            r2,
            vec![put_event("a/2", "y", r2), put_event("b/1", "z", r2)],
        ),
        batch(r3, vec![delete_event("a/1", r3)]),
    ];
    for (i, want) in expected.into_iter().enumerate() {
        let got = next(&mut watch, "replayed batch").await;
        assert_eq!(got, want, "replayed batch {i}");
    }
    let r4 = commit(store, &[], &[put("c", "w")]).await;
    let got = next(&mut watch, "live batch after replay").await;
    assert_eq!(
        got,
        batch(r4, vec![put_event("c", "w", r4)]),
        "live batch after replay"
    );
}

/// A watch from the current revision sees only later batches.
pub async fn watch_from_current<S: CatalogStore>(store: &S) {
    commit(store, &[], &[put("old", "1")]).await;
    let current = commit(store, &[], &[put("old", "2")]).await;
    let mut watch = watch(store, "", current).await;
    let r = commit(store, &[], &[put("new", "1")]).await;
    let got = next(&mut watch, "first batch after the current revision").await;
    assert_eq!(
        got,
        batch(r, vec![put_event("new", "1", r)]),
        "only the later change"
    );
}

/// A watch sees only events under its prefix and skips batches with none.
pub async fn watch_prefix_filter<S: CatalogStore>(store: &S) {
    let start = commit(store, &[], &[put("a/0", "0")]).await;
    let mut watch = watch(store, "a/", start).await;
    commit(store, &[], &[put("b/x", "1")]).await;
    let r2 = commit(store, &[], &[put("a/x", "2"), put("b/y", "2")]).await;
    commit(store, &[], &[put("a", "3"), put("ab", "3")]).await;
    let r4 = commit(store, &[], &[put("a/y", "4")]).await;
    let got = next(&mut watch, "first batch under a/").await;
    assert_eq!(
        got,
        batch(r2, vec![put_event("a/x", "2", r2)]),
        "only a/ events, b/x batch skipped"
    );
    let got = next(&mut watch, "second batch under a/").await;
    assert_eq!(
        got,
        batch(r4, vec![put_event("a/y", "4", r4)]),
        "batch without a/ keys skipped"
    );
}

/// Deletes reach watches; deletes of missing keys do not.
pub async fn watch_delete_events<S: CatalogStore>(store: &S) {
    let start = commit(store, &[], &[put("k", "1")]).await;
    let mut watch = watch(store, "", start).await;
    let rd = commit(store, &[], &[Op::Delete { key: "k".into() }]).await;
    let got = next(&mut watch, "delete batch").await;
    assert_eq!(got, batch(rd, vec![delete_event("k", rd)]), "delete event");
    let same = txn(store, &[], &[Op::Delete { key: "k".into() }]).await;
    assert!(matches!(same, Ok(r) if r == rd), "no-op delete: {same:?}");
    let rp = commit(store, &[], &[put("k2", "1")]).await;
    let got = next(&mut watch, "batch after a no-op delete").await;
    assert_eq!(
        got,
        batch(rp, vec![put_event("k2", "1", rp)]),
        "a no-op delete makes no batch"
    );
}

/// 8 tasks × 25 CAS increments of one counter end at exactly 200, and a
/// watch sees every increment once, in order.
pub async fn concurrent_cas<S: CatalogStore>(store: Arc<S>) {
    const TASKS: usize = 8;
    const EACH: u64 = 25;
    const TOTAL: u64 = TASKS as u64 * EACH;
    let start = commit(&*store, &[absent("counter")], &[put("counter", "0")]).await;
    let mut watch = watch(&*store, "counter", start).await;
    let watcher = tokio::spawn(async move {
        let mut batches = Vec::new();
        while batches.len() < TOTAL as usize {
            batches.push(next(&mut watch, "counter batch").await);
        }
        batches
    });
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut done: Vec<(Revision, u64)> = Vec::new();
            let mut attempts = 0;
            while (done.len() as u64) < EACH {
                attempts += 1;
                assert!(attempts <= 10_000, "task {task}: too many CAS retries");
                let Some(current) = get(&*store, "counter").await else {
                    panic!("task {task}: counter vanished");
                };
                let n: u64 = String::from_utf8_lossy(&current.value)
                    .parse()
                    .unwrap_or_else(|e| panic!("task {task}: counter value: {e}"));
                let result = txn(
                    &*store,
                    &[mod_rev("counter", current.mod_revision)],
                    &[put("counter", &(n + 1).to_string())],
                )
                .await;
                match result {
                    Ok(revision) => done.push((revision, n + 1)),
                    Err(StoreError::Conflict) => {}
                    Err(e) => panic!("task {task}: CAS failed: {e}"),
                }
            }
            for pair in done.windows(2) {
                assert!(
                    pair[0].0 < pair[1].0,
                    "task {task}: revisions not increasing: {done:?}"
                );
            }
            done
        }));
    }
    let mut commits = Vec::new();
    for worker in workers {
        let done = within(CONCURRENT_WAIT, "a CAS task", worker).await;
        commits.extend(done.unwrap_or_else(|e| panic!("CAS task failed: {e}")));
    }
    let last = get(&*store, "counter").await;
    assert_eq!(
        last.map(|e| e.value),
        Some(TOTAL.to_string().into_bytes()),
        "{TASKS} tasks x {EACH} increments"
    );
    commits.sort();
    for (i, (revision, value)) in commits.iter().enumerate() {
        assert_eq!(
            *value,
            i as u64 + 1,
            "the increment at revision {revision} is number {}",
            i + 1
        );
    }
    for pair in commits.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "two commits got revision {}",
            pair[0].0
        );
    }
    let batches = within(CONCURRENT_WAIT, "the counter watch", watcher).await;
    let batches = batches.unwrap_or_else(|e| panic!("watch task failed: {e}"));
    for (i, got) in batches.iter().enumerate() {
        let (revision, value) = commits[i];
        let want = batch(
            revision,
            vec![put_event("counter", &value.to_string(), revision)],
        );
        assert_eq!(
            *got, want,
            "watch batch {i}: every increment, in order, no gaps"
        );
    }
}

// Helpers. Each store call is bounded by `WAIT`.

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

async fn snapshot<S: CatalogStore>(store: &S, prefix: &str) -> crate::store::Snapshot {
    within(WAIT, "snapshot", store.snapshot(prefix))
        .await
        .unwrap_or_else(|e| panic!("snapshot {prefix:?}: {e}"))
}

async fn get<S: CatalogStore>(store: &S, key: &str) -> Option<Entry> {
    within(WAIT, "get", store.get(key))
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
}

async fn txn<S: CatalogStore>(
    store: &S,
    preconditions: &[Precondition],
    ops: &[Op],
) -> Result<Revision, StoreError> {
    within(WAIT, "txn", store.txn(preconditions, ops)).await
}

/// A txn that must commit.
async fn commit<S: CatalogStore>(
    store: &S,
    preconditions: &[Precondition],
    ops: &[Op],
) -> Revision {
    txn(store, preconditions, ops)
        .await
        .unwrap_or_else(|e| panic!("txn {preconditions:?} {ops:?}: {e}"))
}

async fn watch<S: CatalogStore>(store: &S, prefix: &str, after: Revision) -> Watch {
    within(WAIT, "watch", store.watch(prefix, after))
        .await
        .unwrap_or_else(|e| panic!("watch {prefix:?} after {after}: {e}"))
}

async fn next(watch: &mut Watch, what: &str) -> WatchBatch {
    match within(WAIT, what, watch.recv()).await {
        Some(Ok(batch)) => batch,
        Some(Err(e)) => panic!("{what}: watch failed: {e}"),
        None => panic!("{what}: watch ended"),
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn absent(key: &str) -> Precondition {
    Precondition::Absent(key.into())
}

fn mod_rev(key: &str, revision: Revision) -> Precondition {
    Precondition::ModRevision(key.into(), revision)
}

fn entry(key: &str, value: &str, mod_revision: Revision) -> Entry {
    Entry {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        mod_revision,
    }
}

fn batch(revision: Revision, events: Vec<WatchEvent>) -> WatchBatch {
    WatchBatch { revision, events }
}

fn put_event(key: &str, value: &str, revision: Revision) -> WatchEvent {
    WatchEvent::Put(entry(key, value, revision))
}

fn delete_event(key: &str, revision: Revision) -> WatchEvent {
    WatchEvent::Delete {
        key: key.into(),
        mod_revision: revision,
    }
}
