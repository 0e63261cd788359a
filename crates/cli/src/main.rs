//! `shardline`: one binary, thin over the libraries. Runs the servers
//! (`dev`, `manager`, `router`) and the admin and client verbs that talk
//! to them.

mod admin;
mod app;
mod deploy;
mod dev;
mod endpoints;
mod explain;
mod instances;
mod limits;
mod progress;
mod reshard;
mod settings;
mod signals;
mod sql;
mod table;
mod tenant;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::endpoints::Endpoints;
use crate::explain::Service;

/// mimalloc, not glibc's: less CPU per router request (architecture.md,
/// "The router").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// shardline: a sharding service for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "shardline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines
    #[arg(long, global = true)]
    log_json: bool,
    /// Print results as JSON
    #[arg(long, global = true)]
    json: bool,
    /// Threads that run requests [default: one per CPU this process may
    /// use]. One suits a router on one or two cores: docs/benchmarks.md,
    /// "Worker threads"
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine: PostgreSQL shards, manager, router
    Dev(dev::DevArgs),
    /// Run a manager (control plane)
    Manager(ManagerArgs),
    /// Run a router (data plane)
    Router(RouterArgs),
    /// Run one statement through the router
    Sql(sql::SqlArgs),
    /// Keyspace, shard, tenant and health overview
    Status,
    /// Manage keyspaces
    #[command(subcommand)]
    Keyspace(admin::KeyspaceCmd),
    /// Manage shards
    #[command(subcommand)]
    Shard(admin::ShardCmd),
    /// Planned switchover: promote a replica of a shard without losing writes
    Failover(instances::FailoverArgs),
    /// Online resharding: split, merge or move key ranges, or move a tenant, while clients write
    #[command(subcommand)]
    Reshard(reshard::ReshardCmd),
    /// Manage tenants
    #[command(subcommand)]
    Tenant(tenant::TenantCmd),
    /// Manage client applications
    #[command(subcommand)]
    App(app::AppCmd),
    /// Schema migrations
    #[command(subcommand)]
    Schema(admin::SchemaCmd),
    /// Configuration files
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Deployment manifests
    #[command(subcommand)]
    Deploy(deploy::DeployCmd),
    /// Print a shell's completion script: `source <(shardline completions bash)`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct ManagerArgs {
    /// TOML configuration file
    #[arg(long)]
    config: PathBuf,
    /// Token routers present, when the file has no `router_token`
    #[arg(long, env = "SHARDLINE_ROUTER_TOKEN", hide_env_values = true)]
    router_token: Option<String>,
    /// File holding the router token (instead of --router-token)
    #[arg(long, value_name = "PATH")]
    router_token_file: Option<PathBuf>,
    /// Password of the etcd user, when the file has no `etcd.password`
    #[arg(long, env = "SHARDLINE_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// File holding the etcd password (instead of --etcd-password)
    #[arg(long, value_name = "PATH")]
    etcd_password_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RouterArgs {
    /// TOML configuration file (flags override it)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Manager URL to follow, or several comma-separated (managers that stand in for one another)
    #[arg(long = "manager-url", env = "SHARDLINE_MANAGER_URL")]
    manager_url: Option<String>,
    /// Token routers present to the manager
    #[arg(long, env = "SHARDLINE_ROUTER_TOKEN", hide_env_values = true)]
    router_token: Option<String>,
    /// File holding the router token (instead of --router-token)
    #[arg(long, value_name = "PATH")]
    router_token_file: Option<PathBuf>,
    /// Listen address
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// PostgreSQL wire protocol listen address (default: none)
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
    /// Also take PostgreSQL clients on a Unix-domain socket in DIR,
    /// named `.s.PGSQL.<port of --pg-listen>` as PostgreSQL's (default:
    /// none)
    #[arg(long, value_name = "DIR")]
    pg_unix_dir: Option<PathBuf>,
    /// PEM certificate chain for TLS on the PostgreSQL listener, with
    /// --pg-tls-key (default: none, SSLRequest answered N)
    #[arg(long, requires = "pg_tls_key")]
    pg_tls_cert: Option<PathBuf>,
    /// PEM private key of --pg-tls-cert
    #[arg(long, requires = "pg_tls_cert")]
    pg_tls_key: Option<PathBuf>,
    /// Refuse PostgreSQL logins over plain TCP (needs a certificate)
    #[arg(long)]
    pg_tls_required: bool,
    /// PEM certificate chain: serve the HTTP API over HTTPS, with
    /// --tls-key (reloaded when the files change)
    #[arg(long, env = "SHARDLINE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "SHARDLINE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM file of the CAs trusted for https:// manager URLs [default: the system's]
    #[arg(long, env = "SHARDLINE_MANAGER_CA_FILE")]
    manager_ca_file: Option<PathBuf>,
    /// Router id in the manager's registry
    #[arg(long)]
    id: Option<String>,
    /// Name each HTTP request's PostgreSQL session after its request id
    /// (application_name; costs PostgreSQL a statement per request)
    #[arg(long)]
    name_sessions: bool,
    /// Serve client connections (PostgreSQL and HTTP) on N threads of
    /// their own, each with its own event loop and pools
    /// (docs/architecture.md, "Lanes") [default: the file's `lanes`,
    /// else 0: on the shared worker threads]
    #[arg(long, value_name = "N", env = "SHARDLINE_LANES",
          value_parser = clap::value_parser!(u16).range(0..=i64::from(shardline_router::config::MAX_LANES)))]
    lanes: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Check a manager or router configuration file (unknown keys are errors)
    Check {
        file: PathBuf,
        /// manager or router
        #[arg(long, default_value = "manager")]
        kind: String,
    },
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or a
        // collector gets no escape sequences, and no request pays for
        // writing them into its span's fields.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn router_config(args: RouterArgs) -> anyhow::Result<shardline_router::RouterConfig> {
    let router_token = settings::secret(
        "router-token",
        args.router_token,
        args.router_token_file.as_deref(),
    )?;
    let mut cfg = match &args.config {
        Some(path) => shardline_router::RouterConfig::load(path)?,
        None => {
            let url = args
                .manager_url
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--manager-url (or a --config file) is required"))?;
            shardline_router::RouterConfig::new(&url, "")
        }
    };
    if let Some(url) = args.manager_url {
        cfg.manager_url = url;
    }
    if let Some(t) = router_token {
        cfg.router_token = Some(t);
    }
    if cfg.router_token.as_deref() == Some("") {
        cfg.router_token = None;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if args.pg_listen.is_some() {
        cfg.pg_listen = args.pg_listen;
    }
    if args.pg_unix_dir.is_some() {
        cfg.pg_unix_dir = args.pg_unix_dir;
    }
    if let (Some(cert), Some(key)) = (args.pg_tls_cert, args.pg_tls_key) {
        cfg.pg_tls_cert = Some(cert);
        cfg.pg_tls_key = Some(key);
    }
    if args.pg_tls_required {
        cfg.pg_tls_required = true;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        cfg.tls_cert = Some(cert);
        cfg.tls_key = Some(key);
    }
    if args.manager_ca_file.is_some() {
        cfg.manager_ca_file = args.manager_ca_file;
    }
    if args.id.is_some() {
        cfg.id = args.id;
    }
    if args.name_sessions {
        cfg.name_sessions = true;
    }
    if let Some(n) = args.lanes {
        cfg.lanes = n;
    }
    Ok(cfg)
}

