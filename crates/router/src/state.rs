//! The routing table: the catalog compiled for the request path — tokens
//! to apps and tenants, app ids to SCRAM verifiers for wire-protocol
//! logins, keyspaces to shard maps, shards to their tenant pools —
//! rebuilt whole on every catalog version.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_api::router::ShardKeyValue;
use shardline_core::catalog::{Tenant, TenantConfig, TenantState};
use shardline_core::hash::{parse_uuid, routing_hash};
use shardline_core::shardmap::ShardRange;
use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};
use tokio::sync::watch;

use crate::auth::{
    admit_app, authenticate, Admission, AppAuth, Now, Rejection, ScramEntry, TenantAuth,
    TenantStatus, TokenEntry, WireCredentials,
};
use crate::config::RouterConfig;
use crate::error::{Reason, RouterError};
use crate::health::HealthTable;
use crate::metrics::{RouterMetrics, OTHER};
use crate::pg::PoolConfig;
use crate::pools::{InstanceTarget, PoolSettings, ShardTarget};
use crate::quota::{QuotaCell, Quotas};

/// Longest shard key accepted, in bytes (keys must stay under 4 KiB).
pub const MAX_SHARD_KEY_BYTES: usize = 4095;

/// What outlives catalog versions: pool settings, quota state, metrics,
/// the health feed.
pub struct RouterContext {
    pub pools: PoolSettings,
    pub quotas: Quotas,
    pub metrics: RouterMetrics,
    /// The manager's last health answer.
    pub health: Arc<HealthTable>,
    /// Replicas further behind than this serve no eventual reads.
    pub max_replica_lag: Duration,
    /// Longest a request waits for a failover to end.
    pub failover_hold: Duration,
    /// Longest a whole request may take (`request_timeout`); on the wire,
    /// longest one exchange may run on a server session.
    pub request_timeout: Duration,
    /// When the manager last answered.
    pub contact: Contact,
}

/// When the router last heard from the manager, and the lease the
/// manager gives routers.
///
/// A resharding cutover waits for every live router, but no longer than
/// its lease: a router the manager has not heard from for longer may be
/// routing by a map that moved on. Its writes are refused by the source's
/// fence; its reads check the fence first (see `dispatch`).
pub struct Contact {
    base: Instant,
    /// Milliseconds after `base` of the last answer; `u64::MAX`: none yet.
    last_ms: AtomicU64,
    lease_ms: AtomicU64,
    /// Serving a catalog read from the cache file, with no answer yet.
    from_cache: std::sync::atomic::AtomicBool,
}

impl Default for Contact {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            lease_ms: AtomicU64::new(10_000),
            from_cache: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Contact {
    /// The manager answered now; it gives routers `lease_ms`.
    pub fn answered(&self, lease_ms: u64) {
        self.answered_since(Instant::now(), lease_ms);
    }

    /// The manager renewed the lease in answer to a heartbeat sent at
    /// `sent`: the lease counts from then, not from the answer. The
    /// manager counts from when the heartbeat reached it, which is later,
    /// so however slow the answer, the router's lease never ends after
    /// the manager's.
    pub fn answered_since(&self, sent: Instant, lease_ms: u64) {
        let at = sent.saturating_duration_since(self.base).as_millis() as u64;
        self.lease_ms.store(lease_ms, Ordering::Relaxed);
        // The first answer replaces "none yet" (u64::MAX); later ones
        // only move the time forward.
        let _ = self
            .last_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                (last == u64::MAX || at > last).then_some(at)
            });
    }

    /// The router serves a catalog from its cache file: it counts itself
    /// cut off until a manager has told it that catalog is current or
    /// sent a newer one ([`catalog_confirmed`](Self::catalog_confirmed)):
    /// it may be older than a failover or a cutover made since.
    pub fn serving_from_cache(&self) {
        self.from_cache.store(true, Ordering::Relaxed);
    }

    /// A manager answered the catalog watch: the table is its latest.
    pub fn catalog_confirmed(&self) {
        self.from_cache.store(false, Ordering::Relaxed);
    }

    /// Whether the table still comes from the cache file alone.
    pub fn is_from_cache(&self) -> bool {
        self.from_cache.load(Ordering::Relaxed)
    }

    /// Whether the manager has not answered for about a lease, or the
    /// table comes from the cache file unconfirmed (before its first
    /// answer a router has otherwise nothing to route by that the
    /// manager could have moved past without it). A margin of up to
    /// a second (half a short lease) makes the router count itself cut
    /// off before the manager counts it gone: the manager's clock starts
    /// at the heartbeat, the router's at the answer.
    pub fn cut_off(&self) -> bool {
        if self.from_cache.load(Ordering::Relaxed) {
            return true;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == u64::MAX {
            return false;
        }
        let lease = self.lease_ms.load(Ordering::Relaxed);
        let margin = (lease / 2).min(1_000);
        let now = self.base.elapsed().as_millis() as u64;
        now.saturating_sub(last) > lease - margin
    }

    /// Resolves once the router counts itself cut off (see
    /// [`cut_off`](Self::cut_off)): sleeps until the current lease less
    /// its margin would run out and checks again, as an answer meanwhile
    /// moves the end later. Pending for ever before the first answer.
    pub async fn until_cut_off(&self) {
        loop {
            if self.cut_off() {
                return;
            }
            let last = self.last_ms.load(Ordering::Relaxed);
            let wait_ms = if last == u64::MAX {
                1_000
            } else {
                let lease = self.lease_ms.load(Ordering::Relaxed);
                let margin = (lease / 2).min(1_000);
                let now = self.base.elapsed().as_millis() as u64;
                (last + lease - margin).saturating_sub(now) + 1
            };
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        }
    }
}

