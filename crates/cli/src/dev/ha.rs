//! `shardline dev --managers N`: the control plane as it runs in
//! production, on one machine — an etcd cluster of three members on
//! loopback ports and N manager processes sharing the catalog in it, one
//! leading by election. Each is a separate OS process, so one can be
//! killed (`dev.json` has their pids).
//!
//! Ports are picked on the first start and kept in `DIR/ha.json` (etcd's
//! members know one another by their peer URLs, so they cannot move);
//! etcd's data lives under `DIR/etcd/`, each manager's config and log
//! under `DIR/managers/`. Every child gets SIGKILL if `dev` itself dies
//! (the parent-death signal), so none outlives it.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shardline_localpg::free_port;

use super::files::write_private;
use crate::endpoints::DevManager;

/// Members of the dev etcd cluster.
const ETCD_MEMBERS: usize = 3;
/// Most managers `dev` starts.
pub const MAX_MANAGERS: usize = 9;
/// The longest wait for etcd, then for a manager, to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ports of a dev control plane, kept across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaPlan {
    pub etcd: Vec<EtcdMember>,
    pub managers: Vec<ManagerSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerSpec {
    pub id: String,
    pub port: u16,
}

impl HaPlan {
    /// The plan of an earlier run in `dir`, else a new one with `n`
    /// managers, the first on `first_port`, on ports none of `taken` (the
    /// clusters' ports, picked but maybe not bound yet: the system could
    /// hand the same free port out twice). Refuses a data dir whose
    /// catalog is the single manager's file.
    pub fn load_or_new(
        dir: &Path,
        n: usize,
        first_port: u16,
        taken: &[u16],
    ) -> anyhow::Result<HaPlan> {
        if n == 0 || n > MAX_MANAGERS {
            bail!("--managers must be between 1 and {MAX_MANAGERS}");
        }
        let path = dir.join("ha.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut plan: HaPlan =
                serde_json::from_str(&text).with_context(|| format!("read {}", path.display()))?;
            if plan.managers.len() != n {
                eprintln!(
                    "note: {} has {} managers; --managers {n} applies to a new data dir only",
                    dir.display(),
                    plan.managers.len()
                );
            }
            plan.managers.truncate(MAX_MANAGERS);
            return Ok(plan);
        }
        if dir.join("catalog.json").exists() {
            bail!(
                "{} holds the catalog of a single manager (catalog.json); \
                 --managers keeps the catalog in etcd: use a new --data-dir",
                dir.display()
            );
        }
        let mut used: Vec<u16> = taken.to_vec();
        used.push(first_port);
        let mut pick = || -> anyhow::Result<u16> {
            // Bounded: a port not handed out yet, else fail.
            for _ in 0..100 {
                let port = free_port()?;
                if !used.contains(&port) {
                    used.push(port);
                    return Ok(port);
                }
            }
            bail!("no free loopback port found")
        };
        let mut etcd = Vec::new();
        for i in 0..ETCD_MEMBERS {
            etcd.push(EtcdMember {
                name: format!("etcd-{i}"),
                client_port: pick()?,
                peer_port: pick()?,
            });
        }
        let mut managers = Vec::new();
        for i in 0..n {
            managers.push(ManagerSpec {
                id: format!("manager-{i}"),
                // Port 0 (tests) means any: a fixed one is kept.
                port: if i == 0 && first_port != 0 {
                    first_port
                } else {
                    pick()?
                },
            });
        }
        let plan = HaPlan { etcd, managers };
        write_private(&path, serde_json::to_string_pretty(&plan)?.as_bytes())?;
        Ok(plan)
    }

    /// How many managers an earlier `--managers` run of `dir` had, if
    /// any: such a data dir keeps its catalog in etcd.
    pub fn managers_of(dir: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(dir.join("ha.json")).ok()?;
        let plan: HaPlan = serde_json::from_str(&text).ok()?;
        Some(plan.managers.len())
    }

    /// etcd's client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The managers' URLs (`https://` when they serve TLS).
    pub fn manager_urls(&self, tls: Option<&ManagerTls>) -> Vec<String> {
        self.managers.iter().map(|m| m.url(tls)).collect()
    }
}

