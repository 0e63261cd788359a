//! Quotas: request rate (a token bucket) and requests in flight, per
//! tenant and per app, enforced by each router for its share.
//!
//! The bucket is kept as GCRA (the generic cell rate algorithm): one
//! "theoretical arrival time" per tenant or app in an atomic, which is
//! exactly a token bucket of size `burst` refilled at `rate`, updated with
//! one compare-and-swap and no lock. With `live_routers` routers, each
//! allows `requests_per_second / live_routers` per second and a burst of
//! `max(1, burst / live_routers)`, so the fleet together stays near the
//! tenant's limit; concurrency limits are per router.
//!
//! The state ([`QuotaCell`]) is keyed by tenant or app id in [`Quotas`]
//! and outlives catalog versions: a limit change takes effect on the next
//! request without refilling or emptying the bucket. The limits are not
//! part of the state; every check is given the current ones.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The quota state of every tenant and app this router knows, and the
/// number of live routers that share each rate limit.
pub struct Quotas {
    /// Times are kept as nanoseconds since this instant.
    epoch: Instant,
    live_routers: AtomicU32,
    tenants: Mutex<HashMap<String, Arc<QuotaCell>>>,
    apps: Mutex<HashMap<String, Arc<QuotaCell>>>,
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("live_routers", &self.live_routers())
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// No state yet; one live router.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            live_routers: AtomicU32::new(1),
            tenants: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// The routers sharing every rate limit (at least 1).
    pub fn live_routers(&self) -> u32 {
        self.live_routers.load(Ordering::Relaxed).max(1)
    }

    /// Sets the number of live routers, as the manager's heartbeat
    /// answer reports it (0 is taken as 1).
    pub fn set_live_routers(&self, n: u32) {
        self.live_routers.store(n.max(1), Ordering::Relaxed);
    }

    /// The state of tenant `id`, created on first use.
    pub fn tenant_cell(&self, id: &str) -> Arc<QuotaCell> {
        cell(&self.tenants, id)
    }

    /// The state of app `id`, created on first use.
    pub fn app_cell(&self, id: &str) -> Arc<QuotaCell> {
        cell(&self.apps, id)
    }

    /// Forgets the state of tenants and apps that left the catalog.
    pub fn retain(&self, tenants: &HashSet<&str>, apps: &HashSet<&str>) {
        lock(&self.tenants).retain(|id, _| tenants.contains(id.as_str()));
        lock(&self.apps).retain(|id, _| apps.contains(id.as_str()));
    }

    /// Tenants and apps with state, for tests and memory figures.
    pub fn len(&self) -> (usize, usize) {
        (lock(&self.tenants).len(), lock(&self.apps).len())
    }

    /// `now` in nanoseconds since the epoch (0 for earlier instants).
    fn nanos(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes one token from `cell`'s bucket under `limits`, or says how
    /// many whole seconds (at least 1) until one is there.
    pub fn take(&self, cell: &QuotaCell, limits: RateLimits, now: Instant) -> Result<Taken, u64> {
        let Some(rate) = limits.per_router(self.live_routers()) else {
            return Ok(Taken { interval_ns: 0 });
        };
        if rate.interval_ns == u64::MAX {
            // A rate of zero: nothing is ever admitted.
            return Err(1);
        }
        cell.take(rate, self.nanos(now))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes only: the map stays consistent under a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn cell(map: &Mutex<HashMap<String, Arc<QuotaCell>>>, id: &str) -> Arc<QuotaCell> {
    let mut map = lock(map);
    if let Some(c) = map.get(id) {
        return Arc::clone(c);
    }
    let c = Arc::new(QuotaCell::default());
    map.insert(id.to_string(), Arc::clone(&c));
    c
}

/// A rate limit as configured (fleet-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// `None`: unlimited.
    pub requests_per_second: Option<u32>,
    /// `None`: the rate.
    pub burst: Option<u32>,
}

impl RateLimits {
    /// From a catalog [`Limits`](shardline_core::catalog::Limits).
    pub fn of(limits: &shardline_core::catalog::Limits) -> Self {
        Self {
            requests_per_second: limits.requests_per_second,
            burst: limits.burst,
        }
    }

    /// This router's share with `live` routers: `None` when unlimited.
    pub fn per_router(self, live: u32) -> Option<RouterRate> {
        let rps = self.requests_per_second?;
        let live = u64::from(live.max(1));
        if rps == 0 {
            return Some(RouterRate {
                interval_ns: u64::MAX,
                burst: 1,
            });
        }
        // rate = rps / live, so one token every live / rps seconds.
        let interval_ns = (live * NANOS_PER_SEC / u64::from(rps)).max(1);
        let burst = (u64::from(self.burst.unwrap_or(rps)) / live).max(1);
        Some(RouterRate { interval_ns, burst })
    }
}

/// One router's share of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterRate {
    /// Nanoseconds between two tokens.
    pub interval_ns: u64,
    /// Bucket size (at least 1).
    pub burst: u64,
}

/// A token taken; [`QuotaCell::refund`] gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    interval_ns: u64,
}

