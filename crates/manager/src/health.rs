//! The health checker: every `interval` it checks every instance of every
//! shard (not fenced ones) at once over a kept session — `SELECT 1`,
//! recovery state, WAL positions — each within `timeout` (an instance is
//! up when it answers and its recovery state fits its role); derives each
//! replica's lag from its shard's primary; publishes the metrics and the
//! [`HealthSnapshot`] routers poll; and announces each finished round
//! ([`HealthTable::rounds`]). The failover controller and the tenant
//! reconciler subscribe to the table; the checker knows neither, so a
//! slow reconcile or failover never delays a check.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use shardline_api::manager::{HealthInfo, HealthSnapshot, InstanceHealth};
use shardline_core::Catalog;
use shardline_metrics::{GaugeVec, Registry};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::health_book::{self, Failing, HealthBook};
use crate::pg;
use crate::service::CatalogService;

/// The role of an instance within its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    /// As shown in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// The last check of one instance.
#[derive(Debug, Clone)]
pub struct InstanceState {
    /// By the catalog the check ran against.
    pub role: Role,
    pub info: HealthInfo,
    /// `info.lsn` as a number.
    pub lsn: Option<u64>,
    /// Replicas: WAL received and flushed.
    pub receive_lsn: Option<u64>,
}

/// (shard id, instance id).
type Key = (String, String);

#[derive(Default)]
struct Inner {
    round: u64,
    by_instance: BTreeMap<Key, InstanceState>,
}

/// The last round of checks, shared with the API, the failover
/// controller and the reconciler.
pub struct HealthTable {
    inner: RwLock<Inner>,
    /// The number of the last round published.
    rounds: tokio::sync::watch::Sender<u64>,
}

impl Default for HealthTable {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            rounds: tokio::sync::watch::channel(0).0,
        }
    }
}

