//! Control-plane operations: each validates, then changes the catalog
//! with one compare-and-swap transaction.

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use shardline_api::manager::{
    ApplyMigrationRequest, CreateAppRequest, CreateKeyspaceRequest, MigrationOutcome,
    MigrationResult, RegisterShardRequest, ShardMigrationStatus,
};
use shardline_catalog::Op;
use shardline_core::auth::{hex, token_hash};
use shardline_core::catalog::{keys, valid_name, App, Instance, Keyspace, Migration, Shard};
use shardline_core::ShardMap;

use crate::error::ServiceError;
use crate::pg;
use crate::service::{decode, put, CatalogService};

/// The tenant apps belong to until tenants are managed.
pub const DEFAULT_TENANT: &str = "default";

fn check_name(kind: &str, name: &str) -> Result<(), ServiceError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )))
    }
}

fn check_dsn(dsn: &str) -> Result<(), ServiceError> {
    tokio_postgres::Config::from_str(dsn)
        .map(|_| ())
        .map_err(|_| ServiceError::Invalid("invalid PostgreSQL DSN".to_string()))
}

/// Registers a shard (not yet in any keyspace).
pub async fn register_shard(
    svc: &CatalogService,
    req: &RegisterShardRequest,
) -> Result<Shard, ServiceError> {
    check_name("shard", &req.id)?;
    check_dsn(&req.primary)?;
    for r in &req.replicas {
        check_dsn(r)?;
    }
    let shard = Shard {
        id: req.id.clone(),
        keyspace: None,
        reserved_for: req.tenant.clone(),
        primary: Instance {
            dsn: req.primary.clone(),
        },
        replicas: req
            .replicas
            .iter()
            .map(|dsn| Instance { dsn: dsn.clone() })
            .collect(),
        generation: 1,
    };
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
    check_name("keyspace", &req.name)?;
    let keyspace = Keyspace {
        name: req.name.clone(),
        key_type: req.key_type,
        map: if req.shards.is_empty() {
            None
        } else {
            Some(even_map(&req.shards)?)
        },
        migrations: Vec::new(),
    };
    assign_shards(svc, keyspace, &req.shards, true).await
}

/// Gives a keyspace without a map its initial map over `shards`.
pub async fn set_initial_map(
    svc: &CatalogService,
    name: &str,
    shards: &[String],
    connect_timeout: Duration,
) -> Result<(), ServiceError> {
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
    // Shards join with the keyspace's schema in place.
    for id in shards {
        if let Some(shard) = cat.catalog.shards.get(id) {
            pg::ensure_migrations(
                id,
                &shard.primary.dsn,
                &keyspace.migrations,
                connect_timeout,
            )
            .await?;
        }
    }
    assign_shards(svc, keyspace, shards, false).await
}

fn even_map(shards: &[String]) -> Result<ShardMap, ServiceError> {
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
            shard.keyspace = Some(keyspace.name.clone());
            ops.push(put(key, &shard));
        }
        Ok(ops)
    })
    .await
    .map(|_| ())
}

/// Hex SHA-256 of a migration's SQL.
pub fn checksum(sql: &str) -> String {
    hex(&Sha256::digest(sql.as_bytes()))
}

