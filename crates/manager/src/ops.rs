//! Control-plane operations: each validates, then changes the catalog
//! with one compare-and-swap transaction.

use std::time::Duration;

use shardline_api::manager::{CreateKeyspaceRequest, RegisterShardRequest};
use shardline_catalog::Op;
use shardline_core::catalog::{keys, Instance, Keyspace, Shard, TenantState};
use shardline_core::ShardMap;

use crate::checks;
use crate::error::ServiceError;
use crate::service::{decode, put, CatalogService};
use crate::{pg, standbys, tenant_pg};

/// Time to connect to an instance while setting up synchronous
/// replication at registration.
const SYNC_SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Registers a shard (not yet in any keyspace).
pub async fn register_shard(
    svc: &CatalogService,
    req: &RegisterShardRequest,
) -> Result<Shard, ServiceError> {
    checks::name("shard", &req.id)?;
    checks::dsn(&req.primary)?;
    for r in &req.replicas {
        checks::dsn(r)?;
    }
    // The tenant need not exist yet: shards are registered for it first.
    if let Some(t) = &req.tenant {
        checks::tenant_id(t)?;
    }
    let shard = Shard {
        id: req.id.clone(),
        keyspace: None,
        reserved_for: req.tenant.clone(),
        fenced: vec![],
        failover: None,
        primary: Instance {
            id: format!("{}-0", req.id),
            dsn: req.primary.clone(),
        },
        replicas: req
            .replicas
            .iter()
            .enumerate()
            .map(|(i, dsn)| Instance {
                id: format!("{}-{}", req.id, i + 1),
                dsn: dsn.clone(),
            })
            .collect(),
        generation: 1,
        synchronous: req.synchronous,
    };
    if req.synchronous {
        // Not touching the servers of a shard registered already.
        if svc.current().catalog.shards.contains_key(&req.id) {
            return Err(ServiceError::Conflict(format!(
                "shard {} is already registered",
                req.id
            )));
        }
        if shard.replicas.is_empty() {
            return Err(ServiceError::Invalid(
                "synchronous replication needs at least one replica".into(),
            ));
        }
        let set = standbys::configure(&shard.primary, &shard.replicas, true, SYNC_SETUP_TIMEOUT)
            .await
            .map_err(|e| {
                ServiceError::ShardUnavailable(format!(
                    "shard {}: set up synchronous replication: {e}",
                    req.id
                ))
            })?;
        if set.is_empty() {
            return Err(ServiceError::ShardUnavailable(format!(
                "shard {}: no replica answered; synchronous replication needs one",
                req.id
            )));
        }
        tracing::info!(shard = %req.id, synchronous_standby_names = %set, "synchronous replication set up");
    }
    let key = keys::shard(&req.id);
    svc.update(std::slice::from_ref(&key), |seen| {
        if seen[&key].is_some() {
            return Err(ServiceError::Conflict(format!(
                "shard {} is already registered",
                req.id
            )));
        }
        Ok(vec![put(key.clone(), &shard)])
    })
    .await?;
    Ok(shard)
}

/// Removes a shard that serves no keyspace.
pub async fn remove_shard(svc: &CatalogService, id: &str) -> Result<(), ServiceError> {
    let key = keys::shard(id);
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no shard {id}")));
        };
        let shard: Shard = decode(entry)?;
        if let Some(ks) = shard.keyspace {
            return Err(ServiceError::Conflict(format!(
                "shard {id} serves keyspace {ks}; move its ranges away first"
            )));
        }
        Ok(vec![Op::Delete { key: key.clone() }])
    })
    .await
    .map(|_| ())
}

/// Creates a keyspace, with its initial map when shards are given.
pub async fn create_keyspace(
    svc: &CatalogService,
    req: &CreateKeyspaceRequest,
) -> Result<(), ServiceError> {
    checks::name("keyspace", &req.name)?;
    let keyspace = Keyspace {
        name: req.name.clone(),
        key_type: req.key_type,
        map: if req.shards.is_empty() {
            None
        } else {
            Some(even_map(&req.shards)?)
        },
        migrations: Vec::new(),
        tables: Default::default(),
        frozen: Vec::new(),
        tenant_code: false,
    };
    assign_shards(svc, keyspace, &req.shards, true).await
}

