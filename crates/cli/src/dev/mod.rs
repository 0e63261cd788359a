//! `shardline dev`: everything on one machine. Starts N local PostgreSQL
//! clusters plus a few spare ones, a manager (embedded catalog) and a
//! router in this process; creates keyspace `default` over the N shards,
//! tenant `default` in it and a default client app of that tenant; leaves
//! the spare shards registered but in no keyspace, for dedicated tenants
//! (`shardline tenant create acme --dedicated --shards 2`); writes the
//! endpoints and tokens to `DIR/dev.json`, and on Ctrl-C or SIGTERM stops
//! all of it. A second run on the same DIR reuses the data, ports and
//! tokens, and starts every shard of the first, spare or taken.
//!
//! With `--replicas N` each regular shard also gets N streaming replicas
//! (`pg/<shard>-r<k>`, see [`replicas`]), registered with the shard and
//! recorded in dev.json; `dev` says it is running once they serve
//! eventual reads. A restart starts every cluster dev.json names,
//! whatever its role now: after a failover a former replica may be the
//! primary and the former primary fenced (started, never routed to).
//!
//! # Layout
//! - this file: flags, planning, starting clusters and servers, bootstrap.
//! - [`replicas`]: planning, cloning and registering replicas.
//! - [`files`]: the dev clusters' settings, private files.

mod files;
mod ha;
mod replicas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use shardline_api::manager::{
    CreateAppRequest, CreateKeyspaceRequest, CreateTenantRequest, RegisterShardRequest, ShardInfo,
};
use shardline_api::router::DEFAULT_KEYSPACE;
use shardline_client::{ClientError, ManagerClient};
use shardline_localpg::{
    free_port, init_cluster, make_shared_dir, start_cluster, ClusterConfig, LocalPgError,
    PgBinaries, RunningCluster, StopMode,
};
use tokio_util::sync::CancellationToken;

use crate::endpoints::{default_data_dir, DevInfo, DevShard, ROOT_DATA_DIR};
use files::{cluster_config, write_private};

/// The default app's name.
const DEFAULT_APP: &str = "default";

/// The default tenant's id; it lives in keyspace `default`.
const DEFAULT_TENANT: &str = "default";

/// Most shards, regular or spare, a dev setup starts.
const MAX_SHARDS: usize = 64;

/// Options of `shardline dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where clusters, catalog and dev.json live [default: /var/lib/shardline/dev
    /// as root, else ~/.local/share/shardline/dev]
    #[arg(long, env = "SHARDLINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (PostgreSQL clusters) of keyspace `default`, on first start
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Extra PostgreSQL clusters registered as shards in no keyspace, for
    /// dedicated tenants; a restart adds missing ones but never removes any
    #[arg(long, default_value_t = 2)]
    pub spare_shards: usize,
    /// Router address
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub router_listen: SocketAddr,
    /// Manager address
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub manager_listen: SocketAddr,
    /// The router's PostgreSQL wire protocol address (psql, pgbench,
    /// drivers; dev.json's `postgres_url` logs in as the default app)
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub pg_listen: SocketAddr,
    /// Also take PostgreSQL clients on a Unix-domain socket in DIR, named
    /// after --pg-listen's port as PostgreSQL's (`psql -h DIR -p 6432`;
    /// dev.json's `postgres_local_url`) [default: none]
    #[arg(long, value_name = "DIR")]
    pub pg_unix_dir: Option<PathBuf>,
    /// PEM certificate chain for TLS on the router's PostgreSQL listener,
    /// with --pg-tls-key (default: none, no TLS)
    #[arg(long, requires = "pg_tls_key")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key of --pg-tls-cert
    #[arg(long, requires = "pg_tls_cert")]
    pub pg_tls_key: Option<PathBuf>,
    /// PEM certificate chain: the manager and router serve HTTPS with it
    /// (and the PostgreSQL listener TLS, unless --pg-tls-cert names
    /// another), with --tls-key; reloaded when the files change. It must
    /// name the listen addresses' host (IP:127.0.0.1)
    #[arg(long, env = "SHARDLINE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "SHARDLINE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CA that signed the certificates: trusted by the
    /// router and dev itself, and written to dev.json for the other verbs
    /// [default: the system's CAs]
    #[arg(long, env = "SHARDLINE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Streaming replicas per regular shard (pg_basebackup); a restart adds
    /// missing ones but never removes any
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// With --replicas: synchronous replication, each shard's primary
    /// acknowledging a commit once any one of its replicas has it
    /// (synchronous_standby_names = 'ANY 1 (...)'); set when a shard is
    /// first registered
    #[arg(long, requires = "replicas")]
    pub synchronous: bool,
    /// Name each HTTP request's PostgreSQL session after its request id
    /// (application_name; costs PostgreSQL a statement per request)
    #[arg(long)]
    pub name_sessions: bool,
    /// Serve client connections (PostgreSQL and HTTP) on N threads of
    /// their own, each with its own event loop and pools
    /// (docs/architecture.md, "Lanes") [default: 0, on the shared worker
    /// threads]
    #[arg(long, value_name = "N", default_value_t = 0, env = "SHARDLINE_LANES",
          value_parser = clap::value_parser!(u16).range(0..=i64::from(shardline_router::config::MAX_LANES)))]
    pub lanes: u16,
    /// Run N manager processes on an etcd cluster of three members (data
    /// under the data dir) instead of one manager on a catalog file; one
    /// leads by election. Chosen on first start: a data dir keeps it
    #[arg(long, value_name = "N")]
    pub managers: Option<usize>,
}

fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{prefix}{}", shardline_core::auth::hex(&bytes))
}

/// Runs `dev` until `shutdown`.
pub async fn run(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = prepare_data_dir(&args.data_dir.clone().unwrap_or_else(default_data_dir))?;
    let previous = DevInfo::load(&dir).ok();
    let bins = PgBinaries::detect()?;

    let admin_token = previous
        .as_ref()
        .map_or_else(|| random_secret("adm_"), |p| p.admin_token.clone());
    let router_token = previous
        .as_ref()
        .map_or_else(|| random_secret("rtr_"), |p| p.router_token.clone());
    let password = match std::fs::read_to_string(dir.join("pg-password")) {
        Ok(p) => p.trim().to_string(),
        Err(_) => {
            let p = random_secret("");
            write_private(&dir.join("pg-password"), p.as_bytes())?;
            p
        }
    };

    let mut shard_specs = plan_shards(&dir, previous.as_ref(), args.shards, args.spare_shards)?;
    replicas::plan(&dir, &mut shard_specs, args.replicas)?;
    let mut clusters: Vec<RunningCluster> = Vec::new();
    let started = start_all(&bins, &mut shard_specs, &password).await;
    let result = async {
        clusters = started?;
        let pg = Pg {
            bins: &bins,
            password: &password,
            clusters: &mut clusters,
        };
        serve(
            &args,
            &dir,
            &shard_specs,
            pg,
            admin_token,
            router_token,
            previous,
            shutdown,
        )
        .await
    }
    .await;
    // Stop PostgreSQL last, after the servers using it.
    let stops = clusters
        .iter_mut()
        .map(|c| c.stop(StopMode::Fast, Duration::from_secs(6)));
    for r in futures_util::future::join_all(stops).await {
        if let Err(e) = r {
            eprintln!("stopping PostgreSQL: {e}");
        }
    }
    if result.is_ok() {
        println!("shardline dev stopped; data kept in {}", dir.display());
    }
    result
}

/// Makes the data directory, root:postgres 0710 as root (PostgreSQL
/// passes through to its clusters, nobody else reads the tokens, catalog
/// and logs), 0700 otherwise. Refuses, before any initdb, a directory the
/// `postgres` user could not reach, saying what to do instead.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if let Err(e) = make_shared_dir(dir) {
        if let LocalPgError::Unreachable { dir: blocked, .. } = &e {
            bail!(
                "{e}.\nPick a data dir that user can reach with --data-dir DIR or \
                 SHARDLINE_DATA_DIR (as root the default is {ROOT_DATA_DIR}), \
                 or let it through with `chmod o+x {}`",
                blocked.display()
            );
        }
        return Err(e).with_context(|| format!("make data dir {}", dir.display()));
    }
    dir.canonicalize()
        .with_context(|| format!("resolve data dir {}", dir.display()))
}

