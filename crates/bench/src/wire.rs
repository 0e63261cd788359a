//! `pgbench` over the PostgreSQL protocol three ways, interleaved in one
//! run: straight to PostgreSQL, through PgBouncer (transaction pooling),
//! and through a shardline router process (`pg_listen`), all ending at
//! the same PostgreSQL server: the one shard of a dedicated tenant with
//! bigint keys (pgbench's keys are integers), on `shardline dev`'s spare. Each round
//! runs one phase per path, the order rotating; the figures are medians
//! over rounds, and CPU per transaction of the proxy process (from
//! `/proc/PID/stat`) and of PostgreSQL (the postmaster and its children),
//! with the part of the proxy's CPU spent in the kernel (`stime`) and its
//! threads' context switches (`/proc/PID/task/*/status`) per
//! transaction: a proxy's CPU goes mostly to the kernel (system calls and
//! the loopback delivery they run), so these say where.
//!
//! PgBouncer runs as `postgres` (it refuses root) with `auth_type = any`,
//! logging in to the shard as its superuser; the router logs in as the
//! tenant's role. Both pool per transaction.
//!
//! `--unix` takes TCP loopback out of every path, for all three alike:
//! pgbench reaches PostgreSQL, PgBouncer and the router over their Unix
//! sockets, and PgBouncer and the router reach PostgreSQL over its own.
//! On a small machine most of a proxy's CPU is kernel TCP loopback work;
//! without it, what is left is closer to the proxy's own cost. The
//! PostgreSQL is then the bench's own (`unix_shard`), with dev's shard
//! settings and a socket beside its TCP port, registered as a shard
//! reserved for the tenant under a socket DSN (`host=<dir>`), so the
//! tenant's keyspace lands on it and the router follows that DSN.
//! PgBouncer gets `unix_socket_dir` and a socket `host` for the database;
//! the routers get `pg_unix_dir` beside `pg_listen` (the socket is
//! `<dir>/.s.PGSQL.<port of pg_listen>`, as PostgreSQL names its own).
//! Each still listens on TCP too, which the bench only waits on.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use shardline_api::manager::{CreateAppRequest, CreateTenantRequest, TableSpec};
use shardline_core::KeyType;

use crate::dev::{context_switches, cpu_micros, kernel_micros, pg_cpu_micros};
use crate::execute::median;
use crate::pgbench::{dsn_field, free_port, wait_port, wait_socket, Phase};
use crate::unix_shard::UnixShard;

/// Options of `shardline-bench wire`.
#[derive(Debug, clap::Args)]
pub struct WireArgs {
    /// pgbench clients in each phase.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5)]
    pub phase_secs: u64,
    /// Rounds (one phase per path each).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// pgbench's protocol mode: simple, extended or prepared (PgBouncer
    /// of Debian 12, 1.18, has no prepared statements in transaction
    /// pooling: with `prepared` it is left out).
    #[arg(long, default_value = "extended")]
    pub mode: String,
    /// Server connections of PgBouncer's pool and of the router's tenant
    /// pool.
    #[arg(long, default_value_t = 8)]
    pub pool: usize,
    /// pgbench scale (100,000 accounts each).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// The `shardline` binary [default: next to this one].
    #[arg(long)]
    pub shardline: Option<PathBuf>,
    /// Also run the router of another `shardline` binary (another build)
    /// as one more path, `shardline-2` and on, in the same rounds: two
    /// builds compared side by side on a noisy machine.
    #[arg(long = "compare", value_name = "BIN")]
    pub compare: Vec<PathBuf>,
    /// Every hop over Unix-domain sockets instead of TCP loopback:
    /// pgbench to PostgreSQL, PgBouncer and the router, and PgBouncer and
    /// the router to PostgreSQL (a PostgreSQL the bench starts itself).
    #[arg(long)]
    pub unix: bool,
}

/// The benchmark's tenant and app.
const BENCH: &str = "bench";

