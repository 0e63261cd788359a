//! Connections to a shard, one pool per tenant: a tenant's statements run
//! over connections logged in as its own PostgreSQL role, so PostgreSQL
//! itself keeps tenants apart.
//!
//! A tenant's pool on a shard is made on its first request there, with
//! the shard primary's host, port and database, the tenant's role and
//! password. All pools of a shard share one [`ConnBudget`] of
//! `shard_max_connections`, so many tenants cannot exhaust the server's
//! `max_connections`; when it is used up, an idle connection of another
//! tenant is closed to make room. A pool is replaced when its tenant's
//! password or pool size changes, closed when its tenant leaves the
//! catalog or starts being deleted, and closed by the reaper once it has
//! had no connection for the idle timeout. A new primary (generation or
//! DSN change) gets a new [`ShardTarget`], so new pools and a new budget.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::auth::{TenantAuth, TenantStatus};
use crate::pg::{ConnBudget, Pool, PoolConfig, PoolError, PoolStats};

/// The most tenant pools one reaper pass closes per shard, so a pass
/// stays short however many pools went idle at once.
pub const REAP_BATCH: usize = 256;

/// How tenant pools are sized.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Timeouts and caches of every pool; `max_size` is ignored.
    pub base: PoolConfig,
    /// A tenant pool's size unless the tenant sets its own.
    pub tenant_pool_size: usize,
    /// Connections of all tenant pools of one shard together.
    pub shard_max_connections: usize,
}

impl PoolSettings {
    /// The size of `tenant`'s pools (at least 1, at most the budget).
    pub fn pool_size(&self, tenant: &TenantAuth) -> usize {
        tenant
            .config
            .max_connections_per_shard
            .map_or(self.tenant_pool_size, |n| n as usize)
            .clamp(1, self.shard_max_connections.max(1))
    }
}

/// A shard's primary and its tenants' pools.
pub struct ShardTarget {
    pub id: String,
    pub generation: u64,
    pub primary_dsn: String,
    base: tokio_postgres::Config,
    settings: PoolSettings,
    budget: Arc<ConnBudget>,
    pools: RwLock<HashMap<String, TenantPool>>,
    closed: AtomicBool,
}

struct TenantPool {
    pool: Pool,
    /// Catalog version of the tenant it was made for.
    version: u64,
    password: String,
    size: usize,
    /// Since when the reaper has seen it without connections.
    empty_since: Mutex<Option<Instant>>,
}

/// Numbers of a shard's tenant pools, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardPoolStats {
    pub pools: usize,
    pub open: usize,
    pub idle: usize,
    pub in_use: usize,
}