impl HealthTable {
    /// Changes once per published round (its number): what the failover
    /// controller acts on.
    pub fn rounds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rounds.subscribe()
    }

    /// The last check of an instance.
    pub fn get(&self, shard: &str, instance: &str) -> Option<HealthInfo> {
        self.state(shard, instance).map(|s| s.info)
    }

    /// The last check of an instance, with its numeric WAL positions.
    pub fn state(&self, shard: &str, instance: &str) -> Option<InstanceState> {
        self.read()
            .by_instance
            .get(&(shard.to_string(), instance.to_string()))
            .cloned()
    }

    /// Rounds completed so far.
    pub fn round(&self) -> u64 {
        self.read().round
    }

    /// Every instance's last check, for `GET /v1/health`.
    pub fn snapshot(&self) -> HealthSnapshot {
        let inner = self.read();
        HealthSnapshot {
            round: inner.round,
            instances: inner
                .by_instance
                .iter()
                .map(|((shard, instance), s)| InstanceHealth {
                    shard: shard.clone(),
                    instance: instance.clone(),
                    role: s.role.as_str().to_string(),
                    health: s.info.clone(),
                })
                .collect(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, round: u64, by_instance: BTreeMap<Key, InstanceState>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.round = round;
        inner.by_instance = by_instance;
        drop(inner);
        self.rounds.send_replace(round);
    }
}

/// The checker's gauges.
#[derive(Clone)]
pub struct HealthMetrics {
    /// `shard_health_status{shard,instance,role}`.
    pub status: GaugeVec,
    /// `shard_replication_lag_seconds{shard,instance}`.
    pub lag_seconds: GaugeVec,
    /// `shard_replication_lag_bytes{shard,instance}`.
    pub lag_bytes: GaugeVec,
}

impl HealthMetrics {
    /// Registers the gauges.
    pub fn register(reg: &Registry) -> Self {
        Self {
            status: reg.gauge(
                "shard_health_status",
                "1 if the instance answered its last health check, else 0.",
                &["shard", "instance", "role"],
            ),
            lag_seconds: reg.gauge(
                "shard_replication_lag_seconds",
                "Seconds a replica is behind its primary (0 when caught up).",
                &["shard", "instance"],
            ),
            lag_bytes: reg.gauge(
                "shard_replication_lag_bytes",
                "Bytes of WAL the primary has that a replica has not replayed.",
                &["shard", "instance"],
            ),
        }
    }
}

/// Settings of the checker.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

/// One instance to check.
struct Target {
    shard: String,
    id: String,
    role: Role,
    dsn: String,
}

/// Runs the checker until shutdown, publishing each round to `table`.
/// With `book` (managers sharing a store), failing primaries are counted
/// on from where the previous leader stopped, and recorded for the next.
pub async fn run(
    svc: Arc<CatalogService>,
    table: Arc<HealthTable>,
    metrics: HealthMetrics,
    settings: HealthSettings,
    book: Option<Arc<HealthBook>>,
    shutdown: CancellationToken,
) {
    check_loop(
        &svc,
        &table,
        &metrics,
        &settings,
        book.as_deref(),
        &shutdown,
    )
    .await;
}

async fn check_loop(
    svc: &CatalogService,
    table: &HealthTable,
    metrics: &HealthMetrics,
    settings: &HealthSettings,
    book: Option<&HealthBook>,
    shutdown: &CancellationToken,
) {
    // One kept session per instance (with the DSN it was opened to); a
    // failed check drops it.
    let mut conns: HashMap<Key, (String, Client)> = HashMap::new();
    // Each shard's primary's last known WAL position, kept while it is
    // down so replicas' lag stays meaningful (and near 0 for a replica
    // that has everything a dead primary wrote).
    let mut primary_lsn: HashMap<Key, u64> = HashMap::new();
    // Failed checks counted before this run: by the previous leader (the
    // book), never by this manager's own earlier terms, which may be long
    // past.
    let mut seed: HashMap<Key, u32> = HashMap::new();
    // The book as last written: shard -> entry.
    let mut written: BTreeMap<String, Failing> = BTreeMap::new();
    if let Some(book) = book {
        written = book.load().await;
        let published = svc.current();
        let cat = &published.catalog;
        let now = crate::time::now_ms();
        for (shard, f) in &written {
            let current = cat
                .shards
                .get(shard)
                .is_some_and(|s| s.primary.id == f.instance);
            if current && health_book::fresh(f.at_ms, now) {
                let key = (shard.clone(), f.instance.clone());
                seed.insert(key.clone(), f.failures);
                if let Some(lsn) = f.last_lsn {
                    primary_lsn.insert(key, lsn);
                }
            }
        }
        if !seed.is_empty() {
            tracing::info!(primaries = ?seed, "failing primaries taken over from the health book");
        }
    }
    let mut last: BTreeMap<Key, InstanceState> = BTreeMap::new();
    let mut round = table.round();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let published = svc.current();
        let cat = &published.catalog;
        let targets = targets(cat);
        let timeout = settings.timeout;
        // Sessions of instances no longer checked (fenced, removed) are
        // dropped with what is left of this.
        let mut previous = std::mem::take(&mut conns);
        let checks = targets.iter().map(|t| {
            let key = (t.shard.clone(), t.id.clone());
            let client = previous
                .remove(&key)
                .filter(|(dsn, _)| *dsn == t.dsn)
                .map(|(_, c)| c);
            async move {
                let res = tokio::time::timeout(timeout, check(client, &t.dsn, timeout)).await;
                res.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            }
        });
        let results = futures_util::future::join_all(checks).await;
        drop(previous);
        round += 1;
        let checked_at = crate::time::rfc3339(SystemTime::now());
        let mut states = BTreeMap::new();
        let mut probes = HashMap::new();
        for (t, res) in targets.iter().zip(results) {
            let key = (t.shard.clone(), t.id.clone());
            let failures = last
                .get(&key)
                .map(|s| s.info.consecutive_failures)
                .or_else(|| seed.remove(&key))
                .unwrap_or_default();
            let state = match res {
                Ok((client, probe)) => {
                    conns.insert(key.clone(), (t.dsn.clone(), client));
                    // Up means usable in its role: a primary in recovery
                    // takes no writes; a replica out of recovery was
                    // promoted behind the catalog's back and may diverge.
                    let misfit = match (t.role, probe.in_recovery) {
                        (Role::Primary, true) => Some("in recovery, so not a primary"),
                        (Role::Replica, false) => {
                            Some("not in recovery (promoted outside a failover?), so not a replica")
                        }
                        _ => None,
                    };
                    let state = InstanceState {
                        role: t.role,
                        info: HealthInfo {
                            up: misfit.is_none(),
                            checked_at: checked_at.clone(),
                            error: misfit.map(str::to_string),
                            in_recovery: Some(probe.in_recovery),
                            consecutive_failures: if misfit.is_some() {
                                failures.saturating_add(1)
                            } else {
                                0
                            },
                            lsn: probe.lsn.map(pg::format_lsn),
                            ..HealthInfo::default()
                        },
                        lsn: probe.lsn,
                        receive_lsn: probe.receive_lsn,
                    };
                    if misfit.is_none() {
                        if t.role == Role::Primary {
                            if let Some(lsn) = probe.lsn {
                                primary_lsn.insert(key.clone(), lsn);
                            }
                        }
                        probes.insert(key.clone(), probe);
                    }
                    state
                }
                Err(error) => {
                    tracing::debug!(shard = %t.shard, instance = %t.id, %error, "health check failed");
                    InstanceState {
                        role: t.role,
                        info: HealthInfo {
                            up: false,
                            checked_at: checked_at.clone(),
                            error: Some(error),
                            consecutive_failures: failures.saturating_add(1),
                            ..HealthInfo::default()
                        },
                        lsn: None,
                        receive_lsn: None,
                    }
                }
            };
            states.insert(key, state);
        }
        // Replicas' lag against their primary, now that every answer is in.
        for shard in cat.shards.values() {
            let primary = primary_lsn
                .get(&(shard.id.clone(), shard.primary.id.clone()))
                .copied();
            for r in &shard.replicas {
                let key = (shard.id.clone(), r.id.clone());
                let (Some(state), Some(probe)) = (states.get_mut(&key), probes.get(&key)) else {
                    continue;
                };
                let (bytes, seconds) = lag(primary, probe);
                state.info.lag_bytes = bytes;
                state.info.lag_seconds = seconds;
            }
        }
        primary_lsn.retain(|k, _| cat.shards.get(&k.0).is_some_and(|s| s.primary.id == k.1));
        publish_metrics(metrics, &states);
        if let Some(book) = book {
            record_failing(book, cat, &states, &primary_lsn, &mut written).await;
        }
        last = states.clone();
        table.publish(round, states);
    }
}

