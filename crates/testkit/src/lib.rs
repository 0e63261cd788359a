//! Test support: throwaway PostgreSQL clusters for integration tests.
//!
//! Each [`PgCluster`] is a real PostgreSQL server initialised into its own
//! temporary directory on a free loopback port, removed when dropped, so
//! tests run in parallel without sharing anything.
//!
//! # Layout
//! - [`PgCluster`]: start, connect, stop, restart, kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shardline_localpg::{
    free_port, init_cluster, start_cluster, ClusterConfig, PgBinaries, RunningCluster, StopMode,
};
use tokio_postgres::{Client, NoTls};

/// Settings that make throwaway clusters fast and small.
const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "32MB"),
    ("max_connections", "200"),
    ("max_wal_senders", "10"),
    ("wal_level", "logical"),
    ("max_replication_slots", "10"),
];

/// A throwaway PostgreSQL cluster.
pub struct PgCluster {
    cfg: ClusterConfig,
    running: Option<RunningCluster>,
    bins: PgBinaries,
    // Dropped last: the directory goes after the server has stopped.
    _dir: tempfile::TempDir,
}

impl PgCluster {
    /// Initialises and starts a cluster with the test settings.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra server settings.
    pub async fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bins = PgBinaries::detect()?;
        let dir = tempfile::Builder::new()
            .prefix("shardline-pg-")
            .tempdir()
            .context("create temp dir")?;
        // The server runs as `postgres` when we are root: let it in.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .context("chmod temp dir")?;
        let mut cfg = ClusterConfig::new(dir.path().join("data"), 0);
        cfg.settings = TEST_SETTINGS
            .iter()
            .chain(settings)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        init_cluster(&bins, &cfg).await.context("initdb")?;
        // A port can be taken between picking it and binding it: retry.
        let mut last_err = None;
        for _ in 0..5 {
            cfg.port = free_port()?;
            match start_cluster(&bins, &cfg).await {
                Ok(running) => {
                    return Ok(Self {
                        cfg,
                        running: Some(running),
                        bins,
                        _dir: dir,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("start failed")))
    }

    /// The superuser key/value DSN.
    pub fn dsn(&self) -> String {
        self.cfg.dsn()
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.cfg.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.cfg.data_dir.with_extension("log")
    }

    /// Opens a superuser connection (its driver task runs in the
    /// background).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.dsn(), NoTls)
            .await
            .context("connect to test cluster")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Stops the server (fast shutdown).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut r) = self.running.take() {
            r.stop(StopMode::Fast, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Kills the postmaster with SIGKILL.
    pub async fn kill9(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.kill9().await;
        }
    }

    /// Sends a signal (e.g. SIGSTOP/SIGCONT) to the postmaster.
    pub fn signal(&self, sig: i32) {
        if let Some(r) = &self.running {
            r.signal(sig);
        }
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.running = Some(start_cluster(&self.bins, &self.cfg).await?);
        Ok(())
    }

    /// Whether the server answers connections.
    pub async fn is_ready(&self) -> bool {
        match &self.running {
            Some(r) => r.is_ready().await,
            None => false,
        }
    }
}
