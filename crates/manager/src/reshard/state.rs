//! What the catalog says about jobs: their kind, whether one has ended,
//! which one runs in a keyspace, whether a shard is free for one. Pure;
//! the bottom of the planner and of the engine.

use shardline_core::catalog::{ReshardJob, ReshardPhase, Shard};
use shardline_core::{Catalog, ShardMap};

use crate::error::ServiceError;

/// The kinds of job, each run by its own strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Split, merge or move of key ranges, every tenant of the keyspace.
    Ranges,
    /// One tenant out of a shared keyspace to a dedicated one.
    TenantOut,
    /// A dedicated tenant back into a shared keyspace.
    TenantBack,
}

impl Kind {
    /// The kind of `job`.
    pub fn of(job: &ReshardJob) -> Kind {
        match (&job.tenant, &job.to_keyspace) {
            (None, _) => Kind::Ranges,
            (Some(_), _) if is_move_back(job) => Kind::TenantBack,
            (Some(_), _) => Kind::TenantOut,
        }
    }
}

/// Whether a tenant move goes back into an existing shared keyspace
/// (rather than out to a new one named after the tenant).
pub fn is_move_back(job: &ReshardJob) -> bool {
    job.tenant.is_some() && job.to_keyspace.is_some() && job.to_keyspace != job.tenant
}

/// Phase as a number for `reshard_phase`.
pub fn phase_number(p: ReshardPhase) -> f64 {
    match p {
        ReshardPhase::Prepare => 0.0,
        ReshardPhase::Copy => 1.0,
        ReshardPhase::CatchUp => 2.0,
        ReshardPhase::Cutover => 3.0,
        ReshardPhase::Cleanup => 4.0,
        ReshardPhase::Done => 5.0,
        ReshardPhase::Cancelled => 6.0,
        ReshardPhase::Failed => 7.0,
    }
}

/// Whether a job has ended.
pub fn is_finished(p: ReshardPhase) -> bool {
    matches!(
        p,
        ReshardPhase::Done | ReshardPhase::Cancelled | ReshardPhase::Failed
    )
}

/// The unfinished job of a keyspace, if any: one working in it, or a
/// tenant move into it (whose publish relies on the map it planned with).
pub fn active_job<'a>(cat: &'a Catalog, keyspace: &str) -> Option<&'a ReshardJob> {
    cat.jobs.values().find(|j| {
        !is_finished(j.phase)
            && (j.keyspace == keyspace || j.to_keyspace.as_deref() == Some(keyspace))
    })
}

/// The map of keyspace `name`, with no job running in it: what every
/// job starts from.
pub(super) fn idle_keyspace(cat: &Catalog, name: &str) -> Result<ShardMap, ServiceError> {
    let Some(ks) = cat.keyspaces.get(name) else {
        return Err(ServiceError::NotFound(format!("no keyspace {name}")));
    };
    let Some(map) = ks.map.clone() else {
        return Err(ServiceError::Conflict(format!(
            "keyspace {name} has no map yet"
        )));
    };
    if let Some(job) = active_job(cat, name) {
        return Err(ServiceError::Conflict(format!(
            "resharding job {} runs in keyspace {name} already",
            job.id
        )));
    }
    Ok(map)
}

/// A target shard must be reserved for no tenant but `owner` (if any) and
/// take part in no unfinished job.
pub(super) fn not_taken(cat: &Catalog, shard: &Shard, owner: &str) -> Result<(), ServiceError> {
    let id = &shard.id;
    if let Some(other) = shard.reserved_for.as_ref().filter(|o| *o != owner) {
        return Err(ServiceError::Conflict(format!(
            "shard {id} is reserved for tenant {other}"
        )));
    }
    if let Some(job) = cat
        .jobs
        .values()
        .find(|j| !is_finished(j.phase) && j.moves.iter().any(|m| &m.to == id || &m.from == id))
    {
        return Err(ServiceError::Conflict(format!(
            "shard {id} takes part in resharding job {} already",
            job.id
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod fixtures {
    use super::*;
    use shardline_core::catalog::{Instance, Keyspace};

    /// Shards (id, keyspace, reserved for) and keyspace `ks` over s0 and
    /// s1 in halves.
    pub(in crate::reshard) fn catalog_of(shards: &[(&str, Option<&str>, Option<&str>)]) -> Catalog {
        let mut cat = Catalog::default();
        for (id, ks, reserved) in shards {
            cat.shards.insert(
                id.to_string(),
                Shard {
                    id: id.to_string(),
                    keyspace: ks.map(str::to_string),
                    primary: Instance {
                        id: format!("{id}-0"),
                        dsn: "host=x".into(),
                    },
                    replicas: vec![],
                    generation: 1,
                    reserved_for: reserved.map(str::to_string),
                    fenced: vec![],
                    failover: None,
                    synchronous: false,
                },
            );
        }
        cat.keyspaces.insert(
            "ks".into(),
            Keyspace {
                name: "ks".into(),
                key_type: Default::default(),
                map: Some(ShardMap::even(&["s0".into(), "s1".into()]).unwrap()),
                migrations: vec![],
                tables: Default::default(),
                frozen: vec![],
                tenant_code: false,
            },
        );
        cat
    }
}
