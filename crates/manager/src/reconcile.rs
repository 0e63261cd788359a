//! The tenant reconciler: compares what each reachable shard holds (login
//! roles owning their schemas, migrations recorded per tenant) with what
//! the catalog wants (every active tenant of the shard's keyspace, with
//! all of the keyspace's migrations) and closes the gap: a shard that
//! joined later, was restored from an old backup, or lost a role.
//!
//! A tenant is also behind when its database lacks the current
//! [`tenant_pg::TENANT_SETUP`] (such as [`tenant_pg::HIDE_OTHER_TENANTS`]
//! for databases created before it): provisioning again brings it up.
//!
//! A shard is looked at when the catalog changes and at least every
//! [`RECHECK`] otherwise, so an idle fleet costs three queries per shard
//! per period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shardline_core::catalog::{Shard, TenantState};
use shardline_core::Catalog;

use crate::error::ServiceError;
use crate::health::HealthTable;
use crate::service::CatalogService;
use crate::{checks, pg, tenant_code, tenant_pg};

/// Longest time between two looks at an unchanged shard.
pub const RECHECK: Duration = Duration::from_secs(10);

/// Runs a [`Reconciler`] pass every `interval` until shutdown (beside the
/// health checker, whose table it reads; `timeout` per shard).
pub async fn run(
    svc: std::sync::Arc<CatalogService>,
    health: std::sync::Arc<HealthTable>,
    interval: Duration,
    timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut reconciler = Reconciler::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = reconciler.pass(&svc, &health, timeout) => {}
        }
    }
}

/// When each shard was last found in order.
#[derive(Default)]
pub struct Reconciler {
    checked: HashMap<String, (u64, Instant)>,
    /// Keyspaces whose tenant databases were checked for code (see
    /// [`crate::tenant_code`]), with their number of migrations then.
    code_checked: HashMap<String, usize>,
}

impl Reconciler {
    /// One pass over every shard whose primary answered its last check.
    pub async fn pass(&mut self, svc: &CatalogService, health: &HealthTable, timeout: Duration) {
        let published = svc.current();
        let cat = &published.catalog;
        self.checked.retain(|id, _| cat.shards.contains_key(id));
        self.code_checked
            .retain(|ks, _| cat.keyspaces.contains_key(ks));
        for ks in cat.keyspaces.values() {
            if !ks.tenant_code || self.code_checked.get(&ks.name) == Some(&ks.migrations.len()) {
                continue;
            }
            match clear_tenant_code(svc, health, &ks.name, timeout).await {
                Ok(true) => {
                    self.code_checked
                        .insert(ks.name.clone(), ks.migrations.len());
                }
                // A shard is down or changing primaries: later.
                Ok(false) => {}
                Err(ServiceError::Contended) => {}
                Err(e) => {
                    tracing::warn!(keyspace = %ks.name, error = %e, "check tenant databases for code")
                }
            }
        }
        for ks in cat.keyspaces.values() {
            let has_tenants = cat
                .tenants
                .values()
                .any(|t| t.keyspace == ks.name && t.state == TenantState::Active);
            if !has_tenants {
                continue;
            }
            for id in checks::keyspace_shards(cat, &ks.name) {
                let Some(shard) = cat.shards.get(&id) else {
                    continue;
                };
                let fresh = self
                    .checked
                    .get(&id)
                    .is_some_and(|(v, at)| *v == cat.version && at.elapsed() < RECHECK);
                // A shard changing primaries is left alone until it has one.
                if fresh
                    || shard.failover.is_some()
                    || !health
                        .get(&shard.id, &shard.primary.id)
                        .is_some_and(|h| h.up)
                {
                    continue;
                }
                match reconcile_shard(svc, cat, shard, &ks.name, timeout).await {
                    Ok(()) => {
                        self.checked.insert(id, (cat.version, Instant::now()));
                    }
                    Err(ServiceError::Contended) => {
                        tracing::debug!(shard = %id, "tenant work in progress; reconcile later")
                    }
                    Err(e) => {
                        tracing::warn!(shard = %id, error = %e, "bring tenants up to date on shard")
                    }
                }
            }
        }
    }
}

