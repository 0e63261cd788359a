//! A fresh machine for the README's commands: a bash script run with no
//! `shardline` settings in its environment, `HOME` a new 0700 directory,
//! and the working directory a new one whose `target/release/shardline`
//! is the binary under test, so the README's commands run as written.
//!
//! The README's commands use the default ports (8080, 8081) and, as root,
//! the default data dir `/var/lib/shardline/dev`, both shared with other
//! tests and with a developer's own `shardline dev`. As root the script
//! therefore runs in a mount and network namespace of its own (`unshare
//! --mount --net`), with loopback up and a new empty directory bound over
//! `/var/lib/shardline`: it sees no other process's ports or data, and
//! leaves nothing on the machine but an empty mount point. As a normal
//! user (no namespaces) the data stays under the new `HOME`, and a lock
//! file keeps two such scripts from using the default ports at once.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// Where the script sees the root default data dir's parent.
pub const VAR_LIB: &str = "/var/lib/shardline";

/// What [`Fresh::run`] returns.
pub struct Ran {
    /// The exit code, `None` if killed (by its time limit).
    pub code: Option<i32>,
    /// stdout and stderr, interleaved as written.
    pub output: String,
}

pub struct Fresh {
    /// `HOME` of the script: a new directory, mode 0700.
    pub home: TempDir,
    /// The working directory, with `target/release/shardline`.
    pub cwd: TempDir,
    /// Bound over `/var/lib/shardline` when root.
    pub var_lib: TempDir,
    /// Whether the script runs in its own namespaces (as root).
    pub isolated: bool,
    /// Held while the script uses the default ports without namespaces.
    _ports: Option<File>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Fresh {
    pub fn new() -> Fresh {
        let home = tempfile::tempdir().expect("make HOME");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let cwd = tempfile::tempdir().expect("make working dir");
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(cwd.path().join("target/release")).unwrap();
        std::os::unix::fs::symlink(BIN, cwd.path().join("target/release/shardline")).unwrap();
        let var_lib = tempfile::tempdir().expect("make /var/lib/shardline stand-in");
        std::fs::set_permissions(var_lib.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let isolated = is_root();
        let ports = if isolated {
            // The mount point must exist on the host; it stays there,
            // empty unless a real `shardline dev` uses it (never deleted:
            // it may hold a developer's data).
            if !Path::new(VAR_LIB).exists() {
                std::fs::create_dir_all(VAR_LIB).expect("make the mount point");
                std::fs::set_permissions(VAR_LIB, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            None
        } else {
            Some(lock_default_ports())
        };
        Fresh {
            home,
            cwd,
            var_lib,
            isolated,
            _ports: ports,
        }
    }

    /// A directory the script may use as a data dir of its own choosing
    /// (reachable by `postgres`): a new one under the working directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.cwd.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// The default data dir as the script's `shardline dev` sees it.
    pub fn default_data_dir(&self) -> PathBuf {
        if is_root() {
            PathBuf::from(VAR_LIB).join("dev")
        } else {
            self.home.path().join(".local/share/shardline/dev")
        }
    }

    /// Where the default data dir's files are on the host, for checks
    /// after the script.
    pub fn default_data_dir_on_host(&self) -> PathBuf {
        if self.isolated {
            self.var_lib.path().join("dev")
        } else {
            self.default_data_dir()
        }
    }

    /// Runs `script` with bash in the working directory, killed after
    /// `limit`. The script should stop what it starts (it gets SIGTERM
    /// at the limit).
    pub fn run(&self, script: &str, limit: Duration) -> Ran {
        let path = self.cwd.path().join("script.sh");
        std::fs::write(&path, script).unwrap();
        let out_path = self.cwd.path().join("script.out");
        let out = File::create(&out_path).unwrap();
        let mut cmd = if self.isolated {
            let mut c = Command::new("unshare");
            // The script gets SIGTERM if unshare dies.
            c.args(["--mount", "--net", "--fork", "--kill-child=SIGTERM"])
                .arg("bash")
                .arg("-c")
                .arg(
                    r#"set -e
ip link set lo up
mount --bind "$1" /var/lib/shardline
exec bash "$2""#,
                )
                .arg("bash")
                .arg(self.var_lib.path())
                .arg(&path);
            c
        } else {
            let mut c = Command::new("bash");
            c.arg(&path);
            c
        };
        cmd.current_dir(self.cwd.path())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // Where the PostgreSQL binaries are, if the test run was told.
        if let Ok(bin) = std::env::var("SHARDLINE_PG_BIN") {
            cmd.env("SHARDLINE_PG_BIN", bin);
        }
        let mut child = cmd.spawn().expect("start bash");
        let started = Instant::now();
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if started.elapsed() > limit {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                std::thread::sleep(Duration::from_secs(5));
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ran {
            code,
            output: std::fs::read_to_string(&out_path).unwrap_or_default(),
        }
    }
}

/// An exclusive lock on the default ports for this user's test scripts.
fn lock_default_ports() -> File {
    let path = std::env::temp_dir().join(format!(
        "shardline-default-ports-{}.lock",
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() }
    ));
    let f = File::create(&path).expect("create the ports lock");
    // SAFETY: flock on a descriptor this `File` owns; it touches no memory.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    assert_eq!(rc, 0, "lock {}", path.display());
    f
}

/// Shell functions for the scripts: starting `shardline dev` in the
/// background and waiting (bounded) for its banner, and stopping it with
/// SIGINT as Ctrl-C would.
pub const DEV_FUNCTIONS: &str = r#"
__dev=
__devs=0
# Waits up to 120 s for the banner in $1 while $__dev lives.
__wait_banner() {
  for _ in $(seq 1 1200); do
    grep -q '^Press Ctrl-C to stop.' "$1" 2>/dev/null && return 0
    kill -0 "$__dev" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# Ctrl-C to the running dev; waits up to 30 s, then kills it.
__stop_dev() {
  [ -n "$__dev" ] || return 0
  kill -INT "$__dev"
  ( sleep 30; kill -KILL "$__dev" 2>/dev/null ) &
  local watchdog=$!
  wait "$__dev"
  echo "@@@ dev-exit $?"
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  __dev=
}
trap '[ -z "$__dev" ] || kill -KILL "$__dev" 2>/dev/null' EXIT
trap 'exit 143' TERM
"#;