/// The quota state of one tenant or app: its bucket and its requests in
/// flight on this router.
#[derive(Debug, Default)]
pub struct QuotaCell {
    /// GCRA's theoretical arrival time (nanoseconds since the epoch of
    /// [`Quotas`]): the bucket is full when it is at or before now, and
    /// each token taken moves it one interval later.
    tat: AtomicU64,
    in_flight: AtomicU32,
}

impl QuotaCell {
    fn take(&self, rate: RouterRate, now: u64) -> Result<Taken, u64> {
        let tolerance = (rate.burst - 1).saturating_mul(rate.interval_ns);
        // Never further ahead than a full bucket's worth: after a limit
        // is raised the old debt does not outlast the new burst.
        let ceiling = now
            .saturating_add(tolerance)
            .saturating_add(rate.interval_ns);
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let tat = current.max(now).min(ceiling);
            let ahead = tat - now;
            if ahead > tolerance {
                let wait_ns = ahead - tolerance;
                return Err(wait_ns.div_ceil(NANOS_PER_SEC).max(1));
            }
            let next = tat.saturating_add(rate.interval_ns);
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Taken {
                        interval_ns: rate.interval_ns,
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives a token back (the request was refused by another limit).
    pub fn refund(&self, taken: Taken) {
        if taken.interval_ns == 0 {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(taken.interval_ns))
            });
    }

