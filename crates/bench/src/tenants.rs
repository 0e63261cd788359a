//! Scale of the tenancy layer: a catalog of N tenants × M apps (default
//! 1,000 × 10) compiled into the router's routing table; the router's
//! memory for it, and the cost per request of authentication plus
//! authorisation plus quota checks (`Routing::admit`: SHA-256 of the
//! token, the token lookup with its constant-time compare, tenant state,
//! keyspace and key-prefix checks, concurrency slots and token buckets of
//! tenant and app), against the routing decision alone, measured in the
//! same run.
//!
//! In-process and single-threaded: it measures the work, not the HTTP
//! stack (the `execute` benchmark measures that).

use std::hint::black_box;
use std::time::Instant;

use rand::seq::SliceRandom;
use shardline_api::router::ShardKeyValue;
use shardline_core::auth::token_hash;
use shardline_core::catalog::{
    App, Instance, Keyspace, Limits, Shard, Tenant, TenantConfig, TenantState,
};
use shardline_core::{Catalog, KeyType, ShardMap};
use shardline_router::auth::Now;
use shardline_router::state::{RouterContext, Routing};
use shardline_router::RouterConfig;

use crate::execute::median;

/// Options of `shardline-bench tenants`.
#[derive(Debug, clap::Args)]
pub struct TenantsArgs {
    /// Tenants in the catalog.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Apps per tenant.
    #[arg(long, default_value_t = 10)]
    pub apps: usize,
    /// Shards of the shared keyspace.
    #[arg(long, default_value_t = 8)]
    pub shards: usize,
    /// Requests per timed run.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
}

fn limits(rps: u32) -> Limits {
    Limits {
        requests_per_second: Some(rps),
        burst: Some(rps),
        max_concurrent: Some(1_000),
        max_shards: None,
    }
}

