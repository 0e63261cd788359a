//! Scatter-gather over 4 shards through the router's PostgreSQL port:
//! a read that names no shard key runs on every shard of the keyspace at
//! once and the router merges the answers (`count`/`sum` added up).
//!
//! Starts `shardline dev --shards 4 --spare-shards 0` and a `shardline
//! router` process of its own with `pg_listen`; creates `items (id
//! text PRIMARY KEY, v int)` for the default tenant by a migration of
//! keyspace `default`, declares `id` its shard key and loads `--rows`
//! rows (`id` '1' to '10000') through the router as the default app
//! (multi-row `INSERT`s the router splits per shard). `id` is text
//! because keyspace `default` has text keys: a bigint column cannot be
//! its shard key (`hashtextextended(bigint, bigint)` does not exist).
//! Checks once
//! that every shard got rows and that the router's merged `count(*)`,
//! `sum(v)` equal the sums of the shards' own. Then each round runs one
//! `pgbench -f` phase per path, the order rotating:
//! - `direct-one-shard`: `SELECT count(*), sum(v) FROM items` straight
//!   to shard 0 (the default tenant's database, as the superuser): the
//!   single-shard baseline;
//! - `router-keyed`: `SELECT v FROM items WHERE id = :id` with a random
//!   id, through the router (one shard per statement);
//! - `router-scatter`: `SELECT count(*), sum(v) FROM items` through the
//!   router (all 4 shards, merged).
//!
//! Figures are medians over rounds (each round's figures are printed as
//! well) of throughput, latency, and CPU per transaction of the router
//! process (`/proc/PID/stat`) and of PostgreSQL (the 4 shards'
//! postmasters and their children, summed). Nothing is asserted about
//! timings.

use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;
use shardline_api::manager::{ApplyMigrationRequest, MigrationOutcome, TableSpec};
use shardline_core::catalog::quote_ident;

use crate::dev::{cpu_micros, pg_cpu_micros};
use crate::execute::median;
use crate::pgbench::{dsn_field, free_port, wait_port, Phase};

/// Options of `shardline-bench scatter`.
#[derive(Debug, clap::Args)]
pub struct ScatterArgs {
    /// pgbench clients in each phase.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Rounds (one phase per path each).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Rows of `items`, spread over the 4 shards by `id`.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u64,
    /// pgbench's protocol mode: simple or extended.
    #[arg(long, default_value = "extended")]
    pub mode: String,
    /// The `shardline` binary [default: next to this one].
    #[arg(long)]
    pub shardline: Option<PathBuf>,
}

/// Shards of keyspace `default`.
const SHARDS: usize = 4;

/// The default tenant, its keyspace and its app (dev.json's `app_token`).
const TENANT: &str = "default";
const KEYSPACE: &str = "default";
const APP: &str = "default";

/// The merged read.
const SCATTER_SQL: &str = "SELECT count(*), sum(v) FROM items;";

