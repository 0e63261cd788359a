//! Tenants: create (in a shared keyspace, or with a dedicated keyspace
//! over shards given to it alone), update, delete.
//!
//! A tenant's role and schema exist on every shard of its keyspace before
//! its record does, so a router never sees a tenant it cannot log in as.
//! Deleting marks it `deleting` (routers refuse it), drops its schema and
//! role everywhere, then removes it, its apps and its dedicated keyspace
//! in one catalog transaction; a shard that is down leaves it `deleting`
//! and the delete can be retried.

use std::time::Duration;

use shardline_api::manager::{CreateTenantRequest, UpdateTenantRequest};
use shardline_catalog::Op;
use shardline_core::auth::hex;
use shardline_core::catalog::{keys, Keyspace, Migration, Shard, Tenant, TenantState};
use shardline_core::Catalog;

use crate::error::ServiceError;
use crate::service::{decode, put, CatalogService};
use crate::{checks, ops, pg, tenant_pg};

/// The tenant of apps created without one, and of `shardline dev`.
pub const DEFAULT_TENANT: &str = "default";
/// The shared keyspace of tenants created without one.
pub const DEFAULT_KEYSPACE: &str = "default";

/// A role password: 256 random bits as hex.
fn new_role_password() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

/// The PostgreSQL name of a new tenant (its role, database and schema):
/// `t_` and 96 random bits as hex, so that nothing in it tells other
/// tenants, who can list role and database names, who it is
/// (docs/architecture.md, "Tenants"). Drawn again in the (unheard-of)
/// case another tenant of the catalog has it already.
fn new_pg_name(cat: &Catalog) -> Result<String, ServiceError> {
    for _ in 0..3 {
        let bytes: [u8; 12] = rand::random();
        let name = format!("t_{}", hex(&bytes));
        if !cat.tenants.values().any(|t| t.pg_name() == name) {
            return Ok(name);
        }
    }
    Err(ServiceError::Contended)
}

/// Creates a tenant: picks its shards (dedicated), provisions its role and
/// schema with the keyspace's migrations on every shard, then records it.
pub async fn create_tenant(
    svc: &CatalogService,
    req: &CreateTenantRequest,
    connect_timeout: Duration,
) -> Result<Tenant, ServiceError> {
    checks::tenant_id(&req.id)?;
    let name = req.name.clone().unwrap_or_else(|| req.id.clone());
    checks::display_name("tenant", &name)?;
    checks::tenant_config(&req.config)?;
    let id = req.id.as_str();
    let wanted = if req.dedicated {
        if req.keyspace.as_deref().is_some_and(|k| k != id) {
            return Err(ServiceError::Invalid(format!(
                "a dedicated tenant's keyspace is named after it ({id}); leave keyspace out"
            )));
        }
        let n = req.shards.unwrap_or(0);
        if n == 0 {
            return Err(ServiceError::Invalid(
                "a dedicated tenant needs shards: 1 or more".into(),
            ));
        }
        if let Some(max) = req.config.limits.max_shards.filter(|m| n > *m) {
            return Err(ServiceError::QuotaExceeded(format!(
                "tenant {id} may have at most {max} shards (config.limits.max_shards); \
                 {n} requested"
            )));
        }
        Some(n as usize)
    } else {
        if req.shards.is_some() {
            return Err(ServiceError::Invalid(
                "shards applies only to a dedicated tenant (dedicated: true)".into(),
            ));
        }
        None
    };

    let _work = svc.lock_tenant_work().await;
    let published = svc.current();
    let cat = &published.catalog;
    if cat.tenants.contains_key(id) {
        return Err(ServiceError::Conflict(format!(
            "tenant {id} exists already"
        )));
    }
    let pg_name = new_pg_name(cat)?;
    let tenant = |keyspace: String| Tenant {
        id: id.to_string(),
        name: name.clone(),
        keyspace,
        dedicated: req.dedicated,
        config: req.config,
        role_password: new_role_password(),
        pg_name: Some(pg_name.clone()),
        state: TenantState::Active,
        moving: false,
        created_at: crate::time::now_rfc3339(),
    };
    match wanted {
        Some(n) => {
            let shards = pick_shards(cat, id, n)?;
            let tenant = tenant(id.to_string());
            provision_everywhere(cat, &shards, &tenant, &[], connect_timeout).await?;
            let keyspace = Keyspace {
                name: id.to_string(),
                key_type: req.key_type,
                map: Some(ops::even_map(&shards)?),
                migrations: Vec::new(),
                tables: Default::default(),
                frozen: Vec::new(),
                tenant_code: false,
            };
            record_dedicated(svc, &tenant, &keyspace, &shards).await?;
            tracing::info!(tenant = id, ?shards, "created dedicated tenant");
            Ok(tenant)
        }
        None => {
            let ks_name = req
                .keyspace
                .clone()
                .unwrap_or_else(|| DEFAULT_KEYSPACE.into());
            let Some(ks) = cat.keyspaces.get(&ks_name) else {
                return Err(ServiceError::NotFound(format!(
                    "no keyspace {ks_name}; create it first"
                )));
            };
            if let Some(owner) = dedicated_owner(cat, &ks_name) {
                return Err(ServiceError::Conflict(format!(
                    "keyspace {ks_name} is dedicated to tenant {owner}"
                )));
            }
            // Its database would be missing on the job's targets.
            if let Some(job) = crate::reshard::active_job(cat, &ks_name) {
                return Err(ServiceError::Conflict(format!(
                    "resharding job {} runs in keyspace {ks_name}; create the tenant after it \
                     ends",
                    job.id
                )));
            }
            let shards = checks::keyspace_shards(cat, &ks_name);
            let tenant = tenant(ks_name.clone());
            let code = provision_everywhere(cat, &shards, &tenant, &ks.migrations, connect_timeout)
                .await?;
            if code && !ks.tenant_code {
                // Its migrations made code here though they made none
                // before: routers reset this keyspace's sessions from now
                // on (the tenant is not in any router's catalog yet).
                crate::migrations::set_tenant_code(svc, &ks_name, true).await?;
            }
            record_shared(svc, &tenant).await?;
            tracing::info!(tenant = id, keyspace = %ks_name, "created tenant");
            Ok(tenant)
        }
    }
}

