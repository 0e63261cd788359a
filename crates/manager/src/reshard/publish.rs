//! The catalog writes that move a job along, shared by every kind: the
//! wait for routers, the publish's job entry and moved tenant, Done,
//! the end of an undone job, and failure after the publish.

use std::collections::BTreeMap;

use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard, Tenant};
use tokio_util::sync::CancellationToken;

use super::job::{Ctx, JobError, Plan};
use crate::error::ServiceError;
use crate::service::{decode, put, ReadSet};

/// Cutover step c: waits until every live router has applied
/// catalog `version` or its lease ran out.
pub(super) async fn wait_for_routers(
    cx: &Ctx,
    plan: &Plan,
    version: u64,
    token: &CancellationToken,
) -> Result<(), JobError> {
    // A router that heartbeats without ever applying the catalog stops
    // the wait after one lease: the refuse triggers keep its writes
    // out of the source anyway.
    let behind = tokio::select! {
        behind = cx.routers.wait_applied(version) => behind,
        () = token.cancelled() => return Err(JobError::Stopped),
    };
    if !behind.is_empty() {
        tracing::warn!(job = %plan.job.id, routers = ?behind,
            "cutover: routers did not acknowledge the frozen ranges within a lease; \
             going on (sources refuse their writes)");
    }
    Ok(())
}

/// Removes `keys` from the job's `verified` entries (only while the
/// job is in Cleanup): their rows have been checked on the source
/// once, and are being deleted.
pub(super) async fn forget_verified(
    cx: &Ctx,
    plan: &Plan,
    done: &[String],
) -> Result<(), JobError> {
    if done.is_empty() {
        return Ok(());
    }
    let job_key = keys::job(&plan.job.id);
    cx.svc
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

/// Done: the job, and the sources in `leaving` out of the keyspace,
/// in one write.
pub(super) async fn finish_done(cx: &Ctx, plan: &Plan, leaving: &[String]) -> Result<(), JobError> {
    let job_key = keys::job(&plan.job.id);
    let ks = plan.job.keyspace.clone();
    let mut read = vec![job_key.clone()];
    read.extend(leaving.iter().map(|s| keys::shard(s)));
    cx.svc
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
            for s in leaving {
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
    cx.show_phase(&plan.job.id, ReshardPhase::Done);
    tracing::info!(job = %plan.job.id, left = ?leaving, "resharding job done");
    Ok(())
}

/// Ends an undone job (Cancelled or Failed) and unfreezes its ranges,
/// in one write; refused once the job has published.
pub(super) async fn finish_undone(
    cx: &Ctx,
    job: &ReshardJob,
    phase: ReshardPhase,
    error: Option<String>,
) -> Result<(), ServiceError> {
    let job_key = keys::job(&job.id);
    let ks_key = keys::keyspace(&job.keyspace);
    let tenant_key = job.tenant.as_deref().map(keys::tenant);
    let mut read = vec![job_key.clone(), ks_key.clone()];
    read.extend(tenant_key.clone());
    cx.svc
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
    cx.show_phase(&job.id, phase);
    Ok(())
}

/// A published job fails (its rows no longer match): nothing is
/// undone, the new owners have the rows and the source keeps its copy.
pub(super) async fn mark_failed(cx: &Ctx, id: &str, msg: &str) -> Result<(), JobError> {
    let key = keys::job(id);
    cx.svc
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
    cx.show_phase(id, ReshardPhase::Failed);
    Ok(())
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
