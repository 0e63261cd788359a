//! Tenant moves: one tenant's databases leave the shards of a shared
//! keyspace for a new dedicated keyspace over unassigned shards.
//!
//! The job reuses the range engine: every source shard sends each target
//! the rows in the target's range of the new map (so the moves cover the
//! whole ring once per source), and only the moving tenant takes part.
//! What differs: routers hold the tenant (`Tenant.moving`) rather than
//! ranges, verification sums all sources per target range, the publish
//! creates the keyspace, and cleanup drops the tenant's database on the
//! sources instead of deleting rows.
//!
//! The way back (`to_keyspace` set) is the same job the other way round:
//! the dedicated keyspace's shards are the sources, the shared keyspace's
//! map the new map; the publish moves the tenant into the shared keyspace
//! and deletes its own (planning and publish in [`super::tenant_back`]).

use std::collections::{BTreeMap, HashSet};

use shardline_api::manager::ReshardRequest;
use shardline_core::catalog::{
    keys, Keyspace, RangeMove, ReshardJob, ReshardKind, ReshardPhase, Shard, Tenant, TenantState,
};
use shardline_core::{Catalog, KeyRange, ShardMap};

use super::baseline::{parse_sum, side_sums, Role, Stage, Verified};
use super::cutover::{moved_tenant, published_job};
use super::engine::{db, JobError, Plan};
use super::{sql, Reshards};
use crate::error::ServiceError;
use crate::service::{decode, put};
use crate::{pg, tenant_pg};

/// Plans a tenant move (phase Prepare): `req.tenant` from its shared
/// keyspace to a new keyspace named after it over `req.targets`.
pub fn plan_tenant_move(
    cat: &Catalog,
    req: &ReshardRequest,
    id: &str,
) -> Result<ReshardJob, ServiceError> {
    let Some(tid) = req.tenant.as_deref() else {
        return Err(ServiceError::Invalid(
            "tenant: a tenant move names the tenant".into(),
        ));
    };
    if !req.at.is_empty() {
        return Err(ServiceError::Invalid(
            "at: only a split takes split points".into(),
        ));
    }
    let Some(tenant) = cat.tenants.get(tid) else {
        return Err(ServiceError::NotFound(format!("no tenant {tid}")));
    };
    if tenant.state != TenantState::Active {
        return Err(ServiceError::Conflict(format!(
            "tenant {tid} is not active"
        )));
    }
    if let Some(to) = req.to_keyspace.as_deref() {
        return super::tenant_back::plan_tenant_back(cat, req, id, tenant, to);
    }
    if tenant.dedicated {
        return Err(ServiceError::Conflict(format!(
            "tenant {tid} has a dedicated keyspace already"
        )));
    }
    let ks_name = &tenant.keyspace;
    let map = super::plan::idle_keyspace(cat, ks_name)?;
    if cat.keyspaces.contains_key(tid) {
        return Err(ServiceError::Conflict(format!(
            "keyspace {tid} exists already; a tenant move creates it"
        )));
    }
    if req.targets.is_empty() {
        return Err(ServiceError::Invalid(
            "targets: name at least one shard".into(),
        ));
    }
    let mut seen = HashSet::new();
    for t in &req.targets {
        if !seen.insert(t) {
            return Err(ServiceError::Invalid(format!("targets: {t} listed twice")));
        }
        check_free(cat, tid, t)?;
    }
    let to_map =
        ShardMap::even(&req.targets).map_err(|e| ServiceError::Invalid(format!("targets: {e}")))?;
    Ok(tenant_job(id, tid, ks_name, map, to_map, tid))
}

