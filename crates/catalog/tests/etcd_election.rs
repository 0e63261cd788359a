//! Leader election on the etcd store, against a real etcd: one leader of
//! several candidates, writes fenced to the leader's term, takeover when
//! a leader stops or its key is taken away.
//!
//! Each test names in its docs the control run that showed it can fail.

use std::time::Duration;

use shardline_catalog::{
    CatalogStore, ElectionOptions, ElectionView, EtcdStore, EtcdStoreOptions, Op, StoreError,
};
use shardline_testkit::EtcdServer;
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest any single step may take.
const WAIT: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

struct Candidate {
    store: EtcdStore,
    views: watch::Receiver<ElectionView>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn candidate(etcd: &EtcdServer, prefix: &str, me: &str) -> Candidate {
    let mut options = EtcdStoreOptions::new([etcd.endpoint()]).with_prefix(prefix);
    options.request_timeout = Duration::from_secs(2);
    let store = EtcdStore::connect(options).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let election = ElectionOptions {
        ttl: Duration::from_secs(2),
        poll: Duration::from_millis(100),
    };
    let (views, task) = store.campaign(me.to_string(), election, stopped);
    Candidate {
        store,
        views,
        stop,
        task,
    }
}

/// Waits until some candidate of `all` leads; its index.
async fn leader_of(all: &mut [Candidate]) -> usize {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(i) = all.iter().position(|c| c.views.borrow().mine) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader within {WAIT:?}");
}

/// Three candidates: exactly one leads, all agree who, only its writes
/// commit; when it stops, another leads within the lease's time.
///
/// Control: with the fence compare left out of `txn` (and the
/// not-leader refusal off), the followers' writes committed and the test
/// failed at "a follower wrote".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_another_takes_over() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut all = Vec::new();
    for me in ["m1", "m2", "m3"] {
        all.push(candidate(&etcd, "one/", me).await);
    }
    let first = leader_of(&mut all).await;
    // Every candidate learns who leads.
    let name = format!("m{}", first + 1);
    for c in &mut all {
        tokio::time::timeout(
            WAIT,
            c.views.wait_for(|v| v.leader.as_deref() == Some(&name)),
        )
        .await
        .expect("a follower did not learn the leader")
        .unwrap();
    }
    let leaders = all.iter().filter(|c| c.views.borrow().mine).count();
    assert_eq!(leaders, 1, "leaders at once");
    let term = all[first].views.borrow().term;
    all[first]
        .store
        .txn(&[], &[put("k", "by the leader")])
        .await
        .expect("the leader's write");
    for (i, c) in all.iter().enumerate().filter(|(i, _)| *i != first) {
        let got = c.store.txn(&[], &[put("k", "by a follower")]).await;
        assert!(
            matches!(got, Err(StoreError::NotLeader)),
            "a follower wrote: m{} got {got:?}",
            i + 1
        );
    }
    // The leader stops: it gives its key up, another wins at once.
    let stopped = Instant::now();
    let gone = all.remove(first);
    gone.stop.send(true).unwrap();
    gone.task.await.unwrap();
    let next = leader_of(&mut all).await;
    let took = stopped.elapsed();
    let next_term = all[next].views.borrow().term;
    println!("leader stopped; another led {took:?} later (term {term} -> {next_term})");
    assert!(next_term > term, "terms only grow");
    all[next]
        .store
        .txn(&[], &[put("k", "by the next leader")])
        .await
        .expect("the next leader's write");
    assert!(
        matches!(
            gone.store.txn(&[], &[put("k", "by the old")]).await,
            Err(StoreError::NotLeader)
        ),
        "a stopped candidate wrote"
    );
}

/// A leader whose key is taken away (as when its lease expired while it
/// was paused and another won) cannot write, even before it notices:
/// etcd refuses the transaction because the key's term is no longer
/// its own.
///
/// Control: with the fence compare left out of `txn`, the old leader's
/// write committed and the test failed at "the old leader wrote".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_key_cannot_write() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut all = vec![candidate(&etcd, "two/", "m1").await];
    leader_of(&mut all).await;
    let old = all.remove(0);
    let term = old.views.borrow().term;
    // Another wins behind its back: the key is replaced at once.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    raw.delete("two.leader", None).await.unwrap();
    raw.put("two.leader", "\"usurper\"", None).await.unwrap();
    let got = old.store.txn(&[], &[put("k", "by the old leader")]).await;
    assert!(
        matches!(got, Err(StoreError::NotLeader)),
        "the old leader wrote (term {term}): {got:?}"
    );
    assert!(
        old.store.get("k").await.unwrap().is_none(),
        "the write is stored"
    );
    // And it notices: it no longer counts itself leader.
    let mut views = old.views.clone();
    tokio::time::timeout(WAIT, views.wait_for(|v| !v.mine))
        .await
        .expect("the old leader still leads")
        .unwrap();
    old.stop.send(true).unwrap();
    old.task.await.unwrap();
}

/// A store that does not campaign is not fenced (one manager on etcd,
/// or tools): its writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_campaign_writes() {
    let etcd = EtcdServer::start().await.unwrap();
    let store = EtcdStore::connect(EtcdStoreOptions::new([etcd.endpoint()]).with_prefix("three/"))
        .await
        .unwrap();
    store.txn(&[], &[put("k", "v")]).await.unwrap();
    assert!(store.get("k").await.unwrap().is_some());
}
