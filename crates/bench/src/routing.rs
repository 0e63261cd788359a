//! The routing decision benchmark: the routing hash of a 16-byte text key
//! plus the shard-map lookup, in nanoseconds per key, for even maps of
//! several sizes.
//!
//! Keys are generated up front so only routing is timed; each figure is
//! the median of several rounds over all keys (after one warm-up round).

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::distr::Alphanumeric;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardline_core::hash::{routing_hash, ShardKey};
use shardline_core::shardmap::ShardMap;

/// Options of `shardline-bench routing`.
#[derive(Debug, clap::Args)]
pub struct RoutingArgs {
    /// Random keys per round.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Timed rounds per figure; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Shard counts of the even maps to measure.
    #[arg(long, value_delimiter = ',', default_value = "4,64,1024,16384")]
    pub shards: Vec<usize>,
    /// Key length in bytes (ASCII alphanumeric).
    #[arg(long, default_value_t = 16)]
    pub key_len: usize,
    /// RNG seed for the keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the benchmark and prints a table.
pub fn run(args: RoutingArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.keys > 0 && args.rounds > 0,
        "--keys and --rounds must be positive"
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let buf: String = (&mut rng)
        .sample_iter(Alphanumeric)
        .take(args.keys * args.key_len)
        .map(char::from)
        .collect();
    // ASCII, so every byte offset is a char boundary.
    let keys: Vec<&str> = (0..args.keys)
        .map(|i| &buf[i * args.key_len..(i + 1) * args.key_len])
        .collect();
    let hashes: Vec<u64> = keys
        .iter()
        .map(|k| routing_hash(ShardKey::Text(k)))
        .collect();

    println!(
        "routing: {} random {}-byte text keys, median of {} rounds, ns/key",
        args.keys, args.key_len, args.rounds
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10}",
        "shards", "hash", "lookup", "route"
    );
    for &n in &args.shards {
        let names: Vec<String> = (0..n).map(|i| format!("shard-{i}")).collect();
        let map =
            ShardMap::even(&names).with_context(|| format!("build an even map of {n} shards"))?;

        let hash = median_ns_per_key(args.rounds, keys.len(), || {
            for k in &keys {
                black_box(routing_hash(ShardKey::Text(black_box(k))));
            }
        });
        let lookup = median_ns_per_key(args.rounds, hashes.len(), || {
            for &h in &hashes {
                black_box(map.lookup(black_box(h)));
            }
        });
        let route = median_ns_per_key(args.rounds, keys.len(), || {
            for k in &keys {
                black_box(map.lookup(routing_hash(ShardKey::Text(black_box(k)))));
            }
        });
        println!("{n:>8} {hash:>10.1} {lookup:>10.1} {route:>10.1}");
    }
    Ok(())
}

/// Runs `round` once to warm up, then `rounds` times; the median round's
/// time per key in nanoseconds.
fn median_ns_per_key(rounds: usize, keys: usize, round: impl FnMut()) -> f64 {
    median_round(rounds, round).as_nanos() as f64 / keys as f64
}

/// Runs `round` once to warm up, then `rounds` times; the median round's
/// time.
pub fn median_round(rounds: usize, mut round: impl FnMut()) -> Duration {
    round();
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            round();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