impl std::fmt::Debug for ShardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN carries a password: left out.
        f.debug_struct("ShardTarget")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ShardTarget {
    /// A target for the primary at `dsn`; opens nothing.
    pub fn new(
        id: &str,
        generation: u64,
        dsn: &str,
        settings: &PoolSettings,
    ) -> Result<Self, PoolError> {
        let base = tokio_postgres::Config::from_str(dsn)
            .map_err(|e| PoolError::InvalidDsn(e.to_string()))?;
        Ok(Self {
            id: id.to_string(),
            generation,
            primary_dsn: dsn.to_string(),
            base,
            settings: settings.clone(),
            budget: ConnBudget::new(settings.shard_max_connections),
            pools: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TenantPool>> {
        // Inserts and removes only: consistent under a panic.
        self.pools.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TenantPool>> {
        self.pools.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection budget shared by its tenant pools.
    pub fn budget(&self) -> &ConnBudget {
        &self.budget
    }

    /// Whether [`close`](Self::close) was called (a newer catalog
    /// replaced or removed the shard).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `tenant`'s pool on this shard, made on first use.
    pub fn pool_for(&self, tenant: &TenantAuth) -> Pool {
        let size = self.settings.pool_size(tenant);
        // A pool made for a newer catalog than the request's is used
        // as is: same role, current password.
        let fits = |e: &TenantPool| {
            e.version >= tenant.version || (e.password == tenant.role_password && e.size == size)
        };
        if let Some(e) = self.read().get(&tenant.id) {
            if fits(e) {
                return e.pool.clone();
            }
        }
        let mut pools = self.write();
        if let Some(e) = pools.get(&tenant.id) {
            if fits(e) {
                return e.pool.clone();
            }
        }
        // The tenant's own database, as its own role (the database and
        // the role share the name; see docs/architecture.md, "Tenants").
        let mut pg = self.base.clone();
        pg.user(&tenant.pg_user);
        pg.dbname(&tenant.pg_user);
        pg.password(tenant.role_password.as_bytes());
        let cfg = PoolConfig {
            max_size: size,
            ..self.settings.base.clone()
        };
        let pool = Pool::from_config(pg, cfg, Some(Arc::clone(&self.budget)));
        if self.is_closed() {
            // A request still routing by the catalog that replaced this
            // shard: it gets a closed pool (503), nothing is kept.
            pool.close();
            return pool;
        }
        let entry = TenantPool {
            pool: pool.clone(),
            version: tenant.version,
            password: tenant.role_password.clone(),
            size,
            empty_since: Mutex::new(None),
        };
        if let Some(old) = pools.insert(tenant.id.clone(), entry) {
            old.pool.close();
        }
        pool
    }

    /// Closes the pools of tenants that left the catalog, are being
    /// deleted, or whose password or pool size changed.
    pub fn sync_tenants(&self, tenants: &HashMap<String, Arc<TenantAuth>>) {
        let mut pools = self.write();
        pools.retain(|id, e| {
            let keep = tenants.get(id).is_some_and(|t| {
                t.status == TenantStatus::Active
                    && t.role_password == e.password
                    && self.settings.pool_size(t) == e.size
            });
            if !keep {
                e.pool.close();
            }
            keep
        });
    }

    /// Closes idle connections past their idle timeout, then the pools
    /// that have had no connection for `idle_timeout` (at most
    /// [`REAP_BATCH`]); returns how many pools it closed.
    pub fn reap(&self, idle_timeout: Duration, now: Instant) -> usize {
        let empty = |p: &Pool| {
            let s = p.stats();
            s.size == 0 && s.in_use == 0 && s.waiting == 0
        };
        let mut doomed = Vec::new();
        for (id, e) in self.read().iter() {
            e.pool.reap_idle();
            let mut since = e.empty_since.lock().unwrap_or_else(PoisonError::into_inner);
            if !empty(&e.pool) {
                *since = None;
                continue;
            }
            match *since {
                None => *since = Some(now),
                Some(t) if now.saturating_duration_since(t) >= idle_timeout => {
                    if doomed.len() < REAP_BATCH {
                        doomed.push(id.clone());
                    }
                }
                Some(_) => {}
            }
        }
        if doomed.is_empty() {
            return 0;
        }
        let mut pools = self.write();
        let mut closed = 0;
        for id in doomed {
            // Checked again under the write lock: a request may have
            // taken a connection meanwhile. One that cloned the pool but
            // has not got a connection yet retries on a fresh pool.
            if pools.get(&id).is_some_and(|e| empty(&e.pool)) {
                if let Some(e) = pools.remove(&id) {
                    e.pool.close();
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Closes every pool and refuses new ones (connections in use close
    /// when returned).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for e in self.write().drain() {
            e.1.pool.close();
        }
    }

    /// The tenant pools' numbers, summed.
    pub fn stats(&self) -> ShardPoolStats {
        let pools = self.read();
        let mut out = ShardPoolStats {
            pools: pools.len(),
            ..ShardPoolStats::default()
        };
        for e in pools.values() {
            let PoolStats {
                size, idle, in_use, ..
            } = e.pool.stats();
            out.open += size;
            out.idle += idle;
            out.in_use += in_use;
        }
        out
    }

    /// Tenants with a pool here now.
    pub fn tenants_with_pools(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.read().keys().cloned().collect();
        ids.sort();
        ids
    }
}