/// PgBouncer (a child of `runuser`), stopped on drop.
struct Bouncer {
    child: Child,
    pid: Option<u32>,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts PgBouncer in `dir` for database `db` of the server at `dsn`
/// (a socket `host` for a Unix one); with `unix` it listens on a socket
/// in `dir` too.
fn start_bouncer(
    dir: &Path,
    dsn: &str,
    db: &str,
    pool: usize,
    unix: bool,
) -> anyhow::Result<(Bouncer, u16)> {
    // runuser starts even when pgbouncer is missing: look first.
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("pgbouncer").is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin/pgbouncer").is_file();
    anyhow::ensure!(
        found,
        "pgbouncer is not installed: apt-get install pgbouncer"
    );
    let port = free_port()?;
    let host = dsn_field(dsn, "host").unwrap_or("127.0.0.1");
    let pg_port = dsn_field(dsn, "port").context("shard port")?;
    let user = dsn_field(dsn, "user").unwrap_or("postgres");
    let password = dsn_field(dsn, "password").unwrap_or("");
    std::fs::create_dir_all(dir)?;
    // Empty: no socket.
    let unix_socket_dir = if unix {
        format!("unix_socket_dir = {}", dir.display())
    } else {
        "unix_socket_dir =".to_string()
    };
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nbench = host={host} port={pg_port} dbname={db} user={user} password={password}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n{unix_socket_dir}\n\
             auth_type = any\npool_mode = transaction\ndefault_pool_size = {pool}\n\
             max_client_conn = 1000\nlogfile = {log}\npidfile =\n\
             ignore_startup_parameters = extra_float_digits\n",
            log = dir.join("pgbouncer.log").display()
        ),
    )?;
    // PgBouncer refuses to run as root: as postgres, who must read the
    // file and write the log.
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status();
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--", "pgbouncer"])
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start pgbouncer (apt-get install pgbouncer)")?;
    let mut b = Bouncer { child, pid: None };
    wait_port(port, "pgbouncer")?;
    if unix {
        wait_socket(dir, port, "pgbouncer")?;
    }
    b.pid = child_named(b.child.id(), "pgbouncer");
    Ok((b, port))
}

/// The pid of `parent`'s child process whose command is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent)
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        {
            return Some(pid);
        }
    }
    None
}

