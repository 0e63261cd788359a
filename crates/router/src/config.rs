//! The router's configuration.

use std::net::SocketAddr;
use std::path::Path;
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
    /// The manager's base URL, e.g. `http://127.0.0.1:8081`.
    pub manager_url: String,
    /// Token routers present to the manager. Else `$SHARDLINE_ROUTER_TOKEN`.
    #[serde(default)]
    pub router_token: Option<String>,
    /// This router's id in the manager's registry. Default: random.
    #[serde(default)]
    pub id: Option<String>,
    /// Most connections per shard instance. Default 16.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a pooled connection. Default `2s`.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Longest wait to open a connection to a shard. Default `2s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection. Default `10s`.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Idle pooled connections are closed after this. Default `60s`.
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
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_pool_size() -> usize {
    16
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

impl RouterConfig {
    /// Defaults, following the manager at `manager_url`.
    pub fn new(manager_url: &str, router_token: &str) -> Self {
        Self {
            listen: default_listen(),
            manager_url: manager_url.to_string(),
            router_token: Some(router_token.to_string()),
            id: None,
            pool_size: default_pool_size(),
            acquire_timeout: default_acquire_timeout(),
            connect_timeout: default_connect_timeout(),
            statement_timeout: default_statement_timeout(),
            idle_timeout: default_idle_timeout(),
            request_timeout: default_request_timeout(),
            body_limit: default_body_limit(),
            watch_wait: default_watch_wait(),
        }
    }

    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("parse router config")
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
        if self.pool_size == 0 {
            bail!("pool_size must be at least 1");
        }
        if !self.manager_url.starts_with("http://") {
            bail!("manager_url must be an http:// URL");
        }
        Ok(())
    }
}