impl RouterContext {
    /// The context of a router with these settings.
    pub fn new(cfg: &RouterConfig) -> Self {
        Self {
            pools: PoolSettings {
                base: PoolConfig {
                    max_size: cfg.tenant_pool_size,
                    acquire_timeout: cfg.acquire_timeout,
                    connect_timeout: cfg.connect_timeout,
                    statement_timeout: Some(cfg.statement_timeout),
                    idle_timeout: cfg.idle_timeout,
                    reset_sessions: cfg.session_reset,
                    ..PoolConfig::default()
                },
                tenant_pool_size: cfg.tenant_pool_size,
                shard_max_connections: cfg.shard_max_connections,
                lanes: cfg.lanes,
            },
            quotas: Quotas::new(),
            metrics: RouterMetrics::new(cfg.metrics_max_tenant_apps),
            health: Arc::new(HealthTable::new(cfg.health_poll)),
            max_replica_lag: cfg.max_replica_lag,
            failover_hold: cfg.failover_hold,
            request_timeout: cfg.request_timeout,
            contact: Contact::default(),
        }
    }
}

/// A keyspace, compiled.
#[derive(Debug)]
pub struct KeyspaceRoute {
    pub key_type: KeyType,
    pub map: Option<ShardMap>,
    /// Ranges frozen for a resharding cutover: their requests are held
    /// (see [`crate::reroute`]).
    pub frozen: Vec<KeyRange>,
    /// A tenant database of the keyspace may hold code that changes
    /// sessions: every request is followed by a session reset (see
    /// `shardline_core::session`).
    pub tenant_code: bool,
    /// Each sharded table's shard-key column (the wire front end finds
    /// keys in statements by them).
    pub tables: HashMap<String, String>,
}

impl KeyspaceRoute {
    /// Whether `hash` is in a frozen range. A linear scan: a cutover
    /// freezes a handful of ranges, usually none.
    pub fn is_frozen(&self, hash: u64) -> bool {
        self.frozen.iter().any(|r| r.contains(hash))
    }
}

/// One catalog version, ready for routing.
#[derive(Default)]
pub struct Routing {
    pub version: u64,
    pub keyspaces: HashMap<String, KeyspaceRoute>,
    /// Accepted tokens by SHA-256 digest (current and rotated-out ones).
    tokens: HashMap<[u8; 32], TokenEntry>,
    /// SCRAM-SHA-256 verifiers by app id, for wire-protocol logins.
    scram: HashMap<String, ScramEntry>,
    pub tenants: HashMap<String, Arc<TenantAuth>>,
    pub shards: HashMap<String, Arc<ShardTarget>>,
}

/// Where a request goes.
pub struct Route<'a> {
    pub hash: u64,
    pub range: &'a ShardRange,
    /// The hash is in a range frozen for a resharding cutover.
    pub frozen: bool,
}

