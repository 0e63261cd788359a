//! Connections to a shard's instances, one pool per tenant and instance:
//! a tenant's statements run over connections logged in as its own
//! PostgreSQL role, so PostgreSQL itself keeps tenants apart.
//!
//! A [`ShardTarget`] is a shard as one catalog version shows it: its
//! primary, its replicas and whether a failover is under way. Each
//! instance is an [`InstanceTarget`] holding its tenants' pools, made on
//! a tenant's first request there with the instance's host, port and
//! database, the tenant's role and password (the roles and databases
//! reach replicas through physical replication). All pools of one
//! instance share one [`ConnBudget`] of `shard_max_connections`: the
//! bound is per PostgreSQL server, since each has its own
//! `max_connections`, so many tenants cannot exhaust it; when it is used
//! up, an idle connection of another tenant is closed to make room.
//! A tenant has one pool of server sessions per instance, shared by both
//! front ends (HTTP requests and wire transactions borrow the same
//! sessions); it counts against a child budget of the tenant's pool size
//! under the instance's. With [lanes](crate::lanes) it has one such pool
//! per lane, each of its share of the size, under the same budget.
//! Replica connections run every statement read-only
//! (`default_transaction_read_only`), so nothing sent to a replica can
//! write even if the replica was promoted meanwhile.
//!
//! A pool is replaced when its tenant's password or pool size changes,
//! closed when its tenant leaves the catalog or starts being deleted,
//! and closed by the reaper once it has had no connection for the idle
//! timeout. Instance targets are kept across catalog versions by
//! instance id and DSN: a replica that stays a replica keeps its pools;
//! a primary keeps them only while the shard's generation and the
//! primary's DSN are unchanged, so a new primary (even a promoted
//! replica) starts with new pools and a new budget, and the old ones are
//! closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use shardline_core::catalog::{Failover, Instance, Shard};
use shardline_core::fence::claim_key;
use shardline_tls::pg::PgTls;

use crate::auth::{TenantAuth, TenantStatus};
use crate::health::HealthView;
use crate::pg::rawpool::RawPool;
use crate::pg::{ConnBudget, Pool, PoolConfig, PoolError, PoolStats};

/// `schema` as a `search_path` value inside startup options: bare when
/// it is a plain lower-case identifier (as PostgreSQL shows it back),
/// else double-quoted; options are split at spaces, which are escaped.
fn search_path_value(schema: &str) -> String {
    let plain = schema
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        schema.to_string()
    } else {
        format!("\"{}\"", schema.replace('"', "\"\"")).replace(' ', "\\ ")
    }
}

/// The most tenant pools one reaper pass closes per instance, so a pass
/// stays short however many pools went idle at once.
pub const REAP_BATCH: usize = 256;

/// How tenant pools are sized.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Timeouts and caches of every pool; `max_size` is ignored.
    pub base: PoolConfig,
    /// A tenant pool's size unless the tenant sets its own.
    pub tenant_pool_size: usize,
    /// Connections of all tenant pools of one instance together.
    pub shard_max_connections: usize,
    /// Lanes client connections run on (0: none); each has pools of its
    /// own, a share of the tenant's size each (see [`crate::lanes`]).
    pub lanes: u16,
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

/// Whether an instance takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One PostgreSQL instance of a shard and its tenants' pools.
pub struct InstanceTarget {
    /// The shard it belongs to.
    pub shard: String,
    /// The instance id from the catalog (empty in old catalogs).
    pub id: String,
    pub role: Role,
    pub dsn: String,
    base: tokio_postgres::Config,
    /// TLS to the instance, as its DSN's `sslmode` says.
    tls: PgTls,
    settings: PoolSettings,
    budget: Arc<ConnBudget>,
    /// Each tenant's budget here (a child of `budget`, sized as its
    /// pools), shared by its two pools; by tenant id.
    tenant_budgets: Mutex<HashMap<String, Arc<ConnBudget>>>,
    /// Tenant pools by tenant id: the first map for threads outside any
    /// lane, then one per lane.
    pools: Box<[RwLock<HashMap<String, TenantPool>>]>,
    closed: AtomicBool,
    /// Cancelled when a failover of its shard begins while it is the
    /// primary: statements running on it are cancelled and answered as
    /// failed (see [`fence`](Self::fence)).
    fenced: tokio_util::sync::CancellationToken,
}

