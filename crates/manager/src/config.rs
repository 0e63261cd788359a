//! The manager's configuration (a TOML file; unknown keys are refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Environment variable read when `admin_token` is not in the file.
pub const ADMIN_TOKEN_ENV: &str = "SHARDLINE_ADMIN_TOKEN";
/// Environment variable read when `router_token` is not in the file.
pub const ROUTER_TOKEN_ENV: &str = "SHARDLINE_ROUTER_TOKEN";

/// Tokens shorter than this are refused: they must not be guessable.
const MIN_TOKEN_LEN: usize = 16;

/// The manager's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Address of the HTTP API. Default `127.0.0.1:8081`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// This manager's id among the managers of one catalog. Default
    /// `manager-<port>`.
    #[serde(default)]
    pub id: Option<String>,
    /// The URL other managers, routers and operators reach this manager
    /// at. Default `http://` (`https://` with `tls_cert`) and the address
    /// it listens on.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// PEM certificate chain: the API is served over HTTPS (only), with
    /// `tls_key`. Reloaded when the files change. Default: none, plain
    /// HTTP.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CAs trusted for other managers' `https://` URLs
    /// (a follower passes requests to the leader). Default: the
    /// system's.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// File of the embedded catalog store. Default `shardline-catalog.json`.
    #[serde(default = "default_catalog_path")]
    pub catalog_path: PathBuf,
    /// Bearer token of operators (admin API). Else `$SHARDLINE_ADMIN_TOKEN`.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Bearer token routers use to follow the catalog and heartbeat. Else
    /// `$SHARDLINE_ROUTER_TOKEN`.
    #[serde(default)]
    pub router_token: Option<String>,
    /// How often every PostgreSQL instance is checked. Default `500ms`.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Time allowed for one check (connect and query). Default `500ms`.
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Failed checks in a row after which a primary is failed over to its
    /// most caught-up healthy replica. Default 3 (with the defaults above,
    /// a dead primary is replaced within about 2 s).
    #[serde(default = "default_failover_after")]
    pub failover_after: u32,
    /// Longest wait, in a planned switchover, for the target replica to
    /// replay everything the old primary wrote; past it the switchover is
    /// rolled back. Default `10s`.
    #[serde(default = "default_switchover_timeout", with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// A router that has not heartbeaten for this long is gone. Default `10s`.
    #[serde(default = "default_router_lease", with = "humantime_serde")]
    pub router_lease: Duration,
    /// Longest a catalog watch request is held open. Default `30s`.
    #[serde(default = "default_max_watch_wait", with = "humantime_serde")]
    pub max_watch_wait: Duration,
    /// Time allowed to connect to a shard to apply a migration. Default `5s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest request body. Default 1 MiB.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// Resharding: rows per copy batch (and changes per catch-up batch,
    /// rows per cleanup delete). Default 5000.
    #[serde(default = "default_reshard_batch_rows")]
    pub reshard_batch_rows: usize,
    /// Resharding: pause between copy batches, to limit the load on the
    /// source. Default `0s`.
    #[serde(default, with = "humantime_serde")]
    pub reshard_batch_pause: Duration,
    /// The catalog on etcd, shared by several managers (one leads, by
    /// election). Absent: the embedded file store at `catalog_path`.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

/// Environment variable read when `etcd.password` is not in the file.
pub const ETCD_PASSWORD_ENV: &str = "SHARDLINE_ETCD_PASSWORD";