/// One `pgbench -S` phase as `args` say.
fn pgbench(args: &WireArgs, url: &str) -> anyhow::Result<Phase> {
    let opts: Vec<String> = [
        "-S",
        "-M",
        &args.mode,
        "-c",
        &args.clients.to_string(),
        "-j",
        "2",
        "-T",
        &args.phase_secs.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    crate::pgbench::run(&opts, url)
}

pub fn run(args: WireArgs) -> anyhow::Result<()> {
    let bin = crate::dev::shardline_bin(&args.shardline)?;
    // With --unix the tenant's shard is the bench's own server: no spare.
    let spares = if args.unix { "0" } else { "1" };
    let (dev, info) = crate::dev::start_dev(&bin, &["--shards", "1", "--spare-shards", spares])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let own = match args.unix {
        true => Some(rt.block_on(UnixShard::start())?),
        false => None,
    };
    let router_dir = own.as_ref().map(UnixShard::router_dir);
    let pg_port = free_port()?;
    let router_config = |port: u16| {
        let mut config = format!(
            "pg_listen = \"127.0.0.1:{port}\"\ntenant_pool_size = {}",
            args.pool
        );
        if let Some(dir) = &router_dir {
            let dir = Value::from(dir.display().to_string());
            config.push_str(&format!("\npg_unix_dir = {dir}"));
        }
        config
    };
    let router = crate::dev::start_router(&bin, &info, "wire", &router_config(pg_port))?;
    wait_port(pg_port, "the router's PostgreSQL listener")?;
    if let Some(dir) = &router_dir {
        wait_socket(dir, pg_port, "the router")?;
    }
    let mut others = Vec::new();
    for (i, other) in args.compare.iter().enumerate() {
        let port = free_port()?;
        let r = crate::dev::start_router(
            other,
            &info,
            &format!("wire-{}", i + 2),
            &router_config(port),
        )?;
        wait_port(port, "the other router's PostgreSQL listener")?;
        if let Some(dir) = &router_dir {
            wait_socket(dir, port, "the other router")?;
        }
        println!("shardline-{}: {}", i + 2, other.display());
        others.push((r, port));
    }
    let (dsn, data_dir) = match &own {
        Some(own) => (own.dsn(), own.data_dir().to_path_buf()),
        None => {
            let shard = info["shards"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["id"] == "spare-0"))
                .context("dev.json has no spare-0")?;
            let dsn = shard["dsn"].as_str().context("dsn")?.to_string();
            let data_dir = PathBuf::from(shard["data_dir"].as_str().context("data_dir")?);
            (dsn, data_dir)
        }
    };
    let pg_socket = own.as_ref().map(UnixShard::socket_dir);
    let (pg_name, keyspace, token) = rt.block_on(prepare(&info, &dsn, args.scale, own.as_ref()))?;
    let dir = std::env::temp_dir().join(format!("shardline-bench-{}-bouncer", std::process::id()));
    let password = dsn_field(&dsn, "password").unwrap_or("");
    let pg = dsn_field(&dsn, "port").context("port")?;
    let mut paths: Vec<(&str, String, Option<u32>)> = vec![(
        "direct",
        url("postgres", password, pg_socket, pg, &pg_name),
        None,
    )];
    let bouncer = if args.mode == "prepared" {
        println!("-M prepared: PgBouncer 1.18 keeps no prepared statements in transaction pooling; left out");
        None
    } else {
        let (bouncer, bouncer_port) = start_bouncer(&dir, &dsn, &pg_name, args.pool, args.unix)?;
        let bouncer_pid = bouncer.pid.context("pgbouncer's pid")?;
        let socket = args.unix.then_some(dir.as_path());
        paths.push((
            "pgbouncer",
            url("postgres", password, socket, bouncer_port, "bench"),
            Some(bouncer_pid),
        ));
        Some(bouncer)
    };
    let router_socket = router_dir.as_deref();
    paths.push((
        "shardline",
        url(BENCH, &token, router_socket, pg_port, &keyspace),
        Some(router.pid()),
    ));
    for (i, (r, port)) in others.iter().enumerate() {
        paths.push((
            ["shardline-2", "shardline-3", "shardline-4"]
                .get(i)
                .copied()
                .unwrap_or("shardline-n"),
            url(BENCH, &token, router_socket, *port, &keyspace),
            Some(r.pid()),
        ));
    }
    if args.unix {
        println!(
            "all hops over Unix-domain sockets: pgbench to PostgreSQL, PgBouncer and the \
             router; PgBouncer and the router to PostgreSQL"
        );
    }
    let n = paths.len();
    // Warm up each path (pools, prepared statements, caches).
    for (name, url, _) in &paths {
        let warm = WireArgs {
            clients: args.clients,
            phase_secs: 1,
            rounds: 1,
            mode: args.mode.clone(),
            pool: args.pool,
            scale: args.scale,
            shardline: None,
            compare: Vec::new(),
            unix: args.unix,
        };
        pgbench(&warm, url).with_context(|| format!("warm up {name}"))?;
    }
    let mut tps = vec![Vec::new(); n];
    let mut lat = vec![Vec::new(); n];
    let mut proxy_cpu = vec![0u64; n];
    let mut pg_cpu = vec![0u64; n];
    let mut kernel = vec![0u64; n];
    let mut switches = vec![0u64; n];
    let mut txns = vec![0u64; n];
    let mut failed = vec![0u64; n];
    for round in 0..args.rounds {
        let mut line = format!("round {}:", round + 1);
        for k in 0..n {
            let i = (round + k) % n;
            let (name, url, pid) = &paths[i];
            let (p0, g0) = (pid.map_or(0, cpu_micros), pg_cpu_micros(&data_dir));
            let (k0, w0) = (
                pid.map_or(0, kernel_micros),
                pid.map_or(0, context_switches),
            );
            let phase = pgbench(&args, url).with_context(|| format!("pgbench through {name}"))?;
            proxy_cpu[i] += pid.map_or(0, cpu_micros) - p0;
            kernel[i] += pid.map_or(0, kernel_micros).saturating_sub(k0);
            switches[i] += pid.map_or(0, context_switches).saturating_sub(w0);
            pg_cpu[i] += pg_cpu_micros(&data_dir).saturating_sub(g0);
            txns[i] += phase.transactions;
            failed[i] += phase.failed;
            tps[i].push(phase.tps);
            lat[i].push(phase.latency_ms);
            line.push_str(&format!("  {name} {:.0} tps", phase.tps));
        }
        println!("{line}");
    }
    println!();
    println!(
        "pgbench -S -M {} -c {} -j 2, pool {}, {} s phases, {} rounds, scale {}{}",
        args.mode,
        args.clients,
        args.pool,
        args.phase_secs,
        args.rounds,
        args.scale,
        if args.unix {
            ", all hops over Unix sockets"
        } else {
            ""
        }
    );
    let path = if args.unix { "path (unix)" } else { "path" };
    println!("{path:<11} tps (median)  latency ms (median)  proxy CPU µs/txn  PostgreSQL CPU µs/txn  failed  proxy kernel µs/txn  proxy switches/txn");
    let mut medians = vec![0.0; n];
    for (i, (name, _, pid)) in paths.iter().enumerate() {
        medians[i] = median(tps[i].clone());
        let per = |cpu: u64| cpu as f64 / txns[i].max(1) as f64;
        let proxy =
            |v: u64, digits: usize| pid.map_or("-".to_string(), |_| format!("{:.digits$}", per(v)));
        println!(
            "{name:<11} {:>12.0}  {:>19.3}  {:>16}  {:>21.1}  {:>6}  {:>17}  {:>18}",
            medians[i],
            median(lat[i].clone()),
            proxy(proxy_cpu[i], 1),
            per(pg_cpu[i]),
            failed[i],
            proxy(kernel[i], 1),
            proxy(switches[i], 2),
        );
    }
    println!();
    let median_of = |name: &str| {
        paths
            .iter()
            .position(|p| p.0 == name)
            .map(|i| medians[i].max(1.0))
    };
    let ratio = |a: &str, b: &str| match (median_of(a), median_of(b)) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    println!(
        "shardline / pgbouncer throughput: {}; shardline / direct: {}; pgbouncer / direct: {}",
        ratio("shardline", "pgbouncer"),
        ratio("shardline", "direct"),
        ratio("pgbouncer", "direct")
    );
    for (name, _, _) in paths.iter().filter(|p| p.0.starts_with("shardline-")) {
        println!(
            "shardline / {name} throughput: {}",
            ratio("shardline", name)
        );
    }
    drop(bouncer);
    let _ = std::fs::remove_dir_all(&dir);
    drop(others);
    drop(router);
    drop(dev);
    if let Some(own) = own {
        rt.block_on(own.stop())?;
    }
    Ok(())
}

