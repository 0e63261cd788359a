//! The router's Prometheus metrics, labelled by tenant and app.
//!
//! Cardinality stays bounded: every label value comes from the catalog
//! (tenant, app, keyspace and shard ids) or from a fixed list (endpoint,
//! outcome, reason), never from what a client sends; requests that are
//! not authenticated count under `tenant="", app=""`. At most
//! `metrics_max_tenant_apps` distinct (tenant, app) pairs get their own
//! labels; apps beyond that count under `tenant="_other", app="_other"`.
//! When an app or tenant leaves the catalog its series are removed.
//!
//! Each labelled pair keeps the handles of the series it has used
//! ([`PairMetrics`]), which both spares the request path the lookup by
//! label strings and lists exactly the series to remove.
//!
//! The process's own figures (`process_cpu_seconds_total`,
//! `process_cpu_limit_cores`) are read from the kernel when scraped
//! ([`RouterMetrics::sample_process`]), so alerts can compare the CPU a
//! router uses with what its container may use.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use shardline_core::catalog::App;
use shardline_metrics::{
    Counter, CounterVec, FloatCounterVec, GaugeVec, Histogram, HistogramVec, Registry,
    LATENCY_BUCKETS,
};

/// The label of apps (and tenants) over the cap.
pub const OTHER: &str = "_other";

/// Every metric the router exports.
#[derive(Clone)]
pub struct RouterMetrics {
    pub registry: Registry,
    /// `router_requests_total{tenant,app,keyspace,endpoint,shard,outcome,protocol}`.
    pub requests: CounterVec,
    /// `router_request_duration_seconds{tenant,app,shard}`.
    pub duration: HistogramVec,
    /// `router_rejected_requests_total{tenant,app,reason}`.
    pub rejected: CounterVec,
    /// `router_tenant_in_flight_requests{tenant}`, set when scraped.
    pub tenant_in_flight: GaugeVec,
    /// `router_tenant_max_in_flight_requests{tenant}`: the tenant's
    /// per-router concurrency limit, set when scraped; no series for a
    /// tenant without one.
    pub tenant_max_in_flight: GaugeVec,
    /// `router_active_connections{shard,state}`: pooled connections of
    /// all tenant pools of a shard, in use or idle.
    pub connections: GaugeVec,
    /// `router_tenant_pools{shard}`: tenant pools open per shard.
    pub tenant_pools: GaugeVec,
    /// `router_lane_connections{lane}`: client connections each lane
    /// serves, set when scraped; no series without lanes.
    pub lane_connections: GaugeVec,
    /// `router_catalog_version`.
    pub catalog_version: GaugeVec,
    /// `router_in_flight_requests`.
    pub in_flight: GaugeVec,
    /// `router_replica_reads_total{shard,instance}`: eventual reads a
    /// replica served.
    pub replica_reads: CounterVec,
    /// `router_held_requests_total{shard,outcome}`: requests held for a
    /// failover, by how the hold ended (`resumed`: a catalog with a new
    /// primary or the failover called off came in time; `timed_out`).
    pub held: CounterVec,
    /// `process_cpu_seconds_total`: user and system CPU time of the
    /// process, read when scraped.
    pub cpu_seconds: FloatCounterVec,
    /// `process_cpu_limit_cores`: CPUs the process may use, read when
    /// scraped.
    pub cpu_limit: GaugeVec,
    labels: Arc<LabelTable>,
}

