//! The way back of a tenant move: a dedicated tenant into an existing
//! shared keyspace. The job is a tenant move the other way round (the
//! dedicated keyspace's shards are the sources, the shared keyspace's map
//! the new map); only the planning and the publish differ, here.

use std::collections::BTreeMap;

use shardline_api::manager::ReshardRequest;
use shardline_catalog::Op;
use shardline_core::catalog::{keys, Keyspace, ReshardJob, Shard, Tenant};
use shardline_core::Catalog;

use super::cutover::{moved_tenant, published_job};
use super::engine::{JobError, Plan};
use super::{active_job, Reshards};
use crate::error::ServiceError;
use crate::pg;
use crate::service::{decode, put};

/// Plans the way back: dedicated tenant `tenant` (keyspace D, named
/// after it) into the shared keyspace `to`, over `to`'s current map.
/// Every shard of D sends each shard of `to` the rows in its ranges.
pub(super) fn plan_tenant_back(
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
    Ok(super::tenant_move::tenant_job(
        id, tid, from_name, from_map, to_map, to,
    ))
}

/// Whether a tenant move goes back into an existing shared keyspace
/// (rather than out to a new one named after the tenant).
pub(super) fn is_move_back(job: &ReshardJob) -> bool {
    job.tenant.is_some() && job.to_keyspace.is_some() && job.to_keyspace != job.tenant
}

impl Reshards {
    /// One write for a move back: the tenant shared in the destination
    /// keyspace (whose map must be the one the job copied by), its
    /// dedicated keyspace deleted, the sources out of any keyspace, the
    /// job in Cleanup.
    pub(super) async fn publish_back(
        &self,
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
        self.svc
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
        self.published(plan);
        Ok(())
    }

    /// Before a move back: the tenant has no database on the destination
    /// shards (one left by a move whose cleanup failed would mix with the
    /// copy, and an undo would drop it).
    pub(super) async fn check_no_leftover(
        &self,
        cat: &Catalog,
        job: &ReshardJob,
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
            let admin =
                pg::connect_shard(t, &shard.primary.dsn, self.settings.connect_timeout).await?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::tenant_move::plan_tenant_move;
    use crate::reshard::tenant_move::tests::{catalog, req};
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
