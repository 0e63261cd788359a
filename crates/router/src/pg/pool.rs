//! A bounded pool of connections to one PostgreSQL instance.
//!
//! A semaphore bounds the connections handed out; idle connections are
//! reused last-in first-out (the warm ones stay warm, the cold ones age
//! out), connections are opened lazily up to `max_size`, and a caller
//! waits at most `acquire_timeout` for one. Each connection keeps its own
//! LRU cache of prepared statements, since PostgreSQL prepares per
//! session.
//!
//! A connection is returned to the pool when its [`PooledConn`] drops,
//! unless it closed, was [discarded](PooledConn::discard), or was
//! [busy](PooledConn::set_busy) — dropped in the middle of a statement or
//! transaction (the caller's future was cancelled). A busy connection may
//! still be running the statement or hold an open transaction: it is
//! closed, and a cancel request is sent so PostgreSQL stops the statement
//! now rather than when it notices the closed socket.
//!
//! Several pools to one server may share a [`ConnBudget`]: every
//! connection then also holds one of the budget's permits for its life,
//! and a pool that finds the budget used up closes another pool's idle
//! connection to make room (see [`super::budget`]). A tenant's budget on
//! an instance is a child of the instance's, shared with its raw session
//! pool, so its pool size bounds both pools together.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shardline_core::catalog::FENCE_VERSION_SQL;
use shardline_core::fence::{claim, CLAIM_SETTING};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

use super::budget::{pool_addr, BudgetPermit, ConnBudget, IdleSource};

/// Pool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most connections open at once (default 10; at least 1).
    pub max_size: usize,
    /// Longest wait for a free connection (default 5s).
    pub acquire_timeout: Duration,
    /// Longest wait to open a connection, and for a health check
    /// (default 5s).
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every statement on the
    /// pool's connections; PostgreSQL cancels longer ones with SQLSTATE
    /// 57014 (default 30s; `None` keeps the server's setting).
    pub statement_timeout: Option<Duration>,
    /// Idle connections older than this are closed (default 5 min).
    pub idle_timeout: Duration,
    /// Prepared statements kept per connection (default 256; 0 disables
    /// caching).
    pub statement_cache_capacity: usize,
    /// A connection idle for longer than this is checked with a round
    /// trip before it is handed out, so a connection the server dropped
    /// meanwhile is replaced rather than failing the request (default
    /// 10s; zero checks every time).
    pub health_check_after: Duration,
    /// The tenant's claim key ([`shardline_core::fence::claim_key`]):
    /// with one, sessions state their routing version as a claim the
    /// tenant's SQL cannot forge (the backend pid is read once per
    /// connection for it); without, as a plain number (default `None`).
    pub claim_key: Option<String>,
    /// Whether every request ends with [`SESSION_RESET`] (default true).
    /// Off only to measure what the reset costs (`shardline-bench
    /// execute`): without it a request's session state outlives it.
    pub reset_sessions: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 10,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(300),
            statement_cache_capacity: 256,
            health_check_after: Duration::from_secs(10),
            claim_key: None,
            reset_sessions: true,
        }
    }
}

/// How a session is brought back to a known state after a request that
/// could have changed it (see `shardline_core::session`), in one simple
/// query (one message, one implicit transaction): open cursors closed
/// (`WITH HOLD` ones outlive their transaction), every setting back to
/// its value at connection (`statement_timeout`, `search_path`,
/// `shardline.map_version`, ...; the router's own settings are startup
/// options, so they stay; `RESET ALL` leaves `role` alone, hence `RESET
/// ROLE`), no `LISTEN`, no temporary table or function, no sequence
/// values. [`SESSION_RESET_CHECK`] follows it.
///
/// Not `DISCARD ALL`, which would also deallocate the router's cached
/// statements and the driver's own (tokio-postgres keeps the statements
/// it looks types up with, and cannot be told they are gone).
pub const SESSION_RESET: &str =
    "CLOSE ALL; RESET ALL; RESET ROLE; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES";

