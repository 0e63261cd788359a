//! Point SELECTs by primary key through the router (`POST /v1/execute`)
//! versus the same SELECTs sent straight to PostgreSQL, interleaved in one
//! run on one machine, so the noise of a shared machine hits both alike.
//!
//! Starts its own `shardline dev` (one shard, so both paths end at the
//! same PostgreSQL), loads a table, then alternates timed phases: direct
//! (N tokio-postgres connections with a prepared statement, like
//! `pgbench -S`) and routed (N keep-alive HTTP connections). Reports
//! requests/s (median over rounds), p50 and p99 (over all requests), and
//! the ratio.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::{json, Value};
use shardline_api::manager::{ApplyMigrationRequest, CreateAppRequest, CreateTenantRequest};

/// Options of `shardline-bench execute`.
#[derive(Debug, clap::Args)]
pub struct ExecuteArgs {
    /// Concurrent connections (clients) in each phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds per timed phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Rounds; each runs one phase per path (direct, router, router
    /// without the session reset, router for a keyspace with code).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rows in the table.
    #[arg(long, default_value_t = 100_000)]
    pub rows: i64,
    /// The `shardline` binary [default: next to this one].
    #[arg(long)]
    pub shardline: Option<PathBuf>,
    /// A control: the second router resets sessions too, so the two
    /// router paths differ only by process, and their gap is the noise
    /// the reset's cost is read against.
    #[arg(long)]
    pub same_routers: bool,
    /// Another `shardline` binary (e.g. an older build) whose router runs
    /// beside this one's with the same settings, in the same rounds;
    /// repeatable. The session-reset paths are left out then.
    #[arg(long = "compare", value_name = "BIN")]
    pub compare: Vec<PathBuf>,
}

const SQL: &str = "SELECT id, balance FROM bench_accounts WHERE id = $1";

/// Latencies of one phase, in microseconds, and its length.
struct Phase {
    micros: Vec<u32>,
    elapsed: Duration,
    errors: usize,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn direct_phase(
    clients: &[Arc<(tokio_postgres::Client, tokio_postgres::Statement)>],
    rows: i64,
    secs: u64,
) -> Phase {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks = clients.iter().cloned().map(|c| {
        tokio::spawn(async move {
            let mut micros = Vec::new();
            let mut errors = 0;
            while Instant::now() < until {
                let id: i64 = rand::rng().random_range(1..=rows);
                let t = Instant::now();
                match c.0.query(&c.1, &[&id]).await {
                    Ok(r) if r.len() == 1 => micros.push(t.elapsed().as_micros() as u32),
                    _ => errors += 1,
                }
            }
            (micros, errors)
        })
    });
    collect(futures_join(tasks).await, started)
}

async fn routed_phase(url: &str, token: &str, concurrency: usize, rows: i64, secs: u64) -> Phase {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let uri: hyper::Uri = match format!("{url}/v1/execute").parse() {
        Ok(u) => u,
        Err(_) => {
            return Phase {
                micros: vec![],
                elapsed: Duration::ZERO,
                errors: 1,
            }
        }
    };
    let auth = format!("Bearer {token}");
    let tasks = (0..concurrency).map(|_| {
        let client = client.clone();
        let uri = uri.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut micros = Vec::new();
            let mut errors = 0;
            while Instant::now() < until {
                let id: i64 = rand::rng().random_range(1..=rows);
                let body =
                    json!({"shard_key": id.to_string(), "sql": SQL, "params": [id]}).to_string();
                let req = hyper::Request::post(uri.clone())
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                let ok = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.into_body().collect().await;
                        status.is_success() && body.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    micros.push(t.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (micros, errors)
        })
    });
    collect(futures_join(tasks).await, started)
}

async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        if let Ok(v) = t.await {
            out.push(v);
        }
    }
    out
}

