//! The strategy of split, merge and move: key ranges of a keyspace, for
//! every active tenant in it, go from their source shards to their
//! targets. Routers hold the moving ranges (`Keyspace.frozen`); each
//! (source, target, range) is verified on its own; the publish writes
//! the new map; cleanup deletes the moved rows from the sources.

use std::collections::BTreeMap;
use std::time::Duration;

use shardline_core::catalog::{keys, Keyspace, ReshardPhase, Shard, TenantState};
use shardline_core::{Catalog, KeyRange};
use tokio_util::sync::CancellationToken;

use super::baseline::{side_sums, Role, Stage, Verified};
use super::job::{check, db, verified_key, Ctx, JobError, Plan};
use super::publish::{self, published_job};
use super::sql;
use super::strategy::Strategy;
use crate::error::ServiceError;
use crate::failpoints::{failpoint, FAILPOINT_AFTER_CLEANUP, FAILPOINT_DURING_CLEANUP};
use crate::service::{decode, put};
use crate::{pg, tenant_pg};

/// Split, merge and move of ranges.
pub(super) struct Ranges;

impl Strategy for Ranges {
    /// Prepare: every active tenant of the keyspace provisioned and
    /// migrated on every target.
    async fn prepare(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        let published = cx.svc.current();
        for target in plan.targets() {
            ensure_on(
                &published.catalog,
                &target,
                &plan.keyspace,
                cx.settings.connect_timeout,
            )
            .await?;
            tracing::info!(job = %plan.job.id, shard = %target, "target prepared");
        }
        Ok(())
    }

    /// Freezes (or unfreezes) the job's moving ranges; the new revision.
    async fn hold(cx: &Ctx, plan: &Plan, frozen: bool) -> Result<u64, JobError> {
        let ks_key = keys::keyspace(&plan.job.keyspace);
        let moving = plan.moving();
        let from = &plan.job.from_map;
        let rev = cx
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
        Ok(rev.max(cx.svc.current().catalog.version))
    }

    /// While held: sequences advanced, refuse triggers on targets set to
    /// the ranges they will own; then (at any stage) source and target
    /// checksums compared per tenant, table and range.
    async fn verify(cx: &Ctx, plan: &Plan, stage: Stage<'_>) -> Result<Verified, JobError> {
        let key_type = plan.keyspace.key_type;
        let mut verified = Verified::default();
        let mut mismatches = Vec::new();
        for source in plan.sources() {
            let routes = plan.routes(&source);
            let sent: Vec<KeyRange> = routes.values().flatten().copied().collect();
            for tenant in &plan.tenants {
                let src = cx.must_db(plan, &source, tenant).await?;
                let metas = cx.metas(plan, &src, &source, tenant, false).await?;
                let mut targets = Vec::new();
                for (target, ranges) in &routes {
                    let tgt = cx.must_db(plan, target, tenant).await?;
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
    async fn publish(
        cx: &Ctx,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> Result<(), JobError> {
        let job_key = keys::job(&plan.job.id);
        let ks_key = keys::keyspace(&plan.job.keyspace);
        let targets = plan.targets();
        let mut read = vec![job_key.clone(), ks_key.clone()];
        read.extend(targets.iter().map(|t| keys::shard(t)));
        cx.svc
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
        cx.show_phase(&plan.job.id, ReshardPhase::Cleanup);
        Ok(())
    }

    /// Cleanup of ranges: per source and tenant, the moved rows checked
    /// against what the cutover verified (those entries then forgotten,
    /// so that a resumed run does not compare a partly deleted range),
    /// capture dropped, the rows deleted in batches; sources left
    /// without a range leave the keyspace; Done.
    async fn cleanup(cx: &Ctx, plan: &Plan, token: &CancellationToken) -> Result<(), JobError> {
        let id = &plan.job.id;
        let key_type = plan.keyspace.key_type;
        for source in plan.sources() {
            let routes = plan.routes(&source);
            for tenant in &plan.tenants {
                let src = cx.must_db(plan, &source, tenant).await?;
                let metas = cx.metas(plan, &src, &source, tenant, false).await?;
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
                publish::forget_verified(cx, plan, &checked).await?;
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
                            cx.settings.batch_rows,
                        )
                        .await
                        .map_err(db(&source))?;
                        deleted += n;
                        if n == 0 {
                            break;
                        }
                        cx.progressed(id);
                        failpoint(FAILPOINT_DURING_CLEANUP);
                    }
                    tracing::info!(job = %id, tenant = %tenant.id, table = %meta.name,
                        %source, deleted, "moved rows deleted from the source");
                }
            }
        }
        failpoint(FAILPOINT_AFTER_CLEANUP);
        let leaving: Vec<String> = plan
            .sources()
            .into_iter()
            .filter(|s| plan.job.to_map.ranges_of(s).next().is_none())
            .collect();
        publish::finish_done(cx, plan, &leaving).await
    }

    /// Undo on the targets: the rows copied into the moving ranges
    /// deleted.
    async fn undo_targets(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        let key_type = plan.keyspace.key_type;
        for target in plan.targets() {
            let ranges = plan.moving_to(&target);
            for tenant in &plan.tenants {
                let Some(tgt) = cx.tenant_db(plan, &target, tenant).await? else {
                    continue;
                };
                sql::as_replica(&tgt).await.map_err(db(&target))?;
                for meta in cx.metas(plan, &tgt, &target, tenant, true).await? {
                    while sql::delete_batch(&tgt, &meta, key_type, &ranges, cx.settings.batch_rows)
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
}

/// Provisions one tenant on one shard (idempotent).
async fn ensure_on(
    cat: &Catalog,
    shard_id: &str,
    keyspace: &Keyspace,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let Some(shard) = cat.shards.get(shard_id) else {
        return Err(ServiceError::NotFound(format!("no shard {shard_id}")));
    };
    let admin = pg::connect_shard(shard_id, &shard.primary.dsn, timeout).await?;
    tenant_pg::prepare_database(&admin, shard_id).await?;
    for t in cat
        .tenants
        .values()
        .filter(|t| t.keyspace == keyspace.name && t.state == TenantState::Active)
    {
        tenant_pg::ensure_tenant(
            &admin,
            shard_id,
            &shard.primary.dsn,
            t,
            &keyspace.migrations,
            timeout,
        )
        .await?;
    }
    Ok(())
}
