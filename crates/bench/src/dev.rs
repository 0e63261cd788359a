//! A throwaway `shardline dev` for the benchmarks that need a real stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// A running `shardline dev`, stopped (SIGTERM) and removed on drop,
/// its log too once it had started (a failed start keeps the log the
/// error names).
pub struct Dev {
    child: Child,
    dir: PathBuf,
    started: bool,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.started {
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }
}

/// Starts `shardline dev` in a fresh temp dir with `args` added and waits
/// for its dev.json.
pub fn start_dev(bin: &Path, args: &[&str]) -> anyhow::Result<(Dev, Value)> {
    let dir = std::env::temp_dir().join(format!("shardline-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = std::fs::File::create(dir.with_extension("log"))?;
    let child = Command::new(bin)
        .args([
            "dev",
            "--router-listen",
            "127.0.0.1:0",
            "--manager-listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .arg("--data-dir")
        .arg(&dir)
        .env("SHARDLINE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut dev = Dev {
        child,
        dir: dir.clone(),
        started: false,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("dev.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v["pid"] == dev.child.id() {
                    dev.started = true;
                    return Ok((dev, v));
                }
            }
        }
        if let Ok(Some(s)) = dev.child.try_wait() {
            bail!(
                "shardline dev exited with {s}; see {}",
                dir.with_extension("log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("shardline dev did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `shardline` binary: `explicit`, else the one next to this binary.
pub fn shardline_bin(explicit: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("shardline"),
    })
}

/// A `shardline router` process, killed on drop, and its directory
/// removed once it had been ready (a failed start keeps the log the
/// error names).
pub struct RouterProc {
    child: Child,
    /// Its base URL.
    pub url: String,
    dir: PathBuf,
    ready: bool,
}

impl RouterProc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.ready {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts `shardline router` following the manager of `info` (a
/// dev.json), with `extra` TOML lines in its configuration, and waits
/// until it is ready.
pub fn start_router(bin: &Path, info: &Value, id: &str, extra: &str) -> anyhow::Result<RouterProc> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("shardline-bench-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("router.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nmanager_url = {}\nrouter_token = {}\nid = \"{id}\"\n{extra}\n",
            info["manager_url"],
            info["router_token"],
        ),
    )?;
    let log = std::fs::File::create(dir.join("router.log"))?;
    let child = Command::new(bin)
        .args(["router", "--config"])
        .arg(&config)
        // The default level: what a request costs in logging (its span)
        // is part of its cost.
        .env("SHARDLINE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} router", bin.display()))?;
    let mut router = RouterProc {
        child,
        url: format!("http://127.0.0.1:{port}"),
        dir: dir.clone(),
        ready: false,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ready(port) {
            router.ready = true;
            return Ok(router);
        }
        if let Ok(Some(s)) = router.child.try_wait() {
            bail!(
                "router {id} exited with {s}; see {}",
                dir.join("router.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("router {id} was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `GET /readyz` on 127.0.0.1:`port` answers 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> u64 {
    stat_micros(pid, false)
}

/// CPU time a process has spent in the kernel (`stime`), in
/// microseconds: for a proxy, mostly the system calls that move bytes
/// and the loopback delivery they run on the sender's CPU.
pub fn kernel_micros(pid: u32) -> u64 {
    stat_fields(pid).map_or(0, |f| ticks_to_micros(f(12)))
}

/// Context switches of all of a process's threads, voluntary and not
/// (`/proc/PID/task/*/status`): each voluntary one is a thread that
/// went to sleep and was woken.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// `cpu_micros`, plus the CPU of its children that have exited and
/// been waited for (`cutime` + `cstime`).
fn stat_micros(pid: u32, with_reaped: bool) -> u64 {
    let Some(field) = stat_fields(pid) else {
        return 0;
    };
    let mut ticks = field(11) + field(12);
    if with_reaped {
        ticks += field(13) + field(14);
    }
    ticks_to_micros(ticks)
}

/// The numeric fields of `/proc/PID/stat` after the parenthesised
/// command name, by index: utime and stime (the 14th and 15th fields of
/// the whole line) are 11 and 12, cutime and cstime 13 and 14.
fn stat_fields(pid: u32) -> Option<impl Fn(usize) -> u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect();
    Some(move |i: usize| f.get(i).copied().unwrap_or(0))
}

fn ticks_to_micros(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / hz
}

/// CPU time of a PostgreSQL server: the postmaster (pid from the first
/// line of `postmaster.pid` in `data_dir`), every process it started
/// that is alive, and those that exited (backends of clients that
/// disconnected: the postmaster waited for them).
///
/// A backend the postmaster reaps while its children are being read
/// would be in neither part, so the reading is taken again (a few times
/// at most) until the reaped part did not change across it.
pub fn pg_cpu_micros(data_dir: &Path) -> u64 {
    let Some(pm) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0;
    };
    let mut total = 0;
    for _ in 0..5 {
        let before = stat_micros(pm, true);
        total = before + live_children_micros(pm);
        if stat_micros(pm, true) == before {
            break;
        }
    }
    total
}

/// CPU time of `parent`'s children that are still there (running, or
/// exited and not yet waited for).
fn live_children_micros(parent: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 2..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if ppid == Some(parent) {
            total += cpu_micros(pid);
        }
    }
    total
}