/// One shard of dev.json.
struct Shard {
    id: String,
    dsn: String,
    data_dir: PathBuf,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `pgbench -f script` against `url` for `secs` seconds.
fn pgbench(args: &ScatterArgs, script: &Path, url: &str, secs: u64) -> anyhow::Result<Phase> {
    let opts: Vec<String> = vec![
        "-M".into(),
        args.mode.clone(),
        "-f".into(),
        script.display().to_string(),
        "-c".into(),
        args.clients.to_string(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        secs.to_string(),
    ];
    crate::pgbench::run(&opts, url)
}

/// A benchmarked path: its name, pgbench script, URL, and whether it
/// goes through the router.
struct BenchPath {
    name: &'static str,
    script: PathBuf,
    url: String,
    via_router: bool,
}

pub fn run(args: ScatterArgs) -> anyhow::Result<()> {
    ensure!(
        args.rows >= SHARDS as u64,
        "--rows must be at least {SHARDS}"
    );
    let bin = crate::dev::shardline_bin(&args.shardline)?;
    let (dev, info) = crate::dev::start_dev(&bin, &["--shards", "4", "--spare-shards", "0"])?;
    let pg_port = free_port()?;
    let router_id = "scatter";
    // Where start_router puts its config and log (kept on error).
    let router_dir = std::env::temp_dir().join(format!(
        "shardline-bench-{}-{router_id}",
        std::process::id()
    ));
    let router = crate::dev::start_router(
        &bin,
        &info,
        router_id,
        &format!(
            "pg_listen = \"127.0.0.1:{pg_port}\"\ntenant_pool_size = {}",
            args.clients
        ),
    )?;
    wait_port(pg_port, "the router's PostgreSQL listener")?;
    let shards: Vec<Shard> = info["shards"]
        .as_array()
        .context("dev.json has no shards")?
        .iter()
        .filter(|s| s["spare"] != true)
        .map(|s| {
            Ok(Shard {
                id: s["id"].as_str().context("shard id")?.to_string(),
                dsn: s["dsn"].as_str().context("shard dsn")?.to_string(),
                data_dir: PathBuf::from(s["data_dir"].as_str().context("shard data_dir")?),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        shards.len() == SHARDS,
        "dev.json lists {} regular shards, not {SHARDS}",
        shards.len()
    );
    let app_token = info["app_token"].as_str().context("dev.json app_token")?;
    let router_url = format!("postgresql://{APP}:{app_token}@127.0.0.1:{pg_port}/{KEYSPACE}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pg_name = rt.block_on(prepare(&info, &shards, &router_url, args.rows))?;
    rt.block_on(verify(&shards, &pg_name, &router_url, args.rows))?;
    drop(rt);

    let scripts = TempDir(std::env::temp_dir().join(format!(
        "shardline-bench-{}-scatter-scripts",
        std::process::id()
    )));
    std::fs::create_dir_all(&scripts.0)?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let p = scripts.0.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let scatter_script = write("scatter.sql", &format!("{SCATTER_SQL}\n"))?;
    let keyed_script = write(
        "keyed.sql",
        &format!(
            "\\set id random(1, {})\nSELECT v FROM items WHERE id = :id;\n",
            args.rows
        ),
    )?;
    let first = &shards[0];
    let password = dsn_field(&first.dsn, "password").unwrap_or("");
    let port0 = dsn_field(&first.dsn, "port").context("shard port")?;
    let paths = [
        BenchPath {
            name: "direct-one-shard",
            script: scatter_script.clone(),
            url: format!("postgresql://postgres:{password}@127.0.0.1:{port0}/{pg_name}"),
            via_router: false,
        },
        BenchPath {
            name: "router-keyed",
            script: keyed_script,
            url: router_url.clone(),
            via_router: true,
        },
        BenchPath {
            name: "router-scatter",
            script: scatter_script,
            url: router_url.clone(),
            via_router: true,
        },
    ];
    let pg_cpu = || -> u64 { shards.iter().map(|s| pg_cpu_micros(&s.data_dir)).sum() };
    // Warm up each path (pools, statement analyses, caches).
    for p in &paths {
        pgbench(&args, &p.script, &p.url, 1).with_context(|| format!("warm up {}", p.name))?;
    }
    let n = paths.len();
    // Per phase, one entry per round.
    let mut tps = vec![Vec::new(); n];
    let mut lat = vec![Vec::new(); n];
    let mut router_cpu = vec![Vec::new(); n];
    let mut pg = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    for round in 0..args.rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let p = &paths[i];
            let (r0, g0) = (cpu_micros(router.pid()), pg_cpu());
            let phase = pgbench(&args, &p.script, &p.url, args.phase_secs)
                .with_context(|| format!("pgbench {}", p.name))?;
            // Let the backends of pgbench's connections exit and be
            // reaped (their CPU then shows in the postmaster's).
            std::thread::sleep(Duration::from_millis(200));
            let per = |cpu: u64| cpu as f64 / phase.transactions.max(1) as f64;
            let r = per(cpu_micros(router.pid()).saturating_sub(r0));
            let g = per(pg_cpu().saturating_sub(g0));
            println!(
                "round {}  {:<16} {:>7.0} tps  {:>7.3} ms  router {:>7} µs/txn  PostgreSQL {:>7.1} µs/txn",
                round + 1,
                p.name,
                phase.tps,
                phase.latency_ms,
                if p.via_router {
                    format!("{r:.1}")
                } else {
                    "-".to_string()
                },
                g
            );
            router_cpu[i].push(r);
            pg[i].push(g);
            failed[i] += phase.failed;
            tps[i].push(phase.tps);
            lat[i].push(phase.latency_ms);
        }
    }
    println!();
    println!(
        "pgbench -f -M {} -c {} -j 2, {} s phases, {} rounds, {} rows over {SHARDS} shards; medians over rounds",
        args.mode, args.clients, args.phase_secs, args.rounds, args.rows
    );
    println!(
        "path              tps (median)  latency ms (median)  router CPU µs/txn  PostgreSQL CPU µs/txn  failed"
    );
    let mut tps_med = vec![0.0; n];
    let mut router_per = vec![0.0; n];
    let mut pg_per = vec![0.0; n];
    for (i, p) in paths.iter().enumerate() {
        tps_med[i] = median(tps[i].clone());
        router_per[i] = median(router_cpu[i].clone());
        pg_per[i] = median(pg[i].clone());
        println!(
            "{:<16}  {:>12.0}  {:>19.3}  {:>17}  {:>21.1}  {:>6}",
            p.name,
            tps_med[i],
            median(lat[i].clone()),
            if p.via_router {
                format!("{:.1}", router_per[i])
            } else {
                "-".to_string()
            },
            pg_per[i],
            failed[i]
        );
    }
    println!();
    println!(
        "router-scatter / direct-one-shard throughput: {:.2}; router-scatter / router-keyed throughput: {:.2}",
        tps_med[2] / tps_med[0].max(1.0),
        tps_med[2] / tps_med[1].max(1.0)
    );
    println!(
        "router CPU per txn, router-scatter / router-keyed: {:.2}; PostgreSQL CPU per txn, router-scatter / direct-one-shard: {:.2}",
        router_per[2] / router_per[1].max(f64::MIN_POSITIVE),
        pg_per[2] / pg_per[0].max(f64::MIN_POSITIVE)
    );
    drop(router);
    let _ = std::fs::remove_dir_all(&router_dir);
    drop(dev);
    // start_dev's log, kept on error.
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("shardline-bench-{}.log", std::process::id())),
    );
    Ok(())
}

/// Creates `items` in keyspace `default` by a migration, declares its
/// shard key, makes the tenant's schema the superuser's search path in
/// its database on every shard (for the direct path), and loads `rows`
/// rows through the router; returns the tenant's PostgreSQL name (its
/// database, schema and role on every shard).
async fn prepare(
    info: &Value,
    shards: &[Shard],
    router_url: &str,
    rows: u64,
) -> anyhow::Result<String> {
    let manager = shardline_client::ManagerClient::new(
        info["manager_url"].as_str().context("manager_url")?,
        info["admin_token"].as_str().map(str::to_string),
    )?;
    let tenant = manager
        .get_tenant(TENANT)
        .await
        .context("read tenant default")?;
    ensure!(
        tenant.keyspace == KEYSPACE,
        "tenant default is in keyspace {}",
        tenant.keyspace
    );
    let result = manager
        .apply_migration(
            KEYSPACE,
            &ApplyMigrationRequest {
                name: "bench_items".into(),
                sql: "CREATE TABLE items (id text PRIMARY KEY, v int)".into(),
            },
        )
        .await
        .context("apply the items migration")?;
    for s in &result.shards {
        ensure!(
            s.outcome != MigrationOutcome::Failed,
            "the items migration failed on {}: {}",
            s.shard,
            s.error.as_deref().unwrap_or("?")
        );
    }
    manager
        .set_table(
            KEYSPACE,
            "items",
            &TableSpec {
                shard_key: "id".into(),
            },
        )
        .await
        .context("declare items.id the shard key")?;
    let pg_name = tenant.pg_name;
    for s in shards {
        let (c, task) = connect(&format!("{} dbname={pg_name}", s.dsn), &s.id).await?;
        c.batch_execute(&format!(
            "ALTER ROLE postgres IN DATABASE {db} SET search_path = {db}",
            db = quote_ident(&pg_name)
        ))
        .await?;
        drop(c);
        let _ = task.await;
    }
    // The router follows the catalog: give it a moment to have the key.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c, task) = connect(router_url, "the router's PostgreSQL port").await?;
    // Multi-row simple-protocol INSERTs: the router splits each per shard.
    let batch = 500u64;
    let mut id = 1u64;
    while id <= rows {
        let end = (id + batch - 1).min(rows);
        let values: Vec<String> = (id..=end)
            .map(|i| format!("('{i}', {})", v_of(i)))
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO items (id, v) VALUES {}",
            values.join(", ")
        ))
        .await
        .with_context(|| format!("insert rows {id}..={end} through the router"))?;
        id = end + 1;
    }
    drop(c);
    let _ = task.await;
    Ok(pg_name)
}