/// The shards to run: those of the previous run (else `n` new ones), plus
/// new spare ones until there are `spares`. Spare shards are never
/// dropped here: a tenant may have taken one and hold data on it.
fn plan_shards(
    dir: &Path,
    previous: Option<&DevInfo>,
    n: usize,
    spares: usize,
) -> anyhow::Result<Vec<DevShard>> {
    let mut shards = match previous {
        Some(prev) => {
            let regular = prev.shards.iter().filter(|s| !s.spare).count();
            if regular != n {
                eprintln!(
                    "note: {} has {regular} shards; --shards {n} applies to a new data dir only",
                    dir.display(),
                );
            }
            prev.shards.clone()
        }
        None => {
            if n == 0 || n > MAX_SHARDS {
                bail!("--shards must be between 1 and {MAX_SHARDS}");
            }
            (0..n)
                .map(|i| new_shard(dir, format!("shard-{i}"), false))
                .collect::<anyhow::Result<_>>()?
        }
    };
    let have = shards.iter().filter(|s| s.spare).count();
    if have > spares {
        eprintln!(
            "note: {} has {have} spare shards; they are kept",
            dir.display()
        );
    }
    if shards.len() + spares.saturating_sub(have) > MAX_SHARDS {
        bail!("at most {MAX_SHARDS} shards in all, spare ones included");
    }
    let mut next = 0;
    for _ in have..spares {
        // The first free name: an id taken by no shard of this setup.
        while shards.iter().any(|s| s.id == format!("spare-{next}")) {
            next += 1;
        }
        shards.push(new_shard(dir, format!("spare-{next}"), true)?);
    }
    Ok(shards)
}

fn new_shard(dir: &Path, id: String, spare: bool) -> anyhow::Result<DevShard> {
    Ok(DevShard {
        dsn: String::new(),
        port: free_port()?,
        data_dir: dir.join("pg").join(&id),
        id,
        spare,
        replicas: Vec::new(),
    })
}

