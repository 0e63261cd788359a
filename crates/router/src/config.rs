//! The router's configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// The router's settings. Every field has a default but `manager_url` and
/// `router_token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Address of the HTTP API. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address of the PostgreSQL wire protocol listener (psql, pgbench,
    /// any driver: user = app id, password = its token, database = the
    /// keyspace). Default: none (HTTP only); `shardline dev` uses
    /// `127.0.0.1:6432`.
    #[serde(default)]
    pub pg_listen: Option<SocketAddr>,
    /// A directory where the wire listener also takes clients on a
    /// Unix-domain socket, named as PostgreSQL names its own:
    /// `.s.PGSQL.<port of pg_listen>` (`psql -h DIR -p PORT`). For
    /// clients on the same host, such as an application in the router's
    /// pod: a local socket costs the kernel less per message than TCP
    /// loopback (docs/benchmarks.md, "Unix sockets"). Logins are by
    /// SCRAM as over TCP; TLS is not offered there (`SSLRequest` is
    /// answered `N`) and `pg_tls_required` does not apply, as
    /// PostgreSQL's `hostssl` does not apply to its local socket.
    /// Needs `pg_listen`. Default: none.
    #[serde(default)]
    pub pg_unix_dir: Option<PathBuf>,
    /// PEM file of the certificate chain (server certificate first) the
    /// wire listener offers to clients that ask for TLS (`SSLRequest`).
    /// Set with `pg_tls_key`, or neither. Default: none (`SSLRequest` is
    /// answered `N`: no TLS).
    #[serde(default)]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM file of `pg_tls_cert`'s private key (PKCS#8, PKCS#1 or SEC1).
    /// Default: none.
    #[serde(default)]
    pub pg_tls_key: Option<PathBuf>,
    /// Whether the wire listener refuses logins over plain TCP (FATAL
    /// `28000`); needs `pg_tls_cert`. Cancel requests are taken either
    /// way, as PostgreSQL does. Default `false`.
    #[serde(default)]
    pub pg_tls_required: bool,
    /// PEM certificate chain: the HTTP API is served over HTTPS (only),
    /// with `tls_key`. Reloaded when the files change, like
    /// `pg_tls_cert`. Default: none, plain HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default: none.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CAs trusted for `https://` manager URLs. Default:
    /// the system's.
    #[serde(default)]
    pub manager_ca_file: Option<PathBuf>,
    /// The manager's base URL, e.g. `http://127.0.0.1:8081`; several,
    /// comma-separated, for managers that stand in for one another (the
    /// router uses the one that answers and moves on when it cannot be
    /// reached).
    pub manager_url: String,
    /// A file where the router keeps the last catalog it applied
    /// (replaced atomically on each new version). A router that starts
    /// while no manager answers serves by it — reads only, as a router
    /// cut off from the manager does, until a manager answers. Default:
    /// none (a router starts only once a manager answers).
    #[serde(default)]
    pub catalog_cache: Option<PathBuf>,
    /// Token routers present to the manager. Else `$SHARDLINE_ROUTER_TOKEN`.
    #[serde(default)]
    pub router_token: Option<String>,
    /// This router's id in the manager's registry. Default: random.
    #[serde(default)]
    pub id: Option<String>,
    /// Most connections of one tenant's pool to one shard, unless the
    /// tenant's `max_connections_per_shard` says otherwise. Default 8.
    /// (`pool_size` is accepted as an older name.)
    #[serde(default = "default_tenant_pool_size", alias = "pool_size")]
    pub tenant_pool_size: usize,
    /// Most connections this router opens to one shard, over all tenant
    /// pools together; when reached, an idle connection of another
    /// tenant is closed to make room, else the request waits up to
    /// `acquire_timeout` and gets 503. Default 64.
    #[serde(default = "default_shard_max_connections")]
    pub shard_max_connections: usize,
    /// Most (tenant, app) pairs with metric labels of their own; apps
    /// beyond count under `tenant="_other", app="_other"`. Default 500.
    #[serde(default = "default_metrics_max_tenant_apps")]
    pub metrics_max_tenant_apps: usize,
    /// Longest wait for a pooled connection. Default `2s`.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Longest wait to open a connection to a shard. Default `2s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection. Default `10s`.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Idle pooled connections are closed after this, and a tenant's pool
    /// once it has had no connection for this long. Default `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest a whole request may take. Default `30s`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest request body. Default 1 MiB.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// How long one catalog long poll waits. Default `30s`.
    #[serde(default = "default_watch_wait", with = "humantime_serde")]
    pub watch_wait: Duration,
    /// How often the manager's health feed (`GET /v1/health`) is read,
    /// to choose replicas for eventual reads. An answer older than four
    /// polls (at least `5s`) is not used: eventual reads then go to the
    /// primaries. Default `250ms`.
    #[serde(default = "default_health_poll", with = "humantime_serde")]
    pub health_poll: Duration,
    /// Replicas further behind their primary than this (by the health
    /// feed) serve no eventual reads. Default `1s`.
    #[serde(default = "default_max_replica_lag", with = "humantime_serde")]
    pub max_replica_lag: Duration,
    /// Longest a request for a shard's primary waits while the catalog
    /// shows the shard failing over, or after its primary could not be
    /// connected, for a catalog with a new primary; it is then tried
    /// once more (never while the catalog still shows the failover) and,
    /// failing, answered 503 with `Retry-After`.
    /// Default `5s`.
    #[serde(default = "default_failover_hold", with = "humantime_serde")]
    pub failover_hold: Duration,
    /// Whether every request ends by bringing its pooled session back to
    /// a known state (settings, role, temporary tables, advisory locks,
    /// `LISTEN`, cursors; see docs/operations.md, "Session state").
    /// Default `true`. `false` exists only to measure what the reset
    /// costs: a request's session state then outlives it, into other
    /// requests of the tenant.
    #[serde(default = "default_true")]
    pub session_reset: bool,
    /// Whether the PostgreSQL session an HTTP request runs on is named
    /// after the request's id (`application_name`; docs/operations.md,
    /// "Request ids and logs"). Default `false`: it costs PostgreSQL a
    /// second statement per request (docs/benchmarks.md).
    #[serde(default)]
    pub name_sessions: bool,
    /// Threads of their own for client connections (wire sessions and
    /// HTTP connections), each with its own event loop and pools
    /// (docs/architecture.md, "Lanes"); a connection stays on the lane it
    /// was dealt to, and a tenant's pool size is shared out among the
    /// lanes. Default 0: connections are served on the shared worker
    /// threads with everything else.
    #[serde(default)]
    pub lanes: u16,
}

