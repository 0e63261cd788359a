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

/// Options of `shardline-bench execute`.
#[derive(Debug, clap::Args)]
pub struct ExecuteArgs {
    /// Concurrent connections (clients) in each phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds per timed phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Rounds; each runs one direct and one routed phase.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rows in the table.
    #[arg(long, default_value_t = 100_000)]
    pub rows: i64,
    /// The `shardline` binary [default: next to this one].
    #[arg(long)]
    pub shardline: Option<PathBuf>,
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
    let (dev, info) = crate::dev::start_dev(&bin, &["--shards", "1", "--spare-shards", "0"])?;
    let result = rt.block_on(bench(&args, &info));
    drop(dev);
    result
}

async fn bench(args: &ExecuteArgs, info: &Value) -> anyhow::Result<()> {
    let dsn = info["shards"][0]["dsn"]
        .as_str()
        .context("dev.json shard dsn")?
        .to_string();
    let router = info["router_url"]
        .as_str()
        .context("router_url")?
        .to_string();
    let token = info["app_token"].as_str().context("app_token")?.to_string();

    // The default tenant's database, where its app's statements run; the
    // table is created as the tenant's role so the router may read it.
    // Its name (role = database = schema) is random: the manager has it.
    let manager = shardline_client::ManagerClient::new(
        info["manager_url"].as_str().context("manager_url")?,
        Some(info["admin_token"].as_str().context("admin_token")?.into()),
    )?;
    let db = manager
        .get_tenant("default")
        .await
        .context("get the default tenant")?
        .pg_name;
    let dsn = format!("{dsn} dbname={db}");
    let (setup, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    setup
        .batch_execute(&format!(
            "SET ROLE {db}; SET search_path = {db}; \
             DROP TABLE IF EXISTS bench_accounts; \
             CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, filler char(84)); \
             INSERT INTO bench_accounts SELECT g, g * 10, '' FROM generate_series(1, {}) g; \
             RESET ROLE;",
            args.rows
        ))
        .await
        .context("load the table")?;
    setup
        .batch_execute("VACUUM ANALYZE bench_accounts")
        .await
        .context("vacuum the table")?;

    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("SET search_path = {db}")).await?;
        let stmt = c.prepare(SQL).await?;
        clients.push(Arc::new((c, stmt)));
    }
    // Warm both paths (router pools, prepared statements, caches).
    direct_phase(&clients, args.rows, 1).await;
    routed_phase(&router, &token, args.concurrency, args.rows, 1).await;

    println!(
        "point SELECT by primary key, {} rows, {} concurrent clients, {} rounds of {} s per path",
        args.rows, args.concurrency, args.rounds, args.phase_secs
    );
    let (mut d_rates, mut r_rates) = (Vec::new(), Vec::new());
    let (mut d_lat, mut r_lat) = (Vec::new(), Vec::new());
    let (mut d_err, mut r_err) = (0, 0);
    for round in 0..args.rounds {
        let d = direct_phase(&clients, args.rows, args.phase_secs).await;
        let r = routed_phase(
            &router,
            &token,
            args.concurrency,
            args.rows,
            args.phase_secs,
        )
        .await;
        println!(
            "round {}: direct {:>8.0} req/s   router {:>8.0} req/s",
            round + 1,
            d.rate(),
            r.rate()
        );
        d_rates.push(d.rate());
        r_rates.push(r.rate());
        d_err += d.errors;
        r_err += r.errors;
        d_lat.extend(d.micros);
        r_lat.extend(r.micros);
    }
    d_lat.sort_unstable();
    r_lat.sort_unstable();
    let (dr, rr) = (median(d_rates), median(r_rates));
    println!();
    println!("path              req/s (median)   p50 ms   p99 ms   errors");
    println!(
        "direct PostgreSQL {:>14.0} {:>8.3} {:>8.3} {:>8}",
        dr,
        percentile(&d_lat, 0.50),
        percentile(&d_lat, 0.99),
        d_err
    );
    println!(
        "through router    {:>14.0} {:>8.3} {:>8.3} {:>8}",
        rr,
        percentile(&r_lat, 0.50),
        percentile(&r_lat, 0.99),
        r_err
    );
    println!();
    println!("router / direct throughput: {:.2}", rr / dr);
    println!(
        "router p50 added: {:.3} ms",
        percentile(&r_lat, 0.50) - percentile(&d_lat, 0.50)
    );
    Ok(())
}
