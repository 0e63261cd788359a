//! The failover controller: replaces a shard's primary by one of its
//! replicas, automatically when the primary fails its health checks, or
//! on an operator's request (planned switchover, no acknowledged write
//! lost).
//!
//! Both kinds follow one protocol, each step logged (shard, from, to,
//! step, elapsed):
//! 1. record the intent in the catalog (`shard.failover`): routers hold
//!    the shard's primary traffic from then on;
//! 2. planned: drain the old primary (read-only, sessions that could
//!    write ended) and wait until the target has replayed all it wrote
//!    ([`steps::drain`]); past `switchover_timeout`, roll back.
//!    Automatic: wait until every live router has the intent (it has
//!    cancelled its statements on the old primary and holds new ones) or
//!    its lease ran out (a router that cannot renew sends no writes);
//!    then, if the old primary answers, drain it the same way and give
//!    the target `switchover_timeout` to catch up, going on either way;
//! 3. promote the target (`pg_promote`);
//! 4. tell the other replicas to stream from it (`primary_conninfo`);
//! 5. commit in one compare-and-swap: primary = target, old primary
//!    fenced, generation + 1, intent cleared; then check that the
//!    repointed replicas stream (else report them as needing a re-clone).
//!
//! The catalog names one primary at every moment: the target becomes it
//! and the old one is fenced in the same write. A fenced instance is
//! never checked, chosen or promoted. An intent left by a crashed manager
//! is resumed or rolled back ([`Failovers::resume`]); failovers of one
//! shard run one at a time.

pub mod steps;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_api::manager::{FailoverRequest, FailoverResult};
use shardline_core::catalog::{keys, Failover, FailoverKind, Instance, Shard};
use shardline_core::Catalog;
use shardline_metrics::{CounterVec, Registry};
use tokio_util::task::TaskTracker;

use crate::error::ServiceError;
use crate::failpoints::failpoint;
use crate::health::HealthTable;
use crate::pg;
use crate::routers::RouterRegistry;
use crate::service::{decode, put, CatalogService};
use crate::standbys;
use crate::time::now_ms;
use steps::{Candidate, Upstream};

/// Failpoints of the failover (test-only; see [`crate::failpoints`]).
pub use crate::failpoints::{FAILPOINT_AFTER_INTENT, FAILPOINT_AFTER_PROMOTE, FAILPOINT_ENV};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct FailoverSettings {
    /// Failed checks in a row after which a primary is replaced.
    pub failover_after: u32,
    /// Time allowed to connect to an instance and for one short query.
    pub probe_timeout: Duration,
    /// Planned: longest wait for the target to replay the old primary's
    /// last write.
    pub switchover_timeout: Duration,
    /// How long a repointed replica gets to stream from the new primary.
    pub repoint_timeout: Duration,
    /// How long the old primary gets to answer the fence of an automatic
    /// failover (the health checks' own timeout: an instance slower than
    /// that counts as down, and the routers' hold fences it anyway).
    pub fence_timeout: Duration,
}

impl FailoverSettings {
    /// From the manager's settings.
    pub fn from_config(cfg: &crate::ManagerConfig) -> Self {
        Self {
            failover_after: cfg.failover_after,
            probe_timeout: (cfg.health_timeout * 2).max(Duration::from_secs(1)),
            switchover_timeout: cfg.switchover_timeout,
            repoint_timeout: Duration::from_secs(10),
            fence_timeout: cfg.health_timeout,
        }
    }
}

/// What resuming a shard's failover intent did.
#[derive(Debug, Clone, PartialEq)]
pub enum Resumed {
    /// The shard had no intent.
    Nothing,
    /// The failover was finished.
    Committed(FailoverResult),
    /// The intent was cleared; the old primary stays.
    RolledBack,
}

/// Runs failovers, one at a time per shard.
pub struct Failovers {
    svc: Arc<CatalogService>,
    /// Live routers: a promotion waits until each holds the shard's
    /// primary traffic or its lease ran out.
    routers: Arc<RouterRegistry>,
    settings: FailoverSettings,
    running: Mutex<HashSet<String>>,
    /// Shards already warned about having no replica to fail over to.
    warned: Mutex<HashSet<String>>,
    /// `manager_failovers_total{shard,kind,outcome}`.
    total: CounterVec,
    tracker: TaskTracker,
}

