//! The manager's health feed: which replicas may serve `eventual` reads.
//!
//! A background task polls `GET /v1/health` (router token) every
//! `health_poll` and installs each answer in a [`HealthTable`]. A replica
//! may serve when the last answer says it is up, in recovery (or not
//! known otherwise) and at most `max_replica_lag` behind its primary.
//! When the manager cannot be reached the last answer is kept, but once
//! it is older than [`HealthTable::stale_after`] nothing is known any
//! more and eventual reads go to the primaries: a replica the router
//! cannot vouch for might be arbitrarily far behind.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use shardline_api::manager::HealthSnapshot;
use shardline_client::ManagerClient;
use tokio_util::sync::CancellationToken;

/// The shortest time after which an answer is too old to use.
pub const MIN_STALE_AFTER: Duration = Duration::from_secs(5);

/// What the router keeps of one instance's last check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceState {
    pub up: bool,
    pub in_recovery: Option<bool>,
    pub lag_seconds: Option<f64>,
}

/// One answer of the manager, by shard then instance id.
#[derive(Debug, Default)]
pub struct HealthView {
    pub round: u64,
    pub received: Option<Instant>,
    shards: HashMap<String, Vec<(String, InstanceState)>>,
}

impl HealthView {
    /// Compiles a snapshot received at `at`.
    pub fn new(snap: &HealthSnapshot, at: Instant) -> Self {
        let mut shards: HashMap<String, Vec<(String, InstanceState)>> = HashMap::new();
        for i in &snap.instances {
            shards.entry(i.shard.clone()).or_default().push((
                i.instance.clone(),
                InstanceState {
                    up: i.health.up,
                    in_recovery: i.health.in_recovery,
                    lag_seconds: i.health.lag_seconds,
                },
            ));
        }
        Self {
            round: snap.round,
            received: Some(at),
            shards,
        }
    }

    /// The last state of an instance, if the answer had it.
    pub fn state(&self, shard: &str, instance: &str) -> Option<InstanceState> {
        self.shards
            .get(shard)?
            .iter()
            .find(|(id, _)| id == instance)
            .map(|(_, s)| *s)
    }

    /// Whether a replica may serve eventual reads: up, not known to
    /// have left recovery (a promoted one is a primary the catalog does
    /// not show yet), and with a known lag of at most `max_lag`.
    pub fn replica_usable(&self, shard: &str, instance: &str, max_lag: Duration) -> bool {
        if instance.is_empty() {
            return false;
        }
        self.state(shard, instance).is_some_and(|s| {
            s.up && s.in_recovery != Some(false)
                && s.lag_seconds
                    .is_some_and(|lag| lag.is_finite() && lag <= max_lag.as_secs_f64())
        })
    }
}

/// The latest health answer, shared by the poller and the requests.
#[derive(Debug)]
pub struct HealthTable {
    latest: RwLock<Arc<HealthView>>,
    stale_after: Duration,
}

impl HealthTable {
    /// An empty table (no replica usable) for a router polling every
    /// `poll`: answers count as known for four polls, and at least
    /// [`MIN_STALE_AFTER`].
    pub fn new(poll: Duration) -> Self {
        Self {
            latest: RwLock::new(Arc::new(HealthView::default())),
            stale_after: poll.saturating_mul(4).max(MIN_STALE_AFTER),
        }
    }

    /// How old an answer may be and still be used.
    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    /// Installs an answer received at `at`.
    pub fn install(&self, snap: &HealthSnapshot, at: Instant) {
        let view = Arc::new(HealthView::new(snap, at));
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = view;
    }

    /// The latest answer if it is fresh at `now`, else `None`.
    pub fn fresh(&self, now: Instant) -> Option<Arc<HealthView>> {
        let view = Arc::clone(&self.latest.read().unwrap_or_else(PoisonError::into_inner));
        let at = view.received?;
        (now.saturating_duration_since(at) <= self.stale_after).then_some(view)
    }

    /// The latest answer, however old.
    pub fn latest(&self) -> Arc<HealthView> {
        Arc::clone(&self.latest.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Polls the manager's health feed every `interval` until shutdown.
pub async fn poll(
    manager: ManagerClient,
    table: Arc<HealthTable>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // A hung manager must not hold the poll past the point where its
    // answer would be stale anyway.
    let manager = manager.with_timeout(table.stale_after().min(Duration::from_secs(2)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            r = manager.http().get::<HealthSnapshot>("/v1/health") => r,
        };
        match answer {
            Ok(snap) => {
                table.install(&snap, Instant::now());
                if failing {
                    tracing::info!(round = snap.round, "health feed back");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        stale_after = ?table.stale_after(),
                        "cannot read the manager's health feed; keeping the last answer until it is stale"
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shardline_api::manager::{HealthInfo, InstanceHealth};

    use super::*;

    fn inst(
        shard: &str,
        id: &str,
        up: bool,
        recovery: Option<bool>,
        lag: Option<f64>,
    ) -> InstanceHealth {
        InstanceHealth {
            shard: shard.into(),
            instance: id.into(),
            role: "replica".into(),
            health: HealthInfo {
                up,
                in_recovery: recovery,
                lag_seconds: lag,
                ..HealthInfo::default()
            },
        }
    }

    #[test]
    fn usable_replicas() {
        let snap = HealthSnapshot {
            round: 3,
            instances: vec![
                inst("s1", "s1-1", true, Some(true), Some(0.2)),
                inst("s1", "s1-2", true, Some(true), Some(1.5)),
                inst("s1", "s1-3", false, Some(true), Some(0.0)),
                inst("s1", "s1-4", true, Some(false), Some(0.0)),
                inst("s1", "s1-5", true, None, None),
                inst("s2", "s2-1", true, None, Some(0.0)),
            ],
        };
        let view = HealthView::new(&snap, Instant::now());
        let lag = Duration::from_secs(1);
        assert!(view.replica_usable("s1", "s1-1", lag));
        assert!(!view.replica_usable("s1", "s1-2", lag), "too far behind");
        assert!(view.replica_usable("s1", "s1-2", Duration::from_secs(2)));
        assert!(!view.replica_usable("s1", "s1-3", lag), "down");
        assert!(!view.replica_usable("s1", "s1-4", lag), "promoted");
        assert!(!view.replica_usable("s1", "s1-5", lag), "lag unknown");
        assert!(view.replica_usable("s2", "s2-1", lag));
        assert!(!view.replica_usable("s2", "s1-1", lag), "other shard");
        assert!(!view.replica_usable("s1", "", lag));
        assert!(!view.replica_usable("s9", "s9-1", lag));
    }

    #[test]
    fn answers_go_stale() {
        let table = HealthTable::new(Duration::from_millis(250));
        assert_eq!(table.stale_after(), MIN_STALE_AFTER);
        let t0 = Instant::now();
        assert!(table.fresh(t0).is_none(), "nothing received yet");
        let snap = HealthSnapshot {
            round: 1,
            instances: vec![inst("s1", "s1-1", true, Some(true), Some(0.0))],
        };
        table.install(&snap, t0);
        assert_eq!(table.fresh(t0 + Duration::from_secs(5)).unwrap().round, 1);
        assert!(table.fresh(t0 + Duration::from_millis(5_001)).is_none());
        assert_eq!(table.latest().round, 1, "kept, though stale");
        // A slow poll stretches the window.
        assert_eq!(
            HealthTable::new(Duration::from_secs(3)).stale_after(),
            Duration::from_secs(12)
        );
    }
}