impl Routing {
    /// Compiles a catalog. Instances keep their targets (and tenant
    /// pools) from `previous` while still valid (see [`crate::pools`]);
    /// the others' targets are closed. Quota state and metric labels of tenants and apps that
    /// left are dropped.
    pub fn build(cat: &Catalog, previous: &Routing, ctx: &RouterContext) -> Routing {
        let keyspaces = cat
            .keyspaces
            .iter()
            .map(|(name, ks)| {
                (
                    name.clone(),
                    KeyspaceRoute {
                        key_type: ks.key_type,
                        map: ks.map.clone(),
                        frozen: ks.frozen.clone(),
                        tenant_code: ks.tenant_code,
                        tables: ks
                            .tables
                            .iter()
                            .map(|(t, spec)| (t.clone(), spec.shard_key.clone()))
                            .collect(),
                    },
                )
            })
            .collect();
        let labels = ctx.metrics.assign_labels(&cat.apps);
        let labelled: HashSet<&str> = labels
            .values()
            .map(|pm| pm.tenant())
            .filter(|t| *t != OTHER)
            .collect();
        let tenants: HashMap<String, Arc<TenantAuth>> = cat
            .tenants
            .values()
            .map(|t| {
                let label = if labelled.contains(t.id.as_str()) {
                    t.id.clone()
                } else {
                    OTHER.to_string()
                };
                let auth = tenant_auth(t, cat.version, ctx.quotas.tenant_cell(&t.id), label);
                (t.id.clone(), Arc::new(auth))
            })
            .collect();
        let mut missing: HashMap<&str, Arc<TenantAuth>> = HashMap::new();
        let mut tokens = HashMap::with_capacity(cat.apps.len());
        let mut scram = HashMap::with_capacity(cat.apps.len());
        for app in cat.apps.values() {
            let Some(digest) = decode_hex32(&app.token_hash) else {
                tracing::error!(app = %app.id, "app with a malformed token hash in the catalog");
                continue;
            };
            let tenant = match tenants.get(&app.tenant) {
                Some(t) => Arc::clone(t),
                None => Arc::clone(
                    missing
                        .entry(&app.tenant)
                        .or_insert_with(|| Arc::new(missing_tenant(&app.tenant, cat.version))),
                ),
            };
            let metrics = labels
                .get(&app.id)
                .cloned()
                .unwrap_or_else(|| Arc::clone(ctx.metrics.anonymous()));
            let auth = Arc::new(AppAuth {
                id: app.id.clone(),
                tenant,
                key_prefix: app.key_prefix.clone().filter(|p| !p.is_empty()),
                limits: app.limits,
                quota: ctx.quotas.app_cell(&app.id),
                metrics,
            });
            if let Some(entry) = ScramEntry::compile(app, &auth) {
                scram.insert(app.id.clone(), entry);
            }
            if let Some(prev) = &app.previous_token {
                match decode_hex32(&prev.token_hash) {
                    Some(old) => {
                        tokens.insert(
                            old,
                            TokenEntry {
                                digest: old,
                                expires_at_ms: Some(prev.expires_at_ms),
                                app: Arc::clone(&auth),
                            },
                        );
                    }
                    None => {
                        tracing::error!(app = %app.id, "app with a malformed previous token hash");
                    }
                }
            }
            tokens.insert(
                digest,
                TokenEntry {
                    digest,
                    expires_at_ms: None,
                    app: auth,
                },
            );
        }
        ctx.quotas.retain(
            &cat.tenants.keys().map(String::as_str).collect(),
            &cat.apps.keys().map(String::as_str).collect(),
        );
        let mut shards = HashMap::with_capacity(cat.shards.len());
        for s in cat.shards.values() {
            let old = previous.shards.get(&s.id);
            if let Some(old) = old.filter(|o| o.matches(s)) {
                old.sync_tenants(&tenants);
                shards.insert(s.id.clone(), Arc::clone(old));
                continue;
            }
            match ShardTarget::build(s, old.map(Arc::as_ref), &ctx.pools) {
                Ok(t) => {
                    t.sync_tenants(&tenants);
                    shards.insert(s.id.clone(), Arc::new(t));
                }
                Err(e) => {
                    tracing::error!(shard = %s.id, error = %e, "bad shard DSN in catalog");
                }
            }
        }
        // Instances no longer in use: their pools close (connections in
        // use close when returned).
        let kept: HashSet<*const InstanceTarget> = shards
            .values()
            .flat_map(|t| t.instances().map(Arc::as_ptr))
            .collect();
        for old in previous.shards.values() {
            for inst in old.instances() {
                if !kept.contains(&Arc::as_ptr(inst)) {
                    inst.close();
                }
            }
        }
        Routing {
            version: cat.version,
            keyspaces,
            tokens,
            scram,
            tenants,
            shards,
        }
    }

    /// The app whose token this is, checked against the wall clock
    /// `unix_ms` for rotated-out tokens (401 otherwise).
    pub fn authenticate(&self, token: &str, unix_ms: u64) -> Result<&Arc<AppAuth>, Rejection> {
        authenticate(&self.tokens, token, unix_ms)
    }

    /// Authenticates, authorises and takes the quotas of one request:
    /// the whole check before routing. The [`Admission`] holds the
    /// request's in-flight slots until dropped.
    pub fn admit(
        &self,
        token: &str,
        keyspace: Option<&str>,
        key: &ShardKeyValue,
        quotas: &Quotas,
        now: Now,
    ) -> Result<Admission, Rejection> {
        let app = self.authenticate(token, now.unix_ms)?;
        admit_app(app, keyspace, key, quotas, now.instant)
    }

    /// What a SCRAM-SHA-256 login as app `app_id` is checked against at
    /// the wall-clock time `unix_ms`: the current token's verifier and,
    /// until it expires, the rotated-out one's. `None` for an unknown app
    /// or one without a usable verifier. A copy, made per login.
    pub fn wire_credentials(&self, app_id: &str, unix_ms: u64) -> Option<WireCredentials> {
        self.scram.get(app_id).map(|e| e.credentials(unix_ms))
    }

    /// Accepted tokens (current and rotated-out).
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// A shard of `keyspace` for statements that touch no tenant data
    /// (catalog look-ups, describes, login parameters): the first, in
    /// map order, that is not failing over, else the first.
    pub fn any_shard(&self, keyspace: &str) -> Option<&str> {
        let map = self.keyspaces.get(keyspace)?.map.as_ref()?;
        let mut ids = map.ranges().iter().map(|r| r.shard.as_str());
        let first = ids.clone().next()?;
        Some(
            ids.find(|id| self.shards.get(*id).is_some_and(|t| t.failover.is_none()))
                .unwrap_or(first),
        )
    }

