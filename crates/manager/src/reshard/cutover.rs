//! Cutover (steps a-e of the design): sources refuse the moving keys,
//! the ranges freeze, routers acknowledge (or their lease runs out), the
//! last changes are applied and verified, then one catalog write
//! publishes the new map. Until that write nothing is lost by stopping:
//! the ranges unfreeze and the sources take writes again.

use std::collections::BTreeMap;
use std::time::Instant;

use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard, Tenant};
use shardline_core::fence::claim_key;
use shardline_core::KeyRange;
use tokio_util::sync::CancellationToken;

use super::baseline::{side_sums, Role, Stage, Verified};
use super::engine::{db, verified_key, JobError, Plan};
use super::sql;
use super::{failpoint, phase_number, Reshards, FAILPOINT_DURING_CUTOVER};
use crate::error::ServiceError;
use crate::service::{decode, put, ReadSet};

impl Reshards {
    /// Cutover, steps a-e. A transient failure before the publish puts
    /// the job back in CatchUp with the ranges unfrozen.
    pub(super) async fn cutover(
        &self,
        plan: &Plan,
        token: &CancellationToken,
    ) -> Result<(), JobError> {
        match self.cutover_steps(plan, token).await {
            Err(e) if e.retryable() => {
                self.abort_cutover(plan).await;
                Err(JobError::CutoverAborted(Box::new(e)))
            }
            Err(JobError::Stopped) if !self.jobs.is_cancelling(&plan.job.id) => {
                // Shutting down: do not keep writes blocked meanwhile.
                self.abort_cutover(plan).await;
                Err(JobError::Stopped)
            }
            other => other,
        }
    }

    pub(super) async fn cutover_steps(
        &self,
        plan: &Plan,
        token: &CancellationToken,
    ) -> Result<(), JobError> {
        let id = &plan.job.id;
        let key_type = plan.keyspace.key_type;
        let started = Instant::now();
        // Every moving row compared before the freeze, so that only the
        // rows changed since are compared while writes are held.
        let mut base = self.baseline(plan, token).await?;
        tracing::info!(job = %id, ms = started.elapsed().as_millis() as u64,
            "cutover: baseline verified");
        // a. Nothing can change a moving row on a source from now on.
        for source in plan.sources() {
            let owned: Vec<KeyRange> = plan.job.to_map.ranges_of(&source).collect();
            for tenant in &plan.tenants {
                let src = self.must_db(plan, &source, tenant).await?;
                for meta in self.metas(plan, &src, &source, tenant, false).await? {
                    sql::install_refuse(&src, &meta, key_type, &owned)
                        .await
                        .map_err(db(&source))?;
                }
            }
        }
        tracing::info!(job = %id, "cutover: sources refuse moving keys");
        // b. Routers hold requests for the moving ranges (or tenant).
        let version = if plan.is_tenant_move() {
            self.set_moving(plan, true).await?
        } else {
            self.set_frozen(plan, true).await?
        };
        let frozen_at = Instant::now();
        tracing::info!(job = %id, version, "cutover: ranges frozen");
        failpoint(FAILPOINT_DURING_CUTOVER);
        // c. Every live router has that catalog, or its lease ran out.
        self.wait_for_routers(plan, version, token).await?;
        tracing::info!(job = %id, waited_ms = frozen_at.elapsed().as_millis() as u64,
            "cutover: routers acknowledged");
        // Only a router cut off from the manager routes by an older
        // catalog now: the sources refuse all its writes from here on.
        self.fence_sources(plan, version).await?;
        // d. The last changes, then verification.
        self.apply_changes(plan, token, true, Some(&mut base.changed))
            .await?;
        tracing::info!(job = %id, at_ms = frozen_at.elapsed().as_millis() as u64,
            "cutover: last changes applied");
        let verified = if plan.is_tenant_move() {
            self.verify_tenant(plan, Stage::Held(&base)).await?
        } else {
            self.verify(plan, Stage::Held(&base)).await?
        }
        .parts;
        tracing::info!(job = %id, checks = verified.len(),
            at_ms = frozen_at.elapsed().as_millis() as u64, "cutover: verified");
        // e. Publish.
        let pause = frozen_at.elapsed().as_millis() as u64;
        if plan.is_tenant_move() {
            self.publish_tenant(plan, verified, pause).await?;
        } else {
            self.publish(plan, verified, pause).await?;
        }
        tracing::info!(job = %id, cutover_pause_ms = pause, "cutover: new map published");
        Ok(())
    }

    /// Raises the fence of every source tenant database to `version`
    /// (see [`sql::set_fence`]).
    async fn fence_sources(&self, plan: &Plan, version: u64) -> Result<(), JobError> {
        for source in plan.sources() {
            for tenant in &plan.tenants {
                let src = self.must_db(plan, &source, tenant).await?;
                sql::set_fence(&src, version, &claim_key(&tenant.role_password))
                    .await
                    .map_err(db(&source))?;
            }
        }
        Ok(())
    }