/// The second half of the reset, a statement prepared once per
/// connection (planning it each time cost more than the rest of the
/// reset): releases session advisory locks, sets the session's version
/// claim again (`$1`, empty when it has none), and counts prepared
/// statements made from SQL (`PREPARE` in a `DO` block or a function; the
/// router's are made by the protocol): a session with any is not reused.
pub const SESSION_RESET_CHECK: &str = "SELECT pg_catalog.pg_advisory_unlock_all(), \
     pg_catalog.set_config('shardline.map_version', $1, false), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// `SET shardline.map_version = '<value>'`; `value` is digits, `:` and
/// hex only.
fn set_claim_sql(value: &str) -> String {
    format!("SET {CLAIM_SETTING} = '{value}'")
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole acquire timeout.
    #[error("no connection became free within {0:?}")]
    Timeout(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// Opening a connection took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// Opening a connection failed (refused, authentication, ...).
    #[error("connect to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
    /// The DSN does not parse. The text says what is wrong, never the DSN.
    #[error("invalid DSN: {0}")]
    InvalidDsn(String),
    /// The connection budget shared with the other pools to the same
    /// server stayed used up (and no idle connection could be closed)
    /// for the whole acquire timeout.
    #[error("the server's connection budget stayed used up for {0:?}")]
    BudgetExhausted(Duration),
}

/// A snapshot of the pool for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Connections open (idle and in use).
    pub size: usize,
    /// Connections waiting in the pool.
    pub idle: usize,
    /// Connections handed out or being opened.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// A pool of connections to one PostgreSQL instance. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    pg: tokio_postgres::Config,
    cfg: PoolConfig,
    permits: Arc<Semaphore>,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Conn>>,
    closed: AtomicBool,
    open: Arc<AtomicUsize>,
    waiting: AtomicUsize,
    budget: Option<Arc<ConnBudget>>,
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        // The lists stay consistent under a panic: pushes and pops only.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IdleSource for Inner {
    fn oldest_idle(&self) -> Option<Instant> {
        // Most recently used last: the first is the longest idle.
        self.idle().first().map(|c| c.idle_since)
    }

    fn close_oldest_idle(&self) -> bool {
        let conn = {
            let mut idle = self.idle();
            if idle.is_empty() {
                return false;
            }
            idle.remove(0)
        };
        // Dropped outside the lock; its budget permit goes with it.
        drop(conn);
        true
    }
}

/// One open connection with its statement cache.
struct Conn {
    client: Client,
    cache: StatementCache,
    idle_since: Instant,
    /// The routing version this session last stated (0: never).
    map_version: u64,
    /// The `shardline.map_version` value stating it, which the reset
    /// after each request restores.
    claim: Option<String>,
    /// The backend's pid, once read (claims are bound to it).
    pid: Option<i32>,
    /// [`SESSION_RESET_CHECK`], once prepared.
    reset_check: Option<Statement>,
    _open: OpenGuard,
    // Dropped after the client, so the budget counts the connection
    // until it is closed.
    _budget: Option<BudgetPermit>,
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a caller as waiting while it waits.
struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool for `dsn` (key/value or URL form). Opens no connection.
    pub fn new(dsn: &str, cfg: PoolConfig) -> Result<Pool, PoolError> {
        let pg = tokio_postgres::Config::from_str(dsn)
            .map_err(|e| PoolError::InvalidDsn(e.to_string()))?;
        Ok(Self::from_config(pg, cfg, None))
    }

