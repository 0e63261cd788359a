//! Instances of a shard: ids (`<shard>-<n>`, assigned here, never
//! reused) and registering a running streaming replica.

use std::time::Duration;

use shardline_api::manager::AddReplicaRequest;
use shardline_core::catalog::{keys, Instance, Shard};
use tokio_postgres::Client;

use crate::error::ServiceError;
use crate::service::{decode, put, CatalogService};
use crate::{checks, pg, standbys};

/// The id for the next instance of `shard`: one past the highest number
/// any instance (primary, replica or fenced) has carried, so an id never
/// names two servers over a shard's life.
pub fn next_instance_id(shard: &Shard) -> String {
    let prefix = format!("{}-", shard.id);
    let all = shard.instances().chain(shard.fenced.iter());
    let next = all
        .filter_map(|i| i.id.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .map_or(0, |n| n + 1);
    format!("{prefix}{next}")
}

/// Gives ids to the instances of a catalog written before instances had
/// them (once, at startup).
pub async fn assign_missing_ids(svc: &CatalogService) -> Result<(), ServiceError> {
    let ids: Vec<String> = svc
        .current()
        .catalog
        .shards
        .values()
        .filter(|s| missing_ids(s))
        .map(|s| s.id.clone())
        .collect();
    for id in ids {
        let key = keys::shard(&id);
        svc.update(std::slice::from_ref(&key), |seen| {
            let Some(entry) = &seen[&key] else {
                return Ok(vec![]);
            };
            let mut shard: Shard = decode(entry)?;
            if !missing_ids(&shard) {
                return Ok(vec![]);
            }
            for slot in 0..1 + shard.replicas.len() + shard.fenced.len() {
                let next = next_instance_id(&shard);
                let inst = match slot {
                    0 => &mut shard.primary,
                    n if n <= shard.replicas.len() => &mut shard.replicas[n - 1],
                    n => &mut shard.fenced[n - 1 - shard.replicas.len()],
                };
                if inst.id.is_empty() {
                    inst.id = next;
                }
            }
            Ok(vec![put(key.clone(), &shard)])
        })
        .await?;
        tracing::info!(shard = %id, "gave the shard's instances ids");
    }
    Ok(())
}

fn missing_ids(shard: &Shard) -> bool {
    shard
        .instances()
        .chain(shard.fenced.iter())
        .any(|i| i.id.is_empty())
}

/// Registers a running streaming replica of a shard's primary: it must
/// answer, be in recovery and (when the primary answers) be a copy of the
/// same cluster. A fenced former primary re-cloned as a replica may be
/// re-added by its DSN: it leaves the fenced list and gets a new id.
/// Returns the shard as changed.
pub async fn add_replica(
    svc: &CatalogService,
    shard_id: &str,
    req: &AddReplicaRequest,
    timeout: Duration,
) -> Result<Shard, ServiceError> {
    checks::dsn(&req.dsn)?;
    let cat = svc.current();
    let Some(shard) = cat.catalog.shards.get(shard_id) else {
        return Err(ServiceError::NotFound(format!("no shard {shard_id}")));
    };
    if let Some(i) = shard.instances().find(|i| i.dsn == req.dsn) {
        return Err(ServiceError::Conflict(format!(
            "that DSN is already instance {} of shard {shard_id}",
            i.id
        )));
    }
    let client = pg::connect(&req.dsn, timeout)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("the replica is unreachable: {e}")))?;
    let (in_recovery, system_id) = identify(&client)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("check the replica: {e}")))?;
    if !in_recovery {
        return Err(ServiceError::Conflict(
            "that server is not in recovery, so it is not a streaming replica; clone it from \
             the shard's primary (pg_basebackup -R) and start it first"
                .into(),
        ));
    }
    // The primary may be down (e.g. being failed over): the comparison is
    // then skipped, as recovery alone already proves it is a replica.
    if let Ok(primary) = pg::connect(&shard.primary.dsn, timeout).await {
        if let Ok((_, Some(primary_id))) = identify(&primary).await {
            if system_id.is_some_and(|id| id != primary_id) {
                return Err(ServiceError::Conflict(format!(
                    "that server replicates another cluster than shard {shard_id}'s primary \
                     (system identifier {} vs {primary_id})",
                    system_id.unwrap_or_default()
                )));
            }
        }
    }
    let key = keys::shard(shard_id);
    let mut added = None;
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no shard {shard_id}")));
        };
        let mut shard: Shard = decode(entry)?;
        if let Some(i) = shard.instances().find(|i| i.dsn == req.dsn) {
            return Err(ServiceError::Conflict(format!(
                "that DSN is already instance {} of shard {shard_id}",
                i.id
            )));
        }
        let id = next_instance_id(&shard);
        shard.fenced.retain(|f| f.dsn != req.dsn);
        shard.replicas.push(Instance {
            id,
            dsn: req.dsn.clone(),
        });
        let ops = vec![put(key.clone(), &shard)];
        added = Some(shard);
        Ok(ops)
    })
    .await?;
    let shard = added.ok_or(ServiceError::Contended)?;
    if let Some(r) = shard.replicas.last() {
        tracing::info!(shard = %shard_id, instance = %r.id, "registered a replica");
    }
    if shard.synchronous && shard.failover.is_none() {
        // The new replica joins the primary's synchronous standbys.
        if let Err(e) = standbys::configure(&shard.primary, &shard.replicas, true, timeout).await {
            tracing::warn!(shard = %shard_id, error = %e,
                "add the replica to the primary's synchronous standbys");
        }
    }
    Ok(shard)
}

/// Whether the server is in recovery, and its system identifier when the
/// session may read it.
async fn identify(client: &Client) -> Result<(bool, Option<i64>), String> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| pg::describe(&e))?;
    let id = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .ok()
        .map(|r| r.get(0));
    Ok((row.get(0), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Instance {
        Instance {
            id: id.into(),
            dsn: format!("host=h{id}"),
        }
    }

    #[test]
    fn ids_are_never_reused() {
        let mut s = Shard {
            id: "s1".into(),
            keyspace: None,
            primary: inst("s1-0"),
            replicas: vec![inst("s1-1")],
            generation: 1,
            reserved_for: None,
            fenced: vec![],
            failover: None,
            synchronous: false,
        };
        assert_eq!(next_instance_id(&s), "s1-2");
        // The highest one was fenced: its number stays taken.
        s.fenced.push(inst("s1-7"));
        assert_eq!(next_instance_id(&s), "s1-8");
        // Ids of another shard's shape do not count.
        s.replicas.push(inst("s1-x"));
        s.replicas.push(inst("s10-9"));
        assert_eq!(next_instance_id(&s), "s1-8");
        s.primary.id = String::new();
        s.replicas.clear();
        s.fenced.clear();
        assert_eq!(next_instance_id(&s), "s1-0");
    }
}
