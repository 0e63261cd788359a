//! The statement analysis benchmark: what the router's PostgreSQL front
//! end spends per statement finding its kind and shard keys
//! ([`analyze`]), uncached and from the [`AnalysisCache`] it keeps by
//! exact text, in microseconds per statement.
//!
//! "Uncached" calls [`analyze`] directly. For the statement with a
//! literal key (what `pgbench -S` sends with the simple protocol) each
//! call gets a different text, as each of pgbench's transactions does;
//! the texts are generated up front so formatting is not timed.
//! "Cached" calls [`AnalysisCache::get_or_analyze`] with one text, cached
//! before timing starts, so every timed call is a hit. "Same shape"
//! calls it with the uncached figure's texts after the cache has seen the
//! cached one: for the statement with a literal key, each is a text it
//! has not seen whose analysis it shares by shape (only the key differs;
//! see `wire::analyze::shape`). Each figure is the median of several
//! rounds (after one warm-up round).

use std::collections::HashMap;
use std::hint::black_box;

use shardline_router::wire::analyze::{analyze, Analysis, AnalysisCache, KeyRef};

/// The cache budget: the router's own (16 MiB), far more than the
/// handful of texts measured here.
const CACHE_BYTES: usize = 16 << 20;

/// The tables generation every cached lookup is made under; constant, so
/// no lookup is invalidated.
const GENERATION: u64 = 1;

/// Options of `shardline-bench parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// Uncached analyses per statement per round.
    #[arg(long, default_value_t = 10_000)]
    pub iterations: usize,
    /// Cached lookups per statement per round (each costs far less than
    /// an analysis, so more make a round long enough to time).
    #[arg(long, default_value_t = 500_000)]
    pub cached_iterations: usize,
    /// Timed rounds per figure; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
}

/// One statement to measure.
struct Statement {
    /// Its label in the table.
    label: &'static str,
    /// The text analysed every time (and the one cached).
    text: String,
    /// Texts for the uncached figure, taken in turn: the text alone, or
    /// one per iteration when each call should see a different text.
    uncached_texts: Vec<String>,
}

impl Statement {
    /// A statement whose text is the same at every call.
    fn fixed(label: &'static str, text: &str) -> Self {
        Statement {
            label,
            text: text.to_string(),
            uncached_texts: vec![text.to_string()],
        }
    }
}

/// The statements measured, `iterations` distinct texts for the one with
/// a literal key.
fn statements(iterations: usize) -> Vec<Statement> {
    let literal = |aid: usize| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
    vec![
        Statement::fixed(
            "pgbench -S, extended ($1)",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        ),
        Statement {
            label: "pgbench -S, simple (literal)",
            text: literal(12345),
            // Five-digit keys, as long as the cached text's, for runs of
            // up to 90,000 iterations.
            uncached_texts: (0..iterations).map(|i| literal(10_000 + i)).collect(),
        },
        Statement::fixed(
            "UPDATE with key",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        ),
        Statement::fixed(
            "INSERT of 3 rows",
            "INSERT INTO items (id, v) VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        ),
        Statement::fixed("keyless aggregate", "SELECT count(*), max(v) FROM items"),
        Statement::fixed(
            "CTE + join with key",
            "WITH a AS (SELECT * FROM items WHERE id = $1) \
             SELECT a.v FROM a JOIN items i ON i.id = a.id",
        ),
    ]
}

/// Runs the benchmark and prints a table.
pub fn run(args: ParseArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.iterations > 0 && args.cached_iterations > 0 && args.rounds > 0,
        "--iterations, --cached-iterations and --rounds must be positive"
    );
    // The shard-key columns, looked up as the router does: a map from
    // table to column, the column cloned out.
    let tables: HashMap<String, String> = [("pgbench_accounts", "aid"), ("items", "id")]
        .into_iter()
        .map(|(table, column)| (table.to_string(), column.to_string()))
        .collect();
    let shard_key_of = |table: &str| tables.get(table).cloned();
    let cache = AnalysisCache::new(CACHE_BYTES);

    println!(
        "parse: statement analysis, median of {} rounds; uncached: {} analyses/round, \
         cached: {} lookups/round; µs/statement",
        args.rounds, args.iterations, args.cached_iterations
    );
    println!(
        "{:<30} {:>12} {:>12} {:>14}  analysis",
        "statement", "uncached µs", "cached µs", "same shape µs"
    );
    for statement in statements(args.iterations) {
        let texts = || {
            statement
                .uncached_texts
                .iter()
                .cycle()
                .take(args.iterations)
        };
        let uncached = median_us_per_call(args.rounds, args.iterations, || {
            for text in texts() {
                black_box(analyze(black_box(text), &shard_key_of));
            }
        });
        let analysis = cache.get_or_analyze(&statement.text, GENERATION, &shard_key_of);
        let cached = median_us_per_call(args.rounds, args.cached_iterations, || {
            for _ in 0..args.cached_iterations {
                black_box(cache.get_or_analyze(
                    black_box(&statement.text),
                    GENERATION,
                    &shard_key_of,
                ));
            }
        });
        let same_shape = median_us_per_call(args.rounds, args.iterations, || {
            for text in texts() {
                black_box(cache.get_or_analyze(black_box(text), GENERATION, &shard_key_of));
            }
        });
        println!(
            "{:<30} {uncached:>12.3} {cached:>12.3} {same_shape:>14.3}  {}",
            statement.label,
            summary(&analysis)
        );
    }
    Ok(())
}

/// What the analysis found, in a few words, so the table shows each
/// statement was understood as intended: its keys, or that it fans out.
fn summary(analysis: &Analysis) -> String {
    let keys: Vec<String> = analysis
        .keys
        .iter()
        .map(|key| match key {
            KeyRef::Literal(value) => value.clone(),
            KeyRef::Param(n) => format!("${n}"),
        })
        .collect();
    let kind = format!("{:?}", analysis.kind).to_lowercase();
    match (keys.is_empty(), analysis.unkeyed) {
        (false, false) => format!("{kind}, key {}", keys.join(", ")),
        (false, true) => format!("{kind}, key {} and unkeyed tables", keys.join(", ")),
        (true, _) if analysis.touches_sharded => format!("{kind}, no key: all shards"),
        (true, _) => format!("{kind}, no sharded table"),
    }
}

/// Runs `round` once to warm up, then `rounds` times; the median round's
/// time per call in microseconds.
fn median_us_per_call(rounds: usize, calls: usize, round: impl FnMut()) -> f64 {
    crate::routing::median_round(rounds, round).as_nanos() as f64 / 1_000.0 / calls as f64
}
