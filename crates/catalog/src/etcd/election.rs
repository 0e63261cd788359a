//! Leader election on the etcd store, and the fence on its writes.
//!
//! Every candidate races to create one key (the election key, beside the
//! catalog's prefix, not under it, so the catalog never sees it) bound to
//! a lease of its own. The creator leads while its lease lives; its term
//! is the key's `create_revision`, which only grows. The others read the
//! key every [`ElectionOptions::poll`] and race again when it is gone.
//!
//! # The fence
//! While a store campaigns, every transaction it sends carries one more
//! compare: the election key still has the `create_revision` of this
//! store's win. A leader paused past its lease (SIGSTOP, a stalled VM)
//! therefore cannot write once another has won, whatever it believes;
//! a store that does not lead refuses writes itself
//! ([`StoreError::NotLeader`]). The leader also steps down on its own
//! clock before etcd can expire its lease: it counts its lease from when
//! it *sent* the last renewal that etcd answered (etcd counts from when it
//! received it, later) and gives up a third of the time-to-live early,
//! so the work it runs is stopped before another manager can win.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{header_revision, revision, EtcdStore, Inner};
use crate::store::{Revision, StoreError};

/// How an election is run.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The leader's lease time-to-live (default 3 s; etcd refuses less
    /// than about 1.5 s with its default election timeout). A killed
    /// leader is replaced within about this long plus [`Self::poll`].
    pub ttl: Duration,
    /// How often a follower reads the election key (default 250 ms).
    pub poll: Duration,
}

impl Default for ElectionOptions {
    fn default() -> Self {
        ElectionOptions {
            ttl: Duration::from_secs(3),
            poll: Duration::from_millis(250),
        }
    }
}

/// The leader as a candidate sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElectionView {
    /// The leader's value (what it campaigned with), if any leads.
    pub leader: Option<String>,
    /// The leader's term: the election key's `create_revision`.
    pub term: Revision,
    /// Whether this candidate leads.
    pub mine: bool,
}

/// What a campaigning store's writes must still hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fence {
    /// The `create_revision` of the election key this store created.
    pub term: i64,
    /// Past this instant this store no longer counts itself leader.
    pub until: Instant,
}

/// The fence state of a store: `None` while it does not campaign (every
/// write goes through), else the fence of its current term, if it leads.
pub(super) type FenceState = Mutex<Option<Option<Fence>>>;

impl Inner {
    /// The etcd key of the election: the prefix without its trailing
    /// `/`, then `.leader` (`shardline/` → `shardline.leader`).
    pub(super) fn election_key(&self) -> Vec<u8> {
        let base = self.options.prefix.trim_end_matches('/');
        format!("{base}.leader").into_bytes()
    }

    /// The compare a write must carry, or why it may not be sent.
    pub(super) fn fence_compare(&self) -> Result<Option<Compare>, StoreError> {
        let state = *self.fence.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            None => Ok(None),
            Some(Some(f)) if Instant::now() < f.until => Ok(Some(Compare::create_revision(
                self.election_key(),
                CompareOp::Equal,
                f.term,
            ))),
            Some(_) => Err(StoreError::NotLeader),
        }
    }

    /// After a refused transaction: `NotLeader` when the fence no longer
    /// holds (the election key is gone or another's), else `Conflict`.
    pub(super) async fn refusal(&self) -> StoreError {
        let state = *self.fence.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Some(fence)) = state else {
            return StoreError::Conflict;
        };
        let mut kv = self.client.kv_client();
        match self.call(kv.get(self.election_key(), None)).await {
            Ok(r) if r.kvs().first().map(|kv| kv.create_revision()) == Some(fence.term) => {
                StoreError::Conflict
            }
            Ok(_) => {
                self.set_fence(Some(None));
                StoreError::NotLeader
            }
            Err(f) => f.into_store("read the election key"),
        }
    }

    fn set_fence(&self, state: Option<Option<Fence>>) {
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

impl EtcdStore {
    /// Whether this store leads now: it won and its lease, counted on
    /// its own clock, has not run out. A leader resumed after a pause
    /// past its lease stops counting itself leader here at once, before
    /// its campaign task runs again.
    pub fn leads(&self) -> bool {
        let state = *self.inner.fence.lock().unwrap_or_else(|e| e.into_inner());
        matches!(state, Some(Some(f)) if Instant::now() < f.until)
    }

    /// Campaigns for leadership as `me` until `stop` turns true, and from
    /// now on fences this store's writes (see the module docs). The views
    /// come on the returned channel; on stop the key is given up, so
    /// another candidate can win at once, and the task ends.
    pub fn campaign(
        &self,
        me: String,
        options: ElectionOptions,
        mut stop: watch::Receiver<bool>,
    ) -> (watch::Receiver<ElectionView>, tokio::task::JoinHandle<()>) {
        self.inner.set_fence(Some(None));
        let (tx, rx) = watch::channel(ElectionView::default());
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let mut candidate = Candidate {
                inner,
                me,
                options,
                tx,
            };
            tokio::select! {
                () = candidate.run() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            candidate.resign().await;
        });
        (rx, task)
    }
}

struct Candidate {
    inner: Arc<Inner>,
    me: String,
    options: ElectionOptions,
    tx: watch::Sender<ElectionView>,
}