    /// Freezes (or unfreezes) the job's moving ranges; the new revision.
    pub(super) async fn set_frozen(&self, plan: &Plan, frozen: bool) -> Result<u64, JobError> {
        let ks_key = keys::keyspace(&plan.job.keyspace);
        let moving = plan.moving();
        let from = &plan.job.from_map;
        let rev = self
            .svc
            .update(std::slice::from_ref(&ks_key), |seen| {
                let Some(entry) = &seen[&ks_key] else {
                    return Err(ServiceError::NotFound(format!(
                        "no keyspace {}",
                        plan.job.keyspace
                    )));
                };
                let mut ks: Keyspace = decode(entry)?;
                if frozen && ks.map.as_ref() != Some(from) {
                    return Err(ServiceError::Conflict(format!(
                        "the map of keyspace {} changed during the job",
                        ks.name
                    )));
                }
                let want = if frozen { moving.clone() } else { Vec::new() };
                if ks.frozen == want {
                    return Ok(vec![]);
                }
                ks.frozen = want;
                Ok(vec![put(ks_key.clone(), &ks)])
            })
            .await?;
        Ok(rev.max(self.svc.current().catalog.version))
    }

    pub(super) async fn wait_for_routers(
        &self,
        plan: &Plan,
        version: u64,
        token: &CancellationToken,
    ) -> Result<(), JobError> {
        // A router that heartbeats without ever applying the catalog stops
        // the wait after one lease: the refuse triggers keep its writes
        // out of the source anyway.
        let behind = tokio::select! {
            behind = self.routers.wait_applied(version) => behind,
            () = token.cancelled() => return Err(JobError::Stopped),
        };
        if !behind.is_empty() {
            tracing::warn!(job = %plan.job.id, routers = ?behind,
                "cutover: routers did not acknowledge the frozen ranges within a lease; \
                 going on (sources refuse their writes)");
        }
        Ok(())
    }

    /// While held: sequences advanced, refuse triggers on targets set to
    /// the ranges they will own; then (at any stage) source and target
    /// checksums compared per tenant, table and range.
    pub(super) async fn verify(&self, plan: &Plan, stage: Stage<'_>) -> Result<Verified, JobError> {
        let key_type = plan.keyspace.key_type;
        let mut verified = Verified::default();
        let mut mismatches = Vec::new();
        for source in plan.sources() {
            let routes = plan.routes(&source);
            let sent: Vec<KeyRange> = routes.values().flatten().copied().collect();
            for tenant in &plan.tenants {
                let src = self.must_db(plan, &source, tenant).await?;
                let metas = self.metas(plan, &src, &source, tenant, false).await?;
                let mut targets = Vec::new();
                for (target, ranges) in &routes {
                    let tgt = self.must_db(plan, target, tenant).await?;
                    if stage.is_held() {
                        sql::sync_sequences(&src, &tgt, &tenant.pg_name())
                            .await
                            .map_err(db(target))?;
                        let owned: Vec<KeyRange> = plan.job.to_map.ranges_of(target).collect();
                        for meta in &metas {
                            if sql::has_refuse(&tgt, meta).await.map_err(db(target))? {
                                sql::install_refuse(&tgt, meta, key_type, &owned)
                                    .await
                                    .map_err(db(target))?;
                            }
                        }
                    }
                    targets.push((target, tgt, ranges));
                }
                for meta in &metas {
                    let mut sides =
                        vec![stage.side((&source, Role::Source), tenant, meta, &src, &sent)?];
                    for (t, c, r) in &targets {
                        sides.push(stage.side((t, Role::Target), tenant, meta, c, r)?);
                    }
                    let sums = side_sums(&sides, meta, key_type).await?;
                    verified.note(&sides, &sums);
                    let mut at = 0;
                    for ((target, _, ranges), got) in targets.iter().zip(&sums[1..]) {
                        for (k, range) in ranges.iter().enumerate() {
                            let (a, b) = (&sums[0][at + k], &got[k]);
                            if a != b {
                                mismatches.push(format!(
                                    "tenant {} table {} range {range}: source {source} has \
                                     {a}, target {target} has {b} (rows:checksum)",
                                    tenant.id, meta.name
                                ));
                            }
                            verified
                                .parts
                                .insert(verified_key(&tenant.id, &meta.name, range), a.clone());
                        }
                        at += ranges.len();
                    }
                }
            }
        }
        if !mismatches.is_empty() {
            return Err(JobError::Mismatch(format!(
                "verification failed{}, cutover aborted (the sources still own the ranges; \
                 nothing was lost): {}",
                stage.when(),
                mismatches.join("; ")
            )));
        }
        Ok(verified)
    }

