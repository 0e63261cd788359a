//! A connection budget shared by several pools to one PostgreSQL server:
//! with a pool per tenant, many pools open connections to the same shard,
//! and together they must stay under what the server allows.
//!
//! Opening a connection takes a permit held for the connection's life.
//! When none is free, the budget closes the idle connection that has been
//! idle longest in another pool of the same server and tries again; when
//! no pool has an idle connection, it waits (bounded by the caller's
//! deadline) for one to be returned or closed.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How often a waiter looks again for idle connections to close: pools
/// may have returned one since it started waiting.
const RECHECK: Duration = Duration::from_millis(25);

/// A pool as the budget sees it: something with idle connections it can
/// be asked to close.
pub(crate) trait IdleSource: Send + Sync {
    /// When its longest-idle connection became idle.
    fn oldest_idle(&self) -> Option<Instant>;
    /// Closes its longest-idle connection; `false` if it had none.
    fn close_oldest_idle(&self) -> bool;
}

/// A pool's address, to tell it apart from the others (an integer, so
/// futures holding it stay `Send`).
pub(crate) fn pool_addr<T: ?Sized>(p: *const T) -> usize {
    p.cast::<()>() as usize
}

/// The most connections a set of pools may have open at once.
pub struct ConnBudget {
    max: usize,
    permits: Arc<Semaphore>,
    pools: Mutex<Vec<Weak<dyn IdleSource>>>,
}

impl std::fmt::Debug for ConnBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnBudget")
            .field("max", &self.max)
            .field("open", &self.open())
            .finish()
    }
}

impl ConnBudget {
    /// A budget of `max` connections (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            pools: Mutex::new(Vec::new()),
        })
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open under the budget now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    pub(crate) fn register(&self, pool: Weak<dyn IdleSource>) {
        let mut pools = self.pools();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(pool);
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn IdleSource>>> {
        // Pushes and retains only: consistent under a panic.
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit for one more connection, closing other pools' idle
    /// connections to make room; `None` if none came before `deadline`.
    /// `me` is the caller's address (see [`pool_addr`]): its own idle
    /// connections are not closed.
    pub(crate) async fn acquire(
        &self,
        me: usize,
        deadline: tokio::time::Instant,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
                return Some(p);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            if self.close_one_idle(me) {
                // Its permit is free now, unless another opener took it.
                continue;
            }
            let slice = (deadline - now).min(RECHECK);
            let wait = Arc::clone(&self.permits).acquire_owned();
            if let Ok(Ok(p)) = tokio::time::timeout(slice, wait).await {
                return Some(p);
            }
        }
    }

    /// Closes the longest-idle connection of a pool other than `me`.
    fn close_one_idle(&self, me: usize) -> bool {
        let candidates: Vec<Arc<dyn IdleSource>> = {
            let mut pools = self.pools();
            pools.retain(|p| p.strong_count() > 0);
            pools
                .iter()
                .filter(|p| pool_addr(p.as_ptr()) != me)
                .filter_map(Weak::upgrade)
                .collect()
        };
        let oldest = candidates
            .iter()
            .filter_map(|p| p.oldest_idle().map(|t| (t, p)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, pool)) => pool.close_oldest_idle(),
            None => false,
        }
    }
}
