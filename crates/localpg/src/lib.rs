//! Local PostgreSQL clusters: `initdb`, start, stop, from the installed
//! server binaries.
//!
//! Used by `shardline dev` (clusters that outlive a run and are reused on
//! the next one) and by the test-support crate (throwaway clusters). The
//! postmaster runs as a direct child of this process, so it can be
//! signalled and reaped; when this process runs as root the child drops to
//! the `postgres` user, because PostgreSQL refuses to run as root. The
//! child also gets `SIGQUIT` if its parent dies, so a killed `dev` or test
//! never leaves a postmaster behind.
//!
//! # Layout
//! - [`PgBinaries`]: finds the server binaries.
//! - [`ClusterConfig`]: where a cluster lives and how it listens.
//! - [`init_cluster`], [`start_cluster`]: initdb and start.
//! - [`RunningCluster`]: a started postmaster; stop, kill, pause, DSN.
//! - `replica`: [`create_replica`] (`pg_basebackup -R`), [`wait_streaming`],
//!   [`wal_receiver_status`]; signals to all of a cluster's processes.
//! - `access`: [`check_reachable`] (can the PostgreSQL user reach a
//!   directory) and [`make_shared_dir`].

use std::io::Write;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod access;
mod replica;

pub use access::{check_reachable, is_root, make_shared_dir};
pub use replica::{create_replica, wait_streaming, wal_receiver_status};

/// Errors from managing a local cluster.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// The PostgreSQL server binaries were not found.
    #[error("PostgreSQL server binaries not found (looked in {0}); set SHARDLINE_PG_BIN")]
    BinariesNotFound(String),
    /// The `postgres` OS user is needed when running as root.
    #[error("running as root but there is no `postgres` user to run PostgreSQL as")]
    NoPostgresUser,
    /// As root, the `postgres` user cannot enter a directory on the way
    /// to a data directory.
    #[error(
        "PostgreSQL runs as user `postgres`, which cannot enter {} (mode {mode:04o}, owner {owner}), so it cannot reach {}",
        dir.display(),
        target.display()
    )]
    Unreachable {
        /// The first directory in the way.
        dir: PathBuf,
        mode: u32,
        owner: String,
        /// The directory PostgreSQL needs.
        target: PathBuf,
    },
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program exited with an error.
    #[error("{program} failed: {output}")]
    Command { program: String, output: String },
    /// The server did not become ready in time.
    #[error("PostgreSQL on port {port} did not start: {log_tail}")]
    StartFailed { port: u16, log_tail: String },
    /// The Unix socket's path would not fit in a socket address.
    #[error(
        "the Unix socket {} is {len} bytes long; socket paths must be under {MAX_SOCKET_PATH} bytes (choose a shorter socket_dir)",
        path.display()
    )]
    SocketPathTooLong {
        /// The socket PostgreSQL would create.
        path: PathBuf,
        len: usize,
    },
}

type Result<T> = std::result::Result<T, LocalPgError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let what = what.into();
    move |source| LocalPgError::Io { what, source }
}

/// The directory holding `initdb`, `postgres`, `pg_basebackup`, ...
#[derive(Debug, Clone)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: `$SHARDLINE_PG_BIN`, else the newest
    /// `/usr/lib/postgresql/<version>/bin`.
    pub fn detect() -> Result<Self> {
        if let Ok(dir) = std::env::var("SHARDLINE_PG_BIN") {
            let dir = PathBuf::from(dir);
            return if dir.join("postgres").exists() {
                Ok(Self { dir })
            } else {
                Err(LocalPgError::BinariesNotFound(dir.display().to_string()))
            };
        }
        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                        let bin = e.path().join("bin");
                        bin.join("postgres").exists().then_some((v, bin))
                    })
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        versions
            .pop()
            .map(|(_, dir)| Self { dir })
            .ok_or_else(|| LocalPgError::BinariesNotFound(root.display().to_string()))
    }

    /// The path of one program.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The OS identity PostgreSQL processes run as.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// Returns the `postgres` user when this process is root, else `None`
/// (PostgreSQL then runs as the current user).
fn run_as() -> Result<Option<RunAs>> {
    if !is_root() {
        return Ok(None);
    }
    passwd_entries()?
        .into_iter()
        .find(|(name, _)| name == "postgres")
        .map(|(_, who)| Some(who))
        .ok_or(LocalPgError::NoPostgresUser)
}

/// The users of `/etc/passwd`: name, uid and primary gid.
fn passwd_entries() -> Result<Vec<(String, RunAs)>> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
    Ok(passwd
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_string();
            let _pw = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((name, RunAs { uid, gid }))
        })
        .collect())
}