    /// e. One write: the new map, nothing frozen, targets in the
    /// keyspace, the job in Cleanup.
    pub(super) async fn publish(
        &self,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> Result<(), JobError> {
        let job_key = keys::job(&plan.job.id);
        let ks_key = keys::keyspace(&plan.job.keyspace);
        let targets = plan.targets();
        let mut read = vec![job_key.clone(), ks_key.clone()];
        read.extend(targets.iter().map(|t| keys::shard(t)));
        self.svc
            .update(&read, |seen| {
                let job = published_job(seen, &job_key, &verified, pause_ms)?;
                let Some(ke) = &seen[&ks_key] else {
                    return Err(ServiceError::NotFound("the job's keyspace is gone".into()));
                };
                let mut ks: Keyspace = decode(ke)?;
                if ks.map.as_ref() != Some(&job.from_map) {
                    return Err(ServiceError::Conflict(format!(
                        "the map of keyspace {} changed during the job",
                        ks.name
                    )));
                }
                ks.map = Some(job.to_map.clone());
                ks.frozen.clear();
                let mut ops = vec![put(job_key.clone(), &job), put(ks_key.clone(), &ks)];
                for t in &targets {
                    let key = keys::shard(t);
                    let Some(e) = &seen[&key] else {
                        return Err(ServiceError::NotFound(format!("no shard {t}")));
                    };
                    let mut shard: Shard = decode(e)?;
                    match &shard.keyspace {
                        Some(k) if *k != ks.name => {
                            return Err(ServiceError::Conflict(format!(
                                "shard {t} joined keyspace {k} during the job"
                            )))
                        }
                        Some(_) => {}
                        None => {
                            shard.keyspace = Some(ks.name.clone());
                            ops.push(put(key, &shard));
                        }
                    }
                }
                Ok(ops)
            })
            .await?;
        self.published(plan);
        Ok(())
    }

    /// After a publish: the phase metric at Cleanup.
    pub(super) fn published(&self, plan: &Plan) {
        self.metrics
            .phase
            .with(&[&plan.job.id])
            .set(phase_number(ReshardPhase::Cleanup));
    }

    /// Puts a job back in CatchUp after a failed cutover: sources take
    /// writes to the ranges again, routers are released to them.
    pub(super) async fn abort_cutover(&self, plan: &Plan) {
        if let Err(e) = self.restore_refuse(plan).await {
            tracing::error!(job = %plan.job.id, error = ?e,
                "let the sources take writes to the moving ranges again; retried by the job");
        }
        let released = if plan.is_tenant_move() {
            self.set_moving(plan, false).await
        } else {
            self.set_frozen(plan, false).await
        };
        if let Err(e) = released {
            tracing::error!(job = %plan.job.id, error = ?e, "unfreeze the ranges");
        }
        if let Err(e) = self
            .set_phase(&plan.job.id, ReshardPhase::Cutover, ReshardPhase::CatchUp)
            .await
        {
            tracing::error!(job = %plan.job.id, error = ?e, "put the job back in catch-up");
        }
    }

    /// Sources' refuse triggers (where present) back to the ranges they
    /// own by the map before the job.
    pub(super) async fn restore_refuse(&self, plan: &Plan) -> Result<(), JobError> {
        for source in plan.sources() {
            let owned: Vec<KeyRange> = plan.job.from_map.ranges_of(&source).collect();
            for tenant in &plan.tenants {
                let Some(src) = self.tenant_db(plan, &source, tenant).await? else {
                    continue;
                };
                for meta in self.metas(plan, &src, &source, tenant, true).await? {
                    if sql::has_refuse(&src, &meta).await.map_err(db(&source))? {
                        sql::install_refuse(&src, &meta, plan.keyspace.key_type, &owned)
                            .await
                            .map_err(db(&source))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The job as a publish writes it: read in `seen`, still in Cutover (else
/// another run got there first: contended), now in Cleanup with its
/// verification and pause.
pub(super) fn published_job(
    seen: &ReadSet,
    key: &str,
    verified: &BTreeMap<String, String>,
    pause_ms: u64,
) -> Result<ReshardJob, ServiceError> {
    let Some(entry) = &seen[key] else {
        return Err(ServiceError::NotFound("the job is gone".into()));
    };
    let mut job: ReshardJob = decode(entry)?;
    if job.phase != ReshardPhase::Cutover {
        return Err(ServiceError::Contended);
    }
    job.phase = ReshardPhase::Cleanup;
    job.verified = verified.clone();
    job.cutover_pause_ms = Some(pause_ms);
    job.error = None;
    Ok(job)
}

/// The moving tenant as a tenant move's publish writes it: read in
/// `seen`, still in keyspace `from`, now in `to`, dedicated or not, no
/// longer moving.
pub(super) fn moved_tenant(
    seen: &ReadSet,
    id: &str,
    from: &str,
    to: &str,
    dedicated: bool,
) -> Result<Tenant, ServiceError> {
    let Some(entry) = &seen[&keys::tenant(id)] else {
        return Err(ServiceError::NotFound(format!("tenant {id} is gone")));
    };
    let mut tenant: Tenant = decode(entry)?;
    if tenant.keyspace != from {
        return Err(ServiceError::Conflict(format!(
            "tenant {id} left keyspace {from} during the job"
        )));
    }
    tenant.keyspace = to.to_string();
    tenant.dedicated = dedicated;
    tenant.moving = false;
    Ok(tenant)
}
