//! A small network of hosts on one machine, for partition tests: each
//! host is a network namespace the test makes itself (`ip netns add`),
//! joined by a veth pair to a hub namespace that routes between them, so
//! traffic never leaves the test's own namespaces.
//!
//! Host `i` (from 1) is `10.99.<i>.2` (more addresses on request), its
//! hub side `10.99.<i>.1`, its default route through the hub. A
//! partition between two addresses is a pair of `blackhole` rules in the
//! hub (`ip rule add from A to B blackhole`): their packets are dropped
//! on the way, silently, as a real partition drops them — connections
//! time out rather than fail at once — while both still reach everyone
//! else. [`Lab::heal`] removes the rules.
//!
//! Code runs on a host through that host's own tokio runtime, whose
//! threads joined the namespace (`setns`) before the runtime started
//! them: every socket its tasks open, and every process they start
//! (PostgreSQL), lives in the host's namespace. A test's own body runs on
//! one host too ([`Host::block_on`]).
//!
//! Needs root (as CI and this machine run). Namespaces are named
//! `slab<pid>-<host>`; a lab's are removed when it is dropped, and ones
//! left by a test process that died are removed by the next lab.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `ip` with `args`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes the namespaces of labs whose test process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("slab")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// One host: a namespace, its addresses and a runtime inside it.
pub struct Host {
    pub name: String,
    pub netns: String,
    /// Its first address; [`Lab::add_address`] adds more.
    pub ip: Ipv4Addr,
    index: u8,
    rt: Option<tokio::runtime::Runtime>,
}

impl Host {
    /// Runs `fut` on the host (its sockets and child processes in the
    /// host's namespace) and waits for it from any runtime.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(fut).await.expect("task on a lab host")
    }

    /// Runs `fut` on the host from outside any runtime (a test's body),
    /// on one of the host's threads: `Runtime::block_on` alone would poll
    /// it on the caller's thread, outside the namespace.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.rt.as_ref().expect("runtime");
        match rt.block_on(rt.spawn(fut)) {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("test body on a lab host: {e}"),
        }
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime").handle()
    }
}

/// A runtime whose threads are in network namespace `netns`: built on a
/// thread that joined it, so the threads the runtime starts (children of
/// that thread) are in it too.
fn runtime_in(netns: &str, threads: usize) -> tokio::runtime::Runtime {
    let path = format!("/run/netns/{netns}");
    let name = netns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: setns on a valid namespace fd only changes this
        // thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime")
    })
    .join()
    .expect("start a lab runtime")
}

pub struct Lab {
    hub: String,
    pub hosts: Vec<Host>,
    /// The hub's partition rules now in force, as `ip rule` arguments.
    rules: std::sync::Mutex<Vec<Vec<String>>>,
}

impl Lab {
    /// A hub and one host per name, each with a runtime of 2 threads.
    pub fn new(names: &[&str]) -> Lab {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "partition tests make network namespaces: run them as root"
        );
        sweep_stale();
        let prefix = format!("slab{}", std::process::id());
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub]);
        let mut lab = Lab {
            hub: hub.clone(),
            hosts: Vec::new(),
            rules: Default::default(),
        };
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        let forward = Command::new("ip")
            .args(["netns", "exec", &hub, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .expect("enable forwarding");
        assert!(forward.success(), "enable forwarding in the hub");
        for (i, name) in names.iter().enumerate() {
            let index = u8::try_from(i + 1).expect("at most 254 hosts");
            let netns = format!("{prefix}-{name}");
            ip(&["netns", "add", &netns]);
            let veth = format!("h{index}");
            ip(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &netns,
            ]);
            let hub_ip = format!("10.99.{index}.1");
            ip(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{hub_ip}/24"),
                "dev",
                &veth,
            ]);
            ip(&["-n", &hub, "link", "set", &veth, "up"]);
            let host_ip = Ipv4Addr::new(10, 99, index, 2);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &netns, "link", "set", "lo", "up"]);
            ip(&["-n", &netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &netns, "route", "add", "default", "via", &hub_ip]);
            let rt = runtime_in(&netns, 2);
            lab.hosts.push(Host {
                name: name.to_string(),
                netns,
                ip: host_ip,
                index,
                rt: Some(rt),
            });
        }
        lab
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    /// Gives host `name` another address (`10.99.<i>.<last>`), e.g. one
    /// per server it runs, so a partition can cut one and not the other.
    pub fn add_address(&self, name: &str, last: u8) -> Ipv4Addr {
        let h = self.host(name);
        let addr = Ipv4Addr::new(10, 99, h.index, last);
        ip(&[
            "-n",
            &h.netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        addr
    }

    /// Drops every packet between `a` and `b`, both ways, in the hub.
    pub fn partition(&self, a: Ipv4Addr, b: Ipv4Addr) {
        for (from, to) in [(a, b), (b, a)] {
            let rule: Vec<String> = [
                "from",
                &format!("{from}/32"),
                "to",
                &format!("{to}/32"),
                "blackhole",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = vec!["-n", &self.hub, "rule", "add"];
            args.extend(rule.iter().map(String::as_str));
            ip(&args);
            self.rules.lock().unwrap().push(rule);
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        let rules = std::mem::take(&mut *self.rules.lock().unwrap());
        for rule in rules {
            let mut args = vec!["-n", &self.hub, "rule", "del"];
            args.extend(rule.iter().map(String::as_str));
            ip(&args);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(rt) = h.rt.take() {
                rt.shutdown_background();
            }
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}
