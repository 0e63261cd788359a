//! Runs the real `shardline dev` process and the `shardline` CLI against
//! it, for the end-to-end tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// Starts `shardline dev` on loopback port 0 with `args` added.
pub fn start_dev(dir: &Path, args: &[&str]) -> Child {
    start_dev_with_env(dir, args, &[])
}

/// [`start_dev`] with environment variables `env` set; its log (stdout
/// and stderr) is the file [`dev_log`] reads.
pub fn start_dev_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    Command::new(BIN)
        .envs(env.iter().copied())
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
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// What `shardline dev` started in `dir` logged so far.
pub fn dev_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
}

/// Waits for the dev.json written by this very process.
pub async fn wait_dev_json(dir: &Path, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("dev.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v["pid"] == child.id() {
                    return v;
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("shardline dev exited with {status}:\n{}", dev_log(dir));
        }
        assert!(Instant::now() < deadline, "dev.json did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then wait up to 10 s for the process to exit.
pub fn stop_dev(child: &mut Child) -> Duration {
    let started = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "dev exited with {status}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dev did not stop within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "shardline {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Tenant `id`'s PostgreSQL role, database and schema name, as
/// `shardline tenant get` shows it (random: `Tenant::pg_name`).
pub fn pg_name(dir: &Path, id: &str) -> String {
    let out = cli(dir, &["--json", "tenant", "get", id]);
    let t: Value = serde_json::from_str(&out).unwrap();
    t["pg_name"]
        .as_str()
        .unwrap_or_else(|| panic!("no pg_name in {out}"))
        .to_string()
}

pub async fn pg_connect(dsn: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}