/// Brings the health book in line with this round: an entry per shard
/// whose primary failed its last check, none for the others. Only
/// changes are written; a failed write is tried again next round.
async fn record_failing(
    book: &HealthBook,
    cat: &Catalog,
    states: &BTreeMap<Key, InstanceState>,
    primary_lsn: &HashMap<Key, u64>,
    written: &mut BTreeMap<String, Failing>,
) {
    let now = crate::time::now_ms();
    let mut want: BTreeMap<String, Failing> = BTreeMap::new();
    for shard in cat.shards.values() {
        let key = (shard.id.clone(), shard.primary.id.clone());
        let Some(state) = states.get(&key) else {
            continue;
        };
        if state.info.consecutive_failures > 0 {
            want.insert(
                shard.id.clone(),
                Failing {
                    instance: shard.primary.id.clone(),
                    failures: state.info.consecutive_failures,
                    last_lsn: primary_lsn.get(&key).copied(),
                    at_ms: now,
                },
            );
        }
    }
    let stale: Vec<String> = written
        .keys()
        .filter(|s| !want.contains_key(*s))
        .cloned()
        .collect();
    for shard in stale {
        match book.set(&shard, None).await {
            Ok(()) => {
                written.remove(&shard);
            }
            Err(e) => tracing::warn!(%shard, error = %e, "clear the health book's entry"),
        }
    }
    for (shard, f) in want {
        let same = written
            .get(&shard)
            .is_some_and(|w| w.instance == f.instance && w.failures == f.failures);
        if same {
            continue;
        }
        match book.set(&shard, Some(&f)).await {
            Ok(()) => {
                written.insert(shard, f);
            }
            Err(e) => tracing::warn!(%shard, error = %e, "record a failing primary"),
        }
    }
}

