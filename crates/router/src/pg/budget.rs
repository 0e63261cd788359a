//! A connection budget shared by several pools to one PostgreSQL server:
//! with a pool per tenant, many pools open connections to the same shard,
//! and together they must stay under what the server allows.
//!
//! Opening a connection takes a permit held for the connection's life.
//! When none is free, the budget closes the idle connection that has been
//! idle longest in another pool of the same server and tries again; when
//! no pool has an idle connection, it waits (bounded by the caller's
//! deadline) for one to be returned or closed.
//!
//! A budget may have a parent: a tenant's budget on an instance, under
//! the instance's budget. A permit of a child holds one of the parent
//! too, so a tenant's pool size bounds its connections there (its pool
//! and, while a pool of a changed size replaces it, the old one's lent
//! sessions), and the instance's bound still holds across tenants.

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
    /// A budget this one's connections also count against.
    parent: Option<Arc<ConnBudget>>,
}

/// Room for one connection, held for its life: a permit of the budget
/// and, for a child budget, one of each ancestor; all are released
/// together when it drops.
#[derive(Debug)]
pub struct BudgetPermit {
    _permits: Vec<OwnedSemaphorePermit>,
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
        Self::make(max, None)
    }

    /// A budget of `max` connections (at least 1) whose connections also
    /// count against `parent`.
    pub fn child(parent: Arc<ConnBudget>, max: usize) -> Arc<Self> {
        Self::make(max, Some(parent))
    }

    fn make(max: usize, parent: Option<Arc<ConnBudget>>) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            permits: Arc::new(Semaphore::new(max)),
            pools: Mutex::new(Vec::new()),
            parent,
        })
    }

    /// The budget its connections also count against, if any.
    pub fn parent(&self) -> Option<&Arc<ConnBudget>> {
        self.parent.as_ref()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open under the budget now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// Makes `pool`'s idle connections closable by openers short of room
    /// here and in every ancestor budget.
    pub(crate) fn register(&self, pool: Weak<dyn IdleSource>) {
        if let Some(parent) = &self.parent {
            parent.register(pool.clone());
        }
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
    /// connections are not closed. A child takes its own permit first
    /// (closing a sibling pool's idle connection if need be), then its
    /// parent's within the same deadline, and gives its own back if the
    /// parent has none.
    pub(crate) async fn acquire(
        &self,
        me: usize,
        deadline: tokio::time::Instant,
    ) -> Option<BudgetPermit> {
        let mut permits = Vec::with_capacity(2);
        let mut budget = Some(self);
        while let Some(b) = budget {
            // On `None`, the permits taken so far drop with `permits`.
            permits.push(b.acquire_own(me, deadline).await?);
            budget = b.parent.as_deref();
        }
        Some(BudgetPermit { _permits: permits })
    }

    async fn acquire_own(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool as the budget sees it: idle "connections" are their permits.
    #[derive(Default)]
    struct FakePool {
        idle: Mutex<Vec<(Instant, BudgetPermit)>>,
    }

    impl IdleSource for FakePool {
        fn oldest_idle(&self) -> Option<Instant> {
            self.idle.lock().unwrap().first().map(|(t, _)| *t)
        }

        fn close_oldest_idle(&self) -> bool {
            let mut idle = self.idle.lock().unwrap();
            if idle.is_empty() {
                return false;
            }
            idle.remove(0);
            true
        }
    }

    impl FakePool {
        fn on(budget: &ConnBudget) -> Arc<FakePool> {
            let pool = Arc::new(FakePool::default());
            let weak: Weak<FakePool> = Arc::downgrade(&pool);
            budget.register(weak);
            pool
        }

        fn me(self: &Arc<Self>) -> usize {
            pool_addr(Arc::as_ptr(self))
        }

        async fn open(self: &Arc<Self>, budget: &ConnBudget, wait_ms: u64) -> Option<BudgetPermit> {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
            budget.acquire(self.me(), deadline).await
        }

        fn put_idle(&self, p: BudgetPermit) {
            self.idle.lock().unwrap().push((Instant::now(), p));
        }

        fn idle(&self) -> usize {
            self.idle.lock().unwrap().len()
        }
    }

    #[tokio::test]
    async fn a_child_bounds_its_pools_together() {
        let instance = ConnBudget::new(3);
        let tenant = ConnBudget::child(Arc::clone(&instance), 2);
        let (http, raw) = (FakePool::on(&tenant), FakePool::on(&tenant));

        let a = http.open(&tenant, 50).await.unwrap();
        let b = raw.open(&tenant, 50).await.unwrap();
        assert_eq!((tenant.open(), instance.open()), (2, 2));

        // A third, from either pool, waits for the deadline and fails,
        // though the instance has room.
        let started = tokio::time::Instant::now();
        assert!(raw.open(&tenant, 60).await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert!(http.open(&tenant, 10).await.is_none());
        assert_eq!((tenant.open(), instance.open()), (2, 2));

        // A waiter gets the room a connection of the tenant frees.
        let waiter = {
            let (raw, tenant) = (Arc::clone(&raw), Arc::clone(&tenant));
            tokio::spawn(async move { raw.open(&tenant, 2_000).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        drop(a);
        assert!(waiter.await.unwrap());
        drop(b);
        assert_eq!((tenant.open(), instance.open()), (0, 0));
    }

    #[tokio::test]
    async fn a_child_closes_its_sibling_pools_idle_connection() {
        let instance = ConnBudget::new(3);
        let tenant = ConnBudget::child(Arc::clone(&instance), 2);
        let (http, raw) = (FakePool::on(&tenant), FakePool::on(&tenant));

        let a = http.open(&tenant, 50).await.unwrap();
        http.put_idle(a);
        let _b = raw.open(&tenant, 50).await.unwrap();
        // The tenant is at its bound: the HTTP pool's idle connection
        // makes room, at once.
        let started = tokio::time::Instant::now();
        let _c = raw.open(&tenant, 1_000).await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(http.idle(), 0);
        assert_eq!((tenant.open(), instance.open()), (2, 2));
    }

    #[tokio::test]
    async fn the_parent_bounds_its_children_together() {
        let instance = ConnBudget::new(3);
        let acme = ConnBudget::child(Arc::clone(&instance), 2);
        let beta = ConnBudget::child(Arc::clone(&instance), 2);
        let (acme_http, acme_raw) = (FakePool::on(&acme), FakePool::on(&acme));
        let beta_raw = FakePool::on(&beta);

        let _a1 = acme_http.open(&acme, 50).await.unwrap();
        let a2 = acme_raw.open(&acme, 50).await.unwrap();
        let _b1 = beta_raw.open(&beta, 50).await.unwrap();
        assert_eq!((acme.open(), beta.open(), instance.open()), (2, 1, 3));

        // beta is under its own bound, the instance is not: it fails,
        // and gives back the child permit it took meanwhile.
        assert!(beta_raw.open(&beta, 50).await.is_none());
        assert_eq!((beta.open(), instance.open()), (1, 3));

        // An idle connection of another tenant makes room on the
        // instance (the parent sees pools registered with its children).
        acme_raw.put_idle(a2);
        let _b2 = beta_raw.open(&beta, 1_000).await.unwrap();
        assert_eq!(acme_raw.idle(), 0);
        assert_eq!((acme.open(), beta.open(), instance.open()), (1, 2, 3));
    }
}