/// pgbench's URL of database `db` as `user`: TCP on 127.0.0.1, or the
/// Unix socket in `socket_dir`.
fn url(
    user: &str,
    password: &str,
    socket_dir: Option<&Path>,
    port: impl Display,
    db: &str,
) -> String {
    match socket_dir {
        None => format!("postgresql://{user}:{password}@127.0.0.1:{port}/{db}"),
        Some(dir) => format!(
            "postgresql://{user}:{password}@/{db}?host={}&port={port}",
            dir.display()
        ),
    }
}

/// Makes tenant `bench` (dedicated, bigint keys, on the spare shard, or
/// with `own` on that server, registered here as a shard for it) and its
/// app, loads pgbench's tables into its database and schema
/// (owned by its role, so both the superuser paths and the router's see
/// them), makes them the superuser's search path there, and declares
/// their shard-key columns; returns the tenant's PostgreSQL name, its
/// keyspace and the app's token.
async fn prepare(
    info: &Value,
    dsn: &str,
    scale: u32,
    own: Option<&UnixShard>,
) -> anyhow::Result<(String, String, String)> {
    let manager = shardline_client::ManagerClient::new(
        info["manager_url"].as_str().context("manager_url")?,
        info["admin_token"].as_str().map(str::to_string),
    )?;
    if let Some(own) = own {
        own.register(&manager, BENCH).await?;
    }
    let tenant = manager
        .create_tenant(&CreateTenantRequest {
            id: BENCH.into(),
            dedicated: true,
            shards: Some(1),
            key_type: KeyType::Bigint,
            ..CreateTenantRequest::default()
        })
        .await
        .context("create tenant bench")?;
    if let Some(own) = own {
        own.check_taken(&manager, BENCH).await?;
    }
    let token = manager
        .create_app(&CreateAppRequest {
            name: BENCH.into(),
            tenant: Some(BENCH.into()),
            ..CreateAppRequest::default()
        })
        .await
        .context("create the bench app")?
        .token;
    let pg_name = tenant.pg_name;
    let url = url(
        "postgres",
        dsn_field(dsn, "password").unwrap_or(""),
        own.map(UnixShard::socket_dir),
        dsn_field(dsn, "port").context("port")?,
        &pg_name,
    );
    let (c, conn) =
        tokio_postgres::connect(&format!("{dsn} dbname={pg_name}"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "ALTER ROLE postgres IN DATABASE {pg_name} SET search_path = {pg_name}"
    ))
    .await?;
    let status = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run pgbench -i")?;
    if !status.success() {
        bail!("pgbench -i failed");
    }
    for (table, key) in [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_history", "aid"),
    ] {
        c.batch_execute(&format!("ALTER TABLE {pg_name}.{table} OWNER TO {pg_name}"))
            .await?;
        manager
            .set_table(
                &tenant.keyspace,
                table,
                &TableSpec {
                    shard_key: key.to_string(),
                },
            )
            .await?;
    }
    // The router follows the catalog: give it a moment to have the keys.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((pg_name, tenant.keyspace, token))
}