/// Where the etcd catalog is and how the managers elect their leader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, such as `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix of every catalog key (default `shardline/`); the election
    /// key is beside it (`shardline.leader`).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// The leader's lease: a leader that cannot renew it stops acting,
    /// and another takes over about this long after a leader dies.
    /// Default `3s`.
    #[serde(default = "default_leader_ttl", with = "humantime_serde")]
    pub leader_ttl: Duration,
    /// Bound on each etcd request. Default `5s`.
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// etcd user, when etcd has authentication on.
    #[serde(default)]
    pub username: Option<String>,
    /// Its password; else `$SHARDLINE_ETCD_PASSWORD`.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of the CA that signed etcd's certificates; needed for
    /// `https://` endpoints.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, when etcd checks clients
    /// (`--client-cert-auth`); with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_etcd_prefix() -> String {
    "shardline/".to_string()
}
fn default_leader_ttl() -> Duration {
    Duration::from_secs(3)
}
fn default_etcd_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_catalog_path() -> PathBuf {
    PathBuf::from("shardline-catalog.json")
}
fn default_health_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_health_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_failover_after() -> u32 {
    3
}
fn default_switchover_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_router_lease() -> Duration {
    Duration::from_secs(10)
}
fn default_max_watch_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reshard_batch_rows() -> usize {
    5000
}
fn default_body_limit() -> usize {
    1024 * 1024
}

