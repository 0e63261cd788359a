//! Live routers: each heartbeats with the catalog version it serves; one
//! that misses its lease is gone.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardline_api::manager::{RouterHeartbeat, RouterInfo};

struct Seen {
    address: String,
    applied_version: u64,
    at: Instant,
}

/// The routers that heartbeat to this manager.
pub struct RouterRegistry {
    lease: Duration,
    routers: Mutex<HashMap<String, Seen>>,
    /// Woken by every heartbeat (a cutover waits for acknowledgements).
    beat: tokio::sync::Notify,
    /// The catalog version a router must have applied for its heartbeat
    /// to renew its lease: the highest one [`wait_applied`] was asked
    /// for.
    ///
    /// [`wait_applied`]: Self::wait_applied
    required: AtomicU64,
    /// Leases a manager before this one gave, which may still run (see
    /// [`inherit_leases`](Self::inherit_leases)).
    inherited: Mutex<Option<Inherited>>,
}

/// Leases given by an earlier manager (or run).
struct Inherited {
    /// When the last of them has run out, at the latest.
    until: Instant,
    /// The routers that may hold one (the router book's list) and have not
    /// heartbeated here since; `None` when unknown, so the wait lasts
    /// until `until`.
    pending: Option<HashSet<String>>,
}

impl RouterRegistry {
    /// A registry whose routers expire after `lease` without a heartbeat.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            routers: Mutex::new(HashMap::new()),
            beat: tokio::sync::Notify::new(),
            required: AtomicU64::new(0),
            inherited: Mutex::new(None),
        }
    }

    /// For a manager that starts on a catalog another (or an earlier run)
    /// served: routers it has not heard from yet may hold leases that
    /// one gave, for up to a lease from now, and route by a catalog older
    /// than any this manager waits for. So for one lease after the start
    /// [`wait_applied`](Self::wait_applied) waits that lease out even
    /// when every router it knows has the version (a failover resumed
    /// after a crash, a cutover, a migration right after a restart).
    pub fn inherit_leases(self) -> Self {
        self.inherit_leases_now();
        self
    }

    /// The same, from now: for a manager that has just become the leader
    /// (the routers heartbeated to the one before it).
    pub fn inherit_leases_now(&self) {
        self.set_inherited(None);
    }

    /// The same, knowing which routers may hold those leases (the router
    /// book): the wait ends as soon as each of them has heartbeated here.
    pub fn inherit_leases_of(&self, routers: impl IntoIterator<Item = String>) {
        self.set_inherited(Some(routers.into_iter().collect()));
    }

    fn set_inherited(&self, pending: Option<HashSet<String>>) {
        *self.inherited.lock().unwrap_or_else(|e| e.into_inner()) = Some(Inherited {
            until: Instant::now() + self.lease,
            pending,
        });
    }

    /// Whether no lease given before this manager can still run unseen.
    fn inherited_done(&self) -> bool {
        let inherited = self.inherited.lock().unwrap_or_else(|e| e.into_inner());
        inherited.as_ref().is_none_or(|i| {
            Instant::now() >= i.until || i.pending.as_ref().is_some_and(HashSet::is_empty)
        })
    }

    /// Whether `id` holds a lease this manager gave.
    pub fn knows(&self, id: &str) -> bool {
        let routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        routers
            .get(id)
            .is_some_and(|s| s.at.elapsed() <= self.lease)
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Records a heartbeat; returns whether it renewed the router's
    /// lease. A router behind the version a wait is for (see
    /// [`wait_applied`](Self::wait_applied)) is not renewed: live but
    /// behind, it would go on routing by the old map for as long as it
    /// heartbeats, so instead its lease runs out, and the router, by its
    /// own clock, treats itself as cut off before the manager stops
    /// waiting for it.
    pub fn heartbeat(&self, hb: &RouterHeartbeat) -> bool {
        let renew = hb.applied_version >= self.required.load(Ordering::Acquire);
        if renew {
            let mut inherited = self.inherited.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pending) = inherited.as_mut().and_then(|i| i.pending.as_mut()) {
                pending.remove(&hb.id);
            }
        }
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        if renew {
            routers.insert(
                hb.id.clone(),
                Seen {
                    address: hb.address.clone(),
                    applied_version: hb.applied_version,
                    at: Instant::now(),
                },
            );
        } else if let Some(seen) = routers.get_mut(&hb.id) {
            seen.applied_version = hb.applied_version;
        }
        drop(routers);
        self.beat.notify_waiters();
        renew
    }

    /// Completes at the next heartbeat after the call (tokio counts a
    /// `Notified` as waiting from its creation). Create it before looking
    /// at [`live`](Self::live), then await it, so a heartbeat in between
    /// is not missed.
    pub fn next_heartbeat(&self) -> tokio::sync::futures::Notified<'_> {
        self.beat.notified()
    }

    /// How many routers are within their lease (each enforces this share
    /// of every rate limit); forgets expired ones.
    pub fn live_count(&self) -> usize {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        routers.retain(|_, s| now.duration_since(s.at) <= self.lease);
        routers.len()
    }

    /// Routers within their lease, by id; forgets expired ones.
    pub fn live(&self) -> Vec<RouterInfo> {
        let mut routers = self.routers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        routers.retain(|_, s| now.duration_since(s.at) <= self.lease);
        let mut out: Vec<RouterInfo> = routers
            .iter()
            .map(|(id, s)| RouterInfo {
                id: id.clone(),
                address: s.address.clone(),
                applied_version: s.applied_version,
                last_seen_ms: now.duration_since(s.at).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Waits until every live router has applied catalog `version` or
    /// one lease has passed, whichever is first; returns the routers
    /// still behind then (empty: all have it). A router that heartbeats
    /// without applying the catalog is waited for one lease only; one
    /// that stops heartbeating leaves the live set when its lease runs out.
    pub async fn wait_applied(&self, version: u64) -> Vec<String> {
        // From now on only routers with `version` are renewed, so every
        // lease of a router without it ends within one lease.
        self.required.fetch_max(version, Ordering::AcqRel);
        let deadline = Instant::now() + self.lease + Duration::from_millis(100);
        loop {
            let beat = self.next_heartbeat();
            let behind: Vec<String> = self
                .live()
                .into_iter()
                .filter(|r| r.applied_version < version)
                .map(|r| r.id)
                .collect();
            let inherited_done = self.inherited_done();
            if (behind.is_empty() && inherited_done) || Instant::now() > deadline {
                return behind;
            }
            // The next heartbeat (routers send one as soon as they apply
            // a catalog), or a lease check now and then.
            let _ = tokio::time::timeout(Duration::from_millis(50), beat).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires() {
        let reg = RouterRegistry::new(Duration::from_millis(30));
        reg.heartbeat(&RouterHeartbeat {
            id: "r1".into(),
            address: "a".into(),
            applied_version: 3,
        });
        assert_eq!(reg.live().len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(reg.live().is_empty());
        assert_eq!(reg.live_count(), 0);
    }

    #[tokio::test]
    async fn a_router_behind_a_waited_version_is_not_renewed() {
        let reg = RouterRegistry::new(Duration::from_millis(200));
        let hb = |id: &str, v: u64| RouterHeartbeat {
            id: id.into(),
            address: "a".into(),
            applied_version: v,
        };
        assert!(reg.heartbeat(&hb("behind", 4)));
        assert!(reg.heartbeat(&hb("current", 4)));
        let wait = reg.wait_applied(5);
        tokio::pin!(wait);
        // Polled once: the wait now requires version 5.
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut wait)
            .await
            .is_err());
        let started = Instant::now();
        let mut renewed = Vec::new();
        let behind = loop {
            renewed.push(reg.heartbeat(&hb("behind", 4)));
            reg.heartbeat(&hb("current", 5));
            tokio::select! {
                b = &mut wait => break b,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the wait ends");
        };
        assert!(renewed.iter().all(|r| !r), "never renewed while behind");
        // It left the live set when its last lease ran out, and the wait
        // ended then, not at its deadline.
        assert!(behind.is_empty(), "{behind:?}");
        let live: Vec<String> = reg.live().into_iter().map(|r| r.id).collect();
        assert_eq!(live, ["current"]);
        // Once it has the version, it is renewed again.
        assert!(reg.heartbeat(&hb("behind", 5)));
    }

    /// A new leader that knows (from the router book) which routers the
    /// one before it leased waits only until each has heartbeated here,
    /// not a whole lease. Control: with `pending` ignored in
    /// `inherited_done`, the wait lasted the lease and the test failed at
    /// "ended with the last listed router's heartbeat".
    #[tokio::test]
    async fn a_new_leader_waits_only_for_the_routers_of_the_book() {
        let lease = Duration::from_millis(1500);
        let reg = RouterRegistry::new(lease);
        reg.inherit_leases_of(["r1".to_string(), "r2".to_string()]);
        let hb = |id: &str| RouterHeartbeat {
            id: id.into(),
            address: "a".into(),
            applied_version: 5,
        };
        let started = Instant::now();
        let wait = reg.wait_applied(5);
        tokio::pin!(wait);
        reg.heartbeat(&hb("r1"));
        // r2 has not heartbeated: still waiting.
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut wait)
            .await
            .is_err());
        reg.heartbeat(&hb("r2"));
        let behind = tokio::time::timeout(Duration::from_millis(500), &mut wait)
            .await
            .expect("ended with the last listed router's heartbeat");
        assert!(behind.is_empty());
        assert!(started.elapsed() < lease, "{:?}", started.elapsed());
        // A router this manager leased is known; another is not.
        assert!(reg.knows("r1"));
        assert!(!reg.knows("r3"));
    }

    #[tokio::test]
    async fn a_restarted_manager_waits_out_leases_it_may_not_know() {
        let lease = Duration::from_millis(300);
        // First start: no router can hold a lease; nothing to wait for.
        let fresh = RouterRegistry::new(lease);
        let started = Instant::now();
        assert!(fresh.wait_applied(5).await.is_empty());
        assert!(started.elapsed() < lease);
        // On a catalog served before, a router it has not heard from may
        // still route by an older one until a lease after the start.
        let restarted = RouterRegistry::new(lease).inherit_leases();
        let started = Instant::now();
        assert!(restarted.wait_applied(5).await.is_empty());
        assert!(started.elapsed() >= lease, "{:?}", started.elapsed());
        // After that lease, only routers it knows count.
        let started = Instant::now();
        assert!(restarted.wait_applied(6).await.is_empty());
        assert!(started.elapsed() < lease);
    }

    #[test]
    fn counts_each_router_once() {
        let reg = RouterRegistry::new(Duration::from_secs(3600));
        for (id, n) in [("r1", 1), ("r2", 2), ("r1", 2)] {
            reg.heartbeat(&RouterHeartbeat {
                id: id.into(),
                address: "a".into(),
                applied_version: 1,
            });
            assert_eq!(reg.live_count(), n);
        }
    }

    #[tokio::test]
    async fn a_heartbeat_wakes_a_waiter_made_before_it() {
        let reg = RouterRegistry::new(Duration::from_secs(3600));
        let beat = reg.next_heartbeat();
        reg.heartbeat(&RouterHeartbeat {
            id: "r1".into(),
            address: "a".into(),
            applied_version: 7,
        });
        // Polled only after the heartbeat, yet woken by it.
        tokio::time::timeout(Duration::from_secs(5), beat)
            .await
            .expect("woken");
        let idle = reg.next_heartbeat();
        assert!(tokio::time::timeout(Duration::from_millis(20), idle)
            .await
            .is_err());
    }
}