/// The tenant whose dedicated keyspace `keyspace` is, if any.
fn dedicated_owner<'a>(cat: &'a Catalog, keyspace: &str) -> Option<&'a str> {
    cat.tenants
        .get(keyspace)
        .filter(|t| t.dedicated && t.keyspace == keyspace)
        .map(|t| t.id.as_str())
}

/// `n` unassigned shards for tenant `id`: those registered for it first,
/// then unreserved ones, each group by id.
fn pick_shards(cat: &Catalog, id: &str, n: usize) -> Result<Vec<String>, ServiceError> {
    if cat.keyspaces.contains_key(id) {
        return Err(ServiceError::Conflict(format!(
            "keyspace {id} exists already; a dedicated tenant's keyspace is named after it"
        )));
    }
    let free = |s: &&Shard| s.keyspace.is_none();
    let mut picked: Vec<String> = cat
        .shards
        .values()
        .filter(free)
        .filter(|s| s.reserved_for.as_deref() == Some(id))
        .map(|s| s.id.clone())
        .collect();
    picked.extend(
        cat.shards
            .values()
            .filter(free)
            .filter(|s| s.reserved_for.is_none())
            .map(|s| s.id.clone()),
    );
    if picked.len() < n {
        return Err(ServiceError::Conflict(format!(
            "tenant {id} needs {n} shards in no keyspace and registered for it or for no tenant; \
             {} available (register more with tenant {id})",
            picked.len()
        )));
    }
    picked.truncate(n);
    Ok(picked)
}

/// Provisions the tenant with `migrations` on every shard, in parallel;
/// the first failure is returned, else whether its database holds code
/// on any shard (see [`crate::tenant_code`]).
async fn provision_everywhere(
    cat: &Catalog,
    shards: &[String],
    tenant: &Tenant,
    migrations: &[Migration],
    timeout: Duration,
) -> Result<bool, ServiceError> {
    let runs = shards.iter().map(|id| async move {
        let Some(shard) = cat.shards.get(id) else {
            return Err(ServiceError::NotFound(format!("no shard {id}")));
        };
        let client = pg::connect_shard(id, &shard.primary.dsn, timeout).await?;
        tenant_pg::prepare_database(&client, id).await?;
        tenant_pg::ensure_tenant(&client, id, &shard.primary.dsn, tenant, migrations, timeout).await
    });
    let mut code = false;
    for res in futures_util::future::join_all(runs).await {
        code |= res?;
    }
    Ok(code)
}

fn absent(seen: &crate::service::ReadSet, key: &str, what: String) -> Result<(), ServiceError> {
    match seen.get(key) {
        Some(Some(_)) => Err(ServiceError::Conflict(format!("{what} exists already"))),
        _ => Ok(()),
    }
}