/// Initialises (first run) and starts every shard's first cluster, and
/// starts every replica cloned by an earlier run. New replicas are cloned
/// once the manager can say which cluster is the primary.
async fn start_all(
    bins: &PgBinaries,
    specs: &mut [DevShard],
    password: &str,
) -> anyhow::Result<Vec<RunningCluster>> {
    // (shard, config, whether to initdb): each shard's first cluster, then
    // its replicas that exist on disk.
    let mut todo: Vec<(String, ClusterConfig, bool)> = Vec::new();
    for spec in specs.iter() {
        todo.push((
            spec.id.clone(),
            cluster_config(spec.port, &spec.data_dir, password),
            true,
        ));
        for r in &spec.replicas {
            if r.data_dir.join("PG_VERSION").exists() {
                todo.push((
                    spec.id.clone(),
                    cluster_config(r.port, &r.data_dir, password),
                    false,
                ));
            }
        }
    }
    let starts = todo.into_iter().map(|(id, mut cfg, init)| async move {
        let fresh = init && !cfg.data_dir.join("PG_VERSION").exists();
        if init {
            init_cluster(bins, &cfg)
                .await
                .with_context(|| format!("initdb {id}"))?;
        }
        // A new cluster's port was free when picked, but another process
        // may take it before PostgreSQL binds it: a new one then. (A
        // cluster of an earlier run keeps its port: the catalog has it.)
        let mut tries = if fresh { 5 } else { 1 };
        loop {
            tries -= 1;
            match start_cluster(bins, &cfg).await {
                Ok(c) => return Ok((id, c)),
                Err(e) if tries > 0 && e.to_string().contains("Address already in use") => {
                    cfg.port = free_port()?;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e))
                        .with_context(|| format!("start PostgreSQL for {id} on port {}", cfg.port))
                }
            }
        }
    });
    let mut out = Vec::new();
    let mut first_err = None;
    for r in futures_util::future::join_all(starts).await {
        match r {
            Ok((id, c)) => {
                // The shard's first cluster may have moved to another port.
                if let Some(spec) = specs.iter_mut().find(|s| s.id == id) {
                    if spec.data_dir == c.config().data_dir {
                        spec.port = c.config().port;
                    }
                }
                out.push(c)
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        None => Ok(out),
        Some(e) => {
            for mut c in out {
                let _ = c.stop(StopMode::Fast, Duration::from_secs(5)).await;
            }
            Err(e)
        }
    }
}

/// The local PostgreSQL side of `serve`: where the binaries are, the
/// clusters' password, and the running clusters (replicas cloned during
/// setup join them, to be stopped on exit).
struct Pg<'a> {
    bins: &'a PgBinaries,
    password: &'a str,
    clusters: &'a mut Vec<RunningCluster>,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    args: &DevArgs,
    dir: &Path,
    specs: &[DevShard],
    pg: Pg<'_>,
    admin_token: String,
    router_token: String,
    previous: Option<DevInfo>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let servers = shutdown.child_token();
    // One manager in this process on the catalog file, or (--managers N)
    // etcd and N manager processes.
    // A data dir first run with --managers keeps its catalog in etcd.
    let managers = args.managers.or_else(|| ha::HaPlan::managers_of(dir));
    let ca = args.tls_ca.as_deref();
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let (control, manager, manager_url, all_managers) = match managers {
        None => {
            let mut mcfg = shardline_manager::ManagerConfig::new(
                dir.join("catalog.json"),
                &admin_token,
                &router_token,
            );
            mcfg.listen = args.manager_listen;
            mcfg.tls_cert = args.tls_cert.clone();
            mcfg.tls_key = args.tls_key.clone();
            let manager = shardline_manager::bind(mcfg).await?;
            let url = format!("{scheme}://{}", manager.local_addr());
            (None, Some(manager), url.clone(), url)
        }
        Some(n) => {
            let clusters: Vec<u16> = specs
                .iter()
                .flat_map(|s| std::iter::once(s.port).chain(s.replicas.iter().map(|r| r.port)))
                .collect();
            let plan = ha::HaPlan::load_or_new(dir, n, args.manager_listen.port(), &clusters)?;
            let tls = args
                .tls_cert
                .clone()
                .zip(args.tls_key.clone())
                .map(|(cert, key)| ha::ManagerTls {
                    cert,
                    key,
                    ca: args.tls_ca.clone(),
                });
            let control =
                ha::ControlPlane::start(&plan, dir, &admin_token, &router_token, tls.as_ref())
                    .await?;
            let urls = plan.manager_urls(tls.as_ref());
            let all = urls.join(",");
            wait_leader(&all, &admin_token, ca).await?;
            (Some((control, plan)), None, urls[0].clone(), all)
        }
    };
    let mut rcfg = shardline_router::RouterConfig::new(&all_managers, &router_token);
    rcfg.listen = args.router_listen;
    rcfg.pg_listen = Some(args.pg_listen);
    rcfg.pg_unix_dir = args.pg_unix_dir.clone();
    rcfg.pg_tls_cert = args.pg_tls_cert.clone().or(args.tls_cert.clone());
    rcfg.pg_tls_key = args.pg_tls_key.clone().or(args.tls_key.clone());
    rcfg.tls_cert = args.tls_cert.clone();
    rcfg.tls_key = args.tls_key.clone();
    rcfg.manager_ca_file = args.tls_ca.clone();
    let wire_tls = rcfg.pg_tls_cert.is_some();
    rcfg.id = Some("dev-router".into());
    rcfg.name_sessions = args.name_sessions;
    rcfg.lanes = args.lanes;
    rcfg.catalog_cache = Some(dir.join("router-catalog.json"));
    let (max_replica_lag, health_poll) = (rcfg.max_replica_lag, rcfg.health_poll);
    let router = shardline_router::bind(rcfg).await?;
    let router_url = format!("{scheme}://{}", router.local_addr());
    let pg_addr = router.pg_local_addr().unwrap_or(args.pg_listen);
    let pg_local = args.pg_unix_dir.clone();

    let m_task = manager.map(|m| tokio::spawn(m.run(servers.clone())));
    let r_task = tokio::spawn(router.run(servers.clone()));

    let setup = async {
        let admin = ManagerClient::with_ca_file(&all_managers, Some(admin_token.clone()), ca)?;
        let mut shards: Vec<DevShard> = specs
            .iter()
            .map(|s| with_dsns(s.clone(), pg.password))
            .collect();
        let catalog = admin.list_shards().await?;
        replicas::clone_missing(pg.bins, &catalog, &mut shards, pg.password, pg.clusters).await?;
        bootstrap(&admin, &shards, args.synchronous).await?;
        replicas::register(&admin, &mut shards).await?;
        let app_token = default_app_token(&admin, previous.as_ref()).await?;
        wait_router_knows(&router_url, &app_token, ca).await?;
        let feed = ManagerClient::with_ca_file(&all_managers, Some(router_token.clone()), ca)?;
        replicas::wait_serving(&feed, &shards, max_replica_lag, health_poll).await;
        let info = DevInfo {
            pid: std::process::id(),
            router_url: router_url.clone(),
            // The default app's login over the PostgreSQL protocol: user
            // = app id, password = its token (hex), database = keyspace.
            postgres_url: Some(format!(
                "postgresql://{DEFAULT_APP}:{app_token}@{pg_addr}/default{}",
                wire_tls_params(wire_tls, ca)
            )),
            postgres_local_url: pg_local
                .as_deref()
                .map(|dir| local_url(dir, pg_addr.port(), &app_token)),
            manager_url: manager_url.clone(),
            admin_token: admin_token.clone(),
            tenant: DEFAULT_TENANT.into(),
            app_token,
            router_token: router_token.clone(),
            // Absolute: the other verbs run from anywhere.
            ca_file: ca.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())),
            shards,
            managers: control
                .as_ref()
                .map(|(c, _)| c.managers())
                .unwrap_or_default(),
            etcd_endpoints: control
                .as_ref()
                .map(|(_, plan)| plan.endpoints())
                .unwrap_or_default(),
            etcd_members: control
                .as_ref()
                .map(|(c, plan)| c.etcd_members(plan))
                .unwrap_or_default(),
        };
        write_private(
            &dir.join("dev.json"),
            serde_json::to_string_pretty(&info)?.as_bytes(),
        )?;
        // Which keyspace each shard serves now (a spare one may have been
        // taken by a dedicated tenant), and each cluster's role.
        let catalog = admin.list_shards().await?;
        print_banner(&info, &catalog, dir);
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = setup => r,
        () = shutdown.cancelled() => Ok(()),
    };
    if outcome.is_ok() {
        shutdown.cancelled().await;
    }
    servers.cancel();
    let r = r_task.await;
    let m = match m_task {
        Some(task) => Some(task.await),
        None => None,
    };
    if let Some((control, _)) = control {
        control.stop().await;
    }
    outcome?;
    if let Some(m) = m {
        m.context("manager task")??;
    }
    r.context("router task")??;
    Ok(())
}

