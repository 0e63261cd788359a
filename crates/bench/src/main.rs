//! `shardline-bench`: benchmarks that print figures (never timed
//! assertions). Run in release: `cargo run --release -p shardline-bench --
//! routing`.
//!
//! # Layout
//! - [`routing`]: the routing decision (hash + shard-map lookup) per key.
//! - [`parse`]: the wire front end's statement analysis per statement,
//!   uncached and cached.
//! - [`execute`]: point SELECTs through the router vs. direct PostgreSQL.
//! - [`noisy`]: a tenant at 10x its rate limit beside one within its own.
//! - [`quota_split`]: the share of a tenant's rate limit admitted when its
//!   traffic reaches only some routers (the router's quota code, virtual clock).
//! - [`tenants`]: router memory and auth + quota cost at 1,000 tenants x 10 apps.
//! - [`wire`]: pgbench straight, through PgBouncer and through the router's
//!   PostgreSQL port, over TCP loopback or (`--unix`) Unix sockets.
//! - [`unix_shard`]: the PostgreSQL of `wire --unix`, the bench's own.
//! - [`scatter`]: a keyless read through the router on all 4 shards,
//!   merged, vs. one shard direct and a keyed read.
//! - [`pgbench`]: free ports, DSN fields and one pgbench phase, for those.
//! - [`dev`]: the throwaway `shardline dev` the last two run against.

mod dev;
mod execute;
mod noisy;
mod parse;
mod pgbench;
mod quota_split;
mod routing;
mod scatter;
mod tenants;
mod unix_shard;
mod wire;

use clap::{Parser, Subcommand};

/// shardline benchmarks.
#[derive(Debug, Parser)]
#[command(name = "shardline-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Routing decision cost: routing hash of a text key + shard-map lookup.
    Routing(routing::RoutingArgs),
    /// Statement analysis cost (wire protocol): uncached and cached, per statement.
    Parse(parse::ParseArgs),
    /// Point SELECTs through the router vs. straight to PostgreSQL.
    Execute(execute::ExecuteArgs),
    /// Noisy neighbor: tenant A at 10x its limit, tenant B within its own.
    Noisy(noisy::NoisyArgs),
    /// Share of a tenant's rate limit admitted when its traffic reaches k of N routers.
    QuotaSplit(quota_split::QuotaSplitArgs),
    /// Router memory and auth + quota cost with 1,000 tenants x 10 apps.
    Tenants(tenants::TenantsArgs),
    /// pgbench -S straight to PostgreSQL, through PgBouncer, through the router.
    Wire(wire::WireArgs),
    /// Scatter-gather: a keyless count/sum through the router on 4 shards, merged.
    Scatter(scatter::ScatterArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Routing(args) => routing::run(args),
        Command::Parse(args) => parse::run(args),
        Command::Execute(args) => execute::run(args),
        Command::Noisy(args) => noisy::run(args),
        Command::QuotaSplit(args) => quota_split::run(args),
        Command::Tenants(args) => tenants::run(args),
        Command::Wire(args) => wire::run(args),
        Command::Scatter(args) => scatter::run(args),
    }
}