    /// Counts a request in flight unless `max` are already; `false` when
    /// refused (nothing is counted then).
    pub fn try_enter(&self, max: Option<u32>) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        match max {
            Some(max) if before >= max => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                false
            }
            _ => true,
        }
    }

    /// Ends a request counted by [`try_enter`](Self::try_enter).
    pub fn exit(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests in flight on this router.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(rps: u32, burst: Option<u32>) -> RateLimits {
        RateLimits {
            requests_per_second: Some(rps),
            burst,
        }
    }

    /// Takes tokens at `t` until refused; the count taken and the refusal.
    fn drain(q: &Quotas, c: &QuotaCell, l: RateLimits, t: Instant) -> (usize, u64) {
        for n in 0..10_000 {
            if let Err(wait) = q.take(c, l, t) {
                return (n, wait);
            }
        }
        panic!("never refused");
    }

    #[test]
    fn shares_of_a_limit() {
        assert_eq!(RateLimits::default().per_router(3), None);
        let r = limits(100, None).per_router(1).unwrap();
        assert_eq!((r.interval_ns, r.burst), (10_000_000, 100));
        let r = limits(100, Some(10)).per_router(4).unwrap();
        assert_eq!((r.interval_ns, r.burst), (40_000_000, 2));
        // The burst never goes below one.
        let r = limits(2, Some(1)).per_router(5).unwrap();
        assert_eq!((r.interval_ns, r.burst), (2_500_000_000, 1));
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let q = Quotas::new();
        let c = QuotaCell::default();
        let l = limits(10, Some(5));
        let t0 = q.epoch + Duration::from_secs(100);
        assert_eq!(drain(&q, &c, l, t0), (5, 1));
        // One token per 100ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(q.take(&c, l, t1).is_ok());
        assert!(q.take(&c, l, t1).is_err());
        let t2 = t1 + Duration::from_millis(350);
        assert_eq!(drain(&q, &c, l, t2).0, 3);
        // A long quiet time refills to the burst, not beyond.
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!(drain(&q, &c, l, t3).0, 5);
    }

    #[test]
    fn retry_after_is_the_wait_for_a_token_rounded_up() {
        let q = Quotas::new();
        let c = QuotaCell::default();
        // One token per 4 seconds.
        let l = RateLimits {
            requests_per_second: Some(1),
            burst: Some(1),
        };
        let t0 = q.epoch + Duration::from_secs(10);
        q.set_live_routers(4);
        assert!(q.take(&c, l, t0).is_ok());
        assert_eq!(q.take(&c, l, t0), Err(4));
        assert_eq!(q.take(&c, l, t0 + Duration::from_millis(1500)), Err(3));
        assert_eq!(q.take(&c, l, t0 + Duration::from_millis(3999)), Err(1));
        assert!(q.take(&c, l, t0 + Duration::from_secs(4)).is_ok());
        // A zero rate refuses all, with a retry after 1s.
        assert_eq!(q.take(&c, limits(0, None), t0), Err(1));
    }

    #[test]
    fn live_routers_split_the_rate() {
        let q = Quotas::new();
        q.set_live_routers(0);
        assert_eq!(q.live_routers(), 1);
        q.set_live_routers(2);
        let c = QuotaCell::default();
        let t0 = q.epoch + Duration::from_secs(1);
        // 100/s over 2 routers: burst 50 here.
        assert_eq!(drain(&q, &c, limits(100, None), t0).0, 50);
    }

    #[test]
    fn limit_changes_keep_state() {
        let q = Quotas::new();
        let c = QuotaCell::default();
        let t0 = q.epoch + Duration::from_secs(5);
        assert_eq!(drain(&q, &c, limits(2, Some(2)), t0).0, 2);
        // Raised: the bucket is not refilled at once, but the old debt
        // does not outlast one new interval.
        let raised = limits(1000, Some(1000));
        assert!(q.take(&c, raised, t0).is_err());
        assert!(q.take(&c, raised, t0 + Duration::from_millis(2)).is_ok());
        // Lowered on a fresh bucket: the new burst applies.
        let c = QuotaCell::default();
        assert!(q.take(&c, raised, t0).is_ok());
        assert_eq!(
            drain(&q, &c, limits(1, Some(1)), t0 + Duration::from_secs(1)).0,
            1
        );
    }

    #[test]
    fn refunds_and_unlimited() {
        let q = Quotas::new();
        let c = QuotaCell::default();
        let l = limits(1, Some(1));
        let t0 = q.epoch + Duration::from_secs(3);
        let taken = q.take(&c, l, t0).unwrap();
        assert!(q.take(&c, l, t0).is_err());
        c.refund(taken);
        assert!(q.take(&c, l, t0).is_ok());
        for _ in 0..1000 {
            let taken = q.take(&c, RateLimits::default(), t0).unwrap();
            c.refund(taken);
        }
        assert!(q.take(&c, l, t0).is_err());
    }

    #[test]
    fn concurrency_counts_and_refuses() {
        let c = QuotaCell::default();
        assert!(c.try_enter(Some(2)));
        assert!(c.try_enter(Some(2)));
        assert!(!c.try_enter(Some(2)));
        assert_eq!(c.in_flight(), 2);
        c.exit();
        assert!(c.try_enter(Some(2)));
        assert!(c.try_enter(None));
        assert_eq!(c.in_flight(), 3);
        assert!(!QuotaCell::default().try_enter(Some(0)));
    }

    #[test]
    fn state_outlives_catalogs_until_removed() {
        let q = Quotas::new();
        let a = q.tenant_cell("a");
        assert!(Arc::ptr_eq(&a, &q.tenant_cell("a")));
        q.app_cell("x");
        q.tenant_cell("b");
        q.retain(&HashSet::from(["a"]), &HashSet::new());
        assert_eq!(q.len(), (1, 0));
        assert!(Arc::ptr_eq(&a, &q.tenant_cell("a")));
    }
}
