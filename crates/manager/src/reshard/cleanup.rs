//! The end of a job: cleanup after the cutover (Done), or undoing it
//! before (Cancelled, Failed).

use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard, Tenant};
use tokio_util::sync::CancellationToken;

use super::engine::{check, db, verified_key, JobError, Plan};
use super::sql;
use super::{failpoint, phase_number, Reshards, FAILPOINT_AFTER_CLEANUP, FAILPOINT_DURING_CLEANUP};
use crate::error::ServiceError;
use crate::service::{decode, put};

impl Reshards {
    /// without a range leave the keyspace, Done.
    pub(super) async fn cleanup(
        &self,
        plan: &Plan,
        token: &CancellationToken,
    ) -> Result<(), JobError> {
        if plan.is_tenant_move() {
            return self.cleanup_tenant(plan).await;
        }
        let id = &plan.job.id;
        let key_type = plan.keyspace.key_type;
        for source in plan.sources() {
            let routes = plan.routes(&source);
            for tenant in &plan.tenants {
                let src = self.must_db(plan, &source, tenant).await?;
                let metas = self.metas(plan, &src, &source, tenant, false).await?;
                let mut checked = Vec::new();
                for meta in &metas {
                    for range in routes.values().flatten() {
                        let key = verified_key(&tenant.id, &meta.name, range);
                        let Some(expected) = plan.job.verified.get(&key) else {
                            continue; // checked by an earlier run, maybe partly deleted
                        };
                        let now = sql::checksum(&src, meta, key_type, range)
                            .await
                            .map_err(db(&source))?;
                        let deleted = now.starts_with("0:");
                        if now != *expected && !deleted {
                            return Err(JobError::Mismatch(format!(
                                "the moved rows of tenant {} table {} range {range} changed on \
                                 source {source} after the cutover ({expected} then {now}); \
                                 nothing was deleted from it",
                                tenant.id, meta.name
                            )));
                        }
                        checked.push(key);
                    }
                }
                // From here rows are deleted: a run resuming after a crash
                // must not compare a partly deleted range with what the
                // cutover verified, so the checked entries go first.
                self.forget_verified(plan, &checked).await?;
                for meta in &metas {
                    sql::drop_capture(&src, meta).await.map_err(db(&source))?;
                }
                sql::drop_change_table(&src).await.map_err(db(&source))?;
                sql::as_replica(&src).await.map_err(db(&source))?;
                let moving = plan.moving_from(&source);
                for meta in &metas {
                    let mut deleted = 0u64;
                    loop {
                        check(token)?;
                        let n = sql::delete_batch(
                            &src,
                            meta,
                            key_type,
                            &moving,
                            self.settings.batch_rows,
                        )
                        .await
                        .map_err(db(&source))?;
                        deleted += n;
                        if n == 0 {
                            break;
                        }
                        failpoint(FAILPOINT_DURING_CLEANUP);
                    }
                    tracing::info!(job = %id, tenant = %tenant.id, table = %meta.name,
                        %source, deleted, "moved rows deleted from the source");
                }
            }
        }
        failpoint(FAILPOINT_AFTER_CLEANUP);
        self.finish_done(plan).await
    }

    /// Removes `keys` from the job's `verified` entries (only while the
    /// job is in Cleanup): their rows have been checked on the source
    /// once, and are being deleted.
    async fn forget_verified(&self, plan: &Plan, done: &[String]) -> Result<(), JobError> {
        if done.is_empty() {
            return Ok(());
        }
        let job_key = keys::job(&plan.job.id);
        self.svc
            .update(std::slice::from_ref(&job_key), |seen| {
                let Some(je) = &seen[&job_key] else {
                    return Err(ServiceError::NotFound("the job is gone".into()));
                };
                let mut job: ReshardJob = decode(je)?;
                if job.phase != ReshardPhase::Cleanup {
                    return Err(ServiceError::Contended);
                }
                for k in done {
                    job.verified.remove(k);
                }
                Ok(vec![put(job_key.clone(), &job)])
            })
            .await?;
        Ok(())
    }

    pub(super) async fn finish_done(&self, plan: &Plan) -> Result<(), JobError> {
        let job_key = keys::job(&plan.job.id);
        let ks = plan.job.keyspace.clone();
        // A tenant move's sources keep the other tenants.
        let leaving: Vec<String> = plan
            .sources()
            .into_iter()
            .filter(|s| !plan.is_tenant_move() && plan.job.to_map.ranges_of(s).next().is_none())
            .collect();
        let mut read = vec![job_key.clone()];
        read.extend(leaving.iter().map(|s| keys::shard(s)));
        self.svc
            .update(&read, |seen| {
                let Some(je) = &seen[&job_key] else {
                    return Err(ServiceError::NotFound("the job is gone".into()));
                };
                let mut job: ReshardJob = decode(je)?;
                if job.phase != ReshardPhase::Cleanup {
                    return Err(ServiceError::Contended);
                }
                job.phase = ReshardPhase::Done;
                let mut ops = vec![put(job_key.clone(), &job)];
                for s in &leaving {
                    let key = keys::shard(s);
                    if let Some(e) = &seen[&key] {
                        let mut shard: Shard = decode(e)?;
                        if shard.keyspace.as_deref() == Some(ks.as_str()) {
                            shard.keyspace = None;
                            ops.push(put(key, &shard));
                        }
                    }
                }
                Ok(ops)
            })
            .await?;
        self.metrics
            .phase
            .with(&[&plan.job.id])
            .set(phase_number(ReshardPhase::Done));
        tracing::info!(job = %plan.job.id, left = ?leaving, "resharding job done");
        Ok(())
    }