/// The `v` of row `id`.
fn v_of(id: u64) -> i64 {
    (id * 7 % 1000) as i64
}

/// Checks that every shard got rows, that they add up to `rows` (and
/// the expected sum), and that the router's merged `count(*)`, `sum(v)`
/// equal the shards' sums, with the simple and the extended protocol.
async fn verify(
    shards: &[Shard],
    pg_name: &str,
    router_url: &str,
    rows: u64,
) -> anyhow::Result<()> {
    let mut count = 0i64;
    let mut sum = 0i64;
    let mut per_shard = Vec::new();
    for s in shards {
        let (c, task) = connect(&format!("{} dbname={pg_name}", s.dsn), &s.id).await?;
        let row = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(v), 0)::bigint FROM {}.items",
                    quote_ident(pg_name)
                ),
                &[],
            )
            .await
            .with_context(|| format!("count items on {}", s.id))?;
        let (n, v): (i64, i64) = (row.get(0), row.get(1));
        ensure!(n > 0, "shard {} got no rows of items", s.id);
        per_shard.push(format!("{} {n}", s.id));
        count += n;
        sum += v;
        drop(c);
        let _ = task.await;
    }
    let expected_sum: i64 = (1..=rows).map(v_of).sum();
    ensure!(
        count == rows as i64 && sum == expected_sum,
        "the shards hold {count} rows summing to {sum}, not {rows} summing to {expected_sum}"
    );
    println!("rows per shard: {}", per_shard.join(", "));
    let (c, task) = connect(router_url, "the router's PostgreSQL port").await?;
    let simple = c
        .simple_query(SCATTER_SQL)
        .await
        .context("the scatter read through the router (simple protocol)")?;
    let merged: Vec<(Option<String>, Option<String>)> = simple
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).map(str::to_string), r.get(1).map(str::to_string)))
            }
            _ => None,
        })
        .collect();
    let want = (Some(count.to_string()), Some(sum.to_string()));
    ensure!(
        merged == [want.clone()],
        "the router's merged count(*), sum(v) (simple protocol) is {merged:?}, the shards' sums are {want:?}"
    );
    let row = c
        .query_one(SCATTER_SQL, &[])
        .await
        .context("the scatter read through the router (extended protocol)")?;
    let got: (i64, i64) = (row.get(0), row.get(1));
    ensure!(
        got == (count, sum),
        "the router's merged count(*), sum(v) (extended protocol) is {got:?}, the shards' sums are ({count}, {sum})"
    );
    println!("router scatter read: count {count}, sum {sum}: equal to the shards' sums");
    drop(c);
    let _ = task.await;
    Ok(())
}

/// A client of `dsn` (`what` names it in errors) and its connection's
/// task.
async fn connect(
    dsn: &str,
    what: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to {what}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((c, task))
}
