//! Streaming replicas of `shardline dev` shards: planned into dev.json,
//! cloned with `pg_basebackup` from the shard's current primary, started,
//! and registered with the manager.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use shardline_api::manager::{AddReplicaRequest, HealthSnapshot, ShardInfo};
use shardline_client::{ClientError, ManagerClient};
use shardline_localpg::{
    create_replica, free_port, start_cluster, wait_streaming, PgBinaries, RunningCluster,
};

use super::files::cluster_config;
use crate::endpoints::{DevReplica, DevShard};

/// Most replicas per shard `dev` makes.
pub const MAX_REPLICAS: usize = 4;

/// How long a new replica may take to stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `dev` waits for its replicas to serve eventual reads.
const SERVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Adds replicas to each regular shard until it has `n`; existing ones
/// are kept even when `n` is lower, as spare shards are.
pub fn plan(dir: &Path, shards: &mut [DevShard], n: usize) -> anyhow::Result<()> {
    if n > MAX_REPLICAS {
        anyhow::bail!("--replicas must be at most {MAX_REPLICAS}");
    }
    for s in shards.iter_mut().filter(|s| !s.spare) {
        if s.replicas.len() > n {
            eprintln!(
                "note: {} has {} replicas; they are kept",
                s.id,
                s.replicas.len()
            );
        }
        while s.replicas.len() < n {
            let dir_of = |k: usize| dir.join("pg").join(format!("{}-r{k}", s.id));
            // The first free suffix: no replica of this setup uses it and no
            // directory of an earlier one is in the way.
            let k = (1..=MAX_REPLICAS * 4)
                .find(|&k| {
                    let d = dir_of(k);
                    !d.exists() && !s.replicas.iter().any(|r| r.data_dir == d)
                })
                .with_context(|| format!("no free replica directory for {}", s.id))?;
            s.replicas.push(DevReplica {
                id: None,
                dsn: String::new(),
                port: free_port()?,
                data_dir: dir_of(k),
            });
        }
    }
    Ok(())
}

/// The replica's `application_name`: its directory's name in the
/// characters PostgreSQL takes unquoted.
fn replica_name(r: &DevReplica) -> String {
    let base = r
        .data_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("replica");
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if name.is_empty() {
        name.push_str("replica");
    }
    name
}

/// The port in a key/value DSN (`port=5432`) or a URL (`host:5432`).
pub fn dsn_port(dsn: &str) -> Option<u16> {
    if let Some(rest) = dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next()?;
        let hostport = authority.rsplit('@').next()?;
        return hostport.rsplit_once(':')?.1.parse().ok();
    }
    dsn.split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.trim_matches('\'').parse().ok())
}

/// The dev cluster (primary entry or replica) on `port`, as a config.
fn config_on_port(
    shard: &DevShard,
    port: u16,
    password: &str,
) -> Option<shardline_localpg::ClusterConfig> {
    if shard.port == port {
        return Some(cluster_config(port, &shard.data_dir, password));
    }
    shard
        .replicas
        .iter()
        .find(|r| r.port == port)
        .map(|r| cluster_config(r.port, &r.data_dir, password))
}