    /// A pool for connection settings parsed already, e.g. a shard's DSN
    /// with another user and password; with `budget`, its connections
    /// count against that budget. Opens no connection.
    pub fn from_config(
        mut pg: tokio_postgres::Config,
        cfg: PoolConfig,
        budget: Option<Arc<ConnBudget>>,
    ) -> Pool {
        if let Some(t) = cfg.statement_timeout {
            let setting = format!("-c statement_timeout={}", t.as_millis().max(1));
            let options = match pg.get_options() {
                Some(existing) if !existing.is_empty() => format!("{existing} {setting}"),
                _ => setting,
            };
            pg.options(&options);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("shardline-router");
        }
        let max = cfg.max_size.max(1);
        let inner = Arc::new(Inner {
            pg,
            cfg,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            open: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
            budget,
        });
        if let Some(b) = &inner.budget {
            let weak: std::sync::Weak<Inner> = Arc::downgrade(&inner);
            b.register(weak);
        }
        Pool { inner }
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// Whether both handles are of the same pool.
    pub fn ptr_eq(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A connection: an idle one if any is healthy, else a new one when
    /// under `max_size`, else the first one freed within
    /// `acquire_timeout`.
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let deadline = tokio::time::Instant::now() + inner.cfg.acquire_timeout;
        let permit = {
            inner.waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = WaitGuard(&inner.waiting);
            let acquire = inner.permits.clone().acquire_owned();
            match tokio::time::timeout(inner.cfg.acquire_timeout, acquire).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(PoolError::Closed),
                Err(_) => return Err(PoolError::Timeout(inner.cfg.acquire_timeout)),
            }
        };
        loop {
            let Some(conn) = inner.idle().pop() else {
                break;
            };
            if conn.client.is_closed() || conn.idle_since.elapsed() >= inner.cfg.idle_timeout {
                continue;
            }
            if conn.idle_since.elapsed() >= inner.cfg.health_check_after {
                let check = conn.client.check_connection();
                match tokio::time::timeout(inner.cfg.connect_timeout, check).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "dropping a pooled connection that failed its check");
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            return Ok(PooledConn::new(conn, inner.clone(), permit));
        }
        let conn = self.connect(deadline).await?;
        Ok(PooledConn::new(conn, inner.clone(), permit))
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Conn, PoolError> {
        let inner = &self.inner;
        let budget = match &inner.budget {
            Some(b) => {
                let me = pool_addr(Arc::as_ptr(inner));
                match b.acquire(me, deadline).await {
                    Some(p) => Some(p),
                    None => return Err(PoolError::BudgetExhausted(inner.cfg.acquire_timeout)),
                }
            }
            None => None,
        };
        let timeout = inner.cfg.connect_timeout;
        let (client, connection) =
            match tokio::time::timeout(timeout, inner.pg.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot connect to PostgreSQL");
                    return Err(PoolError::Connect(e));
                }
                Err(_) => {
                    tracing::warn!(?timeout, "connecting to PostgreSQL timed out");
                    return Err(PoolError::ConnectTimeout(timeout));
                }
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        inner.open.fetch_add(1, Ordering::AcqRel);
        Ok(Conn {
            client,
            cache: StatementCache::new(inner.cfg.statement_cache_capacity),
            idle_since: Instant::now(),
            map_version: 0,
            claim: None,
            pid: None,
            reset_check: None,
            _open: OpenGuard(inner.open.clone()),
            _budget: budget,
        })
    }

    /// Closes idle connections that are older than `idle_timeout` or
    /// already closed. `get` skips such connections anyway; calling this
    /// periodically also frees them when the pool sees no traffic.
    pub fn reap_idle(&self) {
        let idle_timeout = self.inner.cfg.idle_timeout;
        let stale: Vec<Conn> = {
            let mut idle = self.inner.idle();
            let (keep, stale) = idle.drain(..).partition(|c: &Conn| {
                !c.client.is_closed() && c.idle_since.elapsed() < idle_timeout
            });
            *idle = keep;
            stale
        };
        drop(stale);
    }

    /// Refuses new `get`s (waiting ones fail with [`PoolError::Closed`])
    /// and closes the idle connections; connections in use close when
    /// dropped.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.idle());
        drop(idle);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Current numbers for metrics.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let max = inner.cfg.max_size.max(1);
        PoolStats {
            size: inner.open.load(Ordering::Acquire),
            idle: inner.idle().len(),
            in_use: max.saturating_sub(inner.permits.available_permits()),
            waiting: inner.waiting.load(Ordering::Acquire),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN (and its password) stays out of logs.
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A connection on loan from a [`Pool`]; derefs to the
/// [`tokio_postgres::Client`].
///
/// Code that runs statements directly on the client must leave no session
/// state behind (no open transaction, no `SET`), or call
/// [`discard`](Self::discard).
pub struct PooledConn {
    // `Some` until dropped.
    conn: Option<Conn>,
    pool: Arc<Inner>,
    busy: bool,
    discard: bool,
    // Released after `drop` has put the connection back, so a waiter
    // woken by the permit finds it idle.
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    fn new(conn: Conn, pool: Arc<Inner>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            conn: Some(conn),
            pool,
            busy: false,
            discard: false,
            _permit: permit,
        }
    }

    fn conn(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a PooledConn holds its connection until dropped")
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a PooledConn holds its connection until dropped")
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.conn().client
    }

    /// A prepared statement for `sql`, from this connection's cache or
    /// newly prepared (and cached, evicting the least recently used).
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(stmt) = self.conn_mut().cache.get(sql) {
            return Ok(stmt);
        }
        let stmt = self.conn().client.prepare(sql).await?;
        self.conn_mut().cache.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// States `version` (the catalog version of the routing table the
    /// request was routed by) in the session's `shardline.map_version`,
    /// as a claim when the pool has a claim key (see
    /// [`shardline_core::fence`]), with a round trip only when it differs
    /// from what the session last stated. Shards fenced by a resharding
    /// refuse writes from sessions behind the fence (see the manager's
    /// `reshard::sql::set_fence`).
    pub async fn set_map_version(&mut self, version: u64) -> Result<(), tokio_postgres::Error> {
        if self.conn().map_version == version {
            return Ok(());
        }
        self.busy = true;
        let value = match self.pool.cfg.claim_key.clone() {
            Some(key) => {
                let pid = match self.conn().pid {
                    Some(pid) => pid,
                    None => {
                        let row = self
                            .conn()
                            .client
                            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                            .await?;
                        let pid: i32 = row.get(0);
                        self.conn_mut().pid = Some(pid);
                        pid
                    }
                };
                claim(&key, pid, version)
            }
            None => version.to_string(),
        };
        let sql = set_claim_sql(&value);
        self.conn().client.batch_execute(&sql).await?;
        self.busy = false;
        let conn = self.conn_mut();
        conn.map_version = version;
        conn.claim = Some(value);
        Ok(())
    }

    /// Whether this pool resets sessions (see [`SESSION_RESET`]).
    pub fn resets_sessions(&self) -> bool {
        self.pool.cfg.reset_sessions
    }

    /// Prepares [`SESSION_RESET_CHECK`] on this connection unless it is
    /// already (one round trip, once per connection), so that a reset
    /// can then go out in a request's round trip.
    pub async fn prepare_reset(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.conn().reset_check.is_none() {
            let stmt = self.conn().client.prepare(SESSION_RESET_CHECK).await?;
            self.conn_mut().reset_check = Some(stmt);
        }
        Ok(())
    }

    /// The reset as a future that sends [`SESSION_RESET`] and then
    /// [`SESSION_RESET_CHECK`] on first poll, and completes when
    /// PostgreSQL has run both, with whether the session holds prepared
    /// statements made from SQL; pass the outcome to
    /// [`reset_done`](Self::reset_done). Polled after a request's last
    /// statement was sent, it shares that statement's round trip. Call
    /// [`prepare_reset`](Self::prepare_reset) first.
    pub fn reset_future(
        &self,
    ) -> impl std::future::Future<Output = Result<bool, tokio_postgres::Error>> + Send + '_ {
        let conn = self.conn();
        let claim = conn.claim.clone().unwrap_or_default();
        async move {
            let Some(check) = &conn.reset_check else {
                // Not prepared: an error of the caller's, answered safely.
                return Ok(true);
            };
            let (_, row) = futures_util::future::try_join(
                conn.client.batch_execute(SESSION_RESET),
                conn.client.query_one(check, &[&claim]),
            )
            .await?;
            Ok(row.try_get::<_, i64>(2).map_or(true, |n| n > 0))
        }
    }

    /// Records a reset's outcome: a session that failed its reset, or
    /// holds prepared statements made from SQL, is in no known state and
    /// is not reused.
    pub fn reset_done(&mut self, outcome: Result<bool, tokio_postgres::Error>) {
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                tracing::debug!("a request left prepared statements; discarding the connection");
                self.discard();
            }
            Err(e) => {
                tracing::debug!(error = %e, "session reset failed; discarding the connection");
                self.discard();
            }
        }
    }

    /// Resets the session now, on its own round trip (a request that
    /// did not send the reset with its statement finds afterwards that
    /// it should have: its keyspace was marked as holding code
    /// meanwhile).
    pub async fn reset(&mut self) {
        self.busy = true;
        if let Err(e) = self.prepare_reset().await {
            self.busy = false;
            self.reset_done(Err(e));
            return;
        }
        let outcome = self.reset_future().await;
        self.busy = false;
        self.reset_done(outcome);
    }

    /// The resharding fence of the database this session is in (see
    /// [`FENCE_VERSION_SQL`]; 0: none).
    pub async fn fence_version(&mut self) -> Result<u64, tokio_postgres::Error> {
        let stmt = self.prepare_cached(FENCE_VERSION_SQL).await?;
        self.busy = true;
        let row = self.conn().client.query_one(&stmt, &[]).await?;
        self.busy = false;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// The `shardline.map_version` this session last set (0: never).
    pub fn map_version(&self) -> u64 {
        self.conn().map_version
    }

    /// Forgets the cached statement for `sql` (e.g. after PostgreSQL said
    /// its result type changed).
    pub fn evict_statement(&mut self, sql: &str) {
        self.conn_mut().cache.remove(sql);
    }

    /// Statements in this connection's cache.
    pub fn cached_statements(&self) -> usize {
        self.conn().cache.len()
    }

    /// Marks that a statement or transaction is under way. A connection
    /// dropped while busy is closed (and its statement cancelled), never
    /// reused.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Closes the connection when dropped instead of returning it.
    pub fn discard(&mut self) {
        self.discard = true;
    }

    /// Whether the connection is closed or marked for discarding.
    pub fn is_broken(&self) -> bool {
        self.discard || self.conn().client.is_closed()
    }
}

