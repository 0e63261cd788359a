//! `shardline-bench`: benchmarks that print figures (never timed
//! assertions). Run in release: `cargo run --release -p shardline-bench --
//! routing`.
//!
//! # Layout
//! - [`routing`]: the routing decision (hash + shard-map lookup) per key.
//! - [`execute`]: point SELECTs through the router vs. direct PostgreSQL.

mod execute;
mod routing;

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
    /// Point SELECTs through the router vs. straight to PostgreSQL.
    Execute(execute::ExecuteArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Routing(args) => routing::run(args),
        Command::Execute(args) => execute::run(args),
    }
}
