//! What the wire benchmarks share: free ports, listeners waited for, DSN
//! fields, and one `pgbench` phase run and read.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts on 127.0.0.1:`port`.
pub fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until something accepts on the Unix socket of `port` in `dir`
/// (`<dir>/.s.PGSQL.<port>`, as PostgreSQL names its own).
pub fn wait_socket(dir: &Path, port: u16, what: &str) -> anyhow::Result<()> {
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {} within 20 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A `key=value` of a DSN.
pub fn dsn_field<'a>(dsn: &'a str, key: &str) -> Option<&'a str> {
    dsn.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// What one pgbench phase printed.
pub struct Phase {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: u64,
    pub failed: u64,
}

/// Runs `pgbench -n <args> <url>` and reads what it printed.
pub fn run(args: &[String], url: &str) -> anyhow::Result<Phase> {
    let out = Command::new("pgbench")
        .arg("-n")
        .args(args)
        .arg(url)
        .output()
        .context("run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.parse().ok())
    };
    Ok(Phase {
        tps: num("tps = ").context("pgbench printed no tps")?,
        latency_ms: num("latency average = ").unwrap_or(0.0),
        transactions: num("number of transactions actually processed: ").unwrap_or(0.0) as u64,
        failed: num("number of failed transactions: ").unwrap_or(0.0) as u64,
    })
}