/// The home directory of the user with this uid, if `/etc/passwd` has
/// one.
fn home_of(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 5 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

/// The name of the user with this uid, if `/etc/passwd` has one.
fn passwd_name(uid: u32) -> Option<String> {
    passwd_entries()
        .ok()?
        .into_iter()
        .find_map(|(name, who)| (who.uid == uid).then_some(name))
}

/// Builds a command for a PostgreSQL program, as the `postgres` user when
/// root, dying with its parent.
fn pg_command(program: &Path, who: Option<RunAs>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    if let Some(who) = who {
        cmd.uid(who.uid).gid(who.gid);
        // libpq (a replica's WAL receiver, pg_basebackup) looks for its
        // client files under `$HOME/.postgresql`: root's home, which the
        // PostgreSQL user cannot enter, fails every TLS connection
        // ("could not open certificate file ... Permission denied").
        match home_of(who.uid) {
            Some(home) => cmd.env("HOME", home),
            None => cmd.env_remove("HOME"),
        };
    }
    // SAFETY: prctl is async-signal-safe; it only sets this child's
    // parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
    cmd.env("LC_ALL", "C.UTF-8").env_remove("PGDATA");
    cmd
}

/// Settings of `shardline dev`'s clusters: durable (dev data is kept)
/// but small. Also the bench's own server's, so it measures the same.
pub const DEV_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "64MB"),
    ("max_connections", "200"),
    ("wal_level", "logical"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    // Replicas: WAL kept for one that falls behind, and no vacuum of rows
    // a replica's query still reads.
    ("wal_keep_size", "256MB"),
    ("hot_standby_feedback", "on"),
];

/// Where a cluster lives and how it listens.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The data directory (created by [`init_cluster`]).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Password of the `postgres` superuser; `None` trusts loopback
    /// connections (tests only).
    pub password: Option<String>,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// A directory for the server's Unix socket (`<dir>/.s.PGSQL.<port>`),
    /// besides TCP; created for the PostgreSQL user if missing. `None`
    /// (the default): no Unix socket at all.
    pub socket_dir: Option<PathBuf>,
}

impl ClusterConfig {
    /// A cluster at `data_dir` on `port`, trusting loopback, with settings
    /// suited to throwaway clusters.
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Self {
        Self {
            data_dir: data_dir.into(),
            port,
            password: None,
            settings: Vec::new(),
            socket_dir: None,
        }
    }

    /// The key/value DSN of the `postgres` database as superuser.
    pub fn dsn(&self) -> String {
        let mut dsn = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        );
        if let Some(pw) = &self.password {
            dsn.push_str(&format!(" password={pw}"));
        }
        dsn
    }

    /// The key/value DSN of the `postgres` database as superuser over the
    /// Unix socket, when there is one.
    pub fn socket_dsn(&self) -> Option<String> {
        let dir = self.socket_dir.as_ref()?;
        let mut dsn = format!(
            "host={} port={} user=postgres dbname=postgres",
            dir.display(),
            self.port
        );
        if let Some(pw) = &self.password {
            dsn.push_str(&format!(" password={pw}"));
        }
        Some(dsn)
    }

    fn log_file(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }
}

/// Makes `dir` (and missing parents) and hands it to the PostgreSQL user
/// with mode 0700, as initdb and the server require.
fn make_owned_dir(dir: &Path, who: Option<RunAs>) -> Result<()> {
    if let Some(parent) = dir.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("chmod {}", parent.display())))?;
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    if let Some(who) = who {
        chown(dir, Some(who.uid), Some(who.gid))
            .map_err(io_err(format!("chown {}", dir.display())))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.display())))
}

/// Creates a file the PostgreSQL user can read and write.
fn make_owned_file(path: &Path, contents: &[u8], who: Option<RunAs>) -> Result<()> {
    let mut f =
        std::fs::File::create(path).map_err(io_err(format!("create {}", path.display())))?;
    f.write_all(contents)
        .map_err(io_err(format!("write {}", path.display())))?;
    if let Some(who) = who {
        chown(path, Some(who.uid), Some(who.gid))
            .map_err(io_err(format!("chown {}", path.display())))?;
    }
    Ok(())
}