/// A shard's failover slot, freed when dropped.
struct Claim {
    owner: Arc<Failovers>,
    shard: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.owner.running).remove(&self.shard);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs the steps of one failover.
struct Log<'a> {
    shard: &'a str,
    intent: &'a Failover,
    start: Instant,
}

impl Log<'_> {
    fn step(&self, step: &str) {
        tracing::info!(
            shard = %self.shard,
            kind = kind_label(self.intent.kind),
            from = %self.intent.from,
            to = %self.intent.to,
            step,
            elapsed_ms = self.start.elapsed().as_millis() as u64,
            "failover step"
        );
    }
}

fn kind_label(kind: FailoverKind) -> &'static str {
    match kind {
        FailoverKind::Automatic => "automatic",
        FailoverKind::Planned => "planned",
    }
}

impl Failovers {
    /// A controller; its background failovers run on `tracker`.
    pub fn new(
        svc: Arc<CatalogService>,
        routers: Arc<RouterRegistry>,
        settings: FailoverSettings,
        metrics: &Registry,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            svc,
            routers,
            settings,
            running: Mutex::new(HashSet::new()),
            warned: Mutex::new(HashSet::new()),
            total: metrics.counter(
                "manager_failovers_total",
                "Failovers and switchovers by outcome (ok, failed, rolled_back).",
                &["shard", "kind", "outcome"],
            ),
            tracker,
        })
    }

    /// Whether a failover of `shard` runs in this manager.
    pub fn is_running(&self, shard: &str) -> bool {
        lock(&self.running).contains(shard)
    }

    fn claim(self: &Arc<Self>, shard: &str) -> Option<Claim> {
        lock(&self.running)
            .insert(shard.to_string())
            .then(|| Claim {
                owner: Arc::clone(self),
                shard: shard.to_string(),
            })
    }

    fn busy(shard: &str) -> ServiceError {
        ServiceError::Conflict(format!("a failover of shard {shard} is running"))
    }

    fn count(&self, shard: &str, kind: FailoverKind, outcome: &str) {
        self.total.with(&[shard, kind_label(kind), outcome]).inc();
    }

    /// Acts on every round of health checks the table publishes (see
    /// [`after_round`](Self::after_round)) until shutdown.
    pub async fn follow(
        self: Arc<Self>,
        table: Arc<HealthTable>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut rounds = table.rounds();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = rounds.changed() => if changed.is_err() { return },
            }
            rounds.borrow_and_update();
            self.after_round(&self.svc.current().catalog, &table);
        }
    }

    /// Acts on a round of health checks: resumes intents nobody is
    /// running and fails over primaries that failed `failover_after`
    /// checks in a row. Each runs in the background.
    pub fn after_round(self: &Arc<Self>, cat: &Catalog, table: &HealthTable) {
        for shard in cat.shards.values() {
            let failures = table
                .get(&shard.id, &shard.primary.id)
                .map(|h| h.consecutive_failures)
                .unwrap_or_default();
            if shard.failover.is_none() && failures < self.settings.failover_after {
                lock(&self.warned).remove(&shard.id);
                continue;
            }
            let Some(claim) = self.claim(&shard.id) else {
                continue;
            };
            let this = Arc::clone(self);
            let id = shard.id.clone();
            if shard.failover.is_some() {
                self.tracker.spawn(async move {
                    if let Err(e) = this.resume_claimed(claim).await {
                        tracing::error!(shard = %id, error = %e, "resume the failover; retrying");
                    }
                });
            } else {
                let failed = shard.primary.id.clone();
                self.tracker.spawn(async move {
                    if let Err(e) = this.automatic_claimed(claim, Some(&failed)).await {
                        tracing::error!(shard = %id, error = %e, "automatic failover failed");
                    }
                });
            }
        }
    }

    /// Fails a shard's primary over to its most caught-up replica now
    /// (what the health loop does after `failover_after` failed checks).
    /// `Ok(None)`: no replica could take over; nothing changed.
    pub async fn automatic(
        self: &Arc<Self>,
        shard: &str,
    ) -> Result<Option<FailoverResult>, ServiceError> {
        let claim = self.claim(shard).ok_or_else(|| Self::busy(shard))?;
        self.automatic_claimed(claim, None).await
    }

    /// With `failed`: only if that instance is still the primary (the
    /// round that saw it fail may have raced a failover that replaced it).
    async fn automatic_claimed(
        self: &Arc<Self>,
        claim: Claim,
        failed: Option<&str>,
    ) -> Result<Option<FailoverResult>, ServiceError> {
        let id = claim.shard.as_str();
        let shard = self.shard(id)?;
        if shard.failover.is_some() || failed.is_some_and(|f| f != shard.primary.id) {
            return Ok(None);
        }
        let candidates = self.candidates(&shard.replicas).await;
        let Some(best) = candidates.into_iter().max_by_key(Candidate::rank) else {
            if lock(&self.warned).insert(id.to_string()) {
                tracing::warn!(shard = %id, primary = %shard.primary.id,
                    "the primary is down and no healthy replica can take over; still checking");
            }
            return Ok(None);
        };
        let (intent, version) = self
            .record_intent(id, FailoverKind::Automatic, &shard.primary, &best.instance)
            .await?;
        let log = Log {
            shard: id,
            intent: &intent,
            start: Instant::now(),
        };
        log.step("intent recorded");
        failpoint(FAILPOINT_AFTER_INTENT);
        self.fence_old_primary(&shard.primary, &best.instance, version, &log)
            .await;
        if let Err(e) = steps::promote(&best.instance, self.settings.probe_timeout).await {
            log.step("promotion failed");
            self.abandon(id, &intent, "the target could not be promoted", &e)
                .await;
            self.count(id, intent.kind, "failed");
            return Err(ServiceError::ShardUnavailable(format!(
                "shard {id}: promote {}: {e}; the failover was rolled back",
                best.instance.id
            )));
        }
        log.step("promoted");
        failpoint(FAILPOINT_AFTER_PROMOTE);
        let result = self.finish(id, &intent, &log).await?;
        Ok(Some(result))
    }

    /// A planned switchover: the old primary stops taking writes, the
    /// target replays everything it wrote, then takes over. No
    /// acknowledged write is lost, even with asynchronous replication.
    /// Runs in the background, so a client going away does not cut it
    /// short.
    pub async fn planned(
        self: &Arc<Self>,
        shard: &str,
        req: &FailoverRequest,
    ) -> Result<FailoverResult, ServiceError> {
        let claim = self.claim(shard).ok_or_else(|| Self::busy(shard))?;
        let this = Arc::clone(self);
        let req = req.clone();
        let task = self
            .tracker
            .spawn(async move { this.planned_claimed(claim, &req).await });
        task.await.map_err(|e| {
            tracing::error!(%shard, error = %e, "switchover task");
            ServiceError::ShardUnavailable(format!("the switchover of shard {shard} failed"))
        })?
    }

    async fn planned_claimed(
        self: &Arc<Self>,
        claim: Claim,
        req: &FailoverRequest,
    ) -> Result<FailoverResult, ServiceError> {
        let id = claim.shard.as_str();
        let shard = self.shard(id)?;
        if let Some(f) = &shard.failover {
            return Err(ServiceError::Conflict(format!(
                "shard {id} is failing over to {} already",
                f.to
            )));
        }
        let pool: Vec<Instance> = match &req.to {
            None => shard.replicas.clone(),
            Some(to) => vec![planned_target(&shard, to)?],
        };
        let timeout = self.settings.probe_timeout;
        let old = pg::connect(&shard.primary.dsn, timeout)
            .await
            .map_err(|e| {
                ServiceError::ShardUnavailable(format!(
                    "shard {id}'s primary is unreachable ({e}); a planned switchover needs it \
                 (a dead primary is replaced by the automatic failover)"
                ))
            })?;
        let recovering = old.query_one("SELECT pg_is_in_recovery()", &[]).await;
        if !matches!(recovering.map(|r| r.get::<_, bool>(0)), Ok(false)) {
            return Err(ServiceError::ShardUnavailable(format!(
                "shard {id}'s primary does not answer as a primary"
            )));
        }
        let candidates = self.candidates(&pool).await;
        let Some(best) = candidates
            .into_iter()
            .filter(|c| c.streaming)
            .max_by_key(Candidate::rank)
        else {
            return Err(ServiceError::Conflict(match &req.to {
                Some(to) => {
                    format!("replica {to} is not streaming from the primary, so it cannot catch up")
                }
                None => format!("shard {id} has no healthy replica streaming from its primary"),
            }));
        };
        let (intent, _) = self
            .record_intent(id, FailoverKind::Planned, &shard.primary, &best.instance)
            .await?;
        let log = Log {
            shard: id,
            intent: &intent,
            start: Instant::now(),
        };
        log.step("intent recorded");
        failpoint(FAILPOINT_AFTER_INTENT);
        if let Err(e) = self.drain_and_catch_up(&old, &best.instance, &log).await {
            self.abandon(id, &intent, "the switchover could not drain", &e)
                .await;
            self.count(id, intent.kind, "rolled_back");
            return Err(ServiceError::Conflict(format!(
                "shard {id}: {e}; the switchover was rolled back"
            )));
        }
        if let Err(e) = steps::promote(&best.instance, timeout).await {
            log.step("promotion failed");
            // Promoted after all (it answered late)? Then go on.
            if steps::in_recovery(&best.instance.dsn, timeout).await != Some(false) {
                self.abandon(id, &intent, "the target could not be promoted", &e)
                    .await;
                self.count(id, intent.kind, "failed");
                return Err(ServiceError::ShardUnavailable(format!(
                    "shard {id}: promote {}: {e}; the switchover was rolled back",
                    best.instance.id
                )));
            }
        }
        log.step("promoted");
        failpoint(FAILPOINT_AFTER_PROMOTE);
        self.finish(id, &intent, &log).await
    }

    /// Resumes or rolls back the failover intent of a shard (one left by
    /// a manager that stopped mid-way): a target already promoted is
    /// committed; else, for an automatic failover whose old primary
    /// answers again, the intent is cleared; else the target is promoted
    /// and committed (a planned switchover whose old primary answers is
    /// drained again first).
    pub async fn resume(self: &Arc<Self>, shard: &str) -> Result<Resumed, ServiceError> {
        let claim = self.claim(shard).ok_or_else(|| Self::busy(shard))?;
        self.resume_claimed(claim).await
    }

    async fn resume_claimed(self: &Arc<Self>, claim: Claim) -> Result<Resumed, ServiceError> {
        let id = claim.shard.as_str();
        let shard = self.shard(id)?;
        let Some(intent) = shard.failover.clone() else {
            return Ok(Resumed::Nothing);
        };
        // Measured from the intent's time, which a restart does not reset.
        let since = now_ms().saturating_sub(intent.started_at_ms);
        let log = Log {
            shard: id,
            intent: &intent,
            start: Instant::now()
                .checked_sub(Duration::from_millis(since))
                .unwrap_or_else(Instant::now),
        };
        log.step("resuming");
        let target = shard.replicas.iter().find(|r| r.id == intent.to);
        let (Some(target), true) = (target, shard.primary.id == intent.from) else {
            self.abandon(id, &intent, "the intent no longer matches the shard", "")
                .await;
            self.count(id, intent.kind, "rolled_back");
            return Ok(Resumed::RolledBack);
        };
        let timeout = self.settings.probe_timeout;
        let target_recovering = steps::in_recovery(&target.dsn, timeout).await;
        if target_recovering != Some(false) {
            let old = pg::connect(&shard.primary.dsn, timeout).await.ok();
            let old_is_primary = old.is_some()
                && steps::in_recovery(&shard.primary.dsn, timeout).await == Some(false);
            if old_is_primary && intent.kind == FailoverKind::Automatic {
                self.abandon(id, &intent, "the old primary answers again", "")
                    .await;
                self.count(id, intent.kind, "rolled_back");
                return Ok(Resumed::RolledBack);
            }
            if target_recovering.is_none() {
                // It may have been promoted: keep the intent (routers hold,
                // nothing is promoted twice) and try again next round.
                return Err(ServiceError::ShardUnavailable(format!(
                    "shard {id}: failover target {} is unreachable; the intent is kept",
                    target.id
                )));
            }
            if let (Some(old), true) = (&old, old_is_primary) {
                if let Err(e) = self.drain_and_catch_up(old, target, &log).await {
                    self.abandon(id, &intent, "the switchover could not drain", &e)
                        .await;
                    self.count(id, intent.kind, "rolled_back");
                    return Ok(Resumed::RolledBack);
                }
            } else {
                // The old primary does not answer this manager; routers
                // may still reach it. Promote only once each holds the
                // shard's traffic or its lease ran out.
                let version = self.svc.current().catalog.version;
                self.fence_old_primary(&shard.primary, target, version, &log)
                    .await;
            }
            if let Err(e) = steps::promote(target, timeout).await {
                log.step("promotion failed");
                if steps::in_recovery(&target.dsn, timeout).await != Some(false) {
                    self.abandon(id, &intent, "the target could not be promoted", &e)
                        .await;
                    self.count(id, intent.kind, "failed");
                    return Ok(Resumed::RolledBack);
                }
            }
            log.step("promoted");
        }
        self.finish(id, &intent, &log).await.map(Resumed::Committed)
    }

    /// Planned, step 2: drain the old primary and wait for the target.
    async fn drain_and_catch_up(
        &self,
        old: &tokio_postgres::Client,
        target: &Instance,
        log: &Log<'_>,
    ) -> Result<(), String> {
        let lsn = steps::drain(old).await?;
        log.step("old primary drained");
        steps::wait_replayed(
            target,
            lsn,
            self.settings.probe_timeout,
            self.settings.switchover_timeout,
        )
        .await?;
        steps::stop_wal_senders(old).await;
        log.step("target caught up");
        Ok(())
    }

    /// Steps 4 and 5: repoint the other replicas, commit, then check the
    /// repointed ones stream.
    async fn finish(
        &self,
        id: &str,
        intent: &Failover,
        log: &Log<'_>,
    ) -> Result<FailoverResult, ServiceError> {
        let shard = self.shard(id)?;
        let Some(target) = shard.replicas.iter().find(|r| r.id == intent.to).cloned() else {
            return Err(ServiceError::Conflict(format!(
                "shard {id}: failover target {} is no longer a replica",
                intent.to
            )));
        };
        let timeout = self.settings.probe_timeout;
        let others: Vec<Instance> = shard
            .replicas
            .iter()
            .filter(|r| r.id != target.id)
            .cloned()
            .collect();
        let upstream = steps::timeline(&target, timeout)
            .await
            .and_then(|tli| Upstream::new(&target.dsn, tli));
        let mut needs_reclone = Vec::new();
        let mut told = Vec::new();
        match &upstream {
            Ok(up) => {
                let tells = others.iter().map(|r| steps::repoint(r, up, timeout));
                let results = futures_util::future::join_all(tells).await;
                for (r, res) in others.iter().zip(results) {
                    match res {
                        Ok(()) => told.push(r.clone()),
                        Err(e) => {
                            tracing::warn!(shard = %id, replica = %r.id, error = %e,
                                "repoint replica; it needs a re-clone");
                            needs_reclone.push(r.id.clone());
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %id, error = %e, "read the new primary's timeline");
                needs_reclone.extend(others.iter().map(|r| r.id.clone()));
            }
        }
        log.step("replicas repointed");
        // The new primary's standbys: the replicas that follow it (none
        // for an asynchronous shard: a promoted replica may carry the
        // old primary's list in its copied configuration).
        match standbys::configure(&target, &told, shard.synchronous, timeout).await {
            Ok(list) => {
                if shard.synchronous && list.is_empty() {
                    tracing::warn!(shard = %id, "no replica follows the new primary: it commits \
                        without a synchronous standby until one is added");
                }
                log.step("standbys set");
            }
            Err(e) => {
                tracing::warn!(shard = %id, error = %e, "set the new primary's synchronous standbys")
            }
        }
        let generation = self.commit(id, intent).await?;
        let write_pause_ms = log.start.elapsed().as_millis() as u64;
        log.step("committed");
        self.count(id, intent.kind, "ok");
        let mut repointed = Vec::new();
        if let Ok(up) = &upstream {
            let waits = told
                .iter()
                .map(|r| steps::wait_streaming(r, up, timeout, self.settings.repoint_timeout));
            let results = futures_util::future::join_all(waits).await;
            for (r, res) in told.iter().zip(results) {
                match res {
                    Ok(()) => repointed.push(r.id.clone()),
                    Err(e) => {
                        tracing::warn!(shard = %id, replica = %r.id, error = %e,
                            "replica does not follow the new primary; it needs a re-clone");
                        needs_reclone.push(r.id.clone());
                    }
                }
            }
        }
        log.step("done");
        tracing::info!(shard = %id, from = %intent.from, to = %intent.to, generation,
            write_pause_ms, ?repointed, ?needs_reclone, "failover complete");
        Ok(FailoverResult {
            shard: id.to_string(),
            from: intent.from.clone(),
            to: intent.to.clone(),
            generation,
            write_pause_ms,
            repointed,
            needs_reclone,
        })
    }

    /// Probes replicas at once; those in recovery that answered.
    async fn candidates(&self, replicas: &[Instance]) -> Vec<Candidate> {
        let timeout = self.settings.probe_timeout;
        let probes = replicas.iter().map(|r| steps::probe_candidate(r, timeout));
        let results = futures_util::future::join_all(probes).await;
        let mut out = Vec::new();
        for (r, res) in replicas.iter().zip(results) {
            match res {
                Ok(Some(c)) => out.push(c),
                Ok(None) => tracing::error!(instance = %r.id,
                    "a replica is not in recovery; it is never promoted nor chosen"),
                Err(e) => tracing::debug!(instance = %r.id, error = %e, "replica unreachable"),
            }
        }
        out
    }

    fn shard(&self, id: &str) -> Result<Shard, ServiceError> {
        self.svc
            .current()
            .catalog
            .shards
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no shard {id}")))
    }

    /// Step 1: the intent, if the shard still has `from` as primary and
    /// `to` as a replica and no other intent.
    async fn record_intent(
        &self,
        id: &str,
        kind: FailoverKind,
        from: &Instance,
        to: &Instance,
    ) -> Result<(Failover, u64), ServiceError> {
        let intent = Failover {
            kind,
            from: from.id.clone(),
            to: to.id.clone(),
            started_at_ms: now_ms(),
        };
        let version = self
            .change(id, |shard| {
                if shard.failover.is_some() {
                    return Err(Self::busy(id));
                }
                if shard.primary.id != from.id || !shard.replicas.iter().any(|r| r.id == to.id) {
                    return Err(ServiceError::Conflict(format!(
                        "shard {id} changed while preparing the failover; retry"
                    )));
                }
                shard.failover = Some(intent.clone());
                Ok(())
            })
            .await?;
        Ok((intent, version))
    }

    /// An automatic failover's fence, before the promotion: every live
    /// router holds the shard's primary traffic (it has the intent's
    /// catalog `version`, so it has cancelled what it ran on the old
    /// primary) or its lease ran out (so it sends no writes: a router
    /// cut off from the manager stops writing); then, if the old primary
    /// answers, it is made read-only and its sessions are ended, and the
    /// target is given `switchover_timeout` to replay what it wrote.
    async fn fence_old_primary(
        &self,
        old: &Instance,
        target: &Instance,
        version: u64,
        log: &Log<'_>,
    ) {
        let behind = self.routers.wait_applied(version).await;
        if behind.is_empty() {
            log.step("routers hold");
        } else {
            tracing::warn!(shard = %log.shard, routers = ?behind,
                "routers did not acknowledge the failover within a lease; going on \
                 (a router that cannot renew its lease sends no writes)");
            log.step("routers hold or their leases ran out");
        }
        let timeout = self.settings.probe_timeout;
        let fenced = tokio::time::timeout(self.settings.switchover_timeout, async {
            let reach = self.settings.fence_timeout;
            let client = pg::connect(&old.dsn, reach)
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            if steps::in_recovery(&old.dsn, reach).await != Some(false) {
                return Err("not a primary".to_string());
            }
            let lsn = steps::drain(&client).await?;
            log.step("old primary fenced");
            steps::wait_replayed(target, lsn, timeout, self.settings.switchover_timeout).await?;
            steps::stop_wal_senders(&client).await;
            log.step("target caught up");
            Ok::<(), String>(())
        })
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_string()));
        if let Err(e) = fenced {
            tracing::warn!(shard = %log.shard, instance = %old.id, reason = %e,
                "the old primary was not fenced in PostgreSQL; the routers' hold fences it");
        }
    }

    /// Step 5: the target becomes the primary and the old one is fenced,
    /// in one write. Returns the new generation.
    async fn commit(&self, id: &str, intent: &Failover) -> Result<u64, ServiceError> {
        let mut generation = 0;
        self.change(id, |shard| {
            if shard.failover.as_ref() != Some(intent) {
                return Err(ServiceError::Conflict(format!(
                    "shard {id}'s failover intent changed; not committing"
                )));
            }
            let Some(pos) = shard.replicas.iter().position(|r| r.id == intent.to) else {
                return Err(ServiceError::Conflict(format!(
                    "shard {id}: failover target {} is no longer a replica",
                    intent.to
                )));
            };
            let target = shard.replicas.remove(pos);
            let old = std::mem::replace(&mut shard.primary, target);
            if !shard.fenced.iter().any(|f| f.id == old.id) {
                shard.fenced.push(old);
            }
            shard.generation += 1;
            shard.failover = None;
            generation = shard.generation;
            Ok(())
        })
        .await?;
        Ok(generation)
    }

    /// Clears an intent (rolls back): a drained old primary takes writes
    /// again. Failures are logged; the health loop retries a kept intent.
    async fn abandon(&self, id: &str, intent: &Failover, why: &str, error: &str) {
        tracing::warn!(shard = %id, from = %intent.from, to = %intent.to, why, error,
            "rolling the failover back");
        if intent.kind == FailoverKind::Planned {
            if let Ok(shard) = self.shard(id) {
                if shard.primary.id == intent.from {
                    let undo =
                        steps::undo_read_only(&shard.primary.dsn, self.settings.probe_timeout);
                    if let Err(e) = undo.await {
                        tracing::error!(shard = %id, error = %e,
                            "let writes in again on the old primary; do it by hand \
                             (ALTER SYSTEM RESET default_transaction_read_only)");
                    }
                }
            }
        }
        let cleared = self
            .change(id, |shard| {
                if shard.failover.as_ref() == Some(intent) {
                    shard.failover = None;
                }
                Ok(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::error!(shard = %id, error = %e, "clear the failover intent");
        }
    }

    /// Read-modify-write of one shard.
    async fn change<F>(&self, id: &str, mut edit: F) -> Result<u64, ServiceError>
    where
        F: FnMut(&mut Shard) -> Result<(), ServiceError>,
    {
        let key = keys::shard(id);
        self.svc
            .update(std::slice::from_ref(&key), |seen| {
                let Some(entry) = &seen[&key] else {
                    return Err(ServiceError::NotFound(format!("no shard {id}")));
                };
                let mut shard: Shard = decode(entry)?;
                edit(&mut shard)?;
                Ok(vec![put(key.clone(), &shard)])
            })
            .await
    }
}

/// The replica an operator named for a planned switchover.
fn planned_target(shard: &Shard, to: &str) -> Result<Instance, ServiceError> {
    if shard.primary.id == to {
        return Err(ServiceError::Conflict(format!(
            "{to} is shard {}'s primary already",
            shard.id
        )));
    }
    if shard.fenced.iter().any(|f| f.id == to) {
        return Err(ServiceError::Conflict(format!(
            "{to} is fenced (a former primary): it is never promoted; re-clone it and add it \
             as a replica first"
        )));
    }
    shard
        .replicas
        .iter()
        .find(|r| r.id == to)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound(format!("shard {} has no instance {to}", shard.id)))
}