async fn record_dedicated(
    svc: &CatalogService,
    tenant: &Tenant,
    keyspace: &Keyspace,
    shards: &[String],
) -> Result<(), ServiceError> {
    let id = &tenant.id;
    let t_key = keys::tenant(id);
    let ks_key = keys::keyspace(id);
    let mut read = vec![t_key.clone(), ks_key.clone()];
    read.extend(shards.iter().map(|s| keys::shard(s)));
    svc.update(&read, |seen| {
        absent(seen, &t_key, format!("tenant {id}"))?;
        absent(seen, &ks_key, format!("keyspace {id}"))?;
        let mut ops = vec![put(t_key.clone(), tenant), put(ks_key.clone(), keyspace)];
        for sid in shards {
            let key = keys::shard(sid);
            let Some(entry) = &seen[&key] else {
                return Err(ServiceError::Conflict(format!("shard {sid} was removed")));
            };
            let mut shard: Shard = decode(entry)?;
            if let Some(other) = &shard.keyspace {
                return Err(ServiceError::Conflict(format!(
                    "shard {sid} already serves keyspace {other}"
                )));
            }
            if let Some(owner) = shard.reserved_for.as_ref().filter(|o| *o != id) {
                return Err(ServiceError::Conflict(format!(
                    "shard {sid} is reserved for tenant {owner}"
                )));
            }
            shard.keyspace = Some(id.clone());
            shard.reserved_for = Some(id.clone());
            ops.push(put(key, &shard));
        }
        Ok(ops)
    })
    .await
    .map(|_| ())
}

async fn record_shared(svc: &CatalogService, tenant: &Tenant) -> Result<(), ServiceError> {
    let id = &tenant.id;
    let t_key = keys::tenant(id);
    let ks_key = keys::keyspace(&tenant.keyspace);
    // The keyspace's owner, were it a dedicated keyspace.
    let owner_key = keys::tenant(&tenant.keyspace);
    let mut read = vec![t_key.clone(), ks_key.clone(), owner_key.clone()];
    read.dedup();
    svc.update(&read, |seen| {
        absent(seen, &t_key, format!("tenant {id}"))?;
        if seen[&ks_key].is_none() {
            return Err(ServiceError::NotFound(format!(
                "no keyspace {}",
                tenant.keyspace
            )));
        }
        if owner_key != t_key {
            if let Some(entry) = &seen[&owner_key] {
                let owner: Tenant = decode(entry)?;
                if owner.dedicated && owner.keyspace == tenant.keyspace {
                    return Err(ServiceError::Conflict(format!(
                        "keyspace {} is dedicated to tenant {}",
                        tenant.keyspace, owner.id
                    )));
                }
            }
        }
        Ok(vec![put(t_key.clone(), tenant)])
    })
    .await
    .map(|_| ())
}

/// Changes a tenant's display name or config (limits apply at once).
pub async fn update_tenant(
    svc: &CatalogService,
    id: &str,
    req: &UpdateTenantRequest,
) -> Result<Tenant, ServiceError> {
    if let Some(name) = &req.name {
        checks::display_name("tenant", name)?;
    }
    if let Some(config) = &req.config {
        checks::tenant_config(config)?;
    }
    let key = keys::tenant(id);
    let mut updated = None;
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no tenant {id}")));
        };
        let mut tenant: Tenant = decode(entry)?;
        if tenant.state == TenantState::Deleting {
            return Err(ServiceError::Conflict(format!(
                "tenant {id} is being deleted"
            )));
        }
        if let Some(name) = &req.name {
            tenant.name = name.clone();
        }
        if let Some(config) = req.config {
            if let Some(max) = config.limits.max_shards.filter(|_| tenant.dedicated) {
                let has = checks::keyspace_shards(&svc.current().catalog, &tenant.keyspace).len();
                if (max as usize) < has {
                    return Err(ServiceError::Conflict(format!(
                        "tenant {id} has {has} shards; config.limits.max_shards cannot be \
                         lower ({max})"
                    )));
                }
            }
            tenant.config = config;
        }
        updated = Some(tenant.clone());
        Ok(vec![put(key.clone(), &tenant)])
    })
    .await?;
    updated.ok_or_else(|| ServiceError::NotFound(format!("no tenant {id}")))
}