/// Applies a named migration to every shard of a keyspace and records it
/// in the keyspace once every shard has it.
pub async fn apply_migration(
    svc: &CatalogService,
    keyspace: &str,
    req: &ApplyMigrationRequest,
    connect_timeout: Duration,
) -> Result<MigrationResult, ServiceError> {
    check_name("migration", &req.name)?;
    if req.sql.trim().is_empty() {
        return Err(ServiceError::Invalid("migration SQL is empty".into()));
    }
    let migration = Migration {
        name: req.name.clone(),
        checksum: checksum(&req.sql),
        sql: req.sql.clone(),
    };
    let cat = svc.current();
    let Some(ks) = cat.catalog.keyspaces.get(keyspace) else {
        return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
    };
    if let Some(prev) = ks.migrations.iter().find(|m| m.name == migration.name) {
        if prev.checksum != migration.checksum {
            return Err(ServiceError::Conflict(format!(
                "migration {} was applied with checksum {}; this SQL has checksum {}: \
                 migrations cannot change, add a new one",
                migration.name, prev.checksum, migration.checksum
            )));
        }
    }
    let mut shard_ids: Vec<&String> = ks
        .map
        .iter()
        .flat_map(|m| m.ranges().iter().map(|r| &r.shard))
        .collect();
    shard_ids.sort();
    shard_ids.dedup();
    let runs = shard_ids.iter().map(|id| {
        let dsn = cat.catalog.shards.get(*id).map(|s| s.primary.dsn.clone());
        let migration = &migration;
        async move {
            let res = match dsn {
                Some(dsn) => pg::apply_migration(id, &dsn, migration, connect_timeout).await,
                None => Err(ServiceError::NotFound(format!(
                    "shard {id} is not registered"
                ))),
            };
            ((*id).clone(), res)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut statuses = Vec::new();
    let mut first_error = None;
    for (shard, res) in results {
        match res {
            Ok(outcome) => statuses.push(ShardMigrationStatus {
                shard,
                outcome,
                error: None,
            }),
            Err(e) => {
                statuses.push(ShardMigrationStatus {
                    shard,
                    outcome: MigrationOutcome::Failed,
                    error: Some(e.to_string()),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        let failed: Vec<String> = statuses
            .iter()
            .filter(|s| s.outcome == MigrationOutcome::Failed)
            .map(|s| s.shard.clone())
            .collect();
        tracing::warn!(keyspace, migration = %migration.name, ?failed, "migration failed on some shards");
        return Err(e);
    }
    record_migration(svc, keyspace, &migration).await?;
    Ok(MigrationResult {
        name: migration.name,
        checksum: migration.checksum,
        shards: statuses,
    })
}

async fn record_migration(
    svc: &CatalogService,
    keyspace: &str,
    migration: &Migration,
) -> Result<(), ServiceError> {
    let key = keys::keyspace(keyspace);
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
        };
        let mut ks: Keyspace = decode(entry)?;
        match ks.migrations.iter().find(|m| m.name == migration.name) {
            Some(m) if m.checksum == migration.checksum => return Ok(Vec::new()),
            Some(_) => {
                return Err(ServiceError::Conflict(format!(
                    "migration {} was recorded concurrently with other SQL",
                    migration.name
                )))
            }
            None => ks.migrations.push(migration.clone()),
        }
        Ok(vec![put(key.clone(), &ks)])
    })
    .await
    .map(|_| ())
}

/// Creates a client app; returns it and its token (shown only now).
pub async fn create_app(
    svc: &CatalogService,
    req: &CreateAppRequest,
) -> Result<(App, String), ServiceError> {
    check_name("app", &req.name)?;
    let tenant = req.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into());
    check_name("tenant", &tenant)?;
    let token = new_token();
    let app = App {
        id: req.name.clone(),
        name: req.name.clone(),
        tenant,
        description: req.description.clone(),
        key_prefix: req.key_prefix.clone(),
        limits: req.limits,
        token_hash: token_hash(&token),
        previous_token: None,
        created_at: crate::time::now_rfc3339(),
    };
    let key = keys::app(&app.id);
    svc.update(std::slice::from_ref(&key), |seen| {
        if seen[&key].is_some() {
            return Err(ServiceError::Conflict(format!(
                "app {} exists already",
                app.id
            )));
        }
        Ok(vec![put(key.clone(), &app)])
    })
    .await?;
    Ok((app, token))
}

/// Deletes a client app; its token stops working at once.
pub async fn delete_app(svc: &CatalogService, id: &str) -> Result<(), ServiceError> {
    let key = keys::app(id);
    svc.update(std::slice::from_ref(&key), |seen| {
        if seen[&key].is_none() {
            return Err(ServiceError::NotFound(format!("no app {id}")));
        }
        Ok(vec![Op::Delete { key: key.clone() }])
    })
    .await
    .map(|_| ())
}

/// A new random token: `sl_` and 256 bits as hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("sl_{}", hex(&bytes))
}
