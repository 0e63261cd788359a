//! Schema migrations of a keyspace. A migration is applied for every
//! active tenant of the keyspace on every shard of it (as the tenant's
//! role, in its schema), then recorded in the keyspace, so that tenants
//! created later and shards joining later get it too.

use std::time::Duration;

use sha2::{Digest, Sha256};
use shardline_api::manager::{
    ApplyMigrationRequest, MigrationOutcome, MigrationResult, ShardMigrationStatus,
};
use shardline_core::auth::hex;
use shardline_core::catalog::{keys, Keyspace, Migration, Tenant, TenantState};

use crate::error::ServiceError;
use crate::routers::RouterRegistry;
use crate::service::{decode, put, CatalogService};
use crate::{checks, pg, tenant_pg};

/// Hex SHA-256 of a migration's SQL.
pub fn checksum(sql: &str) -> String {
    hex(&Sha256::digest(sql.as_bytes()))
}

/// Applies a named migration for every active tenant on every shard of a
/// keyspace and records it in the keyspace once all have it. A keyspace
/// without tenants only records it. On any failure nothing is recorded
/// and the first error is returned (tenants that got it keep it; applying
/// again skips them).
///
/// A migration may add code that changes sessions (see
/// [`crate::tenant_code`]): before it runs, the keyspace is marked as
/// possibly holding code and every live router is waited for (or its
/// lease), so that no router skips a session reset once the code exists;
/// after it ran everywhere, the mark is cleared if no tenant database
/// holds code.
pub async fn apply_migration(
    svc: &CatalogService,
    routers: &RouterRegistry,
    keyspace: &str,
    req: &ApplyMigrationRequest,
    connect_timeout: Duration,
) -> Result<MigrationResult, ServiceError> {
    checks::name("migration", &req.name)?;
    if req.sql.trim().is_empty() {
        return Err(ServiceError::Invalid("migration SQL is empty".into()));
    }
    let migration = Migration {
        name: req.name.clone(),
        checksum: checksum(&req.sql),
        sql: req.sql.clone(),
    };
    // No tenant is created or dropped while this runs, so each either
    // gets the migration here or at its creation.
    let _work = svc.lock_tenant_work().await;
    let cat = svc.current();
    let Some(ks) = cat.catalog.keyspaces.get(keyspace) else {
        return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
    };
    // A resharding job copies tables as they are; targets get the
    // migrations once, at its start.
    if let Some(job) = crate::reshard::active_job(&cat.catalog, keyspace) {
        return Err(ServiceError::Conflict(format!(
            "resharding job {} runs in keyspace {keyspace}; apply migrations after it ends",
            job.id
        )));
    }
    if let Some(prev) = ks.migrations.iter().find(|m| m.name == migration.name) {
        if prev.checksum != migration.checksum {
            return Err(ServiceError::Conflict(format!(
                "migration {} was applied with checksum {}; this SQL has checksum {}: \
                 migrations cannot change, add a new one",
                migration.name, prev.checksum, migration.checksum
            )));
        }
    }
    let tenants: Vec<&Tenant> = cat
        .catalog
        .tenants
        .values()
        .filter(|t| t.keyspace == keyspace && t.state == TenantState::Active)
        .collect();
    let shard_ids = checks::keyspace_shards(&cat.catalog, keyspace);
    if !tenants.is_empty() && !ks.tenant_code {
        let version = set_tenant_code(svc, keyspace, true).await?;
        let behind = routers.wait_applied(version).await;
        if !behind.is_empty() {
            tracing::warn!(
                keyspace,
                ?behind,
                "routers did not acknowledge within a lease; \
                going on (a router cut off from the manager resets every session)"
            );
        }
    }
    let runs = shard_ids.iter().map(|id| {
        let dsn = cat.catalog.shards.get(id).map(|s| s.primary.dsn.clone());
        let (migration, tenants) = (&migration, &tenants);
        async move {
            let res = match dsn {
                Some(dsn) => migrate_shard(id, &dsn, tenants, migration, connect_timeout).await,
                None => Err(ServiceError::NotFound(format!(
                    "shard {id} is not registered"
                ))),
            };
            (id.clone(), res)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut statuses = Vec::new();
    let mut first_error = None;
    let mut code = false;
    for (shard, res) in results {
        match res {
            Ok((outcome, shard_code)) => {
                code |= shard_code;
                statuses.push(ShardMigrationStatus {
                    shard,
                    outcome,
                    error: None,
                })
            }
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
        let failed: Vec<&ShardMigrationStatus> = statuses
            .iter()
            .filter(|s| s.outcome == MigrationOutcome::Failed)
            .collect();
        tracing::warn!(keyspace, migration = %migration.name, ?failed, "migration failed on some shards");
        return Err(e);
    }
    record_migration(svc, keyspace, &migration).await?;
    if !code && !tenants.is_empty() {
        // Every tenant database was checked (and guarded) just now.
        set_tenant_code(svc, keyspace, false).await?;
    }
    Ok(MigrationResult {
        name: migration.name,
        checksum: migration.checksum,
        shards: statuses,
    })
}

/// Applies a migration for each tenant on one shard: `Applied` if any
/// tenant got it now (or there are no tenants: it is the keyspace's from
/// now on), `AlreadyApplied` if all had it; and whether any tenant
/// database there holds code.
async fn migrate_shard(
    shard: &str,
    dsn: &str,
    tenants: &[&Tenant],
    migration: &Migration,
    timeout: Duration,
) -> Result<(MigrationOutcome, bool), ServiceError> {
    if tenants.is_empty() {
        return Ok((MigrationOutcome::Applied, false));
    }
    let client = pg::connect_shard(shard, dsn, timeout).await?;
    tenant_pg::prepare_database(&client, shard).await?;
    let mut outcome = MigrationOutcome::AlreadyApplied;
    let mut code = false;
    for t in tenants {
        let (o, c) = tenant_pg::apply_migration(&client, shard, dsn, t, migration, timeout).await?;
        if o == MigrationOutcome::Applied {
            outcome = MigrationOutcome::Applied;
        }
        code |= c;
    }
    Ok((outcome, code))
}

/// Sets a keyspace's [`Keyspace::tenant_code`]; the catalog version
/// that has it.
pub async fn set_tenant_code(
    svc: &CatalogService,
    keyspace: &str,
    code: bool,
) -> Result<u64, ServiceError> {
    let key = keys::keyspace(keyspace);
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
        };
        let mut ks: Keyspace = decode(entry)?;
        if ks.tenant_code == code {
            return Ok(Vec::new());
        }
        ks.tenant_code = code;
        Ok(vec![put(key.clone(), &ks)])
    })
    .await
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