impl RouterMetrics {
    /// Registers the metrics in a new registry; at most `max_pairs`
    /// (tenant, app) pairs get labels of their own.
    pub fn new(max_pairs: usize) -> Self {
        let registry = Registry::new();
        let requests = registry.counter(
            "router_requests_total",
            "Requests answered, by tenant, app, keyspace, endpoint, shard, outcome (ok or error code) and protocol (http or postgres).",
            &["tenant", "app", "keyspace", "endpoint", "shard", "outcome", "protocol"],
        );
        let duration = registry.histogram(
            "router_request_duration_seconds",
            "Time from request to answer, by tenant, app and shard.",
            &["tenant", "app", "shard"],
            LATENCY_BUCKETS,
        );
        let rejected = registry.counter(
            "router_rejected_requests_total",
            "Requests refused before routing, by tenant, app and reason.",
            &["tenant", "app", "reason"],
        );
        let families = Families {
            requests: requests.clone(),
            duration: duration.clone(),
            rejected: rejected.clone(),
        };
        Self {
            requests,
            duration,
            rejected,
            tenant_in_flight: registry.gauge(
                "router_tenant_in_flight_requests",
                "Requests of a tenant being served by this router now.",
                &["tenant"],
            ),
            tenant_max_in_flight: registry.gauge(
                "router_tenant_max_in_flight_requests",
                "Requests of a tenant this router serves at once at most (its max_concurrent limit); none for tenants without a limit.",
                &["tenant"],
            ),
            connections: registry.gauge(
                "router_active_connections",
                "Pooled PostgreSQL connections per shard (all tenant pools, primary and replicas), in use or idle.",
                &["shard", "state"],
            ),
            tenant_pools: registry.gauge(
                "router_tenant_pools",
                "Tenant connection pools open per shard (primary and replicas; with lanes, one per lane a tenant used).",
                &["shard"],
            ),
            lane_connections: registry.gauge(
                "router_lane_connections",
                "Client connections (HTTP and PostgreSQL) each lane serves now; no series without lanes.",
                &["lane"],
            ),
            catalog_version: registry.gauge(
                "router_catalog_version",
                "Version of the catalog this router routes by.",
                &[],
            ),
            in_flight: registry.gauge(
                "router_in_flight_requests",
                "Requests being served now.",
                &[],
            ),
            replica_reads: registry.counter(
                "router_replica_reads_total",
                "Eventual reads served by a replica, by shard and instance.",
                &["shard", "instance"],
            ),
            held: registry.counter(
                "router_held_requests_total",
                "Requests held while a shard's primary was failing over or unreachable, by how the hold ended (resumed, timed_out).",
                &["shard", "outcome"],
            ),
            cpu_seconds: registry.float_counter(
                "process_cpu_seconds_total",
                "User and system CPU time spent by the process, in seconds.",
                &[],
            ),
            cpu_limit: registry.gauge(
                "process_cpu_limit_cores",
                "CPUs the process may use: its cgroup's CPU quota, or else the CPUs it may run on.",
                &[],
            ),
            labels: Arc::new(LabelTable::new(max_pairs, families)),
            registry,
        }
    }

    /// The labels of requests that were not authenticated.
    pub fn anonymous(&self) -> &Arc<PairMetrics> {
        &self.labels.anonymous
    }

    /// Gives every app of the catalog its labels (keeping those already
    /// given, removing the series of apps that left) and returns them by
    /// app id.
    pub fn assign_labels(&self, apps: &BTreeMap<String, App>) -> HashMap<String, Arc<PairMetrics>> {
        self.labels.assign(apps)
    }

    /// Pairs with labels of their own now.
    pub fn labelled_pairs(&self) -> usize {
        lock(&self.labels.pairs).len()
    }

    /// Sets the in-flight gauges of every tenant from its metric label,
    /// its requests in flight and its per-router limit. Tenants sharing a
    /// label (`_other`) add up; a label with any unlimited tenant gets no
    /// limit series, as together they have no limit.
    pub fn set_tenant_in_flight<'a>(
        &self,
        tenants: impl IntoIterator<Item = (&'a str, u32, Option<u32>)>,
    ) {
        let mut by_label: HashMap<&str, (u64, Option<u64>)> = HashMap::new();
        for (label, now, max) in tenants {
            let (sum, limit) = by_label.entry(label).or_insert((0, Some(0)));
            *sum += u64::from(now);
            *limit = limit.zip(max).map(|(l, m)| l + u64::from(m));
        }
        self.tenant_in_flight.clear();
        self.tenant_max_in_flight.clear();
        for (label, (now, limit)) in by_label {
            self.tenant_in_flight.with(&[label]).set(now as f64);
            if let Some(limit) = limit {
                self.tenant_max_in_flight.with(&[label]).set(limit as f64);
            }
        }
    }

    /// Reads the process's CPU time and CPU limit from the kernel into
    /// their metrics. A figure the kernel does not give is left as it was.
    pub fn sample_process(&self) {
        if let Some(secs) = cpu_time_seconds() {
            self.cpu_seconds.with(&[]).advance_to(secs);
        }
        self.cpu_limit.with(&[]).set(cpu_limit_cores());
    }
}