fn collect(parts: Vec<(Vec<u32>, usize)>, started: Instant) -> Phase {
    let elapsed = started.elapsed();
    let mut micros = Vec::new();
    let mut errors = 0;
    for (m, e) in parts {
        micros.extend(m);
        errors += e;
    }
    Phase {
        micros,
        elapsed,
        errors,
    }
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark and prints the figures.
pub fn run(args: ExecuteArgs) -> anyhow::Result<()> {
    let bin = crate::dev::shardline_bin(&args.shardline)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // One shard for tenant `default`, one spare for tenant `coded`, whose
    // keyspace holds a function (so the router resets its sessions after
    // every request).
    let (dev, info) = crate::dev::start_dev(&bin, &["--shards", "1", "--spare-shards", "1"])?;
    // Two router processes of their own, alike but for the session reset
    // (the dev process's router shares its process with the manager, so
    // its CPU could not be told apart).
    let second = if args.same_routers {
        ""
    } else {
        "session_reset = false"
    };
    let mut wanted = vec![("router".to_string(), bin.clone(), "")];
    if args.compare.is_empty() {
        wanted.push(("router, no session reset".into(), bin, second));
    }
    for other in &args.compare {
        wanted.push((format!("router of {}", other.display()), other.clone(), ""));
    }
    let routers = wanted
        .into_iter()
        .enumerate()
        .map(|(i, (name, bin, extra))| {
            crate::dev::start_router(&bin, &info, &format!("bench-{i}"), extra).map(|r| (name, r))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let result = rt.block_on(bench(&args, &info, &routers));
    drop(routers);
    drop(dev);
    result
}

/// One way to the table: straight to PostgreSQL, or through a router as
/// one tenant's app; each with the PostgreSQL server it ends at.
struct Path<'a> {
    name: String,
    router: Option<&'a crate::dev::RouterProc>,
    token: String,
    data_dir: PathBuf,
}

/// What the rounds measured of one path.
#[derive(Default)]
struct Totals {
    rates: Vec<f64>,
    micros: Vec<u32>,
    errors: usize,
    requests: u64,
    router_cpu: u64,
    /// Of `router_cpu`, the part spent in the kernel.
    router_kernel: u64,
    pg_cpu: u64,
}

/// A shard of the dev setup: its superuser DSN and data directory.
struct Loaded {
    dsn: String,
    data_dir: PathBuf,
}

/// Creates and fills `bench_accounts` in `pg_name`'s database on the
/// shard at `shard_dsn` (unless a migration made it), as the tenant's role.
async fn load(shard_dsn: &str, pg_name: &str, rows: i64, create: bool) -> anyhow::Result<String> {
    let dsn = format!("{shard_dsn} dbname={pg_name}");
    let (setup, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let create = if create {
        "DROP TABLE IF EXISTS bench_accounts; \
         CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, filler char(84));"
    } else {
        ""
    };
    setup
        .batch_execute(&format!(
            "SET ROLE {pg_name}; SET search_path = {pg_name}; {create} \
             INSERT INTO bench_accounts SELECT g, g * 10, '' FROM generate_series(1, {rows}) g; \
             RESET ROLE"
        ))
        .await
        .context("load the table")?;
    // VACUUM runs alone (not in the implicit transaction above).
    setup
        .batch_execute(&format!("VACUUM ANALYZE {pg_name}.bench_accounts"))
        .await
        .context("vacuum the table")?;
    Ok(dsn)
}

async fn bench(
    args: &ExecuteArgs,
    info: &Value,
    routers: &[(String, crate::dev::RouterProc)],
) -> anyhow::Result<()> {
    let shard_of = |id: &str| -> anyhow::Result<Loaded> {
        let s = info["shards"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .with_context(|| format!("dev.json has no shard {id}"))?;
        Ok(Loaded {
            dsn: s["dsn"].as_str().context("dsn")?.to_string(),
            data_dir: PathBuf::from(s["data_dir"].as_str().context("data_dir")?),
        })
    };
    let token = info["app_token"].as_str().context("app_token")?.to_string();
    let manager = shardline_client::ManagerClient::new(
        info["manager_url"].as_str().context("manager_url")?,
        info["admin_token"].as_str().map(str::to_string),
    )?;
    // The default tenant's role, database and schema share one name.
    let pg_name = manager.get_tenant("default").await?.pg_name;
    let default_shard = shard_of("shard-0")?;
    let dsn = load(&default_shard.dsn, &pg_name, args.rows, true).await?;

    // Tenant `coded` on the spare shard: its keyspace's migration brings
    // the table and a function, so its keyspace holds code.
    manager
        .create_tenant(&CreateTenantRequest {
            id: "coded".into(),
            dedicated: true,
            shards: Some(1),
            ..CreateTenantRequest::default()
        })
        .await
        .context("create tenant coded")?;
    manager
        .apply_migration(
            "coded",
            &ApplyMigrationRequest {
                name: "001_bench".into(),
                sql:
                    "CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, \
                      filler char(84)); \
                      CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS 'SELECT 1'"
                        .into(),
            },
        )
        .await
        .context("migrate tenant coded")?;
    let coded_token = manager
        .create_app(&CreateAppRequest {
            name: "coded-app".into(),
            tenant: Some("coded".into()),
            ..CreateAppRequest::default()
        })
        .await
        .context("create coded's app")?
        .token;
    let coded_shard = shard_of("spare-0")?;
    let coded_pg = manager.get_tenant("coded").await?.pg_name;
    load(&coded_shard.dsn, &coded_pg, args.rows, false).await?;

    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("SET search_path = {pg_name}"))
            .await?;
        let stmt = c.prepare(SQL).await?;
        clients.push(Arc::new((c, stmt)));
    }
    let router = |i: usize| routers.get(i).map(|(_, r)| r);
    let mut paths = vec![Path {
        name: "direct PostgreSQL".into(),
        router: None,
        token: String::new(),
        data_dir: default_shard.data_dir.clone(),
    }];
    for (i, (name, _)) in routers.iter().enumerate() {
        paths.push(Path {
            name: if args.same_routers && i == 1 {
                "router (a second, alike)".into()
            } else {
                name.clone()
            },
            router: router(i),
            token: token.clone(),
            data_dir: default_shard.data_dir.clone(),
        });
    }
    if args.compare.is_empty() {
        paths.push(Path {
            name: "router, keyspace with code".into(),
            router: router(0),
            token: coded_token,
            data_dir: coded_shard.data_dir.clone(),
        });
    }
    // Warm every path (router pools, prepared statements, caches).
    for p in &paths {
        run_phase(p, &clients, args, 1).await;
    }

    println!(
        "point SELECT by primary key, {} rows, {} concurrent clients, {} rounds of {} s per path",
        args.rows, args.concurrency, args.rounds, args.phase_secs
    );
    let mut totals: Vec<Totals> = paths.iter().map(|_| Totals::default()).collect();
    for round in 0..args.rounds {
        println!("round {}:", round + 1);
        // Each round starts one path later, so no path always follows
        // the same one (the direct phase leaves PostgreSQL busier with
        // vacuum and checkpoints than the others do).
        let mut order: Vec<usize> = (0..paths.len()).collect();
        order.rotate_left(round % paths.len());
        for i in order {
            let (p, t) = (&paths[i], &mut totals[i]);
            let router_pid = p.router.map(|r| r.pid());
            let cpu0 = router_pid.map_or(0, crate::dev::cpu_micros);
            let kernel0 = router_pid.map_or(0, crate::dev::kernel_micros);
            let pg0 = crate::dev::pg_cpu_micros(&p.data_dir);
            let ph = run_phase(p, &clients, args, args.phase_secs).await;
            t.router_cpu += router_pid
                .map_or(0, crate::dev::cpu_micros)
                .saturating_sub(cpu0);
            t.router_kernel += router_pid
                .map_or(0, crate::dev::kernel_micros)
                .saturating_sub(kernel0);
            t.pg_cpu += crate::dev::pg_cpu_micros(&p.data_dir).saturating_sub(pg0);
            t.requests += ph.micros.len() as u64;
            println!("  {:<28} {:>7.0} req/s", p.name, ph.rate());
            t.rates.push(ph.rate());
            t.errors += ph.errors;
            t.micros.extend(ph.micros);
        }
    }
    println!();
    println!(
        "path                         req/s (median)   p50 ms   p99 ms   errors   router CPU µs/req   of it kernel   PostgreSQL CPU µs/req"
    );
    let mut medians = Vec::new();
    for (p, t) in paths.iter().zip(totals.iter_mut()) {
        t.micros.sort_unstable();
        let rate = median(std::mem::take(&mut t.rates));
        medians.push(rate);
        let per = |cpu: u64| cpu as f64 / t.requests.max(1) as f64;
        let router = |cpu: u64| match p.router {
            None => "-".to_string(),
            Some(_) => format!("{:.1}", per(cpu)),
        };
        println!(
            "{:<28} {:>14.0} {:>8.3} {:>8.3} {:>8} {:>19} {:>14} {:>23.1}",
            p.name,
            rate,
            percentile(&t.micros, 0.50),
            percentile(&t.micros, 0.99),
            t.errors,
            router(t.router_cpu),
            router(t.router_kernel),
            per(t.pg_cpu),
        );
    }
    println!();
    println!("router / direct throughput: {:.2}", medians[1] / medians[0]);
    for (p, rate) in paths.iter().zip(&medians).skip(2) {
        if !args.compare.is_empty() {
            println!(
                "router / {}: {:.3} ({:+.1}%)",
                p.name,
                medians[1] / rate,
                (medians[1] / rate - 1.0) * 100.0
            );
        }
    }
    let reset_paths = match medians[..] {
        [_, with_reset, without, code, ..] if args.compare.is_empty() => {
            Some((with_reset, without, code))
        }
        _ => None,
    };
    if let Some((with_reset, without, code)) = reset_paths {
        let other = if args.same_routers {
            "the second router (alike)"
        } else {
            "the router without reset"
        };
        println!(
            "session reset, keyspace without code: {:.3} of {other} ({:+.1}%)",
            with_reset / without,
            (with_reset / without - 1.0) * 100.0
        );
        println!(
            "session reset, keyspace with code:    {:.3} of {other} ({:+.1}%)",
            code / without,
            (code / without - 1.0) * 100.0
        );
    }
    let p50 = |i: usize| percentile(&totals[i].micros, 0.50);
    println!("router p50 added: {:.3} ms", p50(1) - p50(0));
    Ok(())
}

async fn run_phase(
    path: &Path<'_>,
    clients: &[Arc<(tokio_postgres::Client, tokio_postgres::Statement)>],
    args: &ExecuteArgs,
    secs: u64,
) -> Phase {
    match path.router {
        None => direct_phase(clients, args.rows, secs).await,
        Some(r) => routed_phase(&r.url, &path.token, args.concurrency, args.rows, secs).await,
    }
}
