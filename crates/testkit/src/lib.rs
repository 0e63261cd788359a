//! Test support: throwaway PostgreSQL clusters, etcd servers and TLS
//! certificates for integration tests.
//!
//! Each [`PgCluster`] is a real PostgreSQL server initialised into its own
//! temporary directory on a free loopback port, removed when dropped, so
//! tests run in parallel without sharing anything.
//!
//! [`PgCluster::start_replica_of`] clones a running cluster with
//! `pg_basebackup` into a streaming hot standby of it, for replication and
//! failover tests.
//!
//! # Layout
//! - [`PgCluster`]: start (primary or replica), connect, stop, restart,
//!   kill, pause.
//! - [`SYNC_REPLICATION`]: settings of a primary that waits for a replica.
//! - [`etcd`]: [`EtcdServer`], a one-member etcd that can be killed and
//!   restarted on the same data.
//! - [`tls`]: [`TlsFiles`], a throwaway CA and a server certificate for
//!   127.0.0.1 and localhost; more certificates of the same CA for other
//!   names ([`TlsFiles::issue`]), and client certificates
//!   ([`TlsFiles::issue_client`]). [`PgCluster::start_tls`] serves one.

pub mod etcd;
pub mod tls;

pub use etcd::{EtcdServer, EtcdTlsFiles};
pub use tls::TlsFiles;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shardline_localpg::{
    create_replica, free_port, init_cluster, start_cluster, wait_streaming, ClusterConfig,
    PgBinaries, RunningCluster, StopMode,
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
    // Replicas: hold WAL for a replica that falls behind, and keep the
    // primary from vacuuming rows a replica's query still reads.
    ("wal_keep_size", "256MB"),
    ("hot_standby_feedback", "on"),
];

/// Settings for [`PgCluster::start_with`] that make a primary commit only
/// once a replica has flushed the commit: `synchronous_standby_names = '*'`
/// (any one replica) and `synchronous_commit = on` (the test settings turn
/// it off). With no replica connected, commits wait.
pub const SYNC_REPLICATION: &[(&str, &str)] = &[
    ("synchronous_standby_names", "*"),
    ("synchronous_commit", "on"),
];

/// Longest wait for a new replica to stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// A server that takes only logins with a client certificate:
/// [`PgCluster::start_cert_auth`].
pub struct CertAuth {
    pub pg: PgCluster,
    /// The client certificate for `postgres`, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `verify-full` DSNs, without and with `sslcert`/`sslkey`.
    pub without_cert: String,
    pub with_cert: String,
}

/// A throwaway PostgreSQL cluster.
pub struct PgCluster {
    cfg: ClusterConfig,
    /// The replica's `application_name`/`cluster_name`; `None` for a
    /// cluster made by initdb.
    name: Option<String>,
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