/// A replica's lag behind a primary whose last known WAL position is
/// `primary`: bytes it has not replayed, and seconds — 0 once it has
/// replayed everything it received and everything the primary wrote,
/// else the age of the last transaction it replayed.
pub fn lag(primary: Option<u64>, probe: &pg::Probe) -> (Option<u64>, Option<f64>) {
    let Some(replay) = probe.lsn else {
        return (None, None);
    };
    let bytes = primary.map(|p| p.saturating_sub(replay));
    let received_all = probe.receive_lsn.is_none_or(|r| r <= replay);
    let seconds = if received_all && primary.is_some_and(|p| replay >= p) {
        Some(0.0)
    } else {
        probe.replay_age.map(|a| a.max(0.0))
    };
    (bytes, seconds)
}

fn publish_metrics(metrics: &HealthMetrics, states: &BTreeMap<Key, InstanceState>) {
    metrics.status.clear();
    metrics.lag_seconds.clear();
    metrics.lag_bytes.clear();
    for ((shard, instance), s) in states {
        metrics
            .status
            .with(&[shard, instance, s.role.as_str()])
            .set(if s.info.up { 1.0 } else { 0.0 });
        if let Some(v) = s.info.lag_seconds {
            metrics.lag_seconds.with(&[shard, instance]).set(v);
        }
        if let Some(v) = s.info.lag_bytes {
            metrics.lag_bytes.with(&[shard, instance]).set(v as f64);
        }
    }
}

/// Every instance of the catalog that is checked: primaries and replicas,
/// never fenced ones.
fn targets(cat: &Catalog) -> Vec<Target> {
    let mut out = Vec::new();
    for shard in cat.shards.values() {
        out.push(Target {
            shard: shard.id.clone(),
            id: shard.primary.id.clone(),
            role: Role::Primary,
            dsn: shard.primary.dsn.clone(),
        });
        for r in &shard.replicas {
            out.push(Target {
                shard: shard.id.clone(),
                id: r.id.clone(),
                role: Role::Replica,
                dsn: r.dsn.clone(),
            });
        }
    }
    out
}

async fn check(
    client: Option<Client>,
    dsn: &str,
    timeout: Duration,
) -> Result<(Client, pg::Probe), String> {
    let client = match client {
        Some(c) if !c.is_closed() => c,
        _ => pg::connect(dsn, timeout).await?,
    };
    let probe = pg::probe(&client).await?;
    Ok((client, probe))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(replay: u64, receive: u64, age: Option<f64>) -> pg::Probe {
        pg::Probe {
            in_recovery: true,
            lsn: Some(replay),
            receive_lsn: Some(receive),
            replay_age: age,
        }
    }

    #[test]
    fn lag_is_zero_when_caught_up() {
        // Idle primary: the replay age grows, the lag does not.
        assert_eq!(
            lag(Some(100), &probe(100, 100, Some(30.0))),
            (Some(0), Some(0.0))
        );
        assert_eq!(
            lag(Some(150), &probe(100, 100, Some(2.5))),
            (Some(50), Some(2.5))
        );
        assert_eq!(
            lag(Some(100), &probe(80, 100, Some(0.2))),
            (Some(20), Some(0.2))
        );
        // Primary unknown: bytes unknown, seconds by replay age.
        assert_eq!(lag(None, &probe(80, 80, Some(1.0))), (None, Some(1.0)));
        // Nothing replayed yet and behind: unknown.
        assert_eq!(lag(Some(150), &probe(100, 100, None)), (Some(50), None));
    }
}
