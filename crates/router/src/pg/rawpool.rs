//! The pool of server sessions of one login on one PostgreSQL instance,
//! shared by both front ends: the wire front end borrows a session for a
//! transaction ([`RawPool::get`], [`RawPool::put`]), the HTTP front end
//! for a request (through [`super::pool::Pool`]). A session comes back
//! idle and clean, or is closed.
//!
//! A semaphore bounds the sessions lent, idle ones are reused last-in
//! first-out (the warm ones stay warm, the cold ones age out), new ones
//! open lazily, a caller waits at most the acquire timeout, and a
//! session idle for longer than `health_check_after` is checked with a
//! round trip before it is lent. Every session holds a permit of its
//! [`ConnBudget`] for its life: the tenant's budget on the instance, a
//! child of the instance's, so all pools of one server share the
//! instance's bound (an opener short of permits closes another pool's
//! longest-idle session).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shardline_tls::pg::PgTls;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{pool_addr, BudgetPermit, ConnBudget, IdleSource};
use super::server::{ServerConn, ServerError};

/// Why no session could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every session stayed lent for the whole acquire timeout.
    #[error("no connection became free within {0:?}")]
    Timeout(std::time::Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// Opening a session took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// Opening a session failed (refused, authentication, ...).
    #[error("connect to PostgreSQL: {0}")]
    Connect(#[source] ServerError),
    /// The DSN does not parse. The text says what is wrong, never the DSN.
    #[error("invalid DSN: {0}")]
    InvalidDsn(String),
    /// The connection budget shared with the other pools to the same
    /// server stayed used up (and no idle session could be closed) for
    /// the whole acquire timeout.
    #[error("the server's connection budget stayed used up for {0:?}")]
    BudgetExhausted(std::time::Duration),
}

/// Settings of a raw pool.
#[derive(Debug, Clone)]
pub struct RawPoolConfig {
    pub max_size: usize,
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// A session idle for longer is checked with a round trip before it
    /// is lent (zero: every time).
    pub health_check_after: Duration,
}

/// A snapshot of a pool for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Sessions open (idle and lent).
    pub size: usize,
    /// Sessions idle in the pool.
    pub idle: usize,
    /// Sessions lent or being opened.
    pub in_use: usize,
    /// Callers waiting for a session.
    pub waiting: usize,
}

/// A pool of raw sessions. Cheap to clone.
#[derive(Clone)]
pub struct RawPool {
    inner: Arc<Inner>,
}

struct Inner {
    pg: tokio_postgres::Config,
    tls: PgTls,
    cfg: RawPoolConfig,
    permits: Arc<Semaphore>,
    /// Idle sessions, most recently used last.
    idle: Mutex<Vec<Idle>>,
    closed: AtomicBool,
    open: Arc<AtomicUsize>,
    waiting: AtomicUsize,
    budget: Arc<ConnBudget>,
}

/// What a session holds for its life: its budget permit and its count
/// among the pool's open sessions.
struct Held {
    _budget: BudgetPermit,
    _open: OpenGuard,
}

/// Counts a session as open for as long as it lives.
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

struct Idle {
    // Dropped before `held`, so the budget counts the session until it
    // is closed.
    conn: ServerConn,
    held: Held,
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        // Pushes and pops only: consistent under a panic.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IdleSource for Inner {
    fn oldest_idle(&self) -> Option<Instant> {
        self.idle().first().map(|c| c.conn.idle_since)
    }

    fn close_oldest_idle(&self) -> bool {
        let first = {
            let mut idle = self.idle();
            if idle.is_empty() {
                return false;
            }
            idle.remove(0)
        };
        drop(first);
        true
    }
}

/// A session lent by a [`RawPool`]; give it back with [`RawPool::put`]
/// once it is idle and clean, or drop it to close it.
pub struct RawConn {
    pub conn: ServerConn,
    held: Held,
    _lent: OwnedSemaphorePermit,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.conn.fmt(f)
    }
}