    /// Undoes a job that has not published: capture and change table
    /// dropped, refuse triggers back to the old map, rows copied to the
    /// targets deleted.
    pub(super) async fn undo(&self, plan: &Plan) -> Result<(), JobError> {
        let key_type = plan.keyspace.key_type;
        self.restore_refuse(plan).await?;
        for source in plan.sources() {
            for tenant in &plan.tenants {
                let Some(src) = self.tenant_db(plan, &source, tenant).await? else {
                    continue;
                };
                for meta in self.metas(plan, &src, &source, tenant, true).await? {
                    sql::drop_capture(&src, &meta).await.map_err(db(&source))?;
                }
                sql::drop_change_table(&src).await.map_err(db(&source))?;
            }
        }
        if plan.is_tenant_move() {
            self.undo_tenant_targets(plan).await?;
            tracing::info!(job = %plan.job.id, "undone: tenant where it was, copies dropped");
            return Ok(());
        }
        for target in plan.targets() {
            let ranges = plan.moving_to(&target);
            for tenant in &plan.tenants {
                let Some(tgt) = self.tenant_db(plan, &target, tenant).await? else {
                    continue;
                };
                sql::as_replica(&tgt).await.map_err(db(&target))?;
                for meta in self.metas(plan, &tgt, &target, tenant, true).await? {
                    while sql::delete_batch(
                        &tgt,
                        &meta,
                        key_type,
                        &ranges,
                        self.settings.batch_rows,
                    )
                    .await
                    .map_err(db(&target))?
                        > 0
                    {}
                }
            }
        }
        tracing::info!(job = %plan.job.id, "undone: sources as they were, copies removed");
        Ok(())
    }

    /// Ends an undone job (Cancelled or Failed) and unfreezes its ranges,
    /// in one write; refused once the job has published.
    pub(super) async fn finish_undone(
        &self,
        job: &ReshardJob,
        phase: ReshardPhase,
        error: Option<String>,
    ) -> Result<(), ServiceError> {
        let job_key = keys::job(&job.id);
        let ks_key = keys::keyspace(&job.keyspace);
        let tenant_key = job.tenant.as_deref().map(keys::tenant);
        let mut read = vec![job_key.clone(), ks_key.clone()];
        read.extend(tenant_key.clone());
        self.svc
            .update(&read, |seen| {
                let Some(je) = &seen[&job_key] else {
                    return Err(ServiceError::NotFound(format!(
                        "no resharding job {}",
                        job.id
                    )));
                };
                let mut j: ReshardJob = decode(je)?;
                if j.phase >= ReshardPhase::Cleanup {
                    return Err(ServiceError::Conflict(format!(
                        "job {} has cut over already",
                        j.id
                    )));
                }
                j.phase = phase;
                j.error = error.clone();
                let mut ops = vec![put(job_key.clone(), &j)];
                if let Some(ke) = &seen[&ks_key] {
                    let mut ks: Keyspace = decode(ke)?;
                    if !ks.frozen.is_empty() {
                        ks.frozen.clear();
                        ops.push(put(ks_key.clone(), &ks));
                    }
                }
                // A tenant move's tenant is released to its old shards.
                if let Some(key) = &tenant_key {
                    if let Some(te) = &seen[key] {
                        let mut t: Tenant = decode(te)?;
                        if t.moving {
                            t.moving = false;
                            ops.push(put(key.clone(), &t));
                        }
                    }
                }
                Ok(ops)
            })
            .await?;
        self.metrics.phase.with(&[&job.id]).set(phase_number(phase));
        Ok(())
    }

    /// A fatal error: before the publish, undo and fail; after it, fail
    /// (the new owners have the rows; the source keeps its copy).
    pub(super) async fn fail(&self, id: &str, msg: &str) -> Result<(), JobError> {
        let job = self.fresh_job(id).await?;
        if job.phase < ReshardPhase::Cleanup {
            let plan = Plan::load(&self.svc, &job)?;
            self.undo(&plan).await?;
            self.finish_undone(&job, ReshardPhase::Failed, Some(msg.to_string()))
                .await?;
        } else {
            let key = keys::job(id);
            self.svc
                .update(std::slice::from_ref(&key), |seen| {
                    let Some(e) = &seen[&key] else {
                        return Err(ServiceError::NotFound(format!("no resharding job {id}")));
                    };
                    let mut j: ReshardJob = decode(e)?;
                    j.phase = ReshardPhase::Failed;
                    j.error = Some(msg.to_string());
                    Ok(vec![put(key.clone(), &j)])
                })
                .await?;
            self.metrics
                .phase
                .with(&[id])
                .set(phase_number(ReshardPhase::Failed));
        }
        Ok(())
    }
}
