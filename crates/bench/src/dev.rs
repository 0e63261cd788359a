//! A throwaway `shardline dev` for the benchmarks that need a real stack.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// A running `shardline dev`, stopped (SIGTERM) and removed on drop.
pub struct Dev {
    child: Child,
    _dir: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
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
        _dir: dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("dev.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v["pid"] == dev.child.id() {
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
