//! The strategy of a tenant moving out: one tenant's databases leave
//! the shards of a shared keyspace for a new dedicated keyspace over
//! unassigned shards (planned in [`super::plan_tenant`]).
//!
//! What differs from a move of ranges: only the moving tenant takes
//! part; routers hold the tenant (`Tenant.moving`) rather than ranges;
//! verification sums all sources per target range; the publish creates
//! the keyspace; cleanup drops the tenant's database on the sources
//! instead of deleting rows.

use std::collections::BTreeMap;

use shardline_core::catalog::{keys, Keyspace, ReshardPhase, Shard, Tenant};
use shardline_core::KeyRange;
use tokio_util::sync::CancellationToken;

use super::baseline::{parse_sum, side_sums, Role, Stage, Verified};
use super::job::{db, Ctx, JobError, Plan};
use super::publish::{self, moved_tenant, published_job};
use super::sql;
use super::strategy::Strategy;
use crate::error::ServiceError;
use crate::service::{decode, put};
use crate::{pg, tenant_pg};

/// A tenant out to a keyspace of its own.
pub(super) struct TenantOut;

/// A verification entry of a tenant move: one source's part of a range.
fn part_key(tenant: &str, table: &str, range: &KeyRange, source: &str) -> String {
    format!("{tenant}/{table}/{range}@{source}")
}

impl Strategy for TenantOut {
    /// Prepare for a tenant move: the tenant (alone) provisioned and
    /// migrated on every target.
    async fn prepare(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        let timeout = cx.settings.connect_timeout;
        for target in plan.targets() {
            let dsn = plan.dsn(&target)?;
            let admin = pg::connect_shard(&target, dsn, timeout).await?;
            tenant_pg::prepare_database(&admin, &target).await?;
            tenant_pg::ensure_tenant(
                &admin,
                &target,
                dsn,
                tenant,
                &plan.keyspace.migrations,
                timeout,
            )
            .await?;
            tracing::info!(job = %plan.job.id, shard = %target, "target prepared");
        }
        Ok(())
    }

    /// Sets (or clears) the moving tenant's `moving` flag; the new
    /// revision.
    async fn hold(cx: &Ctx, plan: &Plan, moving: bool) -> Result<u64, JobError> {
        let tid = plan.moving_tenant()?.id.clone();
        let key = keys::tenant(&tid);
        let rev = cx
            .svc
            .update(std::slice::from_ref(&key), |seen| {
                let Some(entry) = &seen[&key] else {
                    return Err(ServiceError::NotFound(format!("no tenant {tid}")));
                };
                let mut t: Tenant = decode(entry)?;
                if t.moving == moving {
                    return Ok(vec![]);
                }
                t.moving = moving;
                Ok(vec![put(key.clone(), &t)])
            })
            .await?;
        Ok(rev.max(cx.svc.current().catalog.version))
    }

    /// Per target range: rows and checksum summed over every source must
    /// equal the target's. Records each source's part (for cleanup).
    /// While held, first: sequences advanced, refuse triggers on targets
    /// set to the ranges they will own.
    async fn verify(cx: &Ctx, plan: &Plan, stage: Stage<'_>) -> Result<Verified, JobError> {
        let tenant = plan.moving_tenant()?;
        let key_type = plan.keyspace.key_type;
        let mut verified = Verified::default();
        let mut mismatches = Vec::new();
        let mut sources = Vec::new();
        for s in plan.sources() {
            let c = cx.must_db(plan, &s, tenant).await?;
            sources.push((s, c));
        }
        let mut targets = Vec::new();
        for target in plan.targets() {
            let tgt = cx.must_db(plan, &target, tenant).await?;
            if stage.is_held() {
                for (_, src) in &sources {
                    sql::sync_sequences(src, &tgt, &tenant.pg_name())
                        .await
                        .map_err(db(&target))?;
                }
            }
            // Each source sends the same ranges: check each once.
            let mut ranges = plan.moving_to(&target);
            ranges.sort_by_key(|r| r.start);
            ranges.dedup();
            targets.push((target, tgt, ranges));
        }
        let Some((first, first_db, _)) = targets.first() else {
            return Ok(verified);
        };
        let metas = cx.metas(plan, first_db, first, tenant, false).await?;
        if stage.is_held() {
            for (target, tgt, _) in &targets {
                let owned: Vec<KeyRange> = plan.job.to_map.ranges_of(target).collect();
                for meta in &metas {
                    if sql::has_refuse(tgt, meta).await.map_err(db(target))? {
                        sql::install_refuse(tgt, meta, key_type, &owned)
                            .await
                            .map_err(db(target))?;
                    }
                }
            }
        }
        // Every source sends every target's ranges.
        let all: Vec<KeyRange> = targets.iter().flat_map(|t| t.2.iter().copied()).collect();
        for meta in &metas {
            let mut sides = Vec::new();
            for (s, c) in &sources {
                sides.push(stage.side((s, Role::Source), tenant, meta, c, &all)?);
            }
            for (t, c, r) in &targets {
                sides.push(stage.side((t, Role::Target), tenant, meta, c, r)?);
            }
            let sums = side_sums(&sides, meta, key_type).await?;
            verified.note(&sides, &sums);
            let (from, to) = sums.split_at(sources.len());
            let mut at = 0;
            for ((target, _, ranges), got) in targets.iter().zip(to) {
                for (k, range) in ranges.iter().enumerate() {
                    let mut want = (0i64, 0i128);
                    for ((s, _), parts) in sources.iter().zip(from) {
                        let part = &parts[at + k];
                        let (n, sum) = parse_sum(part)?;
                        want = (want.0 + n, want.1 + sum);
                        verified
                            .parts
                            .insert(part_key(&tenant.id, &meta.name, range, s), part.clone());
                    }
                    if parse_sum(&got[k])? != want {
                        mismatches.push(format!(
                            "tenant {} table {} range {range}: sources have {}:{}, target \
                             {target} has {} (rows:checksum)",
                            tenant.id, meta.name, want.0, want.1, got[k]
                        ));
                    }
                }
                at += ranges.len();
            }
        }
        if !mismatches.is_empty() {
            return Err(JobError::Mismatch(format!(
                "verification failed{}, cutover aborted (the tenant stays where it was; \
                 nothing was lost): {}",
                stage.when(),
                mismatches.join("; ")
            )));
        }
        Ok(verified)
    }

