//! The noisy-neighbor run: tenant A sends ten times its rate limit while
//! tenant B sends within its own, through one router of a real
//! `shardline dev`. Phases alternate (B alone, then B with A) so the
//! machine's noise hits both alike; the figures are B's errors and
//! latency percentiles alone vs. beside A, and how A's excess was answered.
//!
//! Both tenants live in the shared keyspace, on the same shards, and send
//! open-loop traffic (requests start on schedule whatever the answers'
//! latency), as independent clients would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shardline_api::manager::{
    ApplyMigrationRequest, CreateAppRequest, CreateTenantRequest, Limits, TenantConfig,
};
use shardline_client::ManagerClient;

use crate::execute::{median, percentile};

/// Options of `shardline-bench noisy`.
#[derive(Debug, clap::Args)]
pub struct NoisyArgs {
    /// Tenant A's limit (requests/s, and its burst); A sends 10 times it.
    #[arg(long, default_value_t = 200)]
    pub a_limit: u32,
    /// Tenant B's limit (requests/s and burst).
    #[arg(long, default_value_t = 400)]
    pub b_limit: u32,
    /// Tenant B's send rate (requests/s), within its limit.
    #[arg(long, default_value_t = 200)]
    pub b_rate: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Rounds; each runs "B alone" then "B with A".
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The `shardline` binary [default: next to this one].
    #[arg(long)]
    pub shardline: Option<PathBuf>,
}

type Http = Client<HttpConnector, Full<Bytes>>;

const ROWS: u32 = 1000;

/// The answers one sender got: latency (µs) of each 200, and counts.
#[derive(Default)]
struct Tally {
    ok_micros: Vec<u32>,
    limited: usize,
    other: usize,
}

impl Tally {
    /// The latencies of the 200s, sorted.
    fn sorted(&self) -> Vec<u32> {
        let mut v = self.ok_micros.clone();
        v.sort_unstable();
        v
    }

    fn add(&mut self, other: Tally) {
        self.ok_micros.extend(other.ok_micros);
        self.limited += other.limited;
        self.other += other.other;
    }
}

/// Sends `rate` requests per second for `secs`, open loop, each a point
/// SELECT of a random key of the tenant's table.
async fn open_loop(http: Http, url: Arc<str>, token: Arc<str>, rate: u32, secs: u64) -> Tally {
    let period = Duration::from_millis(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < until {
        tick.tick().await;
        // Requests due by now, so the rate holds at any timer resolution.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            sent += 1;
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            let key = format!("k{}", rand::random_range(0..ROWS));
            tasks.spawn(async move { one(&http, &url, &token, &key).await });
        }
    }
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((200, micros)) => tally.ok_micros.push(micros),
            Ok((429, _)) => tally.limited += 1,
            _ => tally.other += 1,
        }
    }
    tally
}

/// One request: its status (0 on a transport error) and latency in µs.
async fn one(http: &Http, url: &str, token: &str, key: &str) -> (u16, u32) {
    let body =
        json!({"shard_key": key, "sql": "SELECT v FROM noisy WHERE k = $1", "params": [key]});
    let req = hyper::Request::post(format!("{url}/v1/execute"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())));
    let Ok(req) = req else { return (0, 0) };
    let t = Instant::now();
    match http.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ok = resp.into_body().collect().await.is_ok();
            (if ok { status } else { 0 }, t.elapsed().as_micros() as u32)
        }
        Err(_) => (0, 0),
    }
}

/// Runs the benchmark and prints the figures.
pub fn run(args: NoisyArgs) -> anyhow::Result<()> {
    let bin = crate::dev::shardline_bin(&args.shardline)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (dev, info) = crate::dev::start_dev(&bin, &["--shards", "2", "--spare-shards", "0"])?;
    let result = rt.block_on(bench(&args, &info));
    drop(dev);
    result
}

async fn setup(info: &Value, args: &NoisyArgs) -> anyhow::Result<(String, String)> {
    let admin = ManagerClient::new(
        info["manager_url"].as_str().context("manager_url")?,
        Some(info["admin_token"].as_str().context("admin_token")?.into()),
    )?;
    admin
        .apply_migration(
            "default",
            &ApplyMigrationRequest {
                name: "noisy_001".into(),
                sql: "CREATE TABLE noisy (k text PRIMARY KEY, v bigint NOT NULL)".into(),
            },
        )
        .await?;
    let mut tokens = Vec::new();
    for (id, limit) in [("noisy-a", args.a_limit), ("noisy-b", args.b_limit)] {
        admin
            .create_tenant(&CreateTenantRequest {
                id: id.into(),
                config: TenantConfig {
                    limits: Limits {
                        requests_per_second: Some(limit),
                        burst: Some(limit),
                        ..Limits::default()
                    },
                    ..TenantConfig::default()
                },
                ..CreateTenantRequest::default()
            })
            .await?;
        let app = admin
            .create_app(&CreateAppRequest {
                name: format!("{id}-app"),
                tenant: Some(id.into()),
                ..CreateAppRequest::default()
            })
            .await?;
        tokens.push(app.token);
    }
    Ok((tokens[0].clone(), tokens[1].clone()))
}