/// User plus system CPU time of the whole process (every thread, living
/// or ended), in seconds.
fn cpu_time_seconds() -> Option<f64> {
    // SAFETY: `rusage` is plain integers, for which all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes one `rusage` through the pointer,
    // which points to one.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// CPUs the process may use: the CPUs it may run on, or its cgroup's
/// CPU quota if that is lower (a container's CPU limit is that quota).
fn cpu_limit_cores() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(count_cpus)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quota = cgroup_quota_cores(Path::new("/sys/fs/cgroup"), &cgroup);
    quota.map_or(cpus as f64, |q| q.min(cpus as f64))
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// The lowest CPU quota, in CPUs, of the process's cgroup and its
/// parents, given `/proc/self/cgroup` and where the cgroup file system is
/// mounted: cgroup v2's `cpu.max`, else v1's `cpu.cfs_quota_us` over
/// `cpu.cfs_period_us`. `None` when there is no quota.
fn cgroup_quota_cores(mount: &Path, proc_cgroup: &str) -> Option<f64> {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    if let Some(own) = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = mount.join(own.trim().trim_start_matches('/'));
        return dir
            .ancestors()
            .take_while(|d| d.starts_with(mount))
            .filter_map(|d| read(&d.join("cpu.max")).as_deref().and_then(parse_cpu_max))
            .reduce(f64::min);
    }
    let v1 = mount.join("cpu");
    let quota: i64 = read(&v1.join("cpu.cfs_quota_us"))?.trim().parse().ok()?;
    let period: u64 = read(&v1.join("cpu.cfs_period_us"))?.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// A cgroup v2 `cpu.max` (`QUOTA PERIOD`, microseconds, or `max PERIOD`)
/// in CPUs; `None` for no quota.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let (quota, period) = text.trim().split_once(' ')?;
    let (quota, period): (u64, u64) = (quota.parse().ok()?, period.parse().ok()?);
    (period > 0).then(|| quota as f64 / period as f64)
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new(500)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes only: consistent under a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The families labelled by tenant and app.
#[derive(Clone)]
struct Families {
    requests: CounterVec,
    duration: HistogramVec,
    rejected: CounterVec,
}

/// The pairs with labels of their own, by app id.
struct LabelTable {
    cap: usize,
    families: Families,
    pairs: Mutex<HashMap<String, Arc<PairMetrics>>>,
    other: Arc<PairMetrics>,
    anonymous: Arc<PairMetrics>,
}

impl LabelTable {
    fn new(cap: usize, families: Families) -> Self {
        Self {
            cap,
            other: Arc::new(PairMetrics::new(OTHER, OTHER, families.clone())),
            anonymous: Arc::new(PairMetrics::new("", "", families.clone())),
            families,
            pairs: Mutex::new(HashMap::new()),
        }
    }

    fn assign(&self, apps: &BTreeMap<String, App>) -> HashMap<String, Arc<PairMetrics>> {
        let mut pairs = lock(&self.pairs);
        pairs.retain(|id, pm| match apps.get(id) {
            Some(app) if app.tenant == pm.tenant => true,
            _ => {
                pm.remove_series();
                false
            }
        });
        // The catalog's order (by id) decides who is labelled when the
        // cap is reached, so every router labels the same pairs.
        let mut out = HashMap::with_capacity(apps.len());
        for (id, app) in apps {
            let pm = match pairs.get(id) {
                Some(pm) => Arc::clone(pm),
                None if pairs.len() < self.cap => {
                    let pm = Arc::new(PairMetrics::new(&app.tenant, id, self.families.clone()));
                    pairs.insert(id.clone(), Arc::clone(&pm));
                    pm
                }
                None => Arc::clone(&self.other),
            };
            out.insert(id.clone(), pm);
        }
        out
    }
}

/// One (tenant, app) label pair and the series it has used.
pub struct PairMetrics {
    tenant: String,
    app: String,
    families: Families,
    requests: RwLock<Vec<RequestSeries>>,
    durations: RwLock<Vec<(String, Histogram)>>,
    rejected: RwLock<Vec<(&'static str, Counter)>>,
}

struct RequestSeries {
    protocol: &'static str,
    keyspace: String,
    endpoint: &'static str,
    shard: String,
    outcome: &'static str,
    counter: Counter,
}

impl std::fmt::Debug for PairMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairMetrics")
            .field("tenant", &self.tenant)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl PairMetrics {
    fn new(tenant: &str, app: &str, families: Families) -> Self {
        Self {
            tenant: tenant.to_string(),
            app: app.to_string(),
            families,
            requests: RwLock::new(Vec::new()),
            durations: RwLock::new(Vec::new()),
            rejected: RwLock::new(Vec::new()),
        }
    }

    /// The tenant label.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The app label.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Counts one answered request (`protocol`: `http` or `postgres`).
    /// `keyspace` and `shard` must come from the catalog (or be empty).
    pub fn request(
        &self,
        protocol: &'static str,
        keyspace: &str,
        endpoint: &'static str,
        shard: &str,
        outcome: &'static str,
    ) {
        let matches = |s: &RequestSeries| {
            s.protocol == protocol
                && s.endpoint == endpoint
                && s.outcome == outcome
                && s.shard == shard
                && s.keyspace == keyspace
        };
        if let Some(s) = read(&self.requests).iter().find(|s| matches(s)) {
            s.counter.inc();
            return;
        }
        let mut all = write(&self.requests);
        if let Some(s) = all.iter().find(|s| matches(s)) {
            s.counter.inc();
            return;
        }
        let counter = self.families.requests.with(&[
            &self.tenant,
            &self.app,
            keyspace,
            endpoint,
            shard,
            outcome,
            protocol,
        ]);
        counter.inc();
        all.push(RequestSeries {
            protocol,
            keyspace: keyspace.to_string(),
            endpoint,
            shard: shard.to_string(),
            outcome,
            counter,
        });
    }

    /// Records a request's duration on `shard` (from the catalog, or
    /// empty).
    pub fn duration(&self, shard: &str, seconds: f64) {
        if let Some((_, h)) = read(&self.durations).iter().find(|(s, _)| s == shard) {
            h.observe(seconds);
            return;
        }
        let mut all = write(&self.durations);
        if let Some((_, h)) = all.iter().find(|(s, _)| s == shard) {
            h.observe(seconds);
            return;
        }
        let h = self
            .families
            .duration
            .with(&[&self.tenant, &self.app, shard]);
        h.observe(seconds);
        all.push((shard.to_string(), h));
    }

    /// Counts a refused request.
    pub fn rejected(&self, reason: &'static str) {
        if let Some((_, c)) = read(&self.rejected).iter().find(|(r, _)| *r == reason) {
            c.inc();
            return;
        }
        let mut all = write(&self.rejected);
        if let Some((_, c)) = all.iter().find(|(r, _)| *r == reason) {
            c.inc();
            return;
        }
        let c = self
            .families
            .rejected
            .with(&[&self.tenant, &self.app, reason]);
        c.inc();
        all.push((reason, c));
    }

    /// Removes every series of this pair from the registry.
    fn remove_series(&self) {
        let (t, a) = (self.tenant.as_str(), self.app.as_str());
        for s in write(&self.requests).drain(..) {
            self.families.requests.remove(&[
                t,
                a,
                &s.keyspace,
                s.endpoint,
                &s.shard,
                s.outcome,
                s.protocol,
            ]);
        }
        for (shard, _) in write(&self.durations).drain(..) {
            self.families.duration.remove(&[t, a, &shard]);
        }
        for (reason, _) in write(&self.rejected).drain(..) {
            self.families.rejected.remove(&[t, a, reason]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, tenant: &str) -> App {
        App {
            id: id.into(),
            name: id.into(),
            tenant: tenant.into(),
            description: String::new(),
            key_prefix: None,
            limits: Default::default(),
            token_hash: String::new(),
            token_scram: None,
            previous_token: None,
            created_at: String::new(),
        }
    }

    fn catalog_apps(list: &[(&str, &str)]) -> BTreeMap<String, App> {
        list.iter()
            .map(|(id, t)| (id.to_string(), app(id, t)))
            .collect()
    }

    #[test]
    fn pairs_over_the_cap_are_other() {
        let m = RouterMetrics::new(2);
        let apps = catalog_apps(&[("a1", "t1"), ("a2", "t1"), ("a3", "t2")]);
        let labels = m.assign_labels(&apps);
        assert_eq!(labels["a1"].app(), "a1");
        assert_eq!(labels["a2"].tenant(), "t1");
        assert_eq!((labels["a3"].tenant(), labels["a3"].app()), (OTHER, OTHER));
        assert_eq!(m.labelled_pairs(), 2);
        // The same pairs keep their series across catalogs.
        let again = m.assign_labels(&apps);
        assert!(Arc::ptr_eq(&labels["a1"], &again["a1"]));

        labels["a1"].request("http", "ks", "execute", "s1", "ok");
        labels["a1"].request("http", "ks", "execute", "s1", "ok");
        labels["a1"].duration("s1", 0.001);
        labels["a1"].rejected("rate_limited");
        labels["a3"].rejected("rate_limited");
        let text = m.registry.render();
        assert!(text.contains(
            r#"router_requests_total{tenant="t1",app="a1",keyspace="ks",endpoint="execute",shard="s1",outcome="ok",protocol="http"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"router_rejected_requests_total{tenant="_other",app="_other",reason="rate_limited"} 1"#
        ));

        // a1 leaves: its series go, and a3 takes the free label.
        let apps = catalog_apps(&[("a2", "t1"), ("a3", "t2")]);
        let labels = m.assign_labels(&apps);
        assert_eq!(labels["a3"].app(), "a3");
        let text = m.registry.render();
        assert!(!text.contains(r#"app="a1""#), "{text}");
        assert!(text.contains(r#"app="_other""#));
    }

    #[test]
    fn tenant_in_flight_adds_up_per_label_and_unlimited_wins() {
        let m = RouterMetrics::new(10);
        m.set_tenant_in_flight([
            ("t1", 3, Some(10)),
            (OTHER, 1, Some(4)),
            (OTHER, 2, Some(6)),
            ("t2", 5, None),
            ("t3", 1, Some(2)),
            ("t3", 0, None),
        ]);
        let text = m.registry.render();
        for line in [
            "router_tenant_in_flight_requests{tenant=\"t1\"} 3\n",
            "router_tenant_max_in_flight_requests{tenant=\"t1\"} 10\n",
            "router_tenant_in_flight_requests{tenant=\"_other\"} 3\n",
            "router_tenant_max_in_flight_requests{tenant=\"_other\"} 10\n",
            "router_tenant_in_flight_requests{tenant=\"t2\"} 5\n",
            "router_tenant_in_flight_requests{tenant=\"t3\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}in\n{text}");
        }
        assert!(
            !text.contains("max_in_flight_requests{tenant=\"t2\"}"),
            "{text}"
        );
        assert!(
            !text.contains("max_in_flight_requests{tenant=\"t3\"}"),
            "{text}"
        );
        // Tenants that left lose their series.
        m.set_tenant_in_flight([("t1", 0, Some(10))]);
        assert!(!m.registry.render().contains("_other"));
    }

    #[test]
    fn process_cpu_is_measured() {
        let m = RouterMetrics::new(10);
        m.sample_process();
        let before = m.cpu_seconds.with(&[]).get();
        // Spends CPU until the kernel's count moves (a tick is 10 ms at
        // most); bounded in case it never does.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while m.cpu_seconds.with(&[]).get() <= before
            && started.elapsed() < std::time::Duration::from_secs(5)
        {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            m.sample_process();
        }
        assert!(
            m.cpu_seconds.with(&[]).get() > before,
            "CPU time never grew"
        );
        let limit = m.cpu_limit.with(&[]).get();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(limit > 0.0 && limit <= cpus.max(1.0) + 1.0, "limit {limit}");
        let text = m.registry.render();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }

    #[test]
    fn cpu_lists_and_quotas_parse() {
        assert_eq!(count_cpus("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000"), None);
    }

    #[test]
    fn the_lowest_quota_of_the_cgroup_and_its_parents_counts() {
        let root = tempfile::tempdir().unwrap();
        let mount = root.path();
        let pod = mount.join("kubepods/pod1");
        let container = pod.join("c1");
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(mount.join("kubepods/cpu.max"), "max 100000\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "150000 100000\n").unwrap();
        std::fs::write(container.join("cpu.max"), "250000 100000\n").unwrap();
        let v2 = "0::/kubepods/pod1/c1\n";
        assert_eq!(cgroup_quota_cores(mount, v2), Some(1.5));
        std::fs::write(container.join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(cgroup_quota_cores(mount, v2), Some(0.5));
        // In a cgroup namespace the container's own cgroup is the root.
        std::fs::write(mount.join("cpu.max"), "200000 100000\n").unwrap();
        assert_eq!(cgroup_quota_cores(mount, "0::/\n"), Some(2.0));
        // cgroup v1.
        let v1 = mount.join("cpu");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(v1.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let v1_cgroup = "4:cpu,cpuacct:/docker/abc\n";
        assert_eq!(cgroup_quota_cores(mount, v1_cgroup), None);
        std::fs::write(v1.join("cpu.cfs_quota_us"), "300000\n").unwrap();
        assert_eq!(cgroup_quota_cores(mount, v1_cgroup), Some(3.0));
    }

    #[test]
    fn an_app_moving_tenant_gets_new_labels() {
        let m = RouterMetrics::new(10);
        let first = m.assign_labels(&catalog_apps(&[("a", "t1")]));
        first["a"].request("http", "", "route", "", "unauthorized");
        let second = m.assign_labels(&catalog_apps(&[("a", "t2")]));
        assert_eq!(second["a"].tenant(), "t2");
        assert!(!m.registry.render().contains(r#"tenant="t1""#));
    }
}