    /// One write: keyspace named after the tenant over the targets (the
    /// source keyspace's key type, migrations and tables), the tenant in
    /// it, dedicated and no longer moving, the targets reserved for it,
    /// the job in Cleanup.
    async fn publish(
        cx: &Ctx,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> Result<(), JobError> {
        let tid = plan.moving_tenant()?.id.clone();
        let job_key = keys::job(&plan.job.id);
        let src_key = keys::keyspace(&plan.job.keyspace);
        let new_key = keys::keyspace(&tid);
        let tenant_key = keys::tenant(&tid);
        let targets = plan.targets();
        let mut read = vec![
            job_key.clone(),
            src_key.clone(),
            new_key.clone(),
            tenant_key.clone(),
        ];
        read.extend(targets.iter().map(|t| keys::shard(t)));
        cx.svc
            .update(&read, |seen| {
                let job = published_job(seen, &job_key, &verified, pause_ms)?;
                let Some(ke) = &seen[&src_key] else {
                    return Err(ServiceError::NotFound("the job's keyspace is gone".into()));
                };
                let src: Keyspace = decode(ke)?;
                if seen[&new_key].is_some() {
                    return Err(ServiceError::Conflict(format!(
                        "keyspace {tid} was created during the job"
                    )));
                }
                let tenant = moved_tenant(seen, &tid, &src.name, &tid, true)?;
                let ks = Keyspace {
                    name: tid.clone(),
                    key_type: src.key_type,
                    map: Some(job.to_map.clone()),
                    migrations: src.migrations.clone(),
                    tables: src.tables.clone(),
                    frozen: vec![],
                    tenant_code: src.tenant_code,
                };
                let mut ops = vec![
                    put(job_key.clone(), &job),
                    put(new_key.clone(), &ks),
                    put(tenant_key.clone(), &tenant),
                ];
                for t in &targets {
                    let key = keys::shard(t);
                    let Some(e) = &seen[&key] else {
                        return Err(ServiceError::NotFound(format!("no shard {t}")));
                    };
                    let mut shard: Shard = decode(e)?;
                    if let Some(k) = &shard.keyspace {
                        return Err(ServiceError::Conflict(format!(
                            "shard {t} joined keyspace {k} during the job"
                        )));
                    }
                    shard.keyspace = Some(tid.clone());
                    shard.reserved_for = Some(tid.clone());
                    ops.push(put(key, &shard));
                }
                Ok(ops)
            })
            .await?;
        cx.show_phase(&plan.job.id, ReshardPhase::Cleanup);
        Ok(())
    }

    /// Cleanup of a tenant move: each source's part checked again, then
    /// the tenant's database and role dropped from the source.
    async fn cleanup(cx: &Ctx, plan: &Plan, _token: &CancellationToken) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        let key_type = plan.keyspace.key_type;
        for source in plan.sources() {
            if let Some(src) = cx.tenant_db(plan, &source, tenant).await? {
                let metas = cx.metas(plan, &src, &source, tenant, false).await?;
                for meta in &metas {
                    for range in plan.moving_from(&source) {
                        let key = part_key(&tenant.id, &meta.name, &range, &source);
                        let Some(expected) = plan.job.verified.get(&key) else {
                            continue;
                        };
                        let now = sql::checksum(&src, meta, key_type, &range)
                            .await
                            .map_err(db(&source))?;
                        if now != *expected {
                            return Err(JobError::Mismatch(format!(
                                "the moved rows of tenant {} table {} range {range} changed on \
                                 source {source} after the cutover ({expected} then {now}); \
                                 nothing was dropped from it",
                                tenant.id, meta.name
                            )));
                        }
                    }
                }
                drop(src);
            }
            plan.forget_sessions(&source);
            let admin =
                pg::connect_shard(&source, plan.dsn(&source)?, cx.settings.connect_timeout).await?;
            tenant_pg::drop_tenant(&admin, &source, tenant).await?;
            tracing::info!(job = %plan.job.id, tenant = %tenant.id, %source,
                "moved tenant dropped from the source");
        }
        // The sources keep the other tenants: none leaves the keyspace.
        publish::finish_done(cx, plan, &[]).await
    }

    /// Undo on the targets of a tenant move: the tenant's databases there
    /// dropped (they were created by the job).
    async fn undo_targets(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        for target in plan.targets() {
            plan.forget_sessions(&target);
            let admin =
                pg::connect_shard(&target, plan.dsn(&target)?, cx.settings.connect_timeout).await?;
            tenant_pg::drop_tenant(&admin, &target, tenant).await?;
        }
        tracing::info!(job = %plan.job.id, "undone: tenant where it was, copies dropped");
        Ok(())
    }
}
