//! The PostgreSQL server of `wire --unix`: the bench's own, started with
//! a Unix socket beside its TCP port (dev's shards listen on TCP only)
//! and registered with dev's manager as the bench tenant's shard under a
//! socket DSN, so that the router too reaches it over the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::distr::Alphanumeric;
use rand::Rng;
use shardline_api::manager::RegisterShardRequest;
use shardline_client::ManagerClient;
use shardline_localpg::{
    free_port, init_cluster, start_cluster, ClusterConfig, PgBinaries, RunningCluster, StopMode,
};

/// The shard's id in the catalog.
const SHARD_ID: &str = "bench-unix";

/// The bench's own PostgreSQL in a temp dir, stopped and its dir removed
/// on drop. The dir also holds the routers' socket directory.
pub struct UnixShard {
    cluster: Option<RunningCluster>,
    cfg: ClusterConfig,
    socket_dir: PathBuf,
    dir: PathBuf,
}

impl UnixShard {
    /// Initialises and starts the server with a random password, its
    /// socket in `<temp dir>/pg`.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("shardline-bench-{}-unix", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // PostgreSQL runs as `postgres` when we are root: let it in.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let mut cfg = ClusterConfig::new(dir.join("data"), free_port()?);
        cfg.password = Some(
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(24)
                .map(char::from)
                .collect(),
        );
        // The settings of dev's shards: the server the TCP run measures.
        cfg.settings = shardline_localpg::DEV_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let socket_dir = dir.join("pg");
        cfg.socket_dir = Some(socket_dir.clone());
        // The guard first, so a failure below still removes the dir.
        let mut shard = Self {
            cluster: None,
            cfg,
            socket_dir,
            dir,
        };
        let bins = PgBinaries::detect()?;
        init_cluster(&bins, &shard.cfg).await.context("initdb")?;
        shard.cluster = Some(
            start_cluster(&bins, &shard.cfg)
                .await
                .context("start the bench's PostgreSQL")?,
        );
        std::fs::create_dir_all(shard.router_dir())?;
        Ok(shard)
    }

    /// The superuser DSN over the socket, as the catalog has it.
    pub fn dsn(&self) -> String {
        // Always there: the config has a socket_dir.
        self.cfg.socket_dsn().unwrap_or_default()
    }

    /// The directory of PostgreSQL's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// A directory for the routers' sockets (`pg_unix_dir`): they run as
    /// this process's user, as pgbench does.
    pub fn router_dir(&self) -> PathBuf {
        self.dir.join("router")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// Registers the server as a shard reserved for `tenant`, which then
    /// takes it when made dedicated (the manager picks shards reserved for
    /// a tenant before unreserved ones).
    pub async fn register(&self, manager: &ManagerClient, tenant: &str) -> anyhow::Result<()> {
        manager
            .register_shard(&RegisterShardRequest {
                id: SHARD_ID.into(),
                primary: self.dsn(),
                replicas: Vec::new(),
                tenant: Some(tenant.into()),
                synchronous: false,
            })
            .await
            .with_context(|| format!("register shard {SHARD_ID}"))?;
        Ok(())
    }

    /// Checks that `tenant`'s keyspace is on this server: else the paths
    /// would not all end here.
    pub async fn check_taken(&self, manager: &ManagerClient, tenant: &str) -> anyhow::Result<()> {
        let shard = manager
            .get_shard(SHARD_ID)
            .await
            .with_context(|| format!("read shard {SHARD_ID}"))?;
        anyhow::ensure!(
            shard.keyspace.as_deref() == Some(tenant),
            "tenant {tenant} is not on shard {SHARD_ID} (which serves {:?})",
            shard.keyspace
        );
        Ok(())
    }

    /// Stops the server in order (the drop that follows removes the dir).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut cluster) = self.cluster.take() {
            cluster
                .stop(StopMode::Fast, Duration::from_secs(30))
                .await
                .context("stop the bench's PostgreSQL")?;
        }
        Ok(())
    }
}

impl Drop for UnixShard {
    fn drop(&mut self) {
        // The server first (an immediate shutdown, if not stopped yet),
        // then its files.
        drop(self.cluster.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