/// A tenant move's job: every source shard of `from_map` sends each
/// range of `to_map` to its owner there (a tenant's rows may be anywhere
/// in its keyspace), from keyspace `from` to keyspace `to`.
pub(super) fn tenant_job(
    id: &str,
    tenant: &str,
    from: &str,
    from_map: ShardMap,
    to_map: ShardMap,
    to: &str,
) -> ReshardJob {
    let mut sources: Vec<String> = from_map.ranges().iter().map(|r| r.shard.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut moves = Vec::new();
    for s in &sources {
        for r in to_map.ranges() {
            moves.push(RangeMove {
                range: r.range,
                from: s.clone(),
                to: r.shard.clone(),
            });
        }
    }
    ReshardJob {
        id: id.to_string(),
        kind: ReshardKind::TenantMove,
        keyspace: from.to_string(),
        moves,
        from_map,
        to_map,
        phase: ReshardPhase::Prepare,
        error: None,
        cutover_pause_ms: None,
        rows_copied: None,
        verified: Default::default(),
        tenant: Some(tenant.to_string()),
        to_keyspace: Some(to.to_string()),
        created_at: crate::time::now_rfc3339(),
    }
}

/// A target of a tenant move: registered, in no keyspace, reserved for
/// nobody else, in no other job.
fn check_free(cat: &Catalog, tenant: &str, id: &str) -> Result<(), ServiceError> {
    let Some(shard) = cat.shards.get(id) else {
        return Err(ServiceError::NotFound(format!(
            "no shard {id}; register it first"
        )));
    };
    if let Some(k) = &shard.keyspace {
        return Err(ServiceError::Conflict(format!(
            "shard {id} serves keyspace {k}"
        )));
    }
    super::plan::not_taken(cat, shard, tenant)
}

/// A verification entry of a tenant move: one source's part of a range.
fn part_key(tenant: &str, table: &str, range: &KeyRange, source: &str) -> String {
    format!("{tenant}/{table}/{range}@{source}")
}

impl Reshards {
    /// Prepare for a tenant move: the tenant (alone) provisioned and
    /// migrated on every target.
    pub(super) async fn prepare_tenant(&self, plan: &Plan) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        let timeout = self.settings.connect_timeout;
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
    pub(super) async fn set_moving(&self, plan: &Plan, moving: bool) -> Result<u64, JobError> {
        let tid = plan.moving_tenant()?.id.clone();
        let key = keys::tenant(&tid);
        let rev = self
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
        Ok(rev.max(self.svc.current().catalog.version))
    }

    /// Per target range: rows and checksum summed over every source must
    /// equal the target's. Records each source's part (for cleanup).
    /// While held, first: sequences advanced, refuse triggers on targets
    /// set to the ranges they will own.
    pub(super) async fn verify_tenant(
        &self,
        plan: &Plan,
        stage: Stage<'_>,
    ) -> Result<Verified, JobError> {
        let tenant = plan.moving_tenant()?;
        let key_type = plan.keyspace.key_type;
        let mut verified = Verified::default();
        let mut mismatches = Vec::new();
        let mut sources = Vec::new();
        for s in plan.sources() {
            let c = self.must_db(plan, &s, tenant).await?;
            sources.push((s, c));
        }
        let mut targets = Vec::new();
        for target in plan.targets() {
            let tgt = self.must_db(plan, &target, tenant).await?;
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
        let metas = self.metas(plan, first_db, first, tenant, false).await?;
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
    pub(super) async fn publish_tenant(
        &self,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> Result<(), JobError> {
        if super::tenant_back::is_move_back(&plan.job) {
            return self.publish_back(plan, verified, pause_ms).await;
        }
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
        self.svc
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
        self.published(plan);
        Ok(())
    }

    /// Cleanup of a tenant move: each source's part checked again, then
    /// the tenant's database and role dropped from the source.
    pub(super) async fn cleanup_tenant(&self, plan: &Plan) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        let key_type = plan.keyspace.key_type;
        for source in plan.sources() {
            if let Some(src) = self.tenant_db(plan, &source, tenant).await? {
                let metas = self.metas(plan, &src, &source, tenant, false).await?;
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
                pg::connect_shard(&source, plan.dsn(&source)?, self.settings.connect_timeout)
                    .await?;
            tenant_pg::drop_tenant(&admin, &source, tenant).await?;
            tracing::info!(job = %plan.job.id, tenant = %tenant.id, %source,
                "moved tenant dropped from the source");
        }
        self.finish_done(plan).await
    }

    /// Undo on the targets of a tenant move: the tenant's databases there
    /// dropped (they were created by the job).
    pub(super) async fn undo_tenant_targets(&self, plan: &Plan) -> Result<(), JobError> {
        let tenant = plan.moving_tenant()?;
        for target in plan.targets() {
            plan.forget_sessions(&target);
            let admin =
                pg::connect_shard(&target, plan.dsn(&target)?, self.settings.connect_timeout)
                    .await?;
            tenant_pg::drop_tenant(&admin, &target, tenant).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use shardline_core::catalog::TenantConfig;

    pub(in crate::reshard) fn catalog() -> Catalog {
        let mut cat = crate::reshard::plan::tests::catalog_of(&[
            ("s0", Some("ks"), None),
            ("s1", Some("ks"), None),
            ("s2", None, None),
            ("s3", None, None),
            ("s4", None, Some("zed")),
        ]);
        cat.tenants.insert(
            "a".into(),
            Tenant {
                id: "a".into(),
                name: "a".into(),
                keyspace: "ks".into(),
                dedicated: false,
                config: TenantConfig::default(),
                role_password: "x".into(),
                pg_name: Some("t_a".into()),
                state: TenantState::Active,
                moving: false,
                created_at: String::new(),
            },
        );
        cat
    }

    pub(in crate::reshard) fn req(tenant: &str, targets: &[&str]) -> ReshardRequest {
        ReshardRequest {
            keyspace: "ks".into(),
            kind: ReshardKind::TenantMove,
            source: String::new(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            at: vec![],
            tenant: Some(tenant.into()),
            to_keyspace: None,
        }
    }

    #[test]
    fn plans_every_source_to_every_target_range() {
        let job = plan_tenant_move(&catalog(), &req("a", &["s2", "s3"]), "j").unwrap();
        assert_eq!(job.moves.len(), 4);
        assert_eq!(job.to_map.shards(), ["s2", "s3"]);
        assert_eq!(job.to_keyspace.as_deref(), Some("a"));
        for s in ["s0", "s1"] {
            let mine: Vec<_> = job.moves.iter().filter(|m| m.from == s).collect();
            assert_eq!(mine.len(), 2);
            assert_eq!(mine[0].range.start, 0);
        }
    }

    #[test]
    fn refuses_bad_tenant_moves() {
        let cat = catalog();
        let e = |r: ReshardRequest| plan_tenant_move(&cat, &r, "j").unwrap_err();
        assert!(matches!(e(req("nope", &["s2"])), ServiceError::NotFound(_)));
        assert!(matches!(e(req("a", &["s0"])), ServiceError::Conflict(_)));
        assert!(matches!(e(req("a", &["s4"])), ServiceError::Conflict(_)));
        assert!(matches!(e(req("a", &[])), ServiceError::Invalid(_)));
        assert!(matches!(
            e(req("a", &["s2", "s2"])),
            ServiceError::Invalid(_)
        ));
        let mut back = req("a", &[]);
        back.to_keyspace = Some("ks".into());
        assert!(matches!(e(back), ServiceError::Conflict(_)));
        let mut taken = catalog();
        let ks = taken.keyspaces["ks"].clone();
        taken.keyspaces.insert("a".into(), ks);
        assert!(matches!(
            plan_tenant_move(&taken, &req("a", &["s2"]), "j").unwrap_err(),
            ServiceError::Conflict(_)
        ));
    }
}