/// The certificate the managers serve HTTPS with, and the CA that
/// signed it (which they trust for one another's advertise URLs).
#[derive(Debug, Clone)]
pub struct ManagerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl ManagerSpec {
    fn url(&self, tls: Option<&ManagerTls>) -> String {
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

/// The running etcd members and managers; stopped on drop.
pub struct ControlPlane {
    etcd: Vec<Child>,
    managers: Vec<(ManagerSpec, Child)>,
    tls: Option<ManagerTls>,
}

impl ControlPlane {
    /// Starts etcd (waiting until every member is healthy), then the
    /// managers (waiting until each answers).
    pub async fn start(
        plan: &HaPlan,
        dir: &Path,
        admin_token: &str,
        router_token: &str,
        tls: Option<&ManagerTls>,
    ) -> anyhow::Result<ControlPlane> {
        let mut this = ControlPlane {
            etcd: Vec::new(),
            managers: Vec::new(),
            tls: tls.cloned(),
        };
        let etcd_dir = dir.join("etcd");
        std::fs::create_dir_all(&etcd_dir).context("make the etcd directory")?;
        let cluster = plan
            .etcd
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &plan.etcd {
            let client = format!("http://127.0.0.1:{}", m.client_port);
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let mut command =
                Command::new(std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into()));
            command
                .arg(format!("--name={}", m.name))
                .arg(format!("--data-dir={}", etcd_dir.join(&m.name).display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={cluster}"))
                .arg("--initial-cluster-token=shardline-dev")
                .arg("--logger=zap")
                .arg("--log-level=warn");
            let child = spawn(command, &etcd_dir.join(format!("{}.log", m.name)))
                .context("start etcd (is etcd-server installed?)")?;
            this.etcd.push(child);
        }
        for m in &plan.etcd {
            wait_healthy(m.client_port)
                .await
                .with_context(|| format!("etcd member {}", m.name))?;
        }
        let managers_dir = dir.join("managers");
        std::fs::create_dir_all(&managers_dir).context("make the managers directory")?;
        let endpoints = plan
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let exe = std::env::current_exe().context("find the shardline binary")?;
        for m in &plan.managers {
            let config = managers_dir.join(format!("{}.toml", m.id));
            let mut text = format!(
                "listen = \"127.0.0.1:{port}\"\nid = \"{id}\"\n\
                 advertise_url = \"{url}\"\n\
                 admin_token = \"{admin_token}\"\nrouter_token = \"{router_token}\"\n",
                port = m.port,
                id = m.id,
                url = m.url(tls),
            );
            if let Some(t) = tls {
                text.push_str(&format!(
                    "tls_cert = {}\ntls_key = {}\n",
                    toml_path(&t.cert)?,
                    toml_path(&t.key)?
                ));
                if let Some(ca) = &t.ca {
                    text.push_str(&format!("tls_ca_file = {}\n", toml_path(ca)?));
                }
            }
            text.push_str(&format!("[etcd]\nendpoints = [{endpoints}]\n"));
            write_private(&config, text.as_bytes())?;
            let mut command = Command::new(&exe);
            command.arg("manager").arg("--config").arg(&config);
            let child = spawn(command, &managers_dir.join(format!("{}.log", m.id)))
                .with_context(|| format!("start {}", m.id))?;
            this.managers.push((m.clone(), child));
        }
        Ok(this)
    }

    /// The managers as `dev.json` lists them.
    pub fn managers(&self) -> Vec<DevManager> {
        self.managers
            .iter()
            .map(|(m, child)| DevManager {
                id: m.id.clone(),
                url: m.url(self.tls.as_ref()),
                pid: child.id(),
            })
            .collect()
    }

    /// The etcd members as `dev.json` lists them.
    pub fn etcd_members(&self, plan: &HaPlan) -> Vec<DevManager> {
        plan.etcd
            .iter()
            .zip(&self.etcd)
            .map(|(m, child)| DevManager {
                id: m.name.clone(),
                url: format!("http://127.0.0.1:{}", m.client_port),
                pid: child.id(),
            })
            .collect()
    }

    /// Stops the managers (SIGTERM: a leader gives its key up), then etcd.
    pub async fn stop(mut self) {
        let managers: Vec<Child> = self.managers.drain(..).map(|(_, c)| c).collect();
        terminate(managers).await;
        terminate(std::mem::take(&mut self.etcd)).await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for mut child in self
            .managers
            .drain(..)
            .map(|(_, c)| c)
            .chain(self.etcd.drain(..))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; it only sets the child's
    // parent-death signal, so it dies with `dev`.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(command.spawn()?)
}

/// SIGTERM to each, then waits up to 10 s in all; SIGKILL to the rest.
async fn terminate(mut children: Vec<Child>) {
    for child in &children {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if children.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until etcd's `/health` on `port` says true.
async fn wait_healthy(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if etcd_healthy(port).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("not healthy within {READY_TIMEOUT:?} (see its log under etcd/)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}

/// A path as a TOML string (absolute: the managers may not share dev's
/// working directory).
fn toml_path(p: &Path) -> anyhow::Result<String> {
    let p = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
    let p = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    Ok(toml::Value::String(p.to_string()).to_string())
}
