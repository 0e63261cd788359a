//! Quota flags shared by the tenant and app verbs, and how limits read in
//! a table.

use clap::Args;
use shardline_api::manager::{Limits, TenantConfig};

/// A limit flag's value: a number, or `none` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValue(pub Option<u32>);

fn parse_limit(s: &str) -> Result<LimitValue, String> {
    match s {
        "none" | "unlimited" => Ok(LimitValue(None)),
        _ => s
            .parse::<u32>()
            .map(|n| LimitValue(Some(n)))
            .map_err(|_| format!("{s:?}: expected a whole number or `none`")),
    }
}

/// Rate and concurrency flags of tenants and apps. On update, only the
/// flags given change; `none` removes a limit.
#[derive(Debug, Clone, Default, Args)]
pub struct RateFlags {
    /// Requests per second over all routers (a number, or `none`)
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub rps: Option<LimitValue>,
    /// Requests allowed at once above the rate [default: the rate]
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub burst: Option<LimitValue>,
    /// Requests in flight at once, per router
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub max_concurrent: Option<LimitValue>,
}

impl RateFlags {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.rps.is_some() || self.burst.is_some() || self.max_concurrent.is_some()
    }

    /// Sets the limits whose flags were given, leaving the others.
    pub fn apply(&self, limits: &mut Limits) {
        set(&mut limits.requests_per_second, self.rps);
        set(&mut limits.burst, self.burst);
        set(&mut limits.max_concurrent, self.max_concurrent);
    }
}

/// A tenant's quota flags: the rate flags plus shard and connection caps.
#[derive(Debug, Clone, Default, Args)]
pub struct TenantFlags {
    #[command(flatten)]
    pub rate: RateFlags,
    /// Shards a dedicated tenant may have (a number, or `none`)
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub max_shards: Option<LimitValue>,
    /// Connections one router opens to one shard for this tenant (a
    /// number, or `none` for the router's default)
    #[arg(long, value_name = "N", value_parser = parse_limit)]
    pub max_connections_per_shard: Option<LimitValue>,
}

impl TenantFlags {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.rate.any() || self.max_shards.is_some() || self.max_connections_per_shard.is_some()
    }

    /// Sets the settings whose flags were given, leaving the others.
    pub fn apply(&self, config: &mut TenantConfig) {
        self.rate.apply(&mut config.limits);
        set(&mut config.limits.max_shards, self.max_shards);
        set(
            &mut config.max_connections_per_shard,
            self.max_connections_per_shard,
        );
    }
}

fn set(field: &mut Option<u32>, flag: Option<LimitValue>) {
    if let Some(LimitValue(v)) = flag {
        *field = v;
    }
}

/// Limits as one table cell, `-` when there are none.
pub fn limits_text(limits: &Limits, conns_per_shard: Option<u32>) -> String {
    let parts: Vec<String> = [
        ("rps", limits.requests_per_second),
        ("burst", limits.burst),
        ("concurrent", limits.max_concurrent),
        ("max_shards", limits.max_shards),
        ("conns_per_shard", conns_per_shard),
    ]
    .iter()
    .filter_map(|(name, v)| v.map(|n| format!("{name}={n}")))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_none() {
        assert_eq!(parse_limit("12"), Ok(LimitValue(Some(12))));
        assert_eq!(parse_limit("none"), Ok(LimitValue(None)));
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("ten").is_err());
    }

    #[test]
    fn applies_only_given_flags() {
        let mut config = TenantConfig {
            limits: Limits {
                requests_per_second: Some(10),
                burst: Some(20),
                max_concurrent: Some(3),
                max_shards: Some(2),
            },
            max_connections_per_shard: Some(4),
        };
        let flags = TenantFlags {
            rate: RateFlags {
                rps: Some(LimitValue(Some(50))),
                burst: Some(LimitValue(None)),
                max_concurrent: None,
            },
            max_shards: None,
            max_connections_per_shard: Some(LimitValue(Some(9))),
        };
        assert!(flags.any());
        assert!(!TenantFlags::default().any());
        flags.apply(&mut config);
        assert_eq!(config.limits.requests_per_second, Some(50));
        assert_eq!(config.limits.burst, None);
        assert_eq!(config.limits.max_concurrent, Some(3));
        assert_eq!(config.limits.max_shards, Some(2));
        assert_eq!(config.max_connections_per_shard, Some(9));
        assert_eq!(
            limits_text(&config.limits, config.max_connections_per_shard),
            "rps=50 concurrent=3 max_shards=2 conns_per_shard=9"
        );
        assert_eq!(limits_text(&Limits::default(), None), "-");
    }
}
