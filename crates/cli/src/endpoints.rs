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
    /// With `dev --pg-unix-dir`: the same login over the router's
    /// Unix-domain socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_local_url: Option<String>,
    pub manager_url: String,
    pub admin_token: String,
    /// The tenant of the default app (`app_token`).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub app_token: String,
    pub router_token: String,
    /// With `dev --tls-ca`: the CA file that signed the servers'
    /// certificates, trusted by the other verbs for `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
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
    /// File holding the admin token (instead of --admin-token)
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Client-app token for the router [default: from dev.json]
    #[arg(
        long,
        env = "SHARDLINE_APP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub app_token: Option<String>,
    /// File holding the client-app token (instead of --app-token)
    #[arg(long, global = true, value_name = "PATH")]
    pub app_token_file: Option<PathBuf>,
    /// PEM file of the CAs trusted for https:// URLs [default: dev.json's, else the system's]
    #[arg(long, env = "SHARDLINE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Data directory of `shardline dev`, whose dev.json gives defaults
    /// [default: /var/lib/shardline/dev as root, else ~/.local/share/shardline/dev]
    #[arg(long, env = "SHARDLINE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Where a URL or token the CLI uses came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A flag (`--manager`).
    Flag(&'static str),
    /// Its environment variable (`SHARDLINE_MANAGER_URL`).
    Env(&'static str),
    /// A file named by `--NAME-file` or `SHARDLINE_NAME_FILE`.
    File(PathBuf),
    /// The dev.json of a `shardline dev`.
    DevJson(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "{flag}"),
            Source::Env(var) => write!(f, "${var}"),
            Source::File(path) => write!(f, "the file {}", path.display()),
            Source::DevJson(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A service the CLI talks to: where, with which token, and where each
/// came from.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub url_from: Source,
    pub token: String,
    pub token_from: Source,
}

/// One value the CLI needs: its flag, environment variable and dev.json
/// field.
struct Setting<'a> {
    what: &'static str,
    flag: &'static str,
    env: &'static str,
    given: &'a Option<String>,
    file: Option<&'a Path>,
    /// The flag of the file, for secrets.
    file_flag: Option<&'static str>,
    from_dev: fn(&DevInfo) -> String,
}

impl Endpoints {
    /// The data directory whose dev.json gives defaults.
    fn dev_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The dev.json of [`dev_dir`](Self::dev_dir), if there is one.
    fn dev(&self) -> Option<DevInfo> {
        DevInfo::load(&self.dev_dir()).ok()
    }

    fn pick(&self, s: Setting<'_>) -> anyhow::Result<(String, Source)> {
        let name = s.flag.trim_start_matches('-');
        if let Some(value) = crate::settings::secret(name, s.given.clone(), s.file)? {
            let from = match (s.given, s.file) {
                (_, Some(path)) => Source::File(path.to_path_buf()),
                // Flags win over the environment: the value came from
                // the variable only if it holds that very value.
                _ if std::env::var(s.env).is_ok_and(|v| v == value) => Source::Env(s.env),
                _ => Source::Flag(s.flag),
            };
            return Ok((value, from));
        }
        let dir = self.dev_dir();
        match DevInfo::load(&dir) {
            Ok(dev) => Ok(((s.from_dev)(&dev), Source::DevJson(dir.join("dev.json")))),
            Err(_) => Err(anyhow!(
                "no {what}: pass {flag} or set ${env}{file}, or start `shardline dev` (its \
                 {dev} gives one; none there)",
                what = s.what,
                flag = s.flag,
                env = s.env,
                file = match s.file_flag {
                    Some(f) => format!(" (or name a file holding it: {f} or ${}_FILE)", s.env),
                    None => String::new(),
                },
                dev = dir.join("dev.json").display(),
            )),
        }
    }

    /// The manager's URL and admin token, and where they came from.
    pub fn manager_target(&self) -> anyhow::Result<Target> {
        let (url, url_from) = self.pick(Setting {
            what: "manager URL",
            flag: "--manager",
            env: "SHARDLINE_MANAGER_URL",
            given: &self.manager,
            file: None,
            file_flag: None,
            from_dev: DevInfo::manager_urls,
        })?;
        let (token, token_from) = self.pick(Setting {
            what: "admin token",
            flag: "--admin-token",
            env: "SHARDLINE_ADMIN_TOKEN",
            given: &self.admin_token,
            file: self.admin_token_file.as_deref(),
            file_flag: Some("--admin-token-file"),
            from_dev: |d| d.admin_token.clone(),
        })?;
        Ok(Target {
            url,
            url_from,
            token,
            token_from,
        })
    }

    /// The router's URL and app token, and where they came from.
    pub fn router_target(&self) -> anyhow::Result<Target> {
        let (url, url_from) = self.pick(Setting {
            what: "router URL",
            flag: "--router",
            env: "SHARDLINE_ROUTER_URL",
            given: &self.router,
            file: None,
            file_flag: None,
            from_dev: |d| d.router_url.clone(),
        })?;
        let (token, token_from) = self.pick(Setting {
            what: "app token",
            flag: "--app-token",
            env: "SHARDLINE_APP_TOKEN",
            given: &self.app_token,
            file: self.app_token_file.as_deref(),
            file_flag: Some("--app-token-file"),
            from_dev: |d| d.app_token.clone(),
        })?;
        Ok(Target {
            url,
            url_from,
            token,
            token_from,
        })
    }

    /// The admin token given by flag, environment or file (not dev.json):
    /// what `shardline manager` takes when its config file has none.
    pub fn admin_token_given(&self) -> anyhow::Result<Option<String>> {
        crate::settings::secret(
            "admin-token",
            self.admin_token.clone(),
            self.admin_token_file.as_deref(),
        )
    }

    /// The CA file for `https://`: the flag's, else dev.json's.
    fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file
            .clone()
            .or_else(|| self.dev().and_then(|d| d.ca_file))
    }

    /// A client for the manager's admin API.
    pub fn manager(&self) -> anyhow::Result<ManagerClient> {
        let t = self.manager_target()?;
        ManagerClient::with_ca_file(&t.url, Some(t.token), self.ca_file().as_deref()).with_context(
            || {
                format!(
                    "use the manager at {:?} (URL from {}, admin token from {})",
                    t.url, t.url_from, t.token_from
                )
            },
        )
    }

    /// A client for the router.
    pub fn router(&self) -> anyhow::Result<RouterClient> {
        let t = self.router_target()?;
        RouterClient::with_ca_file(&t.url, Some(t.token), self.ca_file().as_deref()).with_context(
            || {
                format!(
                    "use the router at {:?} (URL from {}, app token from {})",
                    t.url, t.url_from, t.token_from
                )
            },
        )
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
