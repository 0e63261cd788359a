//! How much of a tenant's rate limit the fleet admits when its traffic
//! reaches only some of the routers. Each router enforces `rate / N` and
//! `burst / N` of a fleet-wide limit (N = live routers, from the
//! manager's heartbeat), which adds up to the limit only when every
//! router gets an equal part of the tenant's requests. Kubernetes
//! balances per connection, so a tenant with a few long-lived
//! connections may reach only k of the N routers and is admitted about
//! k/N of its limit.
//!
//! The run drives the router's own quota code ([`Quotas::take`], the
//! GCRA bucket every request passes) on a virtual clock: N routers, the
//! tenant's clients offering twice its limit, evenly over k routers.
//! No servers and no sleeping, so the figures are exact and repeatable;
//! `crates/cli/tests/quotas.rs` (`a_tenant_rate_is_shared_by_live_routers`)
//! shows the same split on real routers.

use std::time::{Duration, Instant};

use shardline_router::quota::{Quotas, RateLimits};

/// Options of `shardline-bench quota-split`.
#[derive(Debug, clap::Args)]
pub struct QuotaSplitArgs {
    /// Live routers sharing the limit.
    #[arg(long, default_value_t = 4)]
    pub routers: u32,
    /// The tenant's limit, requests per second (also its burst).
    #[arg(long, default_value_t = 1000)]
    pub rps: u32,
    /// Offered load as a multiple of the limit.
    #[arg(long, default_value_t = 2)]
    pub offered: u32,
    /// Simulated seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// Admitted requests per second with the offered load spread evenly over
/// `reached` of `routers` routers.
fn admitted(args: &QuotaSplitArgs, reached: u32) -> f64 {
    let start = Instant::now();
    let limits = RateLimits {
        requests_per_second: Some(args.rps),
        burst: Some(args.rps),
    };
    let routers: Vec<Quotas> = (0..reached)
        .map(|_| {
            let q = Quotas::new();
            q.set_live_routers(args.routers);
            q
        })
        .collect();
    let cells: Vec<_> = routers.iter().map(|q| q.tenant_cell("t")).collect();
    // Requests arrive evenly spaced, round-robin over the routers reached.
    let offered = u64::from(args.rps) * u64::from(args.offered);
    let total = offered * args.seconds;
    let step_ns = 1_000_000_000 / offered.max(1);
    let mut ok = 0u64;
    for i in 0..total {
        let now = start + Duration::from_nanos(i * step_ns);
        let r = (i % u64::from(reached)) as usize;
        if routers[r].take(&cells[r], limits, now).is_ok() {
            ok += 1;
        }
    }
    ok as f64 / args.seconds as f64
}

/// Prints, for k = 1..=N routers reached, the admitted rate and its share
/// of the limit.
pub fn run(args: QuotaSplitArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.routers > 0 && args.rps > 0 && args.offered > 0 && args.seconds > 0,
        "--routers, --rps, --offered and --seconds must be positive"
    );
    println!(
        "tenant limit {} req/s (burst {}), offered {}x, {} live routers, {} s simulated",
        args.rps, args.rps, args.offered, args.routers, args.seconds
    );
    println!("routers reached   admitted req/s   of the limit");
    for reached in 1..=args.routers {
        let rate = admitted(&args, reached);
        println!(
            "{reached:>15}   {rate:>14.1}   {:>11.1}%",
            100.0 * rate / f64::from(args.rps)
        );
    }
    Ok(())
}