impl Candidate {
    async fn run(&mut self) {
        loop {
            match self.round().await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: etcd unavailable");
                    self.inner.set_fence(Some(None));
                    self.publish(None, 0, false);
                }
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// One look at the election key: race for it when it is free, lead
    /// while the win lasts, else note who leads.
    async fn round(&mut self) -> Result<(), StoreError> {
        let key = self.inner.election_key();
        let mut kv = self.inner.client.kv_client();
        let current = self
            .inner
            .call(kv.get(key.clone(), None))
            .await
            .map_err(|f| f.into_store("read the election key"))?;
        if let Some(held) = current.kvs().first() {
            let leader = String::from_utf8_lossy(held.value()).into_owned();
            self.publish(Some(leader), revision(held.create_revision())?, false);
            return Ok(());
        }
        let mut leases = self.inner.client.lease_client();
        let ttl = i64::try_from(self.options.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let granted = self
            .inner
            .call(leases.grant(ttl, None))
            .await
            .map_err(|f| f.into_store("grant the leader lease"))?;
        let lease = granted.id();
        let granted = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        let race = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let won = match self.inner.call(kv.txn(race)).await {
            Ok(r) if r.succeeded() => header_revision(r.header())?,
            Ok(_) => {
                let _ = self.inner.call(leases.revoke(lease)).await;
                return Ok(());
            }
            Err(f) => {
                let _ = self.inner.call(leases.revoke(lease)).await;
                return Err(f.into_store("run for leader"));
            }
        };
        self.lead(lease, won, sent, granted.min(self.options.ttl))
            .await;
        Ok(())
    }

    /// Leads until the lease cannot be renewed in time or the key is no
    /// longer this term's.
    async fn lead(&mut self, lease: i64, term: i64, sent: Instant, ttl: Duration) {
        let mut until = sent + ttl - ttl / 3;
        self.inner.set_fence(Some(Some(Fence { term, until })));
        self.publish(Some(self.me.clone()), revision(term).unwrap_or(0), true);
        tracing::info!(term, "leader election: this manager leads");
        // Renewals every third of the lease; after a failed one (an etcd
        // member died under the connection, say) again soon, each bounded
        // well inside the time left, so one stuck request cannot use up
        // the lease.
        let (every, again) = (ttl / 3, ttl / 10);
        let mut pause = every;
        loop {
            tokio::time::sleep_until((Instant::now() + pause).min(until)).await;
            if Instant::now() >= until {
                break;
            }
            let sent = Instant::now();
            let bound = (until - sent).min(every);
            match tokio::time::timeout(bound, self.renew(lease, term)).await {
                Ok(Ok(granted)) => {
                    until = sent + granted.min(ttl) - ttl / 3;
                    self.inner.set_fence(Some(Some(Fence { term, until })));
                    pause = every;
                }
                Ok(Err(StoreError::NotLeader)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader election: renew the lease");
                    pause = again;
                }
                Err(_) => {
                    tracing::warn!(?bound, "leader election: no renewal answer in time");
                    pause = again;
                }
            }
        }
        tracing::warn!(
            term,
            "leader election: lease not renewed in time; stepping down"
        );
        self.inner.set_fence(Some(None));
        self.publish(None, 0, false);
        let mut leases = self.inner.client.lease_client();
        let _ = self.inner.call(leases.revoke(lease)).await;
    }

    /// Renews the lease once and checks the key is still this term's;
    /// the time-to-live etcd granted.
    async fn renew(&self, lease: i64, term: i64) -> Result<Duration, StoreError> {
        let mut leases = self.inner.client.lease_client();
        let renewed = async {
            let (mut keeper, mut stream) = leases.keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        let answer = self
            .inner
            .call(renewed)
            .await
            .map_err(|f| f.into_store("renew the leader lease"))?;
        let granted = answer.map(|a| a.ttl()).unwrap_or(0);
        if granted <= 0 {
            return Err(StoreError::NotLeader);
        }
        let mut kv = self.inner.client.kv_client();
        let held = self
            .inner
            .call(kv.get(self.inner.election_key(), None))
            .await
            .map_err(|f| f.into_store("read the election key"))?;
        if held.kvs().first().map(|kv| kv.create_revision()) != Some(term) {
            return Err(StoreError::NotLeader);
        }
        Ok(Duration::from_secs(u64::try_from(granted).unwrap_or(0)))
    }

    /// Gives up leadership (on stop): the key goes with the lease.
    async fn resign(&mut self) {
        let state = *self.inner.fence.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.set_fence(Some(None));
        self.publish(None, 0, false);
        if let Some(Some(fence)) = state {
            let key = self.inner.election_key();
            let mut kv = self.inner.client.kv_client();
            let drop_mine = Txn::new()
                .when([Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    fence.term,
                )])
                .and_then([TxnOp::delete(key, None)]);
            let _ = self.inner.call(kv.txn(drop_mine)).await;
        }
    }

    fn publish(&self, leader: Option<String>, term: Revision, mine: bool) {
        self.tx.send_if_modified(|v| {
            let next = ElectionView { leader, term, mine };
            let changed = *v != next;
            *v = next;
            changed
        });
    }
}