    /// Like [`start`](Self::start), with extra server settings (they
    /// override the test settings). Every cluster can serve as a primary:
    /// `wal_level = logical`, `max_wal_senders = 10`, `wal_keep_size =
    /// 256MB`, `hot_standby_feedback = on`, and initdb's `pg_hba.conf`
    /// trusts replication connections from 127.0.0.1. For synchronous
    /// replication pass [`SYNC_REPLICATION`]:
    /// `PgCluster::start_with(SYNC_REPLICATION)`.
    pub async fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bins = PgBinaries::detect()?;
        let dir = temp_dir()?;
        let mut cfg = ClusterConfig::new(dir.path().join("data"), 0);
        cfg.settings = TEST_SETTINGS
            .iter()
            .chain(settings)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        init_cluster(&bins, &cfg).await.context("initdb")?;
        Self::start_on_free_port(bins, cfg, dir, None).await
    }

    /// Like [`start_with`](Self::start_with), serving TLS (`ssl = on`)
    /// with the PEM certificate chain `cert` and its key `key`; plain
    /// connections are still accepted.
    pub async fn start_tls(
        cert: &Path,
        key: &Path,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let bins = PgBinaries::detect()?;
        let dir = temp_dir()?;
        let mut cfg = ClusterConfig::new(dir.path().join("data"), 0);
        cfg.settings = TEST_SETTINGS
            .iter()
            .chain(&[("ssl", "on")])
            .chain(settings)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        init_cluster(&bins, &cfg).await.context("initdb")?;
        shardline_localpg::install_server_tls(&cfg.data_dir, cert, key)
            .context("install the server's certificate")?;
        Self::start_on_free_port(bins, cfg, dir, None).await
    }

    /// A TLS server (certificates of a new CA in `dir`) that takes only
    /// logins with a client certificate ([`require_client_certs`](Self::require_client_certs)),
    /// and the DSNs to it as `postgres`: verifying the server, with and
    /// without the client's certificate.
    pub async fn start_cert_auth(dir: &Path) -> anyhow::Result<CertAuth> {
        let files = TlsFiles::make(dir)?;
        let pg = Self::start_tls(&files.server_cert, &files.server_key, &[]).await?;
        pg.require_client_certs(&files.ca).await?;
        let (cert, key) = files.issue_client("postgres")?;
        let without_cert = format!(
            "{} sslmode=verify-full sslrootcert={}",
            pg.dsn(),
            files.ca.display()
        );
        let with_cert = format!(
            "{without_cert} sslcert={} sslkey={}",
            cert.display(),
            key.display()
        );
        Ok(CertAuth {
            pg,
            cert,
            key,
            without_cert,
            with_cert,
        })
    }

    /// Makes a running [`start_tls`](Self::start_tls) server take TCP
    /// logins (replication too) only over TLS with a client certificate
    /// of the CAs in `ca` naming the user as its common name
    /// (`hostssl all all 127.0.0.1/32 cert`); Unix-socket logins stay
    /// trusted. Returns once a plain login is refused; open sessions
    /// stay. [`connect`](Self::connect) no longer works after it.
    pub async fn require_client_certs(&self, ca: &Path) -> anyhow::Result<()> {
        shardline_localpg::install_client_ca(&self.cfg.data_dir, ca)
            .context("install the client CA")?;
        let c = self.connect().await?;
        c.batch_execute("ALTER SYSTEM SET ssl_ca_file = 'client_ca.crt'")
            .await
            .context("set ssl_ca_file")?;
        std::fs::write(
            self.cfg.data_dir.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 cert\n\
             hostssl replication all 127.0.0.1/32 cert\n",
        )
        .context("write pg_hba.conf")?;
        c.batch_execute("SELECT pg_reload_conf()")
            .await
            .context("reload")?;
        // The postmaster reloads when it gets to the signal.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio_postgres::connect(&self.dsn(), NoTls).await.is_ok() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "pg_hba.conf not in force after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Clones `primary` (which must be running) with `pg_basebackup -R`
    /// into a hot standby streaming from it, starts it on its own port and
    /// waits until `pg_stat_wal_receiver` says `streaming`.
    ///
    /// The replica keeps the primary's settings except
    /// `synchronous_standby_names`, so once promoted it commits without
    /// waiting for a standby of its own. It streams as `postgres` with
    /// `primary_conninfo = 'user=postgres ... host=127.0.0.1 port=<primary>
    /// application_name=<name>'` and `cluster_name = '<name>'`; see
    /// [`name`](Self::name). Promote it with `SELECT pg_promote()`.
    pub async fn start_replica_of(primary: &PgCluster) -> anyhow::Result<Self> {
        Self::start_replica_of_with(primary, &[]).await
    }

    /// Like [`start_replica_of`](Self::start_replica_of), with extra
    /// settings for the replica.
    pub async fn start_replica_of_with(
        primary: &PgCluster,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = temp_dir()?;
        let name = replica_name(dir.path());
        let mut cfg = ClusterConfig::new(dir.path().join("data"), 0);
        cfg.password = primary.cfg.password.clone();
        cfg.settings = primary
            .cfg
            .settings
            .iter()
            .filter(|(k, _)| k != "synchronous_standby_names" && k != "cluster_name")
            .cloned()
            .chain(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        create_replica(&primary.bins, &primary.cfg, &cfg, &name)
            .await
            .context("pg_basebackup")?;
        let replica = Self::start_on_free_port(primary.bins.clone(), cfg, dir, Some(name)).await?;
        wait_streaming(&replica.cfg, STREAM_TIMEOUT).await?;
        Ok(replica)
    }

    async fn start_on_free_port(
        bins: PgBinaries,
        mut cfg: ClusterConfig,
        dir: tempfile::TempDir,
        name: Option<String>,
    ) -> anyhow::Result<Self> {
        // A port can be taken between picking it and binding it: retry.
        let mut last_err = None;
        for _ in 0..5 {
            cfg.port = free_port()?;
            match start_cluster(&bins, &cfg).await {
                Ok(running) => {
                    return Ok(Self {
                        cfg,
                        name,
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

    /// A replica's `application_name` and `cluster_name` (lower-case
    /// letters, digits, `_`), as `pg_stat_replication` on its primary shows
    /// it; `None` for a cluster made by initdb.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
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

    /// Kills the whole server (postmaster and backends) with SIGKILL.
    pub async fn kill9(&mut self) {
        if let Some(mut r) = self.running.take() {
            r.kill9().await;
        }
    }

    /// Sends a signal to the postmaster only. New connections then hang,
    /// while open sessions and replication go on.
    pub fn signal(&self, sig: i32) {
        if let Some(r) = &self.running {
            r.signal(sig);
        }
    }

    /// Sends a signal to the postmaster and all its processes (backends,
    /// WAL sender and receiver).
    pub fn signal_all(&self, sig: i32) {
        if let Some(r) = &self.running {
            r.signal_all(sig);
        }
    }

    /// Freezes every process of the server (SIGSTOP), as a hung machine:
    /// connections hang, a replica stops receiving WAL. Undo with
    /// [`resume`](Self::resume); stop, kill9 and drop resume it first.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Resumes a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
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

fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
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
    Ok(dir)
}

/// A replica name unique to its temp dir, usable unquoted in
/// `synchronous_standby_names`.
fn replica_name(dir: &Path) -> String {
    let suffix: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .trim_start_matches("shardline-pg-")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("replica_{suffix}")
}