/// The manager's settings: its file, with the secrets it lacks taken
/// from flags, the environment or files (the file's own win, as they
/// always have).
fn manager_config(
    args: ManagerArgs,
    ep: &Endpoints,
) -> anyhow::Result<shardline_manager::ManagerConfig> {
    let path = &args.config;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    let mut cfg = shardline_manager::ManagerConfig::from_toml(&text)?;
    if cfg.admin_token.is_none() {
        cfg.admin_token = ep.admin_token_given()?;
    }
    if cfg.router_token.is_none() {
        cfg.router_token = settings::secret(
            "router-token",
            args.router_token,
            args.router_token_file.as_deref(),
        )?;
    }
    if let Some(etcd) = &mut cfg.etcd {
        if etcd.username.is_some() && etcd.password.is_none() {
            etcd.password = settings::secret(
                "etcd-password",
                args.etcd_password,
                args.etcd_password_file.as_deref(),
            )?;
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The service a verb talks to, for its error messages.
fn service(command: &Command) -> Option<Service> {
    match command {
        Command::Sql(_) => Some(Service::Router),
        Command::Status
        | Command::Keyspace(_)
        | Command::Shard(_)
        | Command::Failover(_)
        | Command::Reshard(_)
        | Command::Tenant(_)
        | Command::App(_)
        | Command::Schema(_) => Some(Service::Manager),
        Command::Dev(_)
        | Command::Manager(_)
        | Command::Router(_)
        | Command::Config(_)
        | Command::Deploy(_)
        | Command::Completions { .. } => None,
    }
}

/// The command line as clap reads it, with every setting's environment
/// variable (see [`settings`]).
fn cli_command() -> clap::Command {
    settings::with_env(Cli::command())
}

/// Parses `args` (the program name first) the way `main` does.
fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = cli_command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let ep = cli.endpoints;
    match cli.command {
        Command::Dev(args) => {
            let token = CancellationToken::new();
            signals::install(token.clone())?;
            dev::run(args, token).await
        }
        Command::Manager(args) => {
            let cfg = manager_config(args, &ep)?;
            let token = CancellationToken::new();
            signals::install(token.clone())?;
            shardline_manager::run(cfg, token).await
        }
        Command::Router(args) => {
            let cfg = router_config(args)?;
            let token = CancellationToken::new();
            signals::install(token.clone())?;
            shardline_router::run(cfg, token).await
        }
        Command::Sql(args) => sql::run(&ep, args, json).await,
        Command::Status => admin::status(&ep, json).await,
        Command::Keyspace(cmd) => admin::keyspace(&ep, cmd, json).await,
        Command::Shard(cmd) => admin::shard(&ep, cmd, json).await,
        Command::Failover(args) => instances::failover(&ep, args, json).await,
        Command::Reshard(cmd) => reshard::run(&ep, cmd, json).await,
        Command::Tenant(cmd) => tenant::run(&ep, cmd, json).await,
        Command::App(cmd) => app::run(&ep, cmd, json).await,
        Command::Schema(cmd) => admin::schema(&ep, cmd, json).await,
        Command::Deploy(cmd) => deploy::run(cmd),
        Command::Completions { shell } => {
            // Into a buffer: clap_complete panics when its writer fails
            // (a closed pipe), and this way the error is ours to report.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), "shardline", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .context("write the completion script")
        }
        Command::Config(ConfigCmd::Check { file, kind }) => {
            let text = std::fs::read_to_string(&file)?;
            match kind.as_str() {
                "manager" => {
                    shardline_manager::ManagerConfig::from_toml(&text)?;
                }
                "router" => {
                    shardline_router::RouterConfig::from_toml(&text)?;
                }
                other => anyhow::bail!("unknown config kind {other:?}: use manager or router"),
            }
            println!("{}: ok", file.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit());
    init_logging(cli.log_json);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let service = service(&cli.command);
    let ep = cli.endpoints.clone();
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", explain::report(&e, service, &ep));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};
    use crate::admin::KeyspaceCmd;
    use crate::reshard::ReshardCmd;
    use crate::tenant::TenantCmd;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shardline").chain(args.iter().copied()))
    }

    #[test]
    fn reshard_flags() {
        let cli = parse(&[
            "reshard", "split", "--shard", "s1", "--into", "s2,s3", "--at", "55", "--at", "aa",
        ])
        .unwrap();
        let Command::Reshard(ReshardCmd::Split {
            shard,
            into,
            at,
            job,
        }) = cli.command
        else {
            panic!("not reshard split");
        };
        assert_eq!(shard, "s1");
        assert_eq!(into, ["s2", "s3"]);
        assert_eq!(at, ["5500000000000000", "aa00000000000000"]);
        assert_eq!(job.keyspace, "default");
        assert!(!job.no_wait);

        let cli = parse(&[
            "--json",
            "reshard",
            "merge",
            "--shard",
            "s2",
            "--into",
            "s1",
            "--keyspace",
            "k",
            "--no-wait",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Reshard(ReshardCmd::Merge { shard, into, job }) = cli.command else {
            panic!("not reshard merge");
        };
        assert_eq!((shard.as_str(), into.as_str()), ("s2", "s1"));
        assert_eq!(job.keyspace, "k");
        assert!(job.no_wait);

        let cli = parse(&["reshard", "move", "--shard", "s1", "--to", "s9"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Reshard(ReshardCmd::Move { ref to, .. }) if to == "s9"
        ));
        let cli = parse(&[
            "reshard",
            "tenant-move",
            "--tenant",
            "acme",
            "--to",
            "s7,s8",
            "--no-wait",
        ])
        .unwrap();
        let Command::Reshard(ReshardCmd::TenantMove {
            tenant,
            to,
            no_wait,
            ..
        }) = cli.command
        else {
            panic!("not reshard tenant-move");
        };
        assert_eq!((tenant.as_str(), no_wait), ("acme", true));
        assert_eq!(to, ["s7", "s8"]);
        assert!(parse(&["reshard", "tenant-move", "--tenant", "acme"]).is_err());
        let back = parse(&[
            "reshard",
            "tenant-move",
            "--tenant",
            "acme",
            "--to-keyspace",
            "default",
        ])
        .unwrap();
        assert!(matches!(
            back.command,
            Command::Reshard(ReshardCmd::TenantMove { ref to_keyspace, ref to, .. })
                if to_keyspace.as_deref() == Some("default") && to.is_empty()
        ));
        assert!(parse(&[
            "reshard",
            "tenant-move",
            "--tenant",
            "acme",
            "--to",
            "s1",
            "--to-keyspace",
            "default",
        ])
        .is_err());
        let cli = parse(&["reshard", "status"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Reshard(ReshardCmd::Status { id: None })
        ));
        let cli = parse(&["reshard", "cancel", "j1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Reshard(ReshardCmd::Cancel { ref id }) if id == "j1"
        ));
        for bad in [
            &["reshard", "split", "--shard", "s1"][..],
            &[
                "reshard", "split", "--shard", "s1", "--into", "s2", "--at", "zz",
            ],
            &["reshard", "merge", "--shard", "s1"],
            &["reshard", "move", "--to", "s1"],
            &["reshard", "cancel"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }

        let cli = parse(&["keyspace", "set-shard-key", "default", "events", "account"]).unwrap();
        let Command::Keyspace(KeyspaceCmd::SetShardKey {
            keyspace,
            table,
            column,
        }) = cli.command
        else {
            panic!("not keyspace set-shard-key");
        };
        assert_eq!(
            (keyspace.as_str(), table.as_str(), column.as_str()),
            ("default", "events", "account")
        );
    }

    #[test]
    fn flags_are_well_formed() {
        Cli::command().debug_assert();
        super::cli_command().debug_assert();
    }

    #[test]
    fn every_server_and_global_flag_has_its_variable() {
        let mut cmd = super::cli_command();
        cmd.build();
        let mut checked = 0;
        for sub in ["dev", "manager", "router"] {
            let sub = cmd.find_subcommand(sub).unwrap();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let want = match long {
                    // Older than the rule.
                    "manager" => "SHARDLINE_MANAGER_URL".to_string(),
                    "router" => "SHARDLINE_ROUTER_URL".to_string(),
                    _ => crate::settings::env_name(long),
                };
                assert_eq!(arg.get_env().map(|e| e.to_os_string()), Some(want.into()));
                checked += 1;
            }
        }
        assert!(checked > 30, "{checked}");
        // A verb's own flags have none.
        let tenant = cmd.find_subcommand("tenant").unwrap();
        let create = tenant.find_subcommand("create").unwrap();
        let rps = create.get_arguments().find(|a| a.get_long() == Some("rps"));
        assert_eq!(rps.and_then(|a| a.get_env()), None);
    }

    #[test]
    fn failover_and_add_replica_flags() {
        let cli = Cli::try_parse_from(["shardline", "failover", "--shard", "s0", "--to", "s0-2"])
            .unwrap();
        let Command::Failover(args) = cli.command else {
            panic!("not failover");
        };
        assert_eq!(
            (args.shard.as_str(), args.to.as_deref()),
            ("s0", Some("s0-2"))
        );
        assert!(Cli::try_parse_from(["shardline", "failover"]).is_err());
        let cli =
            Cli::try_parse_from(["shardline", "shard", "add-replica", "s0", "port=5433"]).unwrap();
        let Command::Shard(crate::admin::ShardCmd::AddReplica { shard, dsn, .. }) = cli.command
        else {
            panic!("not shard add-replica");
        };
        assert_eq!((shard.as_str(), dsn.as_deref()), ("s0", Some("port=5433")));
        let cli = Cli::try_parse_from(["shardline", "dev", "--replicas", "2"]).unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("not dev");
        };
        assert_eq!(args.replicas, 2);
    }

    #[test]
    fn tenant_create_flags() {
        let cli = Cli::try_parse_from([
            "shardline",
            "tenant",
            "create",
            "acme",
            "--dedicated",
            "--shards",
            "2",
            "--key-type",
            "bigint",
            "--rps",
            "100",
            "--max-connections-per-shard",
            "none",
        ])
        .unwrap();
        let Command::Tenant(TenantCmd::Create {
            dedicated,
            shards,
            limits,
            ..
        }) = cli.command
        else {
            panic!("not tenant create");
        };
        assert!(dedicated);
        assert_eq!(shards, Some(2));
        assert_eq!(limits.rate.rps.map(|l| l.0), Some(Some(100)));
        assert_eq!(limits.max_connections_per_shard.map(|l| l.0), Some(None));
        // A shared keyspace and a dedicated one exclude each other, and
        // --shards means nothing without --dedicated.
        for bad in [
            &["tenant", "create", "a", "--keyspace", "k", "--dedicated"][..],
            &["tenant", "create", "a", "--shards", "2"],
            &["tenant", "create", "a", "--rps", "fast"],
        ] {
            let args = std::iter::once("shardline").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