impl std::ops::Deref for PooledConn {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client()
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.busy {
            // Cancelled mid-work: stop the statement now; closing the
            // connection ends any open transaction.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let token = conn.client.cancel_token();
                rt.spawn(async move {
                    let _ = token.cancel_query(NoTls).await;
                });
            }
            return;
        }
        if self.discard || conn.client.is_closed() || self.pool.closed.load(Ordering::Acquire) {
            return;
        }
        conn.idle_since = Instant::now();
        self.pool.idle().push(conn);
    }
}

/// Prepared statements by SQL text, least recently used evicted first.
struct StatementCache {
    capacity: usize,
    entries: HashMap<String, (Statement, u64)>,
    clock: u64,
}

impl StatementCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            clock: 0,
        }
    }

    fn get(&mut self, sql: &str) -> Option<Statement> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|(stmt, used)| {
            *used = clock;
            stmt.clone()
        })
    }

    fn insert(&mut self, sql: &str, stmt: Statement) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(sql) {
            // A linear scan: evictions happen only on misses of a full
            // cache, and the cache is small.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                // Dropping the statement closes it on the server.
                self.entries.remove(&oldest);
            }
        }
        self.clock += 1;
        self.entries.insert(sql.to_string(), (stmt, self.clock));
    }

    fn remove(&mut self, sql: &str) {
        self.entries.remove(sql);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}