impl RawPool {
    /// A pool for the login `pg` (user, database, password, options),
    /// over TLS as `tls` says, whose sessions count against `budget` (and
    /// its ancestors).
    pub fn new(
        mut pg: tokio_postgres::Config,
        tls: PgTls,
        cfg: RawPoolConfig,
        budget: Arc<ConnBudget>,
    ) -> Self {
        let max = cfg.max_size.max(1);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.connect_timeout);
        }
        let inner = Arc::new(Inner {
            pg,
            tls,
            cfg,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            open: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
            budget,
        });
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&inner);
        inner.budget.register(weak);
        RawPool { inner }
    }

    /// A session: an idle one (checked first when it has been idle
    /// long), else a new one, waiting at most the acquire timeout for a
    /// free slot.
    pub async fn get(&self) -> Result<RawConn, PoolError> {
        let inner = &self.inner;
        if self.is_closed() {
            return Err(PoolError::Closed);
        }
        let deadline = tokio::time::Instant::now() + inner.cfg.acquire_timeout;
        let lent = {
            inner.waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = WaitGuard(&inner.waiting);
            tokio::time::timeout_at(deadline, Arc::clone(&inner.permits).acquire_owned())
                .await
                .map_err(|_| PoolError::Timeout(inner.cfg.acquire_timeout))?
                .map_err(|_| PoolError::Closed)?
        };
        loop {
            let Some(mut idle) = inner.idle().pop() else {
                break;
            };
            let idle_for = idle.conn.idle_since.elapsed();
            if idle_for >= inner.cfg.idle_timeout || idle.conn.closed_while_idle() {
                continue;
            }
            if idle_for >= inner.cfg.health_check_after {
                let check = idle.conn.check();
                match tokio::time::timeout(inner.cfg.connect_timeout, check).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Err(_) => continue,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "dropping a pooled session that failed its check");
                        continue;
                    }
                }
            }
            return Ok(RawConn {
                conn: idle.conn,
                held: idle.held,
                _lent: lent,
            });
        }
        let me = pool_addr(Arc::as_ptr(inner));
        let budget = inner
            .budget
            .acquire(me, deadline)
            .await
            .ok_or(PoolError::BudgetExhausted(inner.cfg.acquire_timeout))?;
        let conn = match ServerConn::connect(&inner.pg, &inner.tls, inner.cfg.connect_timeout).await
        {
            Ok(c) => c,
            Err(ServerError::Timeout(_)) => {
                tracing::warn!(timeout = ?inner.cfg.connect_timeout, "connecting to PostgreSQL timed out");
                return Err(PoolError::ConnectTimeout(inner.cfg.connect_timeout));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to PostgreSQL");
                return Err(PoolError::Connect(e));
            }
        };
        inner.open.fetch_add(1, Ordering::AcqRel);
        Ok(RawConn {
            conn,
            held: Held {
                _budget: budget,
                _open: OpenGuard(Arc::clone(&inner.open)),
            },
            _lent: lent,
        })
    }

    /// Takes back an idle, clean session.
    pub fn put(&self, mut c: RawConn) {
        if self.is_closed() {
            return;
        }
        c.conn.idle_since = Instant::now();
        let RawConn { conn, held, .. } = c;
        self.inner.idle().push(Idle { conn, held });
    }

    /// Closes idle sessions older than the idle timeout.
    pub fn reap_idle(&self, now: Instant) -> usize {
        let limit = self.inner.cfg.idle_timeout;
        let mut idle = self.inner.idle();
        let before = idle.len();
        idle.retain(|c| now.duration_since(c.conn.idle_since) < limit);
        before - idle.len()
    }

    /// Closes the pool: idle sessions now, lent ones when they return.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.permits.close();
        self.inner.idle().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The pool's settings.
    pub fn config(&self) -> &RawPoolConfig {
        &self.inner.cfg
    }

    /// Whether both handles are of the same pool.
    pub fn ptr_eq(&self, other: &RawPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
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

impl std::fmt::Debug for RawPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The login (and its password) stays out of logs.
        f.debug_struct("RawPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