/// Gives a keyspace without a map its initial map over `shards`, with
/// its tenants' roles, schemas and migrations in place on each first.
pub async fn set_initial_map(
    svc: &CatalogService,
    name: &str,
    shards: &[String],
    connect_timeout: Duration,
) -> Result<(), ServiceError> {
    let _work = svc.lock_tenant_work().await;
    let cat = svc.current();
    let Some(ks) = cat.catalog.keyspaces.get(name) else {
        return Err(ServiceError::NotFound(format!("no keyspace {name}")));
    };
    if ks.map.is_some() {
        return Err(ServiceError::Conflict(format!(
            "keyspace {name} has a map already; change it by resharding"
        )));
    }
    let mut keyspace = ks.clone();
    keyspace.map = Some(even_map(shards)?);
    let tenants: Vec<_> = cat
        .catalog
        .tenants
        .values()
        .filter(|t| t.keyspace == name && t.state == TenantState::Active)
        .collect();
    if !tenants.is_empty() {
        for id in shards {
            let Some(shard) = cat.catalog.shards.get(id) else {
                continue; // refused below
            };
            let client = pg::connect_shard(id, &shard.primary.dsn, connect_timeout).await?;
            tenant_pg::prepare_database(&client, id).await?;
            for t in &tenants {
                tenant_pg::ensure_tenant(
                    &client,
                    id,
                    &shard.primary.dsn,
                    t,
                    &keyspace.migrations,
                    connect_timeout,
                )
                .await?;
            }
        }
    }
    assign_shards(svc, keyspace, shards, false).await
}

pub(crate) fn even_map(shards: &[String]) -> Result<ShardMap, ServiceError> {
    ShardMap::even(shards).map_err(|e| ServiceError::Invalid(e.to_string()))
}

/// Writes `keyspace` and marks `shards` as its own, all or nothing.
async fn assign_shards(
    svc: &CatalogService,
    keyspace: Keyspace,
    shards: &[String],
    create: bool,
) -> Result<(), ServiceError> {
    let ks_key = keys::keyspace(&keyspace.name);
    let mut read = vec![ks_key.clone()];
    read.extend(shards.iter().map(|s| keys::shard(s)));
    svc.update(&read, |seen| {
        match (&seen[&ks_key], create) {
            (Some(_), true) => {
                return Err(ServiceError::Conflict(format!(
                    "keyspace {} exists already",
                    keyspace.name
                )))
            }
            (None, false) => {
                return Err(ServiceError::NotFound(format!(
                    "no keyspace {}",
                    keyspace.name
                )))
            }
            (Some(e), false) => {
                let current: Keyspace = decode(e)?;
                if current.map.is_some() {
                    return Err(ServiceError::Conflict(format!(
                        "keyspace {} has a map already",
                        keyspace.name
                    )));
                }
            }
            (None, true) => {}
        }
        let mut ops = vec![put(ks_key.clone(), &keyspace)];
        for id in shards {
            let key = keys::shard(id);
            let Some(entry) = &seen[&key] else {
                return Err(ServiceError::NotFound(format!(
                    "no shard {id}; register it first"
                )));
            };
            let mut shard: Shard = decode(entry)?;
            if let Some(other) = &shard.keyspace {
                return Err(ServiceError::Conflict(format!(
                    "shard {id} already serves keyspace {other}"
                )));
            }
            // A dedicated keyspace is named after its tenant.
            if let Some(owner) = shard.reserved_for.as_ref().filter(|o| **o != keyspace.name) {
                return Err(ServiceError::Conflict(format!(
                    "shard {id} is reserved for tenant {owner}"
                )));
            }
            shard.keyspace = Some(keyspace.name.clone());
            ops.push(put(key, &shard));
        }
        Ok(ops)
    })
    .await
    .map(|_| ())
}
