//! Managers as separate processes on one etcd, for tests of the
//! control plane's faults: each can be given a failpoint (it aborts there,
//! as a crash would), started when the test wants and killed.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use shardline_client::ManagerClient;
use shardline_testkit::EtcdServer;

use super::link::{Link, State};
use super::procs::BIN;
use super::{ADMIN_TOKEN, ROUTER_TOKEN};

pub struct HaManagers {
    pub etcd: EtcdServer,
    /// Each manager's way to etcd, which the test can cut.
    links: Vec<Link>,
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    failpoints: Vec<Option<&'static str>>,
    health_interval: Duration,
    router_lease: Option<Duration>,
    failover_after: Option<u32>,
    procs: Mutex<Vec<Option<Child>>>,
}

impl HaManagers {
    /// An etcd and the plan of one manager per failpoint (none started).
    pub async fn new(
        dir: &std::path::Path,
        failpoints: Vec<Option<&'static str>>,
        health_interval: Duration,
        router_lease: Option<Duration>,
        failover_after: Option<u32>,
    ) -> HaManagers {
        let etcd = EtcdServer::start().await.expect("start etcd");
        let ports = failpoints
            .iter()
            // Managers start (and restart) on them long after: ports
            // no outgoing connection can have taken meanwhile.
            .map(|_| shardline_localpg::stable_port().unwrap())
            .collect();
        let mut links = Vec::new();
        for _ in &failpoints {
            links.push(Link::to(&etcd.endpoint()).await);
        }
        HaManagers {
            etcd,
            links,
            dir: dir.to_path_buf(),
            ports,
            procs: Mutex::new(failpoints.iter().map(|_| None).collect()),
            failpoints,
            health_interval,
            router_lease,
            failover_after,
        }
    }

    /// Every manager's URL.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Starts manager `i` (`m<i>`), with its failpoint if it has one.
    pub fn start(&self, i: usize) {
        let cfg = self.dir.join(format!("m{i}.toml"));
        let lease = self
            .router_lease
            .map(|l| format!("router_lease = \"{}ms\"\n", l.as_millis()))
            .unwrap_or_default();
        let failover_after = self
            .failover_after
            .map(|n| format!("failover_after = {n}\n"))
            .unwrap_or_default();
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{}\"\nid = \"m{i}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
                 router_token = \"{ROUTER_TOKEN}\"\nhealth_interval = \"{}ms\"\n{lease}\
                 {failover_after}\
                 [etcd]\nendpoints = [\"{}\"]\n",
                self.ports[i],
                self.health_interval.as_millis(),
                self.links[i].url
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join(format!("m{i}.log"))).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["manager", "--config", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(fp) = self.failpoints[i] {
            command.env(shardline_manager::failpoints::FAILPOINT_ENV, fp);
        }
        let child = command.spawn().expect("start a manager process");
        self.procs.lock().unwrap()[i] = Some(child);
    }

    /// `kill -9` of manager `i`, reaped.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.procs.lock().unwrap()[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Partitions manager `i` from etcd (or joins it again): packets
    /// between that manager and the store alone are dropped silently.
    pub fn partition_from_etcd(&self, i: usize, partitioned: bool) {
        self.links[i].set(if partitioned {
            State::Blackhole
        } else {
            State::Open
        });
    }

    /// Whether manager `i` has exited (a failpoint, a kill).
    pub fn exited(&self, i: usize) -> bool {
        let mut procs = self.procs.lock().unwrap();
        match procs[i].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => false,
        }
    }

    /// Waits (bounded) until manager `i` has exited.
    pub async fn wait_exit(&self, i: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.exited(i) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits (bounded) until manager `i` says it leads.
    pub async fn wait_leader(&self, i: usize, limit: Duration) -> bool {
        let m = ManagerClient::new(&self.urls()[i], Some(ADMIN_TOKEN.into()))
            .unwrap()
            .with_timeout(Duration::from_secs(2));
        super::eventually(limit, || async {
            m.leader().await.map(|l| l.is_leader).unwrap_or(false)
        })
        .await
    }

    /// The last lines of manager `i`'s log.
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("m{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for HaManagers {
    /// Kills the managers; with `SHARDLINE_TEST_LOGS=DIR` set, keeps
    /// their logs there (`m<i>.log`).
    fn drop(&mut self) {
        for child in self.procs.lock().unwrap().iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(keep) = std::env::var_os("SHARDLINE_TEST_LOGS") {
            for i in 0..self.ports.len() {
                let name = format!("m{i}.log");
                let _ = std::fs::copy(self.dir.join(&name), std::path::Path::new(&keep).join(name));
            }
        }
    }
}