/// Clones every replica whose data directory is missing from the shard's
/// current primary (the catalog's, else dev.json's own primary for a shard
/// not registered yet), starts it and waits until it streams. Replicas
/// that existed were started with the primaries.
pub async fn clone_missing(
    bins: &PgBinaries,
    catalog: &[ShardInfo],
    shards: &mut [DevShard],
    password: &str,
    clusters: &mut Vec<RunningCluster>,
) -> anyhow::Result<()> {
    let mut todo = Vec::new();
    for s in shards.iter() {
        let missing: Vec<&DevReplica> = s
            .replicas
            .iter()
            .filter(|r| !r.data_dir.join("PG_VERSION").exists())
            .collect();
        if missing.is_empty() {
            continue;
        }
        let primary_port = match catalog.iter().find(|c| c.id == s.id) {
            Some(info) => info
                .instances
                .iter()
                .find(|i| i.role == "primary")
                .and_then(|i| dsn_port(&i.dsn))
                .with_context(|| format!("shard {} has no primary in the catalog", s.id))?,
            None => s.port,
        };
        let primary = config_on_port(s, primary_port, password).with_context(|| {
            format!(
                "the primary of {} (port {primary_port}) is not a cluster of this dev setup",
                s.id
            )
        })?;
        for r in missing {
            todo.push((s.id.clone(), primary.clone(), r.clone()));
        }
    }
    let clones = todo.into_iter().map(|(shard, primary, r)| async move {
        let mut cfg = cluster_config(r.port, &r.data_dir, password);
        create_replica(bins, &primary, &cfg, &replica_name(&r))
            .await
            .with_context(|| format!("clone a replica of {shard} into {}", r.data_dir.display()))?;
        // A new replica's port was free when picked, but another process
        // may have taken it since: a new one then (it is registered
        // after this, by its port).
        let mut tries = 5;
        let running = loop {
            tries -= 1;
            match start_cluster(bins, &cfg).await {
                Ok(c) => break c,
                Err(e) if tries > 0 && e.to_string().contains("Address already in use") => {
                    cfg.port = free_port()?;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e))
                        .with_context(|| format!("start replica of {shard} on port {}", cfg.port))
                }
            }
        };
        wait_streaming(&cfg, STREAM_TIMEOUT)
            .await
            .with_context(|| format!("replica of {shard} on port {}", cfg.port))?;
        anyhow::Ok((r.data_dir.clone(), cfg.port, running))
    });
    let mut first_err = None;
    for r in futures_util::future::join_all(clones).await {
        match r {
            Ok((data_dir, port, c)) => {
                clusters.push(c);
                for r in shards.iter_mut().flat_map(|s| s.replicas.iter_mut()) {
                    if r.data_dir == data_dir {
                        r.port = port;
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Registers each dev replica the catalog's shard lacks (by port, among
/// all its instances, fenced ones included) and records the instance ids
/// the manager gave them.
pub async fn register(admin: &ManagerClient, shards: &mut [DevShard]) -> anyhow::Result<()> {
    for s in shards.iter_mut().filter(|s| !s.replicas.is_empty()) {
        let mut info = admin
            .get_shard(&s.id)
            .await
            .with_context(|| format!("read shard {}", s.id))?;
        for r in &s.replicas {
            if instance_on(&info, r.port).is_some() {
                continue;
            }
            info = match admin
                .add_replica(&s.id, &AddReplicaRequest { dsn: r.dsn.clone() })
                .await
            {
                Ok(info) => info,
                // Another instance may have taken the port's place; say so
                // rather than fail the whole setup.
                Err(ClientError::Api { status: 409, .. }) => {
                    eprintln!("note: shard {} refused replica on port {}", s.id, r.port);
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("add a replica to {}", s.id));
                }
            };
        }
        for r in &mut s.replicas {
            r.id = instance_on(&info, r.port).map(str::to_string);
        }
    }
    Ok(())
}

/// Waits until the manager's health feed (read with the router token)
/// shows every registered replica of `shards` able to serve eventual
/// reads as the router judges it (up, in recovery, at most `max_lag`
/// behind), then for the router to read the feed (two of its polls): so
/// once `dev` says it is running, an eventual read goes to a replica. An
/// instance the catalog now calls something else (a promoted or fenced
/// one) is not waited for. After [`SERVE_TIMEOUT`] it says which replicas
/// are not serving and goes on.
pub async fn wait_serving(
    feed: &ManagerClient,
    shards: &[DevShard],
    max_lag: Duration,
    router_poll: Duration,
) {
    let wanted: Vec<(&str, &str)> = shards
        .iter()
        .flat_map(|s| {
            s.replicas
                .iter()
                .filter_map(|r| Some((s.id.as_str(), r.id.as_deref()?)))
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let deadline = Instant::now() + SERVE_TIMEOUT;
    loop {
        let waiting: Vec<&str> = match feed.health().await {
            Ok(snap) => wanted
                .iter()
                .filter(|(shard, id)| !serving(&snap, shard, id, max_lag))
                .map(|(_, id)| *id)
                .collect(),
            Err(_) => wanted.iter().map(|(_, id)| *id).collect(),
        };
        if waiting.is_empty() {
            tokio::time::sleep(router_poll * 2).await;
            return;
        }
        if Instant::now() > deadline {
            eprintln!(
                "note: not serving eventual reads yet: {}",
                waiting.join(", ")
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the snapshot shows replica `id` of `shard` able to serve, or
/// no longer a replica.
fn serving(snap: &HealthSnapshot, shard: &str, id: &str, max_lag: Duration) -> bool {
    let Some(i) = snap
        .instances
        .iter()
        .find(|i| i.shard == shard && i.instance == id)
    else {
        return false;
    };
    i.role != "replica"
        || (i.health.up
            && i.health.in_recovery != Some(false)
            && i.health
                .lag_seconds
                .is_some_and(|lag| lag.is_finite() && lag <= max_lag.as_secs_f64()))
}

/// The id of the instance of `info` on `port`.
fn instance_on(info: &ShardInfo, port: u16) -> Option<&str> {
    info.instances
        .iter()
        .find(|i| dsn_port(&i.dsn) == Some(port))
        .map(|i| i.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_dsns() {
        assert_eq!(
            dsn_port("host=127.0.0.1 port=5433 user=postgres password=***"),
            Some(5433)
        );
        assert_eq!(dsn_port("postgresql://u:***@h:6000/db?x=1"), Some(6000));
        assert_eq!(dsn_port("postgresql://h/db"), None);
        assert_eq!(dsn_port("host=h"), None);
    }

    #[test]
    fn plans_named_replicas_next_to_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let shard = |id: &str, spare| DevShard {
            id: id.into(),
            dsn: String::new(),
            port: 1,
            data_dir: dir.path().join("pg").join(id),
            spare,
            replicas: vec![],
        };
        let mut shards = vec![shard("shard-0", false), shard("spare-0", true)];
        plan(dir.path(), &mut shards, 2).unwrap();
        let dirs: Vec<_> = shards[0]
            .replicas
            .iter()
            .map(|r| r.data_dir.clone())
            .collect();
        assert_eq!(
            dirs,
            [
                dir.path().join("pg/shard-0-r1"),
                dir.path().join("pg/shard-0-r2")
            ]
        );
        assert_eq!(replica_name(&shards[0].replicas[1]), "shard_0_r2");
        assert!(shards[1].replicas.is_empty(), "spare shards get none");
        // Fewer asked for later: none dropped.
        plan(dir.path(), &mut shards, 1).unwrap();
        assert_eq!(shards[0].replicas.len(), 2);
        assert!(plan(dir.path(), &mut shards, MAX_REPLICAS + 1).is_err());
    }
}