impl ManagerConfig {
    /// Settings with every default, the given tokens and catalog path.
    pub fn new(catalog_path: PathBuf, admin_token: &str, router_token: &str) -> Self {
        Self {
            listen: default_listen(),
            id: None,
            advertise_url: None,
            tls_cert: None,
            tls_key: None,
            tls_ca_file: None,
            catalog_path,
            admin_token: Some(admin_token.to_string()),
            router_token: Some(router_token.to_string()),
            health_interval: default_health_interval(),
            health_timeout: default_health_timeout(),
            failover_after: default_failover_after(),
            switchover_timeout: default_switchover_timeout(),
            router_lease: default_router_lease(),
            max_watch_wait: default_max_watch_wait(),
            connect_timeout: default_connect_timeout(),
            body_limit: default_body_limit(),
            reshard_batch_rows: default_reshard_batch_rows(),
            reshard_batch_pause: Duration::ZERO,
            etcd: None,
        }
    }

    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: Self = toml::from_str(text).context("parse manager config")?;
        Ok(cfg)
    }

    /// Reads a TOML file, fills tokens from the environment, validates.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        let mut cfg = Self::from_toml(&text)?;
        cfg.fill_from_env();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Takes missing tokens from the environment.
    pub fn fill_from_env(&mut self) {
        if self.admin_token.is_none() {
            self.admin_token = std::env::var(ADMIN_TOKEN_ENV).ok();
        }
        if self.router_token.is_none() {
            self.router_token = std::env::var(ROUTER_TOKEN_ENV).ok();
        }
        if let Some(etcd) = &mut self.etcd {
            if etcd.username.is_some() && etcd.password.is_none() {
                etcd.password = std::env::var(ETCD_PASSWORD_ENV).ok();
            }
        }
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, token) in [
            ("admin_token", &self.admin_token),
            ("router_token", &self.router_token),
        ] {
            match token {
                None => bail!("{name} is not set (config file or environment)"),
                Some(t) if t.len() < MIN_TOKEN_LEN => {
                    bail!("{name} must be at least {MIN_TOKEN_LEN} characters")
                }
                Some(_) => {}
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("tls_cert and tls_key go together: set both or neither");
        }
        if self.health_interval.is_zero() || self.health_timeout.is_zero() {
            bail!("health_interval and health_timeout must be positive");
        }
        if self.failover_after == 0 {
            bail!("failover_after must be at least 1");
        }
        if self.reshard_batch_rows == 0 {
            bail!("reshard_batch_rows must be at least 1");
        }
        if self.switchover_timeout.is_zero() {
            bail!("switchover_timeout must be positive");
        }
        if let Some(etcd) = &self.etcd {
            if etcd.endpoints.is_empty() {
                bail!("etcd.endpoints must name at least one etcd member");
            }
            if !etcd.prefix.ends_with('/') {
                bail!("etcd.prefix must end with '/'");
            }
            if etcd.leader_ttl < Duration::from_secs(2) {
                bail!("etcd.leader_ttl must be at least 2s (etcd refuses shorter leases)");
            }
            if etcd.request_timeout.is_zero() {
                bail!("etcd.request_timeout must be positive");
            }
            if etcd.username.is_some() != etcd.password.is_some() {
                bail!("etcd.username needs etcd.password (or ${ETCD_PASSWORD_ENV})");
            }
            if etcd.cert_file.is_some() != etcd.key_file.is_some() {
                bail!("etcd.cert_file and etcd.key_file go together");
            }
            let https = etcd
                .endpoints
                .iter()
                .filter(|e| e.starts_with("https://"))
                .count();
            if https != 0 && https != etcd.endpoints.len() {
                bail!("etcd.endpoints must be all https:// or all http://");
            }
            if https > 0 && etcd.ca_file.is_none() {
                bail!("https:// etcd endpoints need etcd.ca_file");
            }
            if https == 0 && (etcd.ca_file.is_some() || etcd.cert_file.is_some()) {
                bail!("etcd.ca_file and etcd.cert_file need https:// endpoints");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let cfg = ManagerConfig::from_toml(
            "listen = \"127.0.0.1:9000\"\nadmin_token = \"aaaaaaaaaaaaaaaaaaaa\"\nrouter_token = \"bbbbbbbbbbbbbbbbbbbb\"\nhealth_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.health_interval, Duration::from_millis(250));
        assert_eq!(cfg.router_lease, Duration::from_secs(10));
        assert_eq!(cfg.health_timeout, Duration::from_millis(500));
        assert_eq!(cfg.failover_after, 3);
        assert_eq!(cfg.switchover_timeout, Duration::from_secs(10));
        cfg.validate().unwrap();
    }

    #[test]
    fn etcd_settings_parse_and_are_checked() {
        let base =
            "admin_token = \"aaaaaaaaaaaaaaaaaaaa\"\nrouter_token = \"bbbbbbbbbbbbbbbbbbbb\"\n";
        let cfg = ManagerConfig::from_toml(&format!(
            "{base}[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n"
        ))
        .unwrap();
        let etcd = cfg.etcd.as_ref().unwrap();
        assert_eq!(etcd.prefix, "shardline/");
        assert_eq!(etcd.leader_ttl, Duration::from_secs(3));
        cfg.validate().unwrap();
        for bad in [
            "[etcd]\nendpoints = []\n",
            "[etcd]\nendpoints = [\"http://a\"]\nprefix = \"x\"\n",
            "[etcd]\nendpoints = [\"http://a\"]\nleader_ttl = \"1s\"\n",
            "[etcd]\nendpoints = [\"http://a\"]\nusername = \"u\"\n",
            "[etcd]\nendpoints = [\"https://a\"]\n",
            "[etcd]\nendpoints = [\"https://a\", \"http://b\"]\nca_file = \"ca\"\n",
            "[etcd]\nendpoints = [\"http://a\"]\nca_file = \"ca\"\n",
            "[etcd]\nendpoints = [\"https://a\"]\nca_file = \"ca\"\ncert_file = \"c\"\n",
        ] {
            let cfg = ManagerConfig::from_toml(&format!("{base}{bad}")).unwrap();
            assert!(cfg.validate().is_err(), "accepted {bad:?}");
        }
        let err = ManagerConfig::from_toml(&format!("{base}[etcd]\nendpionts = []\n")).unwrap_err();
        assert!(format!("{err:#}").contains("endpionts"), "{err:#}");
    }

    #[test]
    fn refuses_unknown_keys_and_short_tokens() {
        let err = ManagerConfig::from_toml("listne = \"127.0.0.1:1\"").unwrap_err();
        assert!(format!("{err:#}").contains("listne"), "{err:#}");
        let cfg = ManagerConfig::from_toml(
            "admin_token = \"short\"\nrouter_token = \"bbbbbbbbbbbbbbbbbbbb\"",
        )
        .unwrap();
        assert!(cfg.validate().is_err());
    }
}