/// The most lanes a router runs (the flag's bound too).
pub const MAX_LANES: u16 = 1024;

fn default_true() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_tenant_pool_size() -> usize {
    8
}
fn default_shard_max_connections() -> usize {
    64
}
fn default_metrics_max_tenant_apps() -> usize {
    500
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_watch_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_health_poll() -> Duration {
    Duration::from_millis(250)
}
fn default_max_replica_lag() -> Duration {
    Duration::from_secs(1)
}
fn default_failover_hold() -> Duration {
    Duration::from_secs(5)
}

impl RouterConfig {
    /// Defaults, following the manager at `manager_url`.
    pub fn new(manager_url: &str, router_token: &str) -> Self {
        Self {
            listen: default_listen(),
            pg_listen: None,
            pg_unix_dir: None,
            pg_tls_cert: None,
            pg_tls_key: None,
            pg_tls_required: false,
            tls_cert: None,
            tls_key: None,
            manager_ca_file: None,
            manager_url: manager_url.to_string(),
            catalog_cache: None,
            router_token: Some(router_token.to_string()),
            id: None,
            tenant_pool_size: default_tenant_pool_size(),
            shard_max_connections: default_shard_max_connections(),
            metrics_max_tenant_apps: default_metrics_max_tenant_apps(),
            acquire_timeout: default_acquire_timeout(),
            connect_timeout: default_connect_timeout(),
            statement_timeout: default_statement_timeout(),
            idle_timeout: default_idle_timeout(),
            request_timeout: default_request_timeout(),
            body_limit: default_body_limit(),
            watch_wait: default_watch_wait(),
            health_poll: default_health_poll(),
            max_replica_lag: default_max_replica_lag(),
            failover_hold: default_failover_hold(),
            session_reset: true,
            name_sessions: false,
            lanes: 0,
        }
    }

    /// Parses a TOML document (unknown keys are errors, and so are TLS
    /// settings that do not go together).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text).context("parse router config")?;
        cfg.check_tls()?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        Self::from_toml(&text)
    }

    /// Takes a missing router token from the environment.
    pub fn fill_from_env(&mut self) {
        if self.router_token.is_none() {
            self.router_token = std::env::var("SHARDLINE_ROUTER_TOKEN").ok();
        }
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.router_token.as_deref().unwrap_or_default().is_empty() {
            bail!("router_token is not set (flag, config file or $SHARDLINE_ROUTER_TOKEN)");
        }
        if self.tenant_pool_size == 0 {
            bail!("tenant_pool_size must be at least 1");
        }
        if self.shard_max_connections == 0 {
            bail!("shard_max_connections must be at least 1");
        }
        if self.health_poll.is_zero() {
            bail!("health_poll must be more than 0");
        }
        if self.lanes > MAX_LANES {
            bail!(
                "lanes must be at most {MAX_LANES} (a thread each; 1 suits one or two cores), not {}",
                self.lanes
            );
        }
        self.check_tls()?;
        if self.pg_unix_dir.is_some() && self.pg_listen.is_none() {
            bail!("pg_unix_dir needs pg_listen: the socket is named after its port, as PostgreSQL's (.s.PGSQL.PORT)");
        }
        if self.manager_url.split(',').any(|u| {
            let u = u.trim();
            !(u.starts_with("http://") || u.starts_with("https://"))
        }) {
            bail!("manager_url must be an http:// or https:// URL, or several separated by commas");
        }
        Ok(())
    }

    /// A certificate comes with its key, and TLS is required only with
    /// a certificate.
    fn check_tls(&self) -> anyhow::Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: set both or neither");
        }
        match (&self.pg_tls_cert, &self.pg_tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (None, None) if self.pg_tls_required => {
                bail!("pg_tls_required needs a certificate: set pg_tls_cert and pg_tls_key")
            }
            (None, None) => Ok(()),
            (Some(_), None) => bail!("pg_tls_cert is set without pg_tls_key: set both or neither"),
            (None, Some(_)) => bail!("pg_tls_key is set without pg_tls_cert: set both or neither"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenancy_settings_have_defaults_and_the_old_name() {
        let cfg = RouterConfig::from_toml("manager_url = \"http://m\"\n").unwrap();
        assert_eq!(
            (
                cfg.tenant_pool_size,
                cfg.shard_max_connections,
                cfg.metrics_max_tenant_apps
            ),
            (8, 64, 500)
        );
        let cfg = RouterConfig::from_toml(
            "manager_url = \"http://m\"\npool_size = 3\nshard_max_connections = 9\n",
        )
        .unwrap();
        assert_eq!((cfg.tenant_pool_size, cfg.shard_max_connections), (3, 9));
        let mut bad = RouterConfig::new("http://m", "t");
        bad.shard_max_connections = 0;
        assert!(bad.validate().is_err());
        assert!(RouterConfig::from_toml("manager_url = \"http://m\"\nnope = 1\n").is_err());
    }

    #[test]
    fn replica_and_failover_settings() {
        let cfg = RouterConfig::from_toml("manager_url = \"http://m\"\n").unwrap();
        assert_eq!(
            (cfg.health_poll, cfg.max_replica_lag, cfg.failover_hold),
            (
                Duration::from_millis(250),
                Duration::from_secs(1),
                Duration::from_secs(5)
            )
        );
        let cfg = RouterConfig::from_toml(
            "manager_url = \"http://m\"\nhealth_poll = \"100ms\"\nmax_replica_lag = \"3s\"\nfailover_hold = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(
            (cfg.health_poll, cfg.max_replica_lag, cfg.failover_hold),
            (
                Duration::from_millis(100),
                Duration::from_secs(3),
                Duration::from_secs(2)
            )
        );
        let mut bad = RouterConfig::new("http://m", "t");
        bad.health_poll = Duration::ZERO;
        assert!(bad.validate().is_err());
        let mut lanes =
            RouterConfig::from_toml("manager_url = \"http://m\"\nlanes = 1024\n").unwrap();
        lanes.router_token = Some("t".into());
        assert!(lanes.validate().is_ok());
        lanes.lanes = 1025;
        let e = lanes.validate().unwrap_err().to_string();
        assert!(e.starts_with("lanes must be at most 1024"), "{e}");
    }

    #[test]
    fn tls_settings_go_together() {
        let cfg = RouterConfig::from_toml("manager_url = \"http://m\"\n").unwrap();
        assert_eq!(
            (cfg.pg_tls_cert, cfg.pg_tls_key, cfg.pg_tls_required),
            (None, None, false)
        );
        let cfg = RouterConfig::from_toml(
            "manager_url = \"http://m\"\npg_tls_cert = \"c.pem\"\npg_tls_key = \"k.pem\"\npg_tls_required = true\n",
        )
        .unwrap();
        assert_eq!(cfg.pg_tls_cert, Some(PathBuf::from("c.pem")));
        assert!(cfg.pg_tls_required);
        for half in [
            "pg_tls_cert = \"c.pem\"\n",
            "pg_tls_key = \"k.pem\"\n",
            "pg_tls_required = true\n",
        ] {
            let e = RouterConfig::from_toml(&format!("manager_url = \"http://m\"\n{half}"))
                .unwrap_err();
            assert!(format!("{e:#}").contains("pg_tls"), "{e:#}");
        }
        let mut bad = RouterConfig::new("http://m", "t");
        bad.pg_tls_cert = Some("c.pem".into());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_local_socket_is_named_after_the_wire_port() {
        let cfg = RouterConfig::from_toml(
            "manager_url = \"http://m\"\nrouter_token = \"t\"\npg_listen = \"127.0.0.1:6432\"\npg_unix_dir = \"/run/shardline\"\n",
        )
        .unwrap();
        assert_eq!(cfg.pg_unix_dir, Some(PathBuf::from("/run/shardline")));
        cfg.validate().unwrap();
        let mut bad = cfg.clone();
        bad.pg_listen = None;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("pg_unix_dir needs pg_listen"), "{e}");
    }
}