/// What a tenant's pool was made for.
struct Made {
    /// Catalog version of the tenant it was made for.
    version: u64,
    password: String,
    size: usize,
}

impl Made {
    fn of(tenant: &TenantAuth, size: usize) -> Made {
        Made {
            version: tenant.version,
            password: tenant.role_password.clone(),
            size,
        }
    }

    /// Whether the pool serves `tenant` at `size`: a pool made for a
    /// newer catalog than the request's is used as is (same role,
    /// current password).
    fn fits(&self, tenant: &TenantAuth, size: usize) -> bool {
        self.version >= tenant.version
            || (self.password == tenant.role_password && self.size == size)
    }

    /// Whether the pool stays for the catalog's `tenants`: the tenant is
    /// there, active, with the same password and pool size.
    fn stays(
        &self,
        id: &str,
        tenants: &HashMap<String, Arc<TenantAuth>>,
        settings: &PoolSettings,
    ) -> bool {
        tenants.get(id).is_some_and(|t| {
            t.status == TenantStatus::Active
                && t.role_password == self.password
                && settings.pool_size(t) == self.size
        })
    }
}

struct TenantPool {
    pool: Pool,
    made: Made,
    /// Since when the reaper has seen it without connections.
    empty_since: Mutex<Option<Instant>>,
}

/// Numbers of tenant pools, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardPoolStats {
    pub pools: usize,
    pub open: usize,
    pub idle: usize,
    pub in_use: usize,
}

impl std::fmt::Debug for InstanceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN carries a password: left out.
        f.debug_struct("InstanceTarget")
            .field("shard", &self.shard)
            .field("id", &self.id)
            .field("role", &self.role)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Makes every session of a replica pool read-only, keeping the DSN's
/// own options.
const READ_ONLY_OPTION: &str = "-c default_transaction_read_only=on";