/// Waits until the managers at `urls` have elected a leader.
async fn wait_leader(urls: &str, admin_token: &str, ca: Option<&Path>) -> anyhow::Result<()> {
    let managers = ManagerClient::with_ca_file(urls, Some(admin_token.to_string()), ca)?
        .with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(l) = managers.leader().await {
            if l.leader.is_some() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the managers elected no leader within 30s (see managers/*.log)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The shard with the DSNs of its clusters filled in.
fn with_dsns(mut s: DevShard, password: &str) -> DevShard {
    s.dsn = cluster_config(s.port, &s.data_dir, password).dsn();
    for r in &mut s.replicas {
        r.dsn = cluster_config(r.port, &r.data_dir, password).dsn();
    }
    s
}

/// Registers the shards (with their replicas) and creates keyspace `default` over the regular
/// ones and tenant `default` in it, unless an earlier run did. Spare
/// shards are registered for no tenant, so any dedicated tenant may take
/// them.
async fn bootstrap(
    admin: &ManagerClient,
    shards: &[DevShard],
    synchronous: bool,
) -> anyhow::Result<()> {
    let existing = admin.list_shards().await?;
    for s in shards {
        if existing.iter().any(|e| e.id == s.id) {
            continue;
        }
        admin
            .register_shard(&RegisterShardRequest {
                id: s.id.clone(),
                primary: s.dsn.clone(),
                replicas: s.replicas.iter().map(|r| r.dsn.clone()).collect(),
                tenant: None,
                synchronous: synchronous && !s.replicas.is_empty(),
            })
            .await
            .with_context(|| format!("register {}", s.id))?;
    }
    match admin.get_keyspace(DEFAULT_KEYSPACE).await {
        Ok(_) => {}
        Err(ClientError::Api { status: 404, .. }) => {
            admin
                .create_keyspace(&CreateKeyspaceRequest {
                    name: DEFAULT_KEYSPACE.into(),
                    key_type: Default::default(),
                    shards: shards
                        .iter()
                        .filter(|s| !s.spare)
                        .map(|s| s.id.clone())
                        .collect(),
                })
                .await
                .context("create keyspace default")?;
        }
        Err(e) => return Err(e).context("read keyspace default"),
    }
    match admin.get_tenant(DEFAULT_TENANT).await {
        Ok(_) => Ok(()),
        Err(ClientError::Api { status: 404, .. }) => {
            admin
                .create_tenant(&CreateTenantRequest {
                    id: DEFAULT_TENANT.into(),
                    keyspace: Some(DEFAULT_KEYSPACE.into()),
                    ..CreateTenantRequest::default()
                })
                .await
                .context("create tenant default")?;
            Ok(())
        }
        Err(e) => Err(e).context("read tenant default"),
    }
}

/// The default app's token: the one from the previous run, or a new app.
async fn default_app_token(
    admin: &ManagerClient,
    previous: Option<&DevInfo>,
) -> anyhow::Result<String> {
    let exists = match admin.get_app(DEFAULT_APP).await {
        Ok(_) => true,
        Err(ClientError::Api { status: 404, .. }) => false,
        Err(e) => return Err(e).context("read the default app"),
    };
    if let (true, Some(prev)) = (exists, previous) {
        return Ok(prev.app_token.clone());
    }
    if exists {
        // The token was lost with dev.json: replace the app.
        admin.delete_app(DEFAULT_APP).await?;
    }
    let created = admin
        .create_app(&CreateAppRequest {
            name: DEFAULT_APP.into(),
            tenant: Some(DEFAULT_TENANT.into()),
            ..CreateAppRequest::default()
        })
        .await
        .context("create the default app")?;
    Ok(created.token)
}

/// dev.json's `postgres_local_url`: the default app's login over the
/// router's socket in `dir` (libpq takes a socket directory as `host`).
fn local_url(dir: &Path, port: u16, app_token: &str) -> String {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!(
        "postgresql://{DEFAULT_APP}:{app_token}@/default?host={}&port={port}",
        path_param(&dir)
    )
}

/// A file name as a URL query value: libpq takes `/` as it is, anything
/// else encoded.
fn path_param(path: &Path) -> String {
    shardline_client::encode::query_value(&path.to_string_lossy()).replace("%2F", "/")
}

/// The query of dev.json's `postgres_url`: TLS verified against the CA
/// when there is one, else asked for without verifying.
fn wire_tls_params(tls: bool, ca: Option<&Path>) -> String {
    match (tls, ca) {
        (false, _) => String::new(),
        (true, Some(ca)) => {
            let ca = std::path::absolute(ca).unwrap_or_else(|_| ca.to_path_buf());
            format!("?sslmode=verify-full&sslrootcert={}", path_param(&ca))
        }
        (true, None) => "?sslmode=require".into(),
    }
}

/// Waits until the router has loaded the catalog and takes the default
/// app's token: the catalog with the app (made or replaced just now) has
/// reached it, so the app token works from the moment dev.json and the
/// banner show it.
async fn wait_router_knows(router_url: &str, token: &str, ca: Option<&Path>) -> anyhow::Result<()> {
    let http = shardline_client::HttpClient::with_ca_file(router_url, Some(token.into()), ca)?;
    for _ in 0..200 {
        match http.get_raw("/v1/route?key=dev").await {
            // Routed, or refused for the key: the token is known.
            Ok((status, _)) if status != 401 && status != 503 => return Ok(()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    bail!("the router did not load the catalog with the default app within 10s")
}

/// Prints the banner in one write: log lines (on standard error) from the
/// servers it started cannot land in the middle of it on a terminal.
fn print_banner(info: &DevInfo, catalog: &[ShardInfo], dir: &Path) {
    use std::io::Write as _;
    let text = banner(info, catalog, dir);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn banner(info: &DevInfo, catalog: &[ShardInfo], dir: &Path) -> String {
    use std::fmt::Write as _;
    let mut b = String::new();
    // Writing to a `String` cannot fail.
    macro_rules! put {
        ($($arg:tt)*) => {{
            let _ = writeln!(b, $($arg)*);
        }};
    }
    let spare = info.shards.iter().filter(|s| s.spare).count();
    put!(
        "shardline dev is running ({} shards, {spare} spare)",
        info.shards.len() - spare
    );
    put!("  router:      {}", info.router_url);
    if let Some(url) = &info.postgres_url {
        put!("  postgres:    psql '{url}'");
    }
    if let Some(url) = &info.postgres_local_url {
        put!("  local:       psql '{url}'");
    }
    if info.managers.is_empty() {
        put!("  manager:     {}", info.manager_url);
    }
    for m in &info.managers {
        put!("  manager:     {} ({}, pid {})", m.url, m.id, m.pid);
    }
    if !info.etcd_endpoints.is_empty() {
        put!("  etcd:        {}", info.etcd_endpoints.join(","));
    }
    put!("  admin token: {}", info.admin_token);
    put!("  app token:   {} (tenant {})", info.app_token, info.tenant);
    for s in &info.shards {
        let shard = catalog.iter().find(|c| c.id == s.id);
        let note = match (s.spare, shard.and_then(|c| c.keyspace.as_deref())) {
            (false, _) => String::new(),
            (true, None) => " (spare)".into(),
            (true, Some(ks)) => format!(" (spare, now in keyspace {ks})"),
        };
        put!("  {}: postgresql on 127.0.0.1:{}{note}", s.id, s.port);
        if s.replicas.is_empty() {
            continue;
        }
        // With replicas, which cluster is which: a failover moves roles.
        let ports = std::iter::once(s.port).chain(s.replicas.iter().map(|r| r.port));
        for port in ports {
            let inst = shard.and_then(|c| {
                c.instances
                    .iter()
                    .find(|i| replicas::dsn_port(&i.dsn) == Some(port))
            });
            let (id, role) = inst.map_or(("?", "unregistered"), |i| (&i.id, &i.role));
            put!("    {id} ({role}): 127.0.0.1:{port}");
        }
    }
    put!("  details:     {}", dir.join("dev.json").display());
    put!("Press Ctrl-C to stop.");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_url_asks_for_what_the_wire_offers() {
        assert_eq!(wire_tls_params(false, Some(Path::new("/ca.crt"))), "");
        assert_eq!(wire_tls_params(true, None), "?sslmode=require");
        assert_eq!(
            wire_tls_params(true, Some(Path::new("/etc/my ca/ca.crt"))),
            "?sslmode=verify-full&sslrootcert=/etc/my%20ca/ca.crt"
        );
    }

    #[test]
    fn the_local_url_names_the_socket_directory() {
        assert_eq!(
            local_url(Path::new("/run/my sockets"), 6432, "tok"),
            "postgresql://default:tok@/default?host=/run/my%20sockets&port=6432"
        );
    }
}