/// Copies a PEM certificate chain and key into `data_dir` as
/// `server.crt` and `server.key`, owned by the PostgreSQL user, the key
/// mode 0600 as the server requires; pair with the settings `ssl = on`
/// (the server's default file names are these).
pub fn install_server_tls(data_dir: &Path, cert: &Path, key: &Path) -> Result<()> {
    let who = run_as()?;
    for (from, to, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
        let contents = std::fs::read(from).map_err(io_err(format!("read {}", from.display())))?;
        let path = data_dir.join(to);
        make_owned_file(&path, &contents, who)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Copies a PEM file of CAs into `data_dir` as `client_ca.crt`, owned
/// by the PostgreSQL user; pair with `ssl_ca_file = 'client_ca.crt'`
/// (relative to the data directory), with which the server asks clients
/// for a certificate and verifies it against these CAs.
pub fn install_client_ca(data_dir: &Path, ca: &Path) -> Result<()> {
    let contents = std::fs::read(ca).map_err(io_err(format!("read {}", ca.display())))?;
    make_owned_file(&data_dir.join("client_ca.crt"), &contents, run_as()?)
}

/// Runs a program to completion, turning a failure into an error with its
/// output.
async fn run_to_end(mut cmd: std::process::Command, name: &str) -> Result<()> {
    cmd.stdin(Stdio::null());
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(io_err(format!("run {name}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(LocalPgError::Command {
        program: name.to_string(),
        output: output.trim().to_string(),
    })
}

/// Initialises the data directory unless it already holds a cluster.
/// Returns whether it created one.
pub async fn init_cluster(bins: &PgBinaries, cfg: &ClusterConfig) -> Result<bool> {
    if cfg.data_dir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    let who = run_as()?;
    make_owned_dir(&cfg.data_dir, who)?;
    // A clear error now rather than initdb's "Permission denied" on a file.
    check_reachable(&cfg.data_dir)?;
    let mut cmd = pg_command(&bins.program("initdb"), who);
    cmd.arg("-D").arg(&cfg.data_dir).args([
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
        "--no-sync",
    ]);
    let pwfile = cfg.data_dir.with_extension("pw");
    match &cfg.password {
        Some(pw) => {
            make_owned_file(&pwfile, pw.as_bytes(), who)?;
            // Password logins over the Unix socket too (when there is
            // one: see `socket_dir`): peer authentication would refuse a
            // client running as root, or as anyone but `postgres`, that
            // logs in as another role.
            cmd.arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"]);
        }
        None => {
            cmd.arg("--auth=trust");
        }
    }
    let result = run_to_end(cmd, "initdb").await;
    let _ = std::fs::remove_file(&pwfile);
    result.map(|()| true)
}

/// Starts the postmaster and waits until it accepts connections.
pub async fn start_cluster(bins: &PgBinaries, cfg: &ClusterConfig) -> Result<RunningCluster> {
    let who = run_as()?;
    check_reachable(&cfg.data_dir)?;
    let log_path = cfg.log_file();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(format!("open {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io_err("clone log handle"))?;
    let sockets = match &cfg.socket_dir {
        Some(dir) => quote_directory(&prepare_socket_dir(dir, cfg.port, who)?),
        None => String::new(),
    };
    let mut cmd = pg_command(&bins.program("postgres"), who);
    cmd.arg("-D")
        .arg(&cfg.data_dir)
        .arg("-p")
        .arg(cfg.port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1", "-c"])
        .arg(format!("unix_socket_directories={sockets}"));
    for (k, v) in &cfg.settings {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // A new process group, so a Ctrl-C at the terminal reaches only us and
    // we shut PostgreSQL down in order.
    cmd.process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(io_err("spawn postgres"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(LocalPgError::StartFailed {
                port: cfg.port,
                log_tail: log_tail(&log_path),
            });
        }
        if accepts_connections(cfg).await {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(LocalPgError::StartFailed {
                port: cfg.port,
                log_tail: log_tail(&log_path),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(RunningCluster {
        cfg: cfg.clone(),
        child: Some(child),
    })
}

/// Paths of Unix sockets are kept under this many bytes, a margin below
/// Linux's `sun_path` (108 bytes with the terminating NUL): PostgreSQL
/// fails at start-up ("Unix-domain socket path ... is too long") past it.
const MAX_SOCKET_PATH: usize = 100;

/// Checks that the socket in `dir` has a path short enough, makes `dir`
/// if missing (the PostgreSQL user's, mode 0755: any local user may reach
/// the socket, as any may reach the TCP port; logins need the password),
/// and returns it absolute (PostgreSQL would take a relative one from its
/// data directory).
fn prepare_socket_dir(dir: &Path, port: u16, who: Option<RunAs>) -> Result<PathBuf> {
    let dir = std::path::absolute(dir).map_err(io_err(format!("resolve {}", dir.display())))?;
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let len = path.as_os_str().len();
    if len >= MAX_SOCKET_PATH {
        return Err(LocalPgError::SocketPathTooLong { path, len });
    }
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        if let Some(who) = who {
            chown(&dir, Some(who.uid), Some(who.gid))
                .map_err(io_err(format!("chown {}", dir.display())))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
    }
    check_reachable(&dir)?;
    Ok(dir)
}

/// `dir` as one element of PostgreSQL's `unix_socket_directories` list:
/// in double quotes (doubled inside), so a comma or space in it is part
/// of the name.
fn quote_directory(dir: &Path) -> String {
    format!("\"{}\"", dir.display().to_string().replace('"', "\"\""))
}

/// Whether the server answers a real connection (not just a TCP accept).
async fn accepts_connections(cfg: &ClusterConfig) -> bool {
    let dsn = cfg.dsn();
    let connect = tokio_postgres::connect(&dsn, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok((client, conn))) => {
            drop(client);
            let _ = conn.await;
            true
        }
        _ => false,
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// How to stop a server (PostgreSQL's shutdown modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for sessions to end (SIGTERM).
    Smart,
    /// Rolls back sessions and checkpoints (SIGINT).
    Fast,
    /// Quits without a checkpoint; recovery runs on next start (SIGQUIT).
    Immediate,
}

/// A postmaster started by [`start_cluster`].
#[derive(Debug)]
pub struct RunningCluster {
    cfg: ClusterConfig,
    child: Option<tokio::process::Child>,
}

impl RunningCluster {
    /// The configuration it was started with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// The superuser DSN.
    pub fn dsn(&self) -> String {
        self.cfg.dsn()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.cfg.port
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Sends a signal to the postmaster only.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            replica::signal_pids([pid], sig);
        }
    }

    /// Sends a signal to the postmaster and every process it started (its
    /// backends and the WAL sender/receiver): `SIGSTOP` freezes the whole
    /// server, as a hung machine would, and `SIGCONT` resumes it.
    pub fn signal_all(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // Children are listed before and after the postmaster is
            // signalled: before, because a postmaster that dies (SIGKILL)
            // has its children moved to another parent at once; after,
            // because one that lives (SIGSTOP) may have forked meanwhile.
            let mut children = replica::children_of(pid);
            replica::signal_pids([pid], sig);
            children.extend(replica::children_of(pid));
            children.sort_unstable();
            children.dedup();
            replica::signal_pids(children, sig);
        }
    }

    /// Stops the server and waits for it to exit (up to `timeout`, then
    /// SIGKILL).
    pub async fn stop(&mut self, mode: StopMode, timeout: Duration) -> Result<()> {
        let sig = match mode {
            StopMode::Smart => libc::SIGTERM,
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        };
        // A paused server could not act on the stop signal.
        self.signal_all(libc::SIGCONT);
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            replica::signal_pids([pid], sig);
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(res) => res.map(|_| ()).map_err(io_err("wait for postgres")),
            Err(_) => {
                let _ = child.start_kill();
                child
                    .wait()
                    .await
                    .map(|_| ())
                    .map_err(io_err("wait for killed postgres"))
            }
        }
    }

    /// Kills the postmaster and all its processes with SIGKILL (failure
    /// injection: the server dies at once) and reaps the postmaster.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let children = child.id().map(replica::children_of).unwrap_or_default();
            let _ = child.start_kill();
            // The whole server dies, as when its machine does: a backend
            // left running would keep serving its open session.
            replica::signal_pids(children, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }

    /// Whether the server still answers connections.
    pub async fn is_ready(&self) -> bool {
        accepts_connections(&self.cfg).await
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        // An immediate shutdown: the caller did not stop it in order, so
        // make sure nothing is left running.
        self.signal_all(libc::SIGCONT);
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                replica::signal_pids([pid], libc::SIGQUIT);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.start_kill();
            }
        }
    }
}

/// A TCP port on 127.0.0.1, free now, below the kernel's ephemeral range
/// (which outgoing connections and binds to port 0 draw from): for a
/// server started on it later, or started again on it after a crash,
/// when a port from [`free_port`] may have been handed to a connection
/// meanwhile. Chosen at random, so parallel tests rarely pick the same.
pub fn stable_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|l| l.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    for attempt in 0..200u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    free_port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(io_err("read bound port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_too_long_is_refused_before_anything_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        // As root, the directory must be one `postgres` can reach.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("d".repeat(100));
        match prepare_socket_dir(&dir, 5432, None) {
            Err(LocalPgError::SocketPathTooLong { path, len }) => {
                assert_eq!(path, dir.join(".s.PGSQL.5432"));
                assert_eq!(len, path.as_os_str().len());
            }
            other => panic!("expected SocketPathTooLong, got {other:?}"),
        }
        assert!(!dir.exists());
        // One byte under the limit is taken, and the directory made.
        let fixed = tmp.path().as_os_str().len() + "/".len() + "/.s.PGSQL.5432".len();
        let dir = tmp.path().join("d".repeat(MAX_SOCKET_PATH - 1 - fixed));
        assert_eq!(prepare_socket_dir(&dir, 5432, None).unwrap(), dir);
        assert!(dir.is_dir());
    }

    #[test]
    fn socket_directories_are_quoted_for_the_list() {
        assert_eq!(quote_directory(Path::new("/tmp/a b,c")), "\"/tmp/a b,c\"");
        assert_eq!(quote_directory(Path::new("/tmp/x\"y")), "\"/tmp/x\"\"y\"");
    }
}