/// Deletes a tenant: refused (409) while its schema holds rows unless
/// `drop_data`; else drops its schema and role from every shard of its
/// keyspace and removes it, its apps and, if dedicated, its keyspace
/// (the shards become free and unreserved).
pub async fn delete_tenant(
    svc: &CatalogService,
    id: &str,
    drop_data: bool,
    connect_timeout: Duration,
) -> Result<(), ServiceError> {
    let _work = svc.lock_tenant_work().await;
    let published = svc.current();
    let cat = &published.catalog;
    let Some(tenant) = cat.tenants.get(id) else {
        return Err(ServiceError::NotFound(format!("no tenant {id}")));
    };
    // A resharding job copies the tenant's rows and drops its databases
    // on the sources: a delete meanwhile would race it.
    // (A tenant move runs from the tenant's keyspace until the publish,
    // then into it: the keyspace's job covers both.)
    if let Some(job) = crate::reshard::active_job(cat, &tenant.keyspace) {
        return Err(ServiceError::Conflict(format!(
            "resharding job {} is moving tenant {id}'s rows; wait for it to finish \
             (or cancel it) before deleting the tenant",
            job.id
        )));
    }
    let shards: Vec<(String, String)> = checks::keyspace_shards(cat, &tenant.keyspace)
        .into_iter()
        .filter_map(|s| {
            let dsn = cat.shards.get(&s)?.primary.dsn.clone();
            Some((s, dsn))
        })
        .collect();
    if !drop_data {
        let checks = shards.iter().map(|(sid, dsn)| async move {
            let client = pg::connect_shard(sid, dsn, connect_timeout).await?;
            tenant_pg::first_table_with_rows(&client, sid, dsn, tenant, connect_timeout)
                .await
                .map(|t| t.map(|t| (sid.clone(), t)))
        });
        for res in futures_util::future::join_all(checks).await {
            if let Some((sid, table)) = res? {
                return Err(ServiceError::Conflict(format!(
                    "tenant {id} has data (table {table} on shard {sid} has rows); \
                     delete with drop_data=true to drop its schema and all its rows"
                )));
            }
        }
    }
    set_state(svc, id, TenantState::Deleting).await?;
    let drops = shards.iter().map(|(sid, dsn)| async move {
        let client = pg::connect_shard(sid, dsn, connect_timeout).await?;
        tenant_pg::drop_tenant(&client, sid, tenant).await
    });
    for res in futures_util::future::join_all(drops).await {
        if let Err(e) = res {
            tracing::warn!(tenant = id, error = %e, "drop tenant from shard");
            return Err(ServiceError::ShardUnavailable(format!(
                "{e}; tenant {id} stays deleting: retry the delete"
            )));
        }
    }
    remove_records(svc, id).await?;
    tracing::info!(tenant = id, "deleted tenant");
    Ok(())
}

async fn set_state(svc: &CatalogService, id: &str, state: TenantState) -> Result<(), ServiceError> {
    let key = keys::tenant(id);
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no tenant {id}")));
        };
        let mut tenant: Tenant = decode(entry)?;
        if tenant.state == state {
            return Ok(Vec::new());
        }
        tenant.state = state;
        Ok(vec![put(key.clone(), &tenant)])
    })
    .await
    .map(|_| ())
}

/// Removes the tenant, its apps and its dedicated keyspace, releasing its
/// shards, in one transaction.
async fn remove_records(svc: &CatalogService, id: &str) -> Result<(), ServiceError> {
    let published = svc.current();
    let cat = &published.catalog;
    let dedicated = dedicated_owner(cat, id).is_some();
    let t_key = keys::tenant(id);
    let app_keys: Vec<String> = cat
        .apps
        .values()
        .filter(|a| a.tenant == id)
        .map(|a| keys::app(&a.id))
        .collect();
    let shard_keys: Vec<String> = if dedicated {
        cat.shards
            .values()
            .filter(|s| s.keyspace.as_deref() == Some(id))
            .map(|s| keys::shard(&s.id))
            .collect()
    } else {
        Vec::new()
    };
    let ks_key = keys::keyspace(id);
    let mut read = vec![t_key.clone()];
    read.extend(app_keys.iter().cloned());
    read.extend(shard_keys.iter().cloned());
    if dedicated {
        read.push(ks_key.clone());
    }
    svc.update(&read, |seen| {
        let mut ops = Vec::new();
        if seen[&t_key].is_some() {
            ops.push(Op::Delete { key: t_key.clone() });
        }
        for k in &app_keys {
            if seen[k].is_some() {
                ops.push(Op::Delete { key: k.clone() });
            }
        }
        if dedicated {
            if seen[&ks_key].is_some() {
                ops.push(Op::Delete {
                    key: ks_key.clone(),
                });
            }
            for k in &shard_keys {
                let Some(entry) = &seen[k] else { continue };
                let mut shard: Shard = decode(entry)?;
                if shard.keyspace.as_deref() == Some(id) {
                    shard.keyspace = None;
                    shard.reserved_for = None;
                    ops.push(put(k.clone(), &shard));
                }
            }
        }
        Ok(ops)
    })
    .await
    .map(|_| ())
}
