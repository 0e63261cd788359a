//! `shardline`: one binary, thin over the libraries. Runs the servers
//! (`dev`, `manager`, `router`) and the admin and client verbs that talk
//! to them.

mod admin;
mod app;
mod deploy;
mod dev;
mod endpoints;
mod instances;
mod limits;
mod reshard;
mod signals;
mod sql;
mod table;
mod tenant;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::endpoints::Endpoints;

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
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything on this machine: PostgreSQL shards, manager, router
    Dev(dev::DevArgs),
    /// Run a manager (control plane)
    Manager {
        /// TOML configuration file
        #[arg(long)]
        config: PathBuf,
    },
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
    /// Listen address
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// PostgreSQL wire protocol listen address (default: none)
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
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
    /// Router id in the manager's registry
    #[arg(long)]
    id: Option<String>,
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
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn router_config(args: RouterArgs) -> anyhow::Result<shardline_router::RouterConfig> {
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
    if let Some(t) = args.router_token {
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
    if let (Some(cert), Some(key)) = (args.pg_tls_cert, args.pg_tls_key) {
        cfg.pg_tls_cert = Some(cert);
        cfg.pg_tls_key = Some(key);
    }
    if args.pg_tls_required {
        cfg.pg_tls_required = true;
    }
    if args.id.is_some() {
        cfg.id = args.id;
    }
    Ok(cfg)
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
        Command::Manager { config } => {
            let cfg = shardline_manager::ManagerConfig::load(&config)?;
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
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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
        let Command::Shard(crate::admin::ShardCmd::AddReplica { shard, dsn }) = cli.command else {
            panic!("not shard add-replica");
        };
        assert_eq!((shard.as_str(), dsn.as_str()), ("s0", "port=5433"));
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
