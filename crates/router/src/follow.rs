//! Following the manager: long-polls the catalog and installs each new
//! version; heartbeats with the version applied and learns from the
//! answer how many routers are live (each enforces that share of every
//! rate limit). When the manager is down, the router keeps routing by the
//! last catalog it has, and the last count of live routers.
//!
//! With a cache file configured, each catalog applied is also written
//! there (to a temporary file, synced, then renamed over it), so a router
//! that restarts while no manager answers can serve by it
//! ([`load_cache`]).
//!
//! Besides the periodic heartbeat, one is sent as soon as a new catalog
//! version is installed: a resharding cutover waits for every live
//! router to have applied the version that freezes the moving ranges,
//! so the acknowledgement's latency is the write pause's. The heartbeat
//! task sends it, so a slow manager never delays installing catalogs,
//! and heartbeats leave one at a time, so the manager never sees an
//! applied version go back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shardline_api::manager::RouterHeartbeat;
use shardline_client::ManagerClient;
use shardline_core::Catalog;
use tokio_util::sync::CancellationToken;

use crate::state::{RouterContext, Routing, RoutingCell};

/// What the follower needs.
pub struct Follower {
    pub manager: ManagerClient,
    pub routing: Arc<RoutingCell>,
    pub ctx: Arc<RouterContext>,
    pub wait: Duration,
    pub on_version: Box<dyn Fn(u64) + Send + Sync>,
    /// Where to keep the last catalog applied, if anywhere.
    pub cache: Option<PathBuf>,
}

impl Follower {
    /// Polls until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            let after = self.routing.get().version;
            // A table from the cache file is confirmed (or replaced) at
            // once: until then the router sends no writes.
            let wait = if self.ctx.contact.is_from_cache() {
                Duration::ZERO
            } else {
                self.wait
            };
            let poll = self.manager.watch_catalog(after, wait);
            let res = tokio::select! {
                () = shutdown.cancelled() => return,
                r = poll => r,
            };
            match res {
                Ok(Some(catalog)) => {
                    let previous = self.routing.get();
                    let next = Routing::build(&catalog, &previous, &self.ctx);
                    let version = next.version;
                    self.routing.set(next);
                    (self.on_version)(version);
                    tracing::info!(version, "catalog applied");
                    if let Some(path) = &self.cache {
                        if let Err(e) = store_cache(path, &catalog).await {
                            tracing::warn!(path = %path.display(), error = %e,
                                "keep the catalog in the cache file");
                        }
                    }
                    backoff = Duration::from_millis(100);
                    failing = false;
                    self.ctx.contact.catalog_confirmed();
                }
                Ok(None) => self.ctx.contact.catalog_confirmed(),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot reach the manager; routing by the last catalog");
                        failing = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Heartbeats every `interval`, and at once after each new routing
/// table, until shutdown.
pub async fn heartbeat(
    manager: ManagerClient,
    routing: Arc<RoutingCell>,
    ctx: Arc<RouterContext>,
    id: String,
    address: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tables = routing.subscribe();
    let mut watching = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = tables.changed(), if watching => {
                // The cell lives as long as the router; if it is gone,
                // the periodic heartbeat goes on alone.
                watching = changed.is_ok();
                tables.borrow_and_update();
            }
        }
        let hb = RouterHeartbeat {
            id: id.clone(),
            address: address.clone(),
            applied_version: routing.get().version,
        };
        let sent_at = std::time::Instant::now();
        let sent = tokio::select! {
            () = shutdown.cancelled() => return,
            r = manager.heartbeat(&hb) => r,
        };
        match sent {
            Ok(answer) => {
                if answer.renewed {
                    ctx.contact.answered_since(sent_at, answer.lease_ms);
                } else {
                    // Behind a catalog the manager waits for: the lease
                    // runs out, and then the router counts itself cut off.
                    tracing::warn!(
                        applied_version = hb.applied_version,
                        "the manager did not renew the lease: this router is behind the catalog"
                    );
                }
                let before = ctx.quotas.live_routers();
                ctx.quotas.set_live_routers(answer.live_routers);
                if before != ctx.quotas.live_routers() {
                    tracing::info!(
                        live_routers = answer.live_routers,
                        "live routers changed; rate limits are shared by them"
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat"),
        }
    }
}

/// Writes `catalog` to `path` atomically: a temporary file beside it,
/// synced, renamed over it. Readable by this user only: the catalog holds
/// the tenants' PostgreSQL passwords.
async fn store_cache(path: &Path, catalog: &Catalog) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let json = serde_json::to_vec(catalog).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .await?;
    f.write_all(&json).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, path).await
}

/// The catalog kept in the cache file at `path`: `None` when there is
/// none; an error when it cannot be read or decoded.
pub fn load_cache(path: &Path) -> anyhow::Result<Option<Catalog>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("the catalog cache {} does not decode: {e}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "read the catalog cache {}: {e}",
            path.display()
        )),
    }
}