    /// Hashes a key and finds the owning range.
    pub fn route(&self, keyspace: &str, key: &ShardKeyValue) -> Result<Route<'_>, RouterError> {
        let ks = self.keyspace(keyspace)?;
        let hash = routing_hash(typed_key(ks.key_type, key)?);
        self.route_hash(keyspace, hash)
    }

    /// Finds the range owning an already computed routing hash.
    pub fn route_hash(&self, keyspace: &str, hash: u64) -> Result<Route<'_>, RouterError> {
        let ks = self.keyspace(keyspace)?;
        let map = ks.map.as_ref().ok_or_else(|| Reason::NoShards {
            keyspace: keyspace.to_string(),
        })?;
        Ok(Route {
            hash,
            range: map.lookup(hash),
            frozen: ks.is_frozen(hash),
        })
    }

    fn keyspace(&self, keyspace: &str) -> Result<&KeyspaceRoute, RouterError> {
        self.keyspaces.get(keyspace).ok_or_else(|| {
            Reason::NoKeyspace {
                keyspace: keyspace.to_string(),
            }
            .into()
        })
    }

    /// Runs the pool reaper over every shard (see [`ShardTarget::reap`]).
    pub fn reap_pools(&self, idle_timeout: Duration, now: Instant) -> usize {
        self.shards
            .values()
            .map(|s| s.reap(idle_timeout, now))
            .sum()
    }
}

fn tenant_auth(
    t: &Tenant,
    version: u64,
    quota: Arc<QuotaCell>,
    metric_label: String,
) -> TenantAuth {
    TenantAuth {
        id: t.id.clone(),
        keyspace: t.keyspace.clone(),
        pg_user: t.pg_name(),
        role_password: t.role_password.clone(),
        status: match t.state {
            TenantState::Active => TenantStatus::Active,
            TenantState::Deleting => TenantStatus::Deleting,
        },
        config: t.config,
        moving: t.moving,
        version,
        quota,
        metric_label,
    }
}

/// Stands in for a tenant an app names but the catalog lacks: its apps
/// are refused with 403 (the token is valid, so 401 would mislead).
fn missing_tenant(id: &str, version: u64) -> TenantAuth {
    TenantAuth {
        id: id.to_string(),
        keyspace: String::new(),
        // Never used: its requests are refused before any session.
        pg_user: String::new(),
        role_password: String::new(),
        status: TenantStatus::Missing,
        config: TenantConfig::default(),
        moving: false,
        version,
        quota: Arc::new(QuotaCell::default()),
        metric_label: OTHER.to_string(),
    }
}

