//! Planning tenant moves: one tenant out of a shared keyspace to a new
//! dedicated keyspace over unassigned shards, and the way back into a
//! shared keyspace. Either way every source shard sends each target the
//! rows in the target's range of the new map (so the moves cover the
//! whole ring once per source), and only the moving tenant takes part.

use std::collections::HashSet;

use shardline_api::manager::ReshardRequest;
use shardline_core::catalog::{
    RangeMove, ReshardJob, ReshardKind, ReshardPhase, Tenant, TenantState,
};
use shardline_core::{Catalog, ShardMap};

use super::state::{active_job, idle_keyspace, not_taken};
use crate::error::ServiceError;

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
        return plan_tenant_back(cat, req, id, tenant, to);
    }
    if tenant.dedicated {
        return Err(ServiceError::Conflict(format!(
            "tenant {tid} has a dedicated keyspace already"
        )));
    }
    let ks_name = &tenant.keyspace;
    let map = idle_keyspace(cat, ks_name)?;
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
fn tenant_job(
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
        copy_ms: None,
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
    not_taken(cat, shard, tenant)
}

/// Plans the way back: dedicated tenant `tenant` (keyspace D, named
/// after it) into the shared keyspace `to`, over `to`'s current map.
/// Every shard of D sends each shard of `to` the rows in its ranges.
fn plan_tenant_back(
    cat: &Catalog,
    req: &ReshardRequest,
    id: &str,
    tenant: &Tenant,
    to: &str,
) -> Result<ReshardJob, ServiceError> {
    let tid = &tenant.id;
    let from_name = &tenant.keyspace;
    if !tenant.dedicated {
        return Err(ServiceError::Conflict(format!(
            "tenant {tid} is in shared keyspace {from_name}; only a dedicated tenant moves back"
        )));
    }
    if !req.targets.is_empty() {
        return Err(ServiceError::Invalid(format!(
            "targets: a move back goes to the shards of keyspace {to}; name none"
        )));
    }
    if to == from_name {
        return Err(ServiceError::Invalid(format!(
            "to_keyspace: tenant {tid} is in keyspace {to} already"
        )));
    }
    let Some(from) = cat.keyspaces.get(from_name) else {
        return Err(ServiceError::NotFound(format!("no keyspace {from_name}")));
    };
    let Some(dest) = cat.keyspaces.get(to) else {
        return Err(ServiceError::NotFound(format!("no keyspace {to}")));
    };
    if cat
        .tenants
        .values()
        .any(|t| t.keyspace == to && t.dedicated)
    {
        return Err(ServiceError::Conflict(format!(
            "keyspace {to} is dedicated to a tenant; move back to a shared keyspace"
        )));
    }
    let (Some(from_map), Some(to_map)) = (from.map.clone(), dest.map.clone()) else {
        return Err(ServiceError::Conflict(format!(
            "keyspace {from_name} or {to} has no map yet"
        )));
    };
    if from.key_type != dest.key_type {
        return Err(ServiceError::Conflict(format!(
            "keyspaces {from_name} and {to} hash different key types"
        )));
    }
    // The tenant's schema must be the one the shared keyspace migrates:
    // the copy maps tables one to one, and later migrations of `to` run
    // on the tenant too.
    let lacking: Vec<&str> = from
        .migrations
        .iter()
        .filter(|m| !dest.migrations.contains(m))
        .map(|m| m.name.as_str())
        .collect();
    if !lacking.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "keyspace {to} lacks migrations {} of tenant {tid}; apply them there first",
            lacking.join(", ")
        )));
    }
    if from.migrations != dest.migrations {
        let extra: Vec<&str> = dest
            .migrations
            .iter()
            .filter(|m| !from.migrations.contains(m))
            .map(|m| m.name.as_str())
            .collect();
        return Err(ServiceError::Conflict(format!(
            "keyspace {to} has migrations tenant {tid} lacks or applied in another order ({}); \
             apply them to keyspace {from_name} first",
            extra.join(", ")
        )));
    }
    if from.tables != dest.tables {
        return Err(ServiceError::Conflict(format!(
            "keyspaces {from_name} and {to} declare different shard keys; make them equal first"
        )));
    }
    for ks in [from_name.as_str(), to] {
        if let Some(job) = active_job(cat, ks) {
            return Err(ServiceError::Conflict(format!(
                "resharding job {} runs in keyspace {ks} already",
                job.id
            )));
        }
    }
    Ok(tenant_job(id, tid, from_name, from_map, to_map, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::state::is_move_back;
    use shardline_core::catalog::TenantConfig;

    fn catalog() -> Catalog {
        let mut cat = crate::reshard::state::fixtures::catalog_of(&[
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

    fn req(tenant: &str, targets: &[&str]) -> ReshardRequest {
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

    use shardline_core::catalog::Migration;
    use shardline_core::ShardMap;

    /// `a` dedicated over s2 and s3, as after a move out.
    fn dedicated() -> Catalog {
        let mut cat = catalog();
        let mut ks = cat.keyspaces["ks"].clone();
        ks.name = "a".into();
        ks.map = Some(ShardMap::even(&["s2".into(), "s3".into()]).unwrap());
        cat.keyspaces.insert("a".into(), ks);
        let t = cat.tenants.get_mut("a").unwrap();
        t.keyspace = "a".into();
        t.dedicated = true;
        cat
    }

    #[test]
    fn plans_the_way_back_over_the_shared_map() {
        let cat = dedicated();
        let mut back = req("a", &[]);
        back.to_keyspace = Some("ks".into());
        let job = plan_tenant_move(&cat, &back, "j").unwrap();
        assert!(is_move_back(&job));
        assert_eq!(job.keyspace, "a");
        assert_eq!(job.to_keyspace.as_deref(), Some("ks"));
        assert_eq!(job.to_map, cat.keyspaces["ks"].map.clone().unwrap());
        assert_eq!(job.moves.len(), 4);
        let forward = plan_tenant_move(&catalog(), &req("a", &["s2"]), "j").unwrap();
        assert!(!is_move_back(&forward));

        let e = |c: &Catalog, r: &ReshardRequest| plan_tenant_move(c, r, "j").unwrap_err();
        let mut targets = back.clone();
        targets.targets = vec!["s4".into()];
        assert!(matches!(e(&cat, &targets), ServiceError::Invalid(_)));
        let mut nowhere = back.clone();
        nowhere.to_keyspace = Some("nope".into());
        assert!(matches!(e(&cat, &nowhere), ServiceError::NotFound(_)));
        let mut newer = cat.clone();
        newer
            .keyspaces
            .get_mut("a")
            .unwrap()
            .migrations
            .push(Migration {
                name: "m9".into(),
                checksum: "c".into(),
                sql: "SELECT 1".into(),
            });
        let msg = e(&newer, &back).to_string();
        assert!(msg.contains("m9"), "{msg}");
        let mut busy = cat.clone();
        let mut running = job.clone();
        running.keyspace = "ks".into();
        running.id = "other".into();
        busy.jobs.insert("other".into(), running);
        assert!(matches!(e(&busy, &back), ServiceError::Conflict(_)));
    }
}
