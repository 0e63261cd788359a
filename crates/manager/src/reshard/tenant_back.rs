//! The strategy of the way back of a tenant move: a dedicated tenant
//! into an existing shared keyspace (planned in [`super::plan_tenant`]).
//! The job is a tenant move the other way round (the dedicated
//! keyspace's shards are the sources, the shared keyspace's map the new
//! map): every step is [`TenantOut`]'s but the publish.

use std::collections::BTreeMap;
use std::time::Duration;

use shardline_catalog::Op;
use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard};
use shardline_core::Catalog;
use tokio_util::sync::CancellationToken;

use super::baseline::{Stage, Verified};
use super::job::{Ctx, JobError, Plan};
use super::publish::{moved_tenant, published_job};
use super::strategy::Strategy;
use super::tenant_out::TenantOut;
use crate::error::ServiceError;
use crate::pg;
use crate::service::{decode, put};

/// A dedicated tenant back into a shared keyspace.
pub(super) struct TenantBack;

impl Strategy for TenantBack {
    async fn prepare(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        TenantOut::prepare(cx, plan).await
    }

    async fn hold(cx: &Ctx, plan: &Plan, held: bool) -> Result<u64, JobError> {
        TenantOut::hold(cx, plan, held).await
    }

    async fn verify(cx: &Ctx, plan: &Plan, stage: Stage<'_>) -> Result<Verified, JobError> {
        TenantOut::verify(cx, plan, stage).await
    }

    /// One write for a move back: the tenant shared in the destination
    /// keyspace (whose map must be the one the job copied by), its
    /// dedicated keyspace deleted, the sources out of any keyspace, the
    /// job in Cleanup.
    async fn publish(
        cx: &Ctx,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> Result<(), JobError> {
        let tid = plan.moving_tenant()?.id.clone();
        let from = plan.job.keyspace.clone();
        let to = plan.job.to_keyspace.clone().unwrap_or_default();
        let job_key = keys::job(&plan.job.id);
        let from_key = keys::keyspace(&from);
        let to_key = keys::keyspace(&to);
        let tenant_key = keys::tenant(&tid);
        let sources = plan.sources();
        let mut read = vec![
            job_key.clone(),
            from_key.clone(),
            to_key.clone(),
            tenant_key.clone(),
        ];
        read.extend(sources.iter().map(|s| keys::shard(s)));
        cx.svc
            .update(&read, |seen| {
                let job = published_job(seen, &job_key, &verified, pause_ms)?;
                let Some(ke) = &seen[&to_key] else {
                    return Err(ServiceError::NotFound(format!("keyspace {to} is gone")));
                };
                let dest: Keyspace = decode(ke)?;
                if dest.map.as_ref() != Some(&job.to_map) {
                    return Err(ServiceError::Conflict(format!(
                        "the map of keyspace {to} changed during the job"
                    )));
                }
                let tenant = moved_tenant(seen, &tid, &from, &to, false)?;
                let mut ops = vec![put(job_key.clone(), &job), put(tenant_key.clone(), &tenant)];
                if seen[&from_key].is_some() {
                    ops.push(Op::Delete {
                        key: from_key.clone(),
                    });
                }
                for s in &sources {
                    let key = keys::shard(s);
                    let Some(e) = &seen[&key] else { continue };
                    let mut shard: Shard = decode(e)?;
                    if shard.keyspace.as_deref() == Some(from.as_str()) {
                        // Free for any use, as a deleted tenant's shards
                        // are: a shared tenant owns no shard, and nothing
                        // else would ever release the reservation.
                        shard.keyspace = None;
                        shard.reserved_for = None;
                        ops.push(put(key, &shard));
                    }
                }
                Ok(ops)
            })
            .await?;
        cx.show_phase(&plan.job.id, ReshardPhase::Cleanup);
        Ok(())
    }

    async fn cleanup(cx: &Ctx, plan: &Plan, token: &CancellationToken) -> Result<(), JobError> {
        TenantOut::cleanup(cx, plan, token).await
    }

    async fn undo_targets(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        TenantOut::undo_targets(cx, plan).await
    }
}

/// Before a move back: the tenant has no database on the destination
/// shards (one left by a move whose cleanup failed would mix with the
/// copy, and an undo would drop it).
pub(super) async fn check_no_leftover(
    cat: &Catalog,
    job: &ReshardJob,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let Some(tenant) = job.tenant.as_deref().and_then(|t| cat.tenants.get(t)) else {
        return Ok(());
    };
    let mut targets: Vec<&str> = job.moves.iter().map(|m| m.to.as_str()).collect();
    targets.sort();
    targets.dedup();
    for t in targets {
        let Some(shard) = cat.shards.get(t) else {
            return Err(ServiceError::NotFound(format!("no shard {t}")));
        };
        let admin = pg::connect_shard(t, &shard.primary.dsn, timeout).await?;
        let found = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&tenant.pg_name()],
            )
            .await
            .map_err(|e| pg::statement_error(t, &e))?;
        if found.is_some() {
            return Err(ServiceError::Conflict(format!(
                "tenant {} still has a database on shard {t} (left by an earlier move); \
                 drop it first",
                tenant.id
            )));
        }
    }
    Ok(())
}