async fn load(http: &Http, url: &str, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..ROWS {
        loop {
            let body = json!({"shard_key": format!("k{i}"),
                "sql": "INSERT INTO noisy (k, v) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                "params": [format!("k{i}"), i]});
            let req = hyper::Request::post(format!("{url}/v1/execute"))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))?;
            let resp = http.request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            if status.is_success() {
                break;
            }
            // The router learns new apps within milliseconds; rate limits
            // may also push back while loading.
            anyhow::ensure!(Instant::now() < deadline, "loading got HTTP {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

fn line(name: &str, t: &Tally) {
    let sorted = t.sorted();
    println!(
        "{name:<22} {:>8} {:>8} {:>8} {:>9.3} {:>9.3}",
        sorted.len(),
        t.limited,
        t.other,
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
    );
}

async fn bench(args: &NoisyArgs, info: &Value) -> anyhow::Result<()> {
    let url: Arc<str> = info["router_url"].as_str().context("router_url")?.into();
    let (token_a, token_b) = setup(info, args).await?;
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    // Slowly, within both limits.
    load(&http, &url, &token_a).await?;
    load(&http, &url, &token_b).await?;
    let (token_a, token_b): (Arc<str>, Arc<str>) = (token_a.into(), token_b.into());
    let a_rate = args.a_limit * 10;
    println!(
        "noisy neighbor: A limited to {} req/s sends {a_rate} req/s; B limited to {} req/s sends {} req/s; \
         {} rounds of {} s per phase",
        args.a_limit, args.b_limit, args.b_rate, args.rounds, args.phase_secs
    );
    // Warm the pools of both tenants.
    open_loop(http.clone(), url.clone(), token_b.clone(), args.b_rate, 1).await;
    open_loop(http.clone(), url.clone(), token_a.clone(), args.a_limit, 1).await;

    let (mut alone, mut beside, mut a_all) = (Tally::default(), Tally::default(), Tally::default());
    let (mut p99_alone, mut p99_beside) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let b = open_loop(
            http.clone(),
            url.clone(),
            token_b.clone(),
            args.b_rate,
            args.phase_secs,
        )
        .await;
        let b_alone_p99 = percentile(&b.sorted(), 0.99);
        p99_alone.push(b_alone_p99);
        alone.add(b);

        let a_task = tokio::spawn(open_loop(
            http.clone(),
            url.clone(),
            token_a.clone(),
            a_rate,
            args.phase_secs,
        ));
        let b = open_loop(
            http.clone(),
            url.clone(),
            token_b.clone(),
            args.b_rate,
            args.phase_secs,
        )
        .await;
        let a = a_task.await?;
        let b_beside_p99 = percentile(&b.sorted(), 0.99);
        p99_beside.push(b_beside_p99);
        println!(
            "round {}: B p99 alone {:.3} ms, beside A {:.3} ms; A: {} ok, {} rate-limited",
            round + 1,
            b_alone_p99,
            b_beside_p99,
            a.ok_micros.len(),
            a.limited
        );
        beside.add(b);
        a_all.add(a);
    }
    println!();
    println!("phase                        ok  429s   other   p50 ms    p99 ms");
    line("B alone", &alone);
    line("B beside A", &beside);
    line("A (10x its limit)", &a_all);
    let (m_alone, m_beside) = (median(p99_alone), median(p99_beside));
    println!();
    println!(
        "B p99 beside A / alone (medians of per-round p99s): {m_beside:.3} / {m_alone:.3} ms = {:.2}",
        m_beside / m_alone
    );
    let a_total = a_all.ok_micros.len() + a_all.limited + a_all.other;
    println!(
        "A: {a_total} sent, {} served ({:.0} req/s), {} answered 429 ({:.1}%)",
        a_all.ok_micros.len(),
        a_all.ok_micros.len() as f64 / (args.rounds as f64 * args.phase_secs as f64),
        a_all.limited,
        100.0 * a_all.limited as f64 / a_total.max(1) as f64
    );
    println!(
        "B errors: {} alone, {} beside A",
        alone.limited + alone.other,
        beside.limited + beside.other
    );
    Ok(())
}