impl InstanceTarget {
    /// A target for the instance at `dsn`; opens nothing.
    pub fn new(
        shard: &str,
        id: &str,
        role: Role,
        dsn: &str,
        settings: &PoolSettings,
    ) -> Result<Self, PoolError> {
        let (mut base, tls) =
            shardline_tls::pg::parse_dsn(dsn).map_err(|e| PoolError::InvalidDsn(e.to_string()))?;
        if role == Role::Replica {
            let options = match base.get_options() {
                Some(existing) if !existing.is_empty() => format!("{existing} {READ_ONLY_OPTION}"),
                _ => READ_ONLY_OPTION.to_string(),
            };
            base.options(&options);
        }
        Ok(Self {
            shard: shard.to_string(),
            id: id.to_string(),
            role,
            dsn: dsn.to_string(),
            base,
            tls,
            settings: settings.clone(),
            budget: ConnBudget::new(settings.shard_max_connections),
            tenant_budgets: Mutex::new(HashMap::new()),
            pools: (0..=settings.lanes)
                .map(|_| RwLock::new(HashMap::new()))
                .collect(),
            closed: AtomicBool::new(false),
            fenced: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// A failover of the shard begins, replacing this primary: nothing
    /// more is sent to it, and every request running a statement on it
    /// has that statement cancelled and is answered with a retryable
    /// error, never a success (with asynchronous replication, a write it
    /// commits now may not reach the new primary). Its pools close.
    pub fn fence(&self) {
        self.fenced.cancel();
        self.close();
    }

    /// Whether [`fence`](Self::fence) was called.
    pub fn is_fenced(&self) -> bool {
        self.fenced.is_cancelled()
    }

    /// Completes when [`fence`](Self::fence) is called.
    pub fn fenced(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.fenced.cancelled()
    }

    /// A token cancelled when [`fence`](Self::fence) is called, for a
    /// session that outlives its routing table (the wire front end's).
    pub fn fence_token(&self) -> tokio_util::sync::CancellationToken {
        self.fenced.clone()
    }

    /// Whether this is the catalog entry `inst` in role `role`.
    fn is(&self, inst: &Instance, role: Role) -> bool {
        self.role == role && self.id == inst.id && self.dsn == inst.dsn
    }

    /// The pools of `lane` (the calling thread's), else the first map.
    fn slot(&self, lane: Option<u16>) -> &RwLock<HashMap<String, TenantPool>> {
        let i = lane.map_or(0, |l| usize::from(l) + 1);
        self.pools.get(i).unwrap_or(&self.pools[0])
    }

    fn read(
        slot: &RwLock<HashMap<String, TenantPool>>,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, TenantPool>> {
        // Inserts and removes only: consistent under a panic.
        slot.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(
        slot: &RwLock<HashMap<String, TenantPool>>,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TenantPool>> {
        slot.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection budget shared by its tenant pools.
    pub fn budget(&self) -> &ConnBudget {
        &self.budget
    }

    /// `tenant`'s budget here for a pool of `size`; a new one when the
    /// size changed (the
    /// pools of the old size are being replaced too, and their lent
    /// connections still count against the instance's budget).
    pub fn tenant_budget(&self, tenant: &str, size: usize) -> Arc<ConnBudget> {
        let mut budgets = self.tenant_budgets();
        match budgets.get(tenant) {
            Some(b) if b.max() == size => Arc::clone(b),
            _ => {
                let b = ConnBudget::child(Arc::clone(&self.budget), size);
                budgets.insert(tenant.to_string(), Arc::clone(&b));
                b
            }
        }
    }

    fn tenant_budgets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ConnBudget>>> {
        // Inserts and removes only: consistent under a panic.
        self.tenant_budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether [`close`](Self::close) was called (a newer catalog
    /// replaced or removed the instance).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// `tenant`'s pool on this instance for the calling thread's lane
    /// (see [`crate::lanes`]), made on first use.
    pub fn pool_for(&self, tenant: &TenantAuth) -> Pool {
        let size = self.settings.pool_size(tenant);
        let fits = |e: &TenantPool| e.made.fits(tenant, size);
        let lane = crate::lanes::current();
        let slot = self.slot(lane);
        if let Some(e) = Self::read(slot).get(&tenant.id) {
            if fits(e) {
                return e.pool.clone();
            }
        }
        let mut pools = Self::write(slot);
        if let Some(e) = pools.get(&tenant.id) {
            if fits(e) {
                return e.pool.clone();
            }
        }
        let pg = self.tenant_login(tenant);
        // A lane's pool holds its share of the tenant's size; the
        // tenant's budget still bounds all of its pools together.
        let lanes = usize::from(self.settings.lanes);
        let share = if lane.is_some() && lanes > 1 {
            size.div_ceil(lanes)
        } else {
            size
        };
        let cfg = PoolConfig {
            max_size: share,
            claim_key: Some(claim_key(&tenant.role_password)),
            ..self.settings.base.clone()
        };
        let budget = self.tenant_budget(&tenant.id, size);
        let pool = Pool::from_config(pg, self.tls.clone(), cfg, Some(budget));
        if self.is_closed() {
            // A request still routing by the catalog that replaced this
            // instance: it gets a closed pool, nothing is kept.
            pool.close();
            return pool;
        }
        let entry = TenantPool {
            pool: pool.clone(),
            made: Made::of(tenant, size),
            empty_since: Mutex::new(None),
        };
        if let Some(old) = pools.insert(tenant.id.clone(), entry) {
            old.pool.close();
        }
        pool
    }

    /// The login of `tenant` on this instance: its own database, as its
    /// own role (the database and the role share the name; see
    /// docs/architecture.md, "Tenants"), with its schema as a startup
    /// option: it outranks a default the role set for itself (`ALTER
    /// ROLE ... SET search_path`, which any role may run), and a session
    /// reset returns to it.
    fn tenant_login(&self, tenant: &TenantAuth) -> tokio_postgres::Config {
        let mut pg = self.base.clone();
        pg.user(&tenant.pg_user);
        pg.dbname(&tenant.pg_user);
        pg.password(tenant.role_password.as_bytes());
        let extra = format!("-c search_path={}", search_path_value(&tenant.pg_user));
        let options = match pg.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {extra}"),
            _ => extra,
        };
        pg.options(&options);
        pg
    }

    /// `tenant`'s sessions on this instance as the wire front end
    /// borrows them: the same pool as [`pool_for`](Self::pool_for)'s.
    pub fn raw_pool_for(&self, tenant: &TenantAuth) -> RawPool {
        self.pool_for(tenant).raw().clone()
    }

    /// Closes the pools of tenants that left the catalog, are being
    /// deleted, or whose password or pool size changed.
    pub fn sync_tenants(&self, tenants: &HashMap<String, Arc<TenantAuth>>) {
        for slot in &self.pools {
            Self::write(slot).retain(|id, e| {
                let keep = e.made.stays(id, tenants, &self.settings);
                if !keep {
                    e.pool.close();
                }
                keep
            });
        }
        self.tenant_budgets().retain(|id, b| {
            tenants.get(id).is_some_and(|t| {
                t.status == TenantStatus::Active && self.settings.pool_size(t) == b.max()
            })
        });
    }

    /// Closes idle connections past their idle timeout, then the pools
    /// that have had no connection for `idle_timeout` (at most
    /// [`REAP_BATCH`] per instance); returns how many pools it closed.
    pub fn reap(&self, idle_timeout: Duration, now: Instant) -> usize {
        let mut closed = 0;
        for slot in &self.pools {
            closed += Self::reap_slot(slot, idle_timeout, now, REAP_BATCH - closed);
        }
        closed
    }

    /// [`reap`](Self::reap) of one lane's pools, closing at most `limit`.
    fn reap_slot(
        slot: &RwLock<HashMap<String, TenantPool>>,
        idle_timeout: Duration,
        now: Instant,
        limit: usize,
    ) -> usize {
        let empty = |p: &Pool| {
            let s = p.stats();
            s.size == 0 && s.in_use == 0 && s.waiting == 0
        };
        let mut doomed = Vec::new();
        for (id, e) in Self::read(slot).iter() {
            e.pool.reap_idle();
            let mut since = e.empty_since.lock().unwrap_or_else(PoisonError::into_inner);
            if !empty(&e.pool) {
                *since = None;
                continue;
            }
            match *since {
                None => *since = Some(now),
                Some(t) if now.saturating_duration_since(t) >= idle_timeout => {
                    if doomed.len() < limit {
                        doomed.push(id.clone());
                    }
                }
                Some(_) => {}
            }
        }
        if doomed.is_empty() {
            return 0;
        }
        let mut pools = Self::write(slot);
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
        for slot in &self.pools {
            for e in Self::write(slot).drain() {
                e.1.pool.close();
            }
        }
    }

    /// The tenant pools' numbers, summed (a tenant has a pool per lane
    /// it was used on).
    pub fn stats(&self) -> ShardPoolStats {
        let mut out = ShardPoolStats::default();
        for slot in &self.pools {
            let pools = Self::read(slot);
            out.pools += pools.len();
            for e in pools.values() {
                let PoolStats {
                    size, idle, in_use, ..
                } = e.pool.stats();
                out.open += size;
                out.idle += idle;
                out.in_use += in_use;
            }
        }
        out
    }

    /// Tenants with a pool here now.
    pub fn tenants_with_pools(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .pools
            .iter()
            .flat_map(|slot| Self::read(slot).keys().cloned().collect::<Vec<_>>())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A shard as one catalog version shows it.
pub struct ShardTarget {
    pub id: String,
    pub generation: u64,
    pub primary: Arc<InstanceTarget>,
    pub replicas: Vec<Arc<InstanceTarget>>,
    /// A failover under way: primary traffic is held.
    pub failover: Option<Failover>,
    /// Round-robin position among usable replicas.
    next_replica: AtomicUsize,
}

impl std::fmt::Debug for ShardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTarget")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .field("primary", &self.primary.id)
            .field("replicas", &self.replicas.len())
            .field("failover", &self.failover.is_some())
            .finish_non_exhaustive()
    }
}

impl ShardTarget {
    /// The target of `shard`, keeping from `previous` the instance
    /// targets that are still valid (see the module docs). Replicas with
    /// a DSN that does not parse are left out (and logged); a primary's
    /// is an error.
    pub fn build(
        shard: &Shard,
        previous: Option<&ShardTarget>,
        settings: &PoolSettings,
    ) -> Result<ShardTarget, PoolError> {
        // A failover away from the previous primary: fence it before
        // anything else (the router acknowledges this catalog only after
        // this build, so the manager promotes only after the fence).
        if let (Some(f), Some(p)) = (&shard.failover, previous) {
            if p.primary.id == f.from && !p.primary.is_fenced() {
                tracing::info!(shard = %shard.id, primary = %f.from, to = %f.to,
                    "failover begins: the old primary is fenced, its statements cancelled");
                p.primary.fence();
            }
        }
        let same_primary = previous.is_some_and(|p| {
            p.generation == shard.generation
                && p.primary.is(&shard.primary, Role::Primary)
                && !p.primary.is_closed()
        });
        let primary = match previous {
            Some(p) if same_primary => Arc::clone(&p.primary),
            _ => Arc::new(InstanceTarget::new(
                &shard.id,
                &shard.primary.id,
                Role::Primary,
                &shard.primary.dsn,
                settings,
            )?),
        };
        let mut replicas = Vec::with_capacity(shard.replicas.len());
        for r in &shard.replicas {
            let kept = previous
                .and_then(|p| p.replicas.iter().find(|old| old.is(r, Role::Replica)))
                .filter(|old| !old.is_closed());
            match kept {
                Some(old) => replicas.push(Arc::clone(old)),
                None => {
                    match InstanceTarget::new(&shard.id, &r.id, Role::Replica, &r.dsn, settings) {
                        Ok(t) => replicas.push(Arc::new(t)),
                        Err(e) => {
                            tracing::error!(shard = %shard.id, instance = %r.id, error = %e, "bad replica DSN in catalog");
                        }
                    }
                }
            }
        }
        Ok(ShardTarget {
            id: shard.id.clone(),
            generation: shard.generation,
            primary,
            replicas,
            failover: shard.failover.clone(),
            next_replica: AtomicUsize::new(
                previous.map_or(0, |p| p.next_replica.load(Ordering::Relaxed)),
            ),
        })
    }

    /// Whether this target shows `shard` exactly (same primary,
    /// generation, replicas and failover state), so it can be kept as is.
    pub fn matches(&self, shard: &Shard) -> bool {
        self.generation == shard.generation
            && self.failover == shard.failover
            && self.primary.is(&shard.primary, Role::Primary)
            && !self.primary.is_closed()
            && self.replicas.len() == shard.replicas.len()
            && self
                .replicas
                .iter()
                .zip(&shard.replicas)
                .all(|(t, r)| t.is(r, Role::Replica) && !t.is_closed())
    }

    /// Its instance targets: the primary, then the replicas.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<InstanceTarget>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }

    /// A replica that may serve an eventual read per `health` (see
    /// [`HealthView::replica_usable`]), taking turns among the usable
    /// ones; `None` when there is none.
    pub fn pick_replica(
        &self,
        health: &HealthView,
        max_lag: std::time::Duration,
    ) -> Option<&Arc<InstanceTarget>> {
        let usable = |r: &&Arc<InstanceTarget>| {
            !r.is_closed() && health.replica_usable(&self.id, &r.id, max_lag)
        };
        let n = self.replicas.iter().filter(usable).count();
        if n == 0 {
            return None;
        }
        let k = self.next_replica.fetch_add(1, Ordering::Relaxed) % n;
        self.replicas.iter().filter(usable).nth(k)
    }

    /// Whether the primary's target was closed (a newer catalog replaced
    /// or removed it).
    pub fn is_closed(&self) -> bool {
        self.primary.is_closed()
    }

    /// Closes the pools of tenants that left, on every instance.
    pub fn sync_tenants(&self, tenants: &HashMap<String, Arc<TenantAuth>>) {
        for i in self.instances() {
            i.sync_tenants(tenants);
        }
    }

    /// Runs [`InstanceTarget::reap`] on every instance.
    pub fn reap(&self, idle_timeout: Duration, now: Instant) -> usize {
        self.instances().map(|i| i.reap(idle_timeout, now)).sum()
    }

    /// The numbers of every instance's tenant pools, summed.
    pub fn stats(&self) -> ShardPoolStats {
        let mut out = ShardPoolStats::default();
        for i in self.instances() {
            let s = i.stats();
            out.pools += s.pools;
            out.open += s.open;
            out.idle += s.idle;
            out.in_use += s.in_use;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use shardline_api::manager::{HealthInfo, HealthSnapshot, InstanceHealth};
    use shardline_core::catalog::FailoverKind;

    use super::*;
    use crate::config::RouterConfig;
    use crate::health::HealthTable;
    use crate::state::RouterContext;

    fn inst(id: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            dsn: format!("host=127.0.0.1 port={port} user=postgres dbname=shard"),
        }
    }

    fn shard(generation: u64, primary: Instance, replicas: Vec<Instance>) -> Shard {
        Shard {
            id: "s1".into(),
            keyspace: Some("shared".into()),
            primary,
            replicas,
            generation,
            reserved_for: None,
            fenced: vec![],
            failover: None,
            synchronous: false,
        }
    }

    fn settings() -> PoolSettings {
        RouterContext::new(&RouterConfig::new("http://m", "t")).pools
    }

    /// Health of s1's instances: (id, up, lag).
    fn health(list: &[(&str, bool, f64)]) -> HealthSnapshot {
        HealthSnapshot {
            round: 1,
            instances: list
                .iter()
                .map(|(id, up, lag)| InstanceHealth {
                    shard: "s1".into(),
                    instance: (*id).into(),
                    role: "replica".into(),
                    health: HealthInfo {
                        up: *up,
                        in_recovery: Some(true),
                        lag_seconds: Some(*lag),
                        ..HealthInfo::default()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn instance_targets_survive_catalog_changes() {
        let st = settings();
        let s = shard(1, inst("s1-0", 9), vec![inst("s1-1", 10), inst("s1-2", 11)]);
        let t1 = ShardTarget::build(&s, None, &st).unwrap();
        assert!(t1.matches(&s));
        assert_eq!(t1.primary.role, Role::Primary);
        assert!(t1.replicas.iter().all(|r| r.role == Role::Replica));
        // Every instance has its own budget.
        assert!(!std::ptr::eq(t1.primary.budget(), t1.replicas[0].budget()));

        // Failover intent: a new target, the same replicas; the old
        // primary's target is fenced (its statements cancelled) and a
        // new one stands for the primary, unused while the intent holds.
        let mut intent = s.clone();
        intent.failover = Some(Failover {
            kind: FailoverKind::Automatic,
            from: "s1-0".into(),
            to: "s1-1".into(),
            started_at_ms: 1,
        });
        assert!(!t1.matches(&intent));
        let t2 = ShardTarget::build(&intent, Some(&t1), &st).unwrap();
        assert!(t2.failover.is_some());
        assert!(t1.primary.is_fenced() && t1.primary.is_closed());
        assert!(!Arc::ptr_eq(&t1.primary, &t2.primary));
        assert!(!t2.primary.is_fenced());
        assert!(Arc::ptr_eq(&t1.replicas[1], &t2.replicas[1]));
        assert!(t1.replicas.iter().all(|r| !r.is_fenced()));

        // Rolled back: the intent's primary target serves again.
        let back = ShardTarget::build(&s, Some(&t2), &st).unwrap();
        assert!(Arc::ptr_eq(&back.primary, &t2.primary));

        // s1-1 promoted: the primary is new (not the replica's target),
        // the remaining replica keeps its pools.
        let done = shard(2, inst("s1-1", 10), vec![inst("s1-2", 11)]);
        let t3 = ShardTarget::build(&done, Some(&t2), &st).unwrap();
        assert!(t3.failover.is_none());
        assert!(!Arc::ptr_eq(&t3.primary, &t2.primary));
        assert!(!Arc::ptr_eq(&t3.primary, &t2.replicas[0]));
        assert_eq!(t3.primary.role, Role::Primary);
        assert!(Arc::ptr_eq(&t3.replicas[0], &t2.replicas[1]));

        // A bad replica DSN leaves that replica out, not the shard.
        let mut bad = done.clone();
        bad.replicas.push(Instance {
            id: "s1-3".into(),
            dsn: "port=notanumber".into(),
        });
        assert_eq!(
            ShardTarget::build(&bad, None, &st).unwrap().replicas.len(),
            1
        );
        bad.primary.dsn = "port=notanumber".into();
        assert!(ShardTarget::build(&bad, None, &st).is_err());
    }

    #[test]
    fn replicas_take_turns_within_the_lag_bound() {
        let st = settings();
        let s = shard(
            1,
            inst("s1-0", 9),
            vec![
                inst("s1-1", 10),
                inst("s1-2", 11),
                inst("s1-3", 12),
                inst("s1-4", 13),
            ],
        );
        let t = ShardTarget::build(&s, None, &st).unwrap();
        let table = HealthTable::new(Duration::from_millis(250));
        let now = Instant::now();
        table.install(
            &health(&[
                ("s1-0", true, 0.0),
                ("s1-1", true, 0.1),
                ("s1-2", true, 2.5),
                ("s1-3", false, 0.0),
                ("s1-4", true, 1.0),
            ]),
            now,
        );
        let view = table.fresh(now).unwrap();
        let lag = Duration::from_secs(1);
        let picks: Vec<String> = (0..6)
            .map(|_| t.pick_replica(&view, lag).unwrap().id.clone())
            .collect();
        // s1-2 lags, s1-3 is down: s1-1 and s1-4 alternate.
        assert_eq!(picks, ["s1-1", "s1-4", "s1-1", "s1-4", "s1-1", "s1-4"]);
        // A looser bound lets s1-2 in.
        let mut seen: Vec<String> = (0..3)
            .map(|_| {
                t.pick_replica(&view, Duration::from_secs(3))
                    .unwrap()
                    .id
                    .clone()
            })
            .collect();
        seen.sort();
        assert_eq!(seen, ["s1-1", "s1-2", "s1-4"]);

        // None usable: no replica.
        table.install(&health(&[("s1-1", false, 0.0), ("s1-4", true, 9.0)]), now);
        assert!(t.pick_replica(&table.fresh(now).unwrap(), lag).is_none());

        // A stale answer is no answer: the caller gets none to use.
        table.install(&health(&[("s1-1", true, 0.0)]), now);
        assert!(table.fresh(now + Duration::from_secs(6)).is_none());

        // A closed replica target is never picked.
        table.install(&health(&[("s1-1", true, 0.0), ("s1-4", true, 0.0)]), now);
        t.replicas[0].close();
        let view = table.fresh(now).unwrap();
        for _ in 0..3 {
            assert_eq!(t.pick_replica(&view, lag).unwrap().id, "s1-4");
        }
    }
}