/// Checks every tenant database of a keyspace marked as possibly holding
/// code and clears the mark if none does (each is guarded on the way,
/// see [`tenant_code::settle`]). Under the tenant-work lock, so no
/// migration runs meanwhile. `Ok(false)`: some shard could not be checked
/// now.
async fn clear_tenant_code(
    svc: &CatalogService,
    health: &HealthTable,
    keyspace: &str,
    timeout: Duration,
) -> Result<bool, ServiceError> {
    let Some(_work) = svc.try_lock_tenant_work() else {
        return Err(ServiceError::Contended);
    };
    let now = svc.current();
    let cat = &now.catalog;
    let Some(ks) = cat.keyspaces.get(keyspace) else {
        return Ok(true);
    };
    if !ks.tenant_code {
        return Ok(true);
    }
    let tenants: Vec<_> = cat
        .tenants
        .values()
        .filter(|t| t.keyspace == keyspace && t.state == TenantState::Active)
        .collect();
    let mut code = false;
    for id in checks::keyspace_shards(cat, keyspace) {
        let Some(shard) = cat.shards.get(&id) else {
            continue;
        };
        if shard.failover.is_some()
            || !health
                .get(&shard.id, &shard.primary.id)
                .is_some_and(|h| h.up)
        {
            return Ok(false);
        }
        let admin = pg::connect_shard(&shard.id, &shard.primary.dsn, timeout).await?;
        let present = tenant_pg::observe(&admin, &shard.id).await?;
        for t in &tenants {
            if !present.provisioned.contains(&t.pg_name()) {
                // Not there yet: the reconciler provisions (and settles)
                // it with the keyspace's migrations.
                return Ok(false);
            }
            let inside = pg::connect_db(&shard.primary.dsn, &t.pg_name(), timeout)
                .await
                .map_err(|e| ServiceError::ShardUnavailable(format!("shard {id}: {e}")))?;
            code |= tenant_code::settle(&inside)
                .await
                .map_err(|e| pg::statement_error(&id, &e))?;
        }
    }
    if !code {
        crate::migrations::set_tenant_code(svc, keyspace, false).await?;
        tracing::info!(
            keyspace,
            "no tenant database holds code: routers skip session resets after plain statements"
        );
    }
    Ok(true)
}

/// Brings every active tenant of `keyspace` up to date on one shard.
async fn reconcile_shard(
    svc: &CatalogService,
    cat: &Catalog,
    shard: &Shard,
    keyspace: &str,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let client = pg::connect_shard(&shard.id, &shard.primary.dsn, timeout).await?;
    let seen = tenant_pg::observe(&client, &shard.id).await?;
    let want = cat
        .keyspaces
        .get(keyspace)
        .map(|k| k.migrations.len())
        .unwrap_or_default();
    let behind: Vec<String> = cat
        .tenants
        .values()
        .filter(|t| t.keyspace == keyspace && t.state == TenantState::Active)
        .filter(|t| {
            !seen.provisioned.contains(&t.pg_name())
                || seen.migrations.get(&t.id).copied().unwrap_or_default() < want
                || seen.setup.get(&t.id).copied().unwrap_or_default() < tenant_pg::TENANT_SETUP
        })
        .map(|t| t.id.clone())
        .collect();
    if behind.is_empty() {
        return Ok(());
    }
    tenant_pg::prepare_database(&client, &shard.id).await?;
    for id in behind {
        // Decided again under the lock, on the catalog of now: the
        // tenant may have been deleted or its keyspace changed meanwhile.
        // Busy (a create, delete or migration runs): try on a later pass.
        let Some(_work) = svc.try_lock_tenant_work() else {
            return Err(ServiceError::Contended);
        };
        let now = svc.current();
        let Some(t) = now.catalog.tenants.get(&id) else {
            continue;
        };
        let Some(ks) = now.catalog.keyspaces.get(&t.keyspace) else {
            continue;
        };
        if t.state != TenantState::Active
            || !checks::keyspace_shards(&now.catalog, &ks.name).contains(&shard.id)
        {
            continue;
        }
        tenant_pg::ensure_tenant(
            &client,
            &shard.id,
            &shard.primary.dsn,
            t,
            &ks.migrations,
            timeout,
        )
        .await?;
        tracing::info!(tenant = %id, shard = %shard.id, "brought tenant up to date on shard");
    }
    Ok(())
}
