//! A bounded pool of raw server sessions ([`ServerConn`]) of one login
//! on one PostgreSQL instance, for the wire front end's transaction
//! pooling: a session is lent for one transaction and comes back clean.
//!
//! Like [`super::pool::Pool`]: a semaphore bounds the sessions lent,
//! idle ones are reused last-in first-out, new ones open lazily, and
//! every session holds a permit of its [`ConnBudget`] for its life: the
//! tenant's budget on the instance, a child of the instance's, shared
//! with the tenant's tokio-postgres pool. So a tenant's pool size bounds
//! its sessions of both kinds together, and all pools of one server share
//! the instance's bound (an opener short of permits closes another
//! pool's longest-idle session).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{pool_addr, BudgetPermit, ConnBudget, IdleSource};
use super::server::{ServerConn, ServerError};

/// Why no session could be had.
#[derive(Debug, thiserror::Error)]
pub enum RawPoolError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    #[error("the pool is closed")]
    Closed,
    #[error("the server's connection budget stayed used up for {0:?}")]
    BudgetExhausted(Duration),
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Settings of a raw pool.
#[derive(Debug, Clone)]
pub struct RawPoolConfig {
    pub max_size: usize,
    pub acquire_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A pool of raw sessions. Cheap to clone.
#[derive(Clone)]
pub struct RawPool {
    inner: Arc<Inner>,
}

struct Inner {
    pg: tokio_postgres::Config,
    cfg: RawPoolConfig,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    closed: AtomicBool,
    budget: Arc<ConnBudget>,
}

struct Idle {
    conn: ServerConn,
    budget: BudgetPermit,
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
    budget: BudgetPermit,
    _lent: OwnedSemaphorePermit,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.conn.fmt(f)
    }
}

impl RawPool {
    /// A pool for the login `pg` (user, database, password, options)
    /// whose sessions count against `budget` (and its ancestors).
    pub fn new(
        mut pg: tokio_postgres::Config,
        cfg: RawPoolConfig,
        budget: Arc<ConnBudget>,
    ) -> Self {
        let max = cfg.max_size.max(1);
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.connect_timeout);
        }
        let inner = Arc::new(Inner {
            pg,
            cfg,
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            budget,
        });
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&inner);
        inner.budget.register(weak);
        RawPool { inner }
    }

    /// A session: an idle one, else a new one, waiting at most the
    /// acquire timeout for a free slot.
    pub async fn get(&self) -> Result<RawConn, RawPoolError> {
        let inner = &self.inner;
        if self.is_closed() {
            return Err(RawPoolError::Closed);
        }
        let deadline = tokio::time::Instant::now() + inner.cfg.acquire_timeout;
        let lent = tokio::time::timeout_at(deadline, Arc::clone(&inner.permits).acquire_owned())
            .await
            .map_err(|_| RawPoolError::Timeout(inner.cfg.acquire_timeout))?
            .map_err(|_| RawPoolError::Closed)?;
        if let Some(idle) = inner.idle().pop() {
            return Ok(RawConn {
                conn: idle.conn,
                budget: idle.budget,
                _lent: lent,
            });
        }
        let me = pool_addr(Arc::as_ptr(inner));
        let budget = inner
            .budget
            .acquire(me, deadline)
            .await
            .ok_or(RawPoolError::BudgetExhausted(inner.cfg.acquire_timeout))?;
        let conn = ServerConn::connect(&inner.pg, inner.cfg.connect_timeout).await?;
        Ok(RawConn {
            conn,
            budget,
            _lent: lent,
        })
    }

    /// Takes back an idle, clean session.
    pub fn put(&self, mut c: RawConn) {
        if self.is_closed() {
            return;
        }
        c.conn.idle_since = Instant::now();
        let RawConn { conn, budget, .. } = c;
        self.inner.idle().push(Idle { conn, budget });
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
}
