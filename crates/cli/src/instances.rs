//! Instances of shards: the per-instance table (role, health, lag, last
//! check) of `status` and `shard ...`, failovers under way, and the
//! `failover` verb.

use std::time::Duration;

use clap::Args;
use shardline_api::manager::{FailoverRequest, FailoverResult, HealthInfo, ShardInfo};
use shardline_core::catalog::FailoverKind;

use crate::admin::print_json;
use crate::endpoints::Endpoints;
use crate::table::{details, render};

/// A planned switchover waits for the target to replay everything; give
/// the manager room for its drain and promotion.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest error text shown in a table cell.
const MAX_ERROR_CHARS: usize = 60;

/// Options of `shardline failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Shard whose primary to replace
    #[arg(long)]
    pub shard: String,
    /// Instance id of the replica to promote [default: the most caught-up healthy one]
    #[arg(long)]
    pub to: Option<String>,
}

/// `shardline failover --shard S [--to INSTANCE]`: a planned switchover.
pub async fn failover(ep: &Endpoints, args: FailoverArgs, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?.with_timeout(FAILOVER_TIMEOUT);
    let res = m
        .failover(&args.shard, &FailoverRequest { to: args.to })
        .await?;
    if json {
        return print_json(&res);
    }
    print!("{}", failover_details(&res));
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn failover_details(res: &FailoverResult) -> String {
    details(&[
        ("shard", res.shard.clone()),
        ("from", res.from.clone()),
        ("to", res.to.clone()),
        ("generation", res.generation.to_string()),
        ("write pause", format!("{} ms", res.write_pause_ms)),
        ("repointed", list_or_none(&res.repointed)),
        ("needs re-clone", list_or_none(&res.needs_reclone)),
    ])
}

fn health_cell(h: Option<&HealthInfo>) -> String {
    let Some(h) = h else {
        return "unknown".into();
    };
    if h.up {
        return "up".into();
    }
    let failures = match h.consecutive_failures {
        1 => "1 failure".to_string(),
        n => format!("{n} failures"),
    };
    match &h.error {
        Some(e) => {
            let mut e: String = e.chars().take(MAX_ERROR_CHARS).collect();
            if e.len() < h.error.as_deref().map_or(0, str::len) {
                e.push('…');
            }
            format!("down ({failures}: {e})")
        }
        None => format!("down ({failures})"),
    }
}

/// Bytes in the largest unit that keeps a number of at least 1.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn lag_cell(role: &str, h: Option<&HealthInfo>) -> String {
    if role != "replica" {
        return String::new();
    }
    let Some(h) = h else {
        return String::new();
    };
    let secs = h.lag_seconds.map(|s| format!("{s:.2} s"));
    let bytes = h.lag_bytes.map(human_bytes);
    match (secs, bytes) {
        (Some(s), Some(b)) => format!("{s}, {b}"),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => "?".into(),
    }
}

/// One row per instance of each shard.
pub fn shard_table(list: &[ShardInfo]) -> String {
    let rows = list
        .iter()
        .flat_map(|s| {
            s.instances.iter().map(move |i| {
                let h = i.health.as_ref();
                vec![
                    s.id.clone(),
                    s.keyspace.clone().unwrap_or_default(),
                    s.reserved_for.clone().unwrap_or_default(),
                    s.ranges.join(" "),
                    i.id.clone(),
                    i.role.clone(),
                    health_cell(h),
                    lag_cell(&i.role, h),
                    h.map(|h| h.checked_at.clone()).unwrap_or_default(),
                    i.dsn.clone(),
                ]
            })
        })
        .collect::<Vec<_>>();
    render(
        &[
            "shard",
            "keyspace",
            "reserved for",
            "ranges",
            "instance",
            "role",
            "health",
            "lag",
            "last check",
            "dsn",
        ],
        &rows,
    )
}

/// A line per shard with a failover under way, empty when none is.
pub fn failovers_in_progress(list: &[ShardInfo]) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    list.iter()
        .filter_map(|s| {
            let f = s.failover.as_ref()?;
            let kind = match f.kind {
                FailoverKind::Automatic => "automatic",
                FailoverKind::Planned => "planned",
            };
            let age = now_ms.saturating_sub(f.started_at_ms) as f64 / 1000.0;
            Some(format!(
                "failover in progress: shard {} ({kind}) {} -> {}, started {age:.1} s ago\n",
                s.id, f.from, f.to
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use shardline_api::manager::InstanceInfo;
    use shardline_core::catalog::Failover;

    use super::*;

    fn inst(id: &str, role: &str, health: Option<HealthInfo>) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            role: role.into(),
            dsn: format!("host=127.0.0.1 port=1 user=postgres password=*** # {id}"),
            health,
        }
    }

    #[test]
    fn table_shows_role_health_lag_and_last_check() {
        let up = HealthInfo {
            up: true,
            checked_at: "2024-05-01T10:00:00Z".into(),
            lag_seconds: Some(0.25),
            lag_bytes: Some(3 * 1024 * 1024),
            ..HealthInfo::default()
        };
        let down = HealthInfo {
            up: false,
            checked_at: "2024-05-01T10:00:01Z".into(),
            error: Some("connection refused".into()),
            consecutive_failures: 3,
            ..HealthInfo::default()
        };
        let shard = ShardInfo {
            id: "shard-0".into(),
            keyspace: Some("default".into()),
            ranges: vec!["[0,100)".into()],
            generation: 2,
            instances: vec![
                inst("shard-0-2", "primary", Some(up.clone())),
                inst("shard-0-3", "replica", Some(up)),
                inst("shard-0-1", "fenced", Some(down)),
                inst("shard-0-4", "replica", None),
            ],
            reserved_for: None,
            synchronous: false,
            failover: Some(Failover {
                kind: FailoverKind::Planned,
                from: "shard-0-2".into(),
                to: "shard-0-3".into(),
                started_at_ms: 0,
            }),
        };
        let t = shard_table(std::slice::from_ref(&shard));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("instance") && lines[0].contains("last check"));
        assert!(lines[2].contains("shard-0-2") && lines[2].contains(" primary "));
        assert!(lines[2].contains(" up "), "{t}");
        assert!(!lines[2].contains("0.25 s"), "a primary has no lag: {t}");
        assert!(lines[3].contains("0.25 s, 3.0 MB"), "{t}");
        assert!(lines[3].contains("2024-05-01T10:00:00Z"), "{t}");
        assert!(
            lines[4].contains("fenced")
                && lines[4].contains("down (3 failures: connection refused)"),
            "{t}"
        );
        assert!(lines[5].contains("unknown"), "{t}");

        let f = failovers_in_progress(std::slice::from_ref(&shard));
        assert!(
            f.starts_with("failover in progress: shard shard-0 (planned) shard-0-2 -> shard-0-3"),
            "{f}"
        );
        assert_eq!(failovers_in_progress(&[]), "");
    }

    #[test]
    fn failover_result_reads_plainly() {
        let d = failover_details(&FailoverResult {
            shard: "shard-0".into(),
            from: "shard-0-1".into(),
            to: "shard-0-2".into(),
            generation: 4,
            write_pause_ms: 230,
            repointed: vec!["shard-0-3".into()],
            needs_reclone: vec![],
        });
        assert!(d.contains("from            shard-0-1\n"), "{d}");
        assert!(d.contains("write pause     230 ms\n"), "{d}");
        assert!(d.contains("repointed       shard-0-3\n"), "{d}");
        assert!(d.contains("needs re-clone  none\n"), "{d}");
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(2048), "2.0 kB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
    }
}