/// Checks a key against the keyspace's key type.
pub fn typed_key(key_type: KeyType, key: &ShardKeyValue) -> Result<ShardKey<'_>, RouterError> {
    let bad = |m: String| RouterError::from(Reason::InvalidShardKey(m));
    match (key_type, key) {
        (_, ShardKeyValue::Text(s)) if s.is_empty() => Err(bad("shard_key is empty".into())),
        (_, ShardKeyValue::Text(s)) if s.len() > MAX_SHARD_KEY_BYTES => Err(bad(format!(
            "shard_key is {} bytes; the limit is {MAX_SHARD_KEY_BYTES}",
            s.len()
        ))),
        (KeyType::Text, ShardKeyValue::Text(s)) => Ok(ShardKey::Text(s)),
        (KeyType::Text, ShardKeyValue::Int(_)) => Err(bad(
            "this keyspace has text shard keys: send shard_key as a JSON string".into(),
        )),
        (KeyType::Bigint, ShardKeyValue::Int(i)) => Ok(ShardKey::Bigint(*i)),
        (KeyType::Bigint, ShardKeyValue::Text(s)) => {
            s.parse::<i64>().map(ShardKey::Bigint).map_err(|_| {
                bad(format!(
                    "this keyspace has bigint shard keys; {s:?} is not one"
                ))
            })
        }
        (KeyType::Uuid, ShardKeyValue::Text(s)) => {
            parse_uuid(s).map(ShardKey::Uuid).ok_or_else(|| {
                bad(format!(
                    "this keyspace has uuid shard keys; {s:?} is not one"
                ))
            })
        }
        (KeyType::Uuid, ShardKeyValue::Int(_)) => Err(bad(
            "this keyspace has uuid shard keys: send shard_key as a UUID string".into(),
        )),
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The current routing table, swapped whole on every catalog change.
/// Requests held through a failover [`subscribe`](Self::subscribe) to
/// learn of the next table without polling.
pub struct RoutingCell {
    current: watch::Sender<Arc<Routing>>,
    loaded: AtomicBool,
}

impl Default for RoutingCell {
    fn default() -> Self {
        Self {
            current: watch::Sender::new(Arc::new(Routing::default())),
            loaded: AtomicBool::new(false),
        }
    }
}

impl RoutingCell {
    /// The table requests route by.
    pub fn get(&self) -> Arc<Routing> {
        Arc::clone(&self.current.borrow())
    }

    /// Installs a new table and wakes the requests waiting for one.
    pub fn set(&self, routing: Routing) {
        self.loaded.store(true, Ordering::Release);
        self.current.send_replace(Arc::new(routing));
    }

    /// A receiver that sees every table installed from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Routing>> {
        self.current.subscribe()
    }

    /// Whether a catalog has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn cut_off_after_a_lease_without_an_answer() {
        let c = Contact::default();
        assert!(!c.cut_off(), "not before the first answer");
        c.answered(60_000);
        assert!(!c.cut_off());
        c.answered(4);
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(c.cut_off(), "past the lease less its margin");
        c.answered(60_000);
        assert!(!c.cut_off(), "an answer ends it");
    }

    #[test]
    fn the_lease_counts_from_the_heartbeat_not_the_answer() {
        // A router up for a few seconds.
        let c = Contact {
            base: Instant::now() - std::time::Duration::from_secs(5),
            ..Contact::default()
        };
        // A heartbeat sent 900 ms ago, answered only now, with a lease of
        // 1 s (margin 0.5 s): the manager's lease for it ends in under
        // 0.1 s, so the router counts itself cut off already.
        let sent = Instant::now() - std::time::Duration::from_millis(900);
        c.answered_since(sent, 1_000);
        assert!(c.cut_off(), "the lease counts from the heartbeat");
        // An answer to an older heartbeat does not move it back.
        c.answered_since(Instant::now(), 60_000);
        c.answered_since(sent, 60_000);
        assert!(!c.cut_off());
    }

    use shardline_core::auth::token_hash;
    use shardline_core::catalog::{App, Instance, Keyspace, Limits, PreviousToken, Shard};

    use super::*;
    use crate::auth::RejectReason;

    fn tenant(id: &str, state: TenantState, limits: Limits) -> Tenant {
        Tenant {
            id: id.into(),
            name: id.into(),
            keyspace: "shared".into(),
            dedicated: false,
            config: TenantConfig {
                limits,
                max_connections_per_shard: None,
            },
            role_password: format!("pw-{id}"),
            pg_name: Some(format!("pg-of-{id}")),
            state,
            moving: false,
            created_at: String::new(),
        }
    }

    fn app(id: &str, tenant: &str, prefix: Option<&str>, limits: Limits) -> App {
        App {
            id: id.into(),
            name: id.into(),
            tenant: tenant.into(),
            description: String::new(),
            key_prefix: prefix.map(str::to_string),
            limits,
            token_hash: token_hash(&format!("tok-{id}")),
            token_scram: None,
            previous_token: None,
            created_at: String::new(),
        }
    }

    fn rps(rate: u32, burst: u32, concurrent: Option<u32>) -> Limits {
        Limits {
            requests_per_second: Some(rate),
            burst: Some(burst),
            max_concurrent: concurrent,
            max_shards: None,
        }
    }

    /// acme (active), beta (deleting); apps a1 (prefix "acme:", rotated
    /// token), a2 (2/s, 1 in flight), n1 (prefix "4"), b1 of beta, orphan
    /// of a tenant that does not exist.
    fn catalog() -> Catalog {
        let mut cat = Catalog {
            version: 5,
            ..Catalog::default()
        };
        cat.keyspaces.insert(
            "shared".into(),
            Keyspace {
                name: "shared".into(),
                key_type: KeyType::Text,
                map: None,
                migrations: vec![],
                tables: Default::default(),
                frozen: Vec::new(),
                tenant_code: false,
            },
        );
        for t in [
            tenant("acme", TenantState::Active, Limits::default()),
            tenant("beta", TenantState::Deleting, Limits::default()),
        ] {
            cat.tenants.insert(t.id.clone(), t);
        }
        let mut a1 = app("a1", "acme", Some("acme:"), Limits::default());
        a1.previous_token = Some(PreviousToken {
            token_hash: token_hash("old-a1"),
            token_scram: None,
            expires_at_ms: 1_000,
        });
        for a in [
            a1,
            app("a2", "acme", None, rps(2, 2, Some(1))),
            app("n1", "acme", Some("4"), Limits::default()),
            app("b1", "beta", None, Limits::default()),
            app("orphan", "ghost", None, Limits::default()),
        ] {
            cat.apps.insert(a.id.clone(), a);
        }
        cat.shards.insert(
            "s1".into(),
            Shard {
                id: "s1".into(),
                keyspace: Some("shared".into()),
                primary: Instance {
                    id: String::new(),
                    dsn: "host=127.0.0.1 port=9 user=postgres dbname=shard".into(),
                },
                replicas: vec![],
                generation: 1,
                reserved_for: None,
                fenced: vec![],
                failover: None,
                synchronous: false,
            },
        );
        cat
    }

    fn ctx() -> RouterContext {
        RouterContext::new(&RouterConfig::new("http://m", "t"))
    }

    fn at(ms: u64) -> Now {
        Now {
            instant: Instant::now(),
            unix_ms: ms,
        }
    }

    fn text(s: &str) -> ShardKeyValue {
        ShardKeyValue::Text(s.into())
    }

    fn refusal(r: Result<Admission, Rejection>) -> (RejectReason, u16, Option<u64>) {
        let rej = r.expect_err("refused");
        (rej.reason, rej.error.http_status(), rej.error.retry_after())
    }

    #[test]
    fn tokens_and_rotation() {
        let ctx = ctx();
        let r = Routing::build(&catalog(), &Routing::default(), &ctx);
        assert_eq!(r.token_count(), 6);
        assert_eq!(r.authenticate("tok-a1", 5_000).unwrap().id, "a1");
        // The rotated-out token works until it expires, then it is
        // refused like an unknown one.
        assert_eq!(r.authenticate("old-a1", 999).unwrap().id, "a1");
        let old = r.authenticate("old-a1", 1_000).unwrap_err();
        let unknown = r.authenticate("nope", 0).unwrap_err();
        for rej in [old, unknown] {
            assert_eq!(rej.reason, RejectReason::Unauthorized);
            assert_eq!(rej.error.http_status(), 401);
            assert_eq!(rej.error.message(), "invalid token");
        }
        let a1 = r.authenticate("tok-a1", 0).unwrap();
        // The role is the record's, not derived from the tenant id.
        assert_eq!(a1.tenant.pg_user, "pg-of-acme");
        assert_eq!(a1.tenant.role_password, "pw-acme");
        assert!(!format!("{:?}", a1.tenant).contains("pw-acme"));
    }

    #[test]
    fn wire_credentials_and_rotation() {
        use shardline_core::scram::Verifier;
        // One iteration: the test needs verifiers, not their cost.
        let v = |token: &str, salt: &[u8]| Verifier::new(token, salt, 1);
        let mut cat = catalog();
        let a1 = cat.apps.get_mut("a1").unwrap();
        a1.token_scram = Some(v("tok-a1", b"salt").to_string());
        a1.previous_token.as_mut().unwrap().token_scram = Some(v("old-a1", b"salt").to_string());
        // A previous verifier with another salt cannot share an exchange.
        let n1 = cat.apps.get_mut("n1").unwrap();
        n1.token_scram = Some(v("tok-n1", b"salt").to_string());
        n1.previous_token = Some(PreviousToken {
            token_hash: token_hash("old-n1"),
            token_scram: Some(v("old-n1", b"other").to_string()),
            expires_at_ms: u64::MAX,
        });
        cat.apps.get_mut("b1").unwrap().token_scram = Some("SCRAM-SHA-256$bad".into());
        let r = Routing::build(&cat, &Routing::default(), &ctx());

        let during = r.wire_credentials("a1", 999).expect("a1 has verifiers");
        assert_eq!(during.app.id, "a1");
        assert_eq!(
            (during.salt.as_slice(), during.iterations),
            (&b"salt"[..], 1)
        );
        assert_eq!(
            during.verifiers,
            [v("tok-a1", b"salt"), v("old-a1", b"salt")],
            "current first"
        );
        let after = r.wire_credentials("a1", 1_000).unwrap();
        assert_eq!(
            after.verifiers,
            [v("tok-a1", b"salt")],
            "the old one expired"
        );
        let n1 = r.wire_credentials("n1", 0).unwrap();
        assert_eq!(n1.verifiers, [v("tok-n1", b"salt")]);

        assert!(r.wire_credentials("nope", 0).is_none(), "unknown app");
        assert!(r.wire_credentials("a2", 0).is_none(), "no verifier");
        assert!(r.wire_credentials("b1", 0).is_none(), "malformed verifier");
        // The tokens themselves are unaffected.
        assert_eq!(r.authenticate("tok-b1", 0).unwrap().id, "b1");
    }

    #[test]
    fn tenant_keyspace_and_prefix_checks() {
        let ctx = ctx();
        let q = &ctx.quotas;
        let r = Routing::build(&catalog(), &Routing::default(), &ctx);
        let adm = r.admit("tok-a1", None, &text("acme:1"), q, at(0)).unwrap();
        assert_eq!(adm.keyspace(), "shared");
        drop(adm);
        assert!(r
            .admit("tok-a1", Some("shared"), &text("acme:1"), q, at(0))
            .is_ok());
        assert_eq!(
            refusal(r.admit("tok-a1", Some("other"), &text("acme:1"), q, at(0))),
            (RejectReason::ForbiddenKeyspace, 403, None)
        );
        let rej = r
            .admit("tok-a1", None, &text("beta:1"), q, at(0))
            .unwrap_err();
        assert_eq!(rej.reason, RejectReason::ForbiddenKeyPrefix);
        assert_eq!(rej.error.code(), shardline_api::ErrorCode::Forbidden);
        assert!(
            rej.error.message().contains("\"acme:\""),
            "{}",
            rej.error.message()
        );
        // Integer keys are compared by their decimal text.
        assert!(r
            .admit("tok-n1", None, &ShardKeyValue::Int(42), q, at(0))
            .is_ok());
        assert_eq!(
            refusal(r.admit("tok-n1", None, &ShardKeyValue::Int(-42), q, at(0))).0,
            RejectReason::ForbiddenKeyPrefix
        );
        assert_eq!(
            refusal(r.admit("tok-b1", None, &text("x"), q, at(0))),
            (RejectReason::TenantDeleting, 403, None)
        );
        assert_eq!(
            refusal(r.admit("tok-orphan", None, &text("x"), q, at(0))),
            (RejectReason::UnknownTenant, 403, None)
        );
        // Checks come before quotas: nothing is left in flight.
        let acme = &r.tenants["acme"];
        assert_eq!(acme.quota.in_flight(), 0);
    }

    #[test]
    fn quotas_concurrency_before_rate() {
        let ctx = ctx();
        let q = &ctx.quotas;
        let r = Routing::build(&catalog(), &Routing::default(), &ctx);
        let t0 = Instant::now() + Duration::from_secs(1);
        let now = |ms: u64| Now {
            instant: t0 + Duration::from_millis(ms),
            unix_ms: 0,
        };
        let held = r.admit("tok-a2", None, &text("k"), q, now(0)).unwrap();
        assert_eq!(r.tenants["acme"].quota.in_flight(), 1);
        // In flight already: refused without taking a token.
        for _ in 0..5 {
            assert_eq!(
                refusal(r.admit("tok-a2", None, &text("k"), q, now(0))),
                (RejectReason::ConcurrencyLimited, 429, Some(1))
            );
        }
        drop(held);
        assert_eq!(r.tenants["acme"].quota.in_flight(), 0);
        // The burst of 2 had one token taken: one more, then 429.
        assert!(r.admit("tok-a2", None, &text("k"), q, now(0)).is_ok());
        let rej = r.admit("tok-a2", None, &text("k"), q, now(0)).unwrap_err();
        assert_eq!(rej.reason, RejectReason::RateLimited);
        assert_eq!(rej.error.code(), shardline_api::ErrorCode::RateLimited);
        assert_eq!(rej.error.retry_after(), Some(1));
        // 2/s: a token every 500 ms.
        assert!(r.admit("tok-a2", None, &text("k"), q, now(500)).is_ok());
        // Two routers share the limit: 1/s here, burst 1.
        q.set_live_routers(2);
        assert!(r.admit("tok-a2", None, &text("k"), q, now(1_000)).is_err());
        assert!(r.admit("tok-a2", None, &text("k"), q, now(2_000)).is_ok());
    }

    #[test]
    fn tenant_rate_refunds_the_app_token_and_state_survives_rebuilds() {
        let ctx = ctx();
        let q = &ctx.quotas;
        let mut cat = catalog();
        cat.tenants.get_mut("acme").unwrap().config.limits = rps(1, 1, None);
        cat.apps.get_mut("a2").unwrap().limits = rps(2, 2, None);
        let r = Routing::build(&cat, &Routing::default(), &ctx);
        let t0 = Instant::now() + Duration::from_secs(1);
        let now = Now {
            instant: t0,
            unix_ms: 0,
        };
        assert!(r.admit("tok-a2", None, &text("k"), q, now).is_ok());
        // The tenant's bucket is empty; a1 (no app limit) is refused too.
        let rej = r
            .admit("tok-a1", None, &text("acme:k"), q, now)
            .unwrap_err();
        assert_eq!(rej.reason, RejectReason::RateLimited);
        for _ in 0..3 {
            assert!(r.admit("tok-a2", None, &text("k"), q, now).is_err());
        }
        // Raising the tenant's limit keeps its bucket and refunded the
        // app's tokens: a2 still has one left.
        cat.version += 1;
        cat.tenants.get_mut("acme").unwrap().config.limits = rps(1000, 1000, None);
        let r2 = Routing::build(&cat, &r, &ctx);
        assert!(Arc::ptr_eq(
            &r.tenants["acme"].quota,
            &r2.tenants["acme"].quota
        ));
        let later = Now {
            instant: t0 + Duration::from_millis(5),
            unix_ms: 0,
        };
        assert!(r2.admit("tok-a2", None, &text("k"), q, later).is_ok());
        assert!(r2.admit("tok-a2", None, &text("k"), q, later).is_err());
        // Apps and tenants that leave lose their state.
        cat.apps.remove("a2");
        cat.tenants.remove("beta");
        let _r3 = Routing::build(&cat, &r2, &ctx);
        assert_eq!(q.len(), (1, 4));
    }

    #[test]
    fn metric_labels_are_capped() {
        let mut cfg = RouterConfig::new("http://m", "t");
        cfg.metrics_max_tenant_apps = 2;
        let ctx = RouterContext::new(&cfg);
        let r = Routing::build(&catalog(), &Routing::default(), &ctx);
        // By id order: a1 and a2 get labels, the rest are `_other`.
        let label = |tok: &str| {
            let pm = &r.authenticate(tok, 0).unwrap().metrics;
            (pm.tenant().to_string(), pm.app().to_string())
        };
        assert_eq!(label("tok-a1"), ("acme".into(), "a1".into()));
        assert_eq!(label("tok-a2"), ("acme".into(), "a2".into()));
        assert_eq!(label("tok-n1"), (OTHER.into(), OTHER.into()));
        assert_eq!(r.tenants["acme"].metric_label, "acme");
        assert_eq!(r.tenants["beta"].metric_label, OTHER);
    }

    #[test]
    fn tenant_pools_follow_the_catalog() {
        let ctx = ctx();
        let mut cat = catalog();
        let r = Routing::build(&cat, &Routing::default(), &ctx);
        let s1 = Arc::clone(&r.shards["s1"]);
        let acme = &r.tenants["acme"];
        let pool = s1.primary.pool_for(acme);
        assert!(pool.ptr_eq(&s1.primary.pool_for(acme)));
        assert_eq!(pool.config().max_size, 8);
        assert_eq!(s1.primary.tenants_with_pools(), ["acme"]);

        // A new password: the pool is closed and replaced on next use.
        cat.version += 1;
        cat.tenants.get_mut("acme").unwrap().role_password = "new".into();
        let r2 = Routing::build(&cat, &r, &ctx);
        assert!(Arc::ptr_eq(&s1, &r2.shards["s1"]));
        assert!(pool.is_closed());
        assert!(s1.primary.tenants_with_pools().is_empty());
        let fresh = s1.primary.pool_for(&r2.tenants["acme"]);
        assert!(!fresh.ptr_eq(&pool));
        // A request still holding the older catalog uses the newer pool.
        assert!(s1.primary.pool_for(acme).ptr_eq(&fresh));

        // The tenant's own pool size applies.
        cat.version += 1;
        cat.tenants
            .get_mut("acme")
            .unwrap()
            .config
            .max_connections_per_shard = Some(3);
        let r3 = Routing::build(&cat, &r2, &ctx);
        assert!(fresh.is_closed());
        assert_eq!(
            s1.primary.pool_for(&r3.tenants["acme"]).config().max_size,
            3
        );

        // Empty pools are reaped after the idle timeout (two passes).
        assert_eq!(r3.reap_pools(Duration::from_secs(60), Instant::now()), 0);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(r3.reap_pools(Duration::from_secs(60), later), 1);
        assert!(s1.primary.tenants_with_pools().is_empty());

        // A new primary: a new target; the old one is closed.
        s1.primary.pool_for(&r3.tenants["acme"]);
        cat.version += 1;
        cat.shards.get_mut("s1").unwrap().generation = 2;
        let r4 = Routing::build(&cat, &r3, &ctx);
        assert!(!Arc::ptr_eq(&s1, &r4.shards["s1"]));
        assert!(s1.is_closed());
        assert!(s1.primary.tenants_with_pools().is_empty());
        // Deleting tenants lose their pools.
        let s1 = Arc::clone(&r4.shards["s1"]);
        s1.primary.pool_for(&r4.tenants["acme"]);
        cat.version += 1;
        cat.tenants.get_mut("acme").unwrap().state = TenantState::Deleting;
        let _r5 = Routing::build(&cat, &r4, &ctx);
        assert!(s1.primary.tenants_with_pools().is_empty());
    }

    /// With lanes, a tenant has a pool per lane it is used on (and one
    /// for threads outside the lanes), each of its share of the size;
    /// the reaper, a catalog change and a new primary reach them all.
    #[test]
    fn lane_pools_follow_the_catalog_too() {
        let mut cfg = RouterConfig::new("http://m", "t");
        cfg.lanes = 2;
        let ctx = RouterContext::new(&cfg);
        let mut cat = catalog();
        let r = Routing::build(&cat, &Routing::default(), &ctx);
        let s1 = Arc::clone(&r.shards["s1"]);
        let lanes = crate::lanes::Lanes::start(2).expect("lanes");
        // A pool from each lane: (lane, its size), sorted.
        let on_lanes = |tenant: &Arc<crate::auth::TenantAuth>| {
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..2 {
                let (s1, tenant, tx) = (Arc::clone(&s1), Arc::clone(tenant), tx.clone());
                assert!(lanes.run(Box::new(move || {
                    Box::pin(async move {
                        let pool = s1.primary.pool_for(&tenant);
                        let _ = tx.send((crate::lanes::current(), pool.config().max_size));
                    })
                })));
            }
            let mut got: Vec<_> = (0..2)
                .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("a lane ran"))
                .collect();
            got.sort();
            got
        };

        let acme = &r.tenants["acme"];
        assert_eq!(s1.primary.pool_for(acme).config().max_size, 8);
        assert_eq!(on_lanes(acme), [(Some(0), 4), (Some(1), 4)]);
        assert_eq!(s1.primary.stats().pools, 3);
        assert_eq!(s1.primary.tenants_with_pools(), ["acme"]);

        // The reaper closes all three once idle long enough.
        assert_eq!(r.reap_pools(Duration::from_secs(60), Instant::now()), 0);
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(r.reap_pools(Duration::from_secs(60), later), 3);
        assert_eq!(s1.primary.stats().pools, 0);

        // A new password closes the lanes' pools too.
        on_lanes(acme);
        cat.version += 1;
        cat.tenants.get_mut("acme").unwrap().role_password = "new".into();
        let r2 = Routing::build(&cat, &r, &ctx);
        assert!(Arc::ptr_eq(&s1, &r2.shards["s1"]));
        assert_eq!(s1.primary.stats().pools, 0);

        // A new primary: the old target's lane pools are closed.
        on_lanes(&r2.tenants["acme"]);
        assert_eq!(s1.primary.stats().pools, 2);
        cat.version += 1;
        cat.shards.get_mut("s1").unwrap().generation = 2;
        let _r3 = Routing::build(&cat, &r2, &ctx);
        assert!(s1.is_closed());
        assert_eq!(s1.primary.stats().pools, 0);
        lanes.stop();
    }

    #[test]
    fn types_keys() {
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text("a".into())).is_ok());
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text(String::new())).is_err());
        let long = "x".repeat(4096);
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text(long)).is_err());
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Int(1)).is_err());
        assert_eq!(
            typed_key(KeyType::Bigint, &ShardKeyValue::Text("42".into())).unwrap(),
            ShardKey::Bigint(42)
        );
        assert!(typed_key(KeyType::Uuid, &ShardKeyValue::Text("nope".into())).is_err());
    }

    #[test]
    fn decodes_hex() {
        let h = shardline_core::auth::token_hash("t");
        let b = decode_hex32(&h).unwrap();
        assert_eq!(shardline_core::auth::hex(&b), h);
        assert!(decode_hex32("zz").is_none());
    }
}
