//! Where the CLI finds the manager, the router and their tokens: flags,
//! then environment, then the `dev.json` a `shardline dev` wrote.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use shardline_client::{ManagerClient, RouterClient};

/// What `shardline dev` writes to `DIR/dev.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevInfo {
    /// The process serving these endpoints.
    pub pid: u32,
    pub router_url: String,
    /// The router's PostgreSQL wire protocol URL, logged in as the
    /// default app (absent in dev.json files from before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    pub manager_url: String,
    pub admin_token: String,
    /// The tenant of the default app (`app_token`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub app_token: String,
    pub router_token: String,
    pub shards: Vec<DevShard>,
    /// With `dev --managers N`: every manager (`manager_url` is the
    /// first; any one answers every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<DevManager>,
    /// With `dev --managers N`: the etcd cluster's client URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    /// With `dev --managers N`: each etcd member's process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<DevManager>,
}

impl DevInfo {
    /// Every manager URL, comma-separated (clients move to the next when
    /// one fails).
    pub fn manager_urls(&self) -> String {
        if self.managers.is_empty() {
            return self.manager_url.clone();
        }
        self.managers
            .iter()
            .map(|m| m.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One manager (or etcd member) process of `dev --managers N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevManager {
    pub id: String,
    pub url: String,
    pub pid: u32,
}

/// The tenant a dev.json from before tenants meant.
fn default_tenant() -> String {
    "default".into()
}

/// One shard of a dev setup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevShard {
    pub id: String,
    pub dsn: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Started and registered but put in no keyspace by `dev`, for
    /// dedicated tenants to take.
    #[serde(default)]
    pub spare: bool,
    /// Streaming replicas (`dev --replicas N`). After a failover one of
    /// them may be the shard's primary, and the cluster above a fenced
    /// former primary: the catalog says which is which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<DevReplica>,
}

/// A streaming replica of a dev shard, cloned with `pg_basebackup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevReplica {
    /// The instance id the manager gave it, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub dsn: String,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl DevInfo {
    /// Reads `DIR/dev.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("dev.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// The default data directory of `shardline dev` when run as root.
pub const ROOT_DATA_DIR: &str = "/var/lib/shardline/dev";

/// The default data directory of `shardline dev` (and where the other
/// verbs look for its dev.json): `$SHARDLINE_DATA_DIR` if set; as root
/// [`ROOT_DATA_DIR`]; otherwise `$XDG_DATA_HOME/shardline/dev`, else
/// `~/.local/share/shardline/dev`.
///
/// Not under root's home: PostgreSQL runs as `postgres` when we are root
/// and could not pass through a 0700 `/root`. `/var/lib` is where a
/// system's services keep their state, and `postgres` can reach it.
pub fn default_data_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    choose_data_dir(&DirEnv {
        data_dir: var("SHARDLINE_DATA_DIR"),
        xdg_data_home: var("XDG_DATA_HOME"),
        home: var("HOME"),
        root: shardline_localpg::is_root(),
    })
}

/// What [`default_data_dir`] depends on (empty variables count as unset).
#[derive(Debug, Default)]
struct DirEnv {
    data_dir: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
    root: bool,
}

fn choose_data_dir(env: &DirEnv) -> PathBuf {
    if let Some(d) = &env.data_dir {
        return PathBuf::from(d);
    }
    if env.root {
        return PathBuf::from(ROOT_DATA_DIR);
    }
    let base = match (&env.xdg_data_home, &env.home) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => Path::new(home).join(".local/share"),
        (None, None) => PathBuf::from("."),
    };
    base.join("shardline/dev")
}

/// Endpoint flags shared by the client commands.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// Manager URL, or several comma-separated (the first that answers is used) [default: from dev.json]
    #[arg(long, env = "SHARDLINE_MANAGER_URL", global = true)]
    pub manager: Option<String>,
    /// Router URL [default: from dev.json]
    #[arg(long, env = "SHARDLINE_ROUTER_URL", global = true)]
    pub router: Option<String>,
    /// Admin token for the manager [default: from dev.json]
    #[arg(
        long,
        env = "SHARDLINE_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Client-app token for the router [default: from dev.json]
    #[arg(
        long,
        env = "SHARDLINE_APP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub app_token: Option<String>,
    /// Data directory of `shardline dev`, whose dev.json gives defaults
    /// [default: /var/lib/shardline/dev as root, else ~/.local/share/shardline/dev]
    #[arg(long, env = "SHARDLINE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl Endpoints {
    fn dev(&self) -> Option<DevInfo> {
        let dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        DevInfo::load(&dir).ok()
    }

    fn pick(
        &self,
        given: &Option<String>,
        from_dev: impl Fn(&DevInfo) -> String,
        what: &str,
        flag: &str,
    ) -> anyhow::Result<String> {
        if let Some(v) = given {
            return Ok(v.clone());
        }
        self.dev().map(|d| from_dev(&d)).ok_or_else(|| {
            anyhow!("no {what}: pass {flag}, set its environment variable, or run `shardline dev`")
        })
    }

    /// A client for the manager's admin API.
    pub fn manager(&self) -> anyhow::Result<ManagerClient> {
        let url = self.pick(
            &self.manager,
            |d| d.manager_urls(),
            "manager URL",
            "--manager",
        )?;
        let token = self.pick(
            &self.admin_token,
            |d| d.admin_token.clone(),
            "admin token",
            "--admin-token",
        )?;
        Ok(ManagerClient::new(&url, Some(token))?)
    }

    /// A client for the router.
    pub fn router(&self) -> anyhow::Result<RouterClient> {
        let url = self.pick(
            &self.router,
            |d| d.router_url.clone(),
            "router URL",
            "--router",
        )?;
        let token = self.pick(
            &self.app_token,
            |d| d.app_token.clone(),
            "app token",
            "--app-token",
        )?;
        Ok(RouterClient::new(&url, Some(token))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(data_dir: Option<&str>, xdg: Option<&str>, home: Option<&str>, root: bool) -> DirEnv {
        DirEnv {
            data_dir: data_dir.map(OsString::from),
            xdg_data_home: xdg.map(OsString::from),
            home: home.map(OsString::from),
            root,
        }
    }

    #[test]
    fn root_keeps_its_data_out_of_its_home() {
        // Whatever HOME and XDG_DATA_HOME say: postgres could not reach them.
        let d = choose_data_dir(&env(None, Some("/root/.xdg"), Some("/root"), true));
        assert_eq!(d, Path::new("/var/lib/shardline/dev"));
        let d = choose_data_dir(&env(None, None, None, true));
        assert_eq!(d, Path::new(ROOT_DATA_DIR));
    }

    #[test]
    fn a_normal_user_keeps_it_in_the_xdg_data_dir() {
        let d = choose_data_dir(&env(None, None, Some("/home/ada"), false));
        assert_eq!(d, Path::new("/home/ada/.local/share/shardline/dev"));
        let d = choose_data_dir(&env(None, Some("/data/ada"), Some("/home/ada"), false));
        assert_eq!(d, Path::new("/data/ada/shardline/dev"));
        let d = choose_data_dir(&env(None, None, None, false));
        assert_eq!(d, Path::new("./shardline/dev"));
    }

    #[test]
    fn shardline_data_dir_wins_for_everyone() {
        for root in [false, true] {
            let d = choose_data_dir(&env(Some("/srv/sl"), Some("/x"), Some("/home/ada"), root));
            assert_eq!(d, Path::new("/srv/sl"));
        }
    }
}