/// A catalog with `tenants` × `apps` (every one with limits, so every
/// check runs) over `shards` shards; returns it and the tokens.
fn catalog(tenants: usize, apps: usize, shards: usize) -> (Catalog, Vec<String>) {
    let mut cat = Catalog {
        version: 1,
        ..Catalog::default()
    };
    let ids: Vec<String> = (0..shards).map(|i| format!("s{i}")).collect();
    for id in &ids {
        cat.shards.insert(
            id.clone(),
            Shard {
                id: id.clone(),
                keyspace: Some("default".into()),
                primary: Instance {
                    id: String::new(),
                    dsn: format!("host=127.0.0.1 port=9 user=postgres dbname={id} password=x"),
                },
                replicas: vec![],
                generation: 1,
                reserved_for: None,
                fenced: vec![],
                failover: None,
                synchronous: false,
            },
        );
    }
    cat.keyspaces.insert(
        "default".into(),
        Keyspace {
            name: "default".into(),
            key_type: KeyType::Text,
            map: ShardMap::even(&ids).ok(),
            migrations: vec![],
            tables: Default::default(),
            frozen: Vec::new(),
            tenant_code: false,
        },
    );
    let mut tokens = Vec::with_capacity(tenants * apps);
    for t in 0..tenants {
        let tenant = format!("tenant-{t:05}");
        cat.tenants.insert(
            tenant.clone(),
            Tenant {
                id: tenant.clone(),
                name: format!("Tenant {t}"),
                keyspace: "default".into(),
                dedicated: false,
                config: TenantConfig {
                    limits: limits(1_000_000_000),
                    max_connections_per_shard: None,
                },
                role_password: format!("{:064x}", t),
                pg_name: None,
                state: TenantState::Active,
                moving: false,
                created_at: "2026-11-29T00:00:00Z".into(),
            },
        );
        for a in 0..apps {
            let id = format!("{tenant}-app-{a:02}");
            let token = format!("sl_{:064x}", t * 1000 + a);
            cat.apps.insert(
                id.clone(),
                App {
                    id: id.clone(),
                    name: id.clone(),
                    tenant: tenant.clone(),
                    description: "benchmark app".into(),
                    key_prefix: Some("user:".into()),
                    limits: limits(1_000_000_000),
                    token_hash: token_hash(&token),
                    // The HTTP path does not use it, and making one costs
                    // milliseconds per app.
                    token_scram: None,
                    previous_token: None,
                    created_at: "2026-11-29T00:00:00Z".into(),
                },
            );
            tokens.push(token);
        }
    }
    (cat, tokens)
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Runs the benchmark and prints the figures.
pub fn run(args: TenantsArgs) -> anyhow::Result<()> {
    // Pools and quota cells live in the context; a runtime is needed for
    // nothing here (no connection is opened).
    let ctx = RouterContext::new(&RouterConfig::new(
        "http://127.0.0.1:9",
        "bench-router-token",
    ));
    let base = rss_kib();
    let (cat, tokens) = catalog(args.tenants, args.apps, args.shards);
    let json_bytes = serde_json::to_vec(&cat)?.len();
    let with_catalog = rss_kib();
    let routing = Routing::build(&cat, &Routing::default(), &ctx);
    let with_routing = rss_kib();
    anyhow::ensure!(
        routing.token_count() == tokens.len(),
        "routing table has {} tokens, expected {}",
        routing.token_count(),
        tokens.len()
    );

    println!(
        "catalog: {} tenants x {} apps = {} apps, {} shards; {:.1} MiB as JSON",
        args.tenants,
        args.apps,
        tokens.len(),
        args.shards,
        json_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "router memory (RSS): catalog {:.1} MiB + routing table {:.1} MiB = {:.1} MiB above a {:.1} MiB process",
        (with_catalog - base) as f64 / 1024.0,
        (with_routing - with_catalog) as f64 / 1024.0,
        (with_routing - base) as f64 / 1024.0,
        base as f64 / 1024.0
    );

    // Requests spread over every app in a random order, so the lookups
    // miss the CPU caches as real traffic across 10,000 apps would.
    let mut order: Vec<usize> = (0..args.requests).map(|i| i % tokens.len()).collect();
    order.shuffle(&mut rand::rng());
    let keys: Vec<ShardKeyValue> = (0..4096)
        .map(|i| ShardKeyValue::Text(format!("user:{i}")))
        .collect();
    let quotas = &ctx.quotas;
    let mut refused = 0usize;
    let (mut admit_ns, mut admit_clock_ns, mut route_ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let now = Now::current();
        admit_ns.push(per_call(args.requests, |i| {
            let token = &tokens[order[i]];
            match routing.admit(token, None, &keys[i & 4095], quotas, now) {
                Ok(adm) => drop(black_box(adm)),
                Err(_) => refused += 1,
            }
        }));
        admit_clock_ns.push(per_call(args.requests, |i| {
            let token = &tokens[order[i]];
            match routing.admit(token, None, &keys[i & 4095], quotas, Now::current()) {
                Ok(adm) => drop(black_box(adm)),
                Err(_) => refused += 1,
            }
        }));
        route_ns.push(per_call(args.requests, |i| {
            let _ = black_box(routing.route("default", &keys[i & 4095]));
        }));
    }
    anyhow::ensure!(refused == 0, "{refused} requests were refused");
    let (a, c, r) = (median(admit_ns), median(admit_clock_ns), median(route_ns));
    println!(
        "per request (median of {} runs of {} requests, one core):",
        args.runs, args.requests
    );
    println!("  auth + authorisation + quotas (admit)          {a:>7.0} ns");
    println!("  the same, reading the clocks per request        {c:>7.0} ns");
    println!("  routing decision alone (hash + map lookup)      {r:>7.0} ns");
    println!(
        "added cost of auth + quota checks: {:.2} µs per request (goal <= 2 µs)",
        c / 1000.0
    );
    Ok(())
}
