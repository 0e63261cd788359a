//! A throwaway etcd server: one member on free loopback ports, its data
//! in a temporary directory, killed when dropped.
//!
//! It can be killed (`kill -9`) and started again on the same data and
//! ports, for tests of clients that must survive an etcd restart. etcd
//! runs with the parent-death signal set to SIGKILL, so it does not
//! outlive a test process that is killed; the signal follows the thread
//! that started it, so start it from the test's own thread (the body of
//! a `#[tokio::test]`), not from a spawned task.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The longest wait for etcd to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries with fresh ports when the first pick is taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// How often and how many times [`EtcdServer::pause`] looks for etcd's
/// threads to have stopped.
const STOP_POLL: Duration = Duration::from_millis(5);
const STOP_POLLS: u32 = 400;

/// A running (or killed) single-member etcd.
pub struct EtcdServer {
    client_port: u16,
    peer_port: u16,
    /// Serves `/health` over plain HTTP (the client port may be TLS).
    metrics_port: u16,
    /// With [`start_tls`](Self::start_tls): clients connect over TLS and
    /// must show a certificate of [`EtcdTlsFiles::ca`].
    tls: Option<EtcdTlsFiles>,
    child: Option<Child>,
    // Dropped last: the directory goes after the server has stopped.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd (`etcd` on the PATH, or `$ETCD_BIN`) and waits until it
    /// is healthy.
    pub async fn start() -> anyhow::Result<EtcdServer> {
        Self::start_with(false).await
    }

    /// The same, serving clients over TLS only and checking their
    /// certificates (`--client-cert-auth`): a CA, a server certificate
    /// for 127.0.0.1 and a client certificate are made with `openssl` in
    /// its directory ([`tls_files`](Self::tls_files)).
    pub async fn start_tls() -> anyhow::Result<EtcdServer> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> anyhow::Result<EtcdServer> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let dir = tempfile::tempdir().context("create etcd's directory")?;
            let tls = if tls {
                Some(EtcdTlsFiles::make(dir.path())?)
            } else {
                None
            };
            let mut server = EtcdServer {
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                tls,
                child: None,
                dir,
            };
            match server.restart().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// The client URL, such as `http://127.0.0.1:23790` (`https://` with
    /// TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// With [`start_tls`](Self::start_tls): the certificates.
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// The data directory, kept across [`kill`](Self::kill) and
    /// [`restart`](Self::restart).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills etcd with SIGKILL and waits for it to exit; its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd with SIGSTOP: its ports still accept connections, but
    /// nothing answers, as with a hung server or a lost network.
    ///
    /// Returns once every thread of etcd shows as stopped in `/proc`, so
    /// a call made after it cannot be served by a thread the signal has
    /// not reached yet.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)?;
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .context("etcd is not running")?;
        for _ in 0..STOP_POLLS {
            if all_threads_stopped(pid)? {
                return Ok(());
            }
            std::thread::sleep(STOP_POLL);
        }
        bail!(
            "etcd (pid {pid}) did not stop within {:?}",
            STOP_POLL * STOP_POLLS
        )
    }

    /// Lets a paused etcd go on (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let Some(child) = self.child.as_ref() else {
            bail!("etcd is not running");
        };
        let pid = libc::pid_t::try_from(child.id()).context("etcd's pid")?;
        // SAFETY: kill only sends a signal to our own child process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signal etcd");
        }
        Ok(())
    }

    /// Starts etcd again on the same data and ports (killing it first if
    /// it runs) and waits until it is healthy.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("open etcd's log")?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let program = std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into());
        let mut command = Command::new(program);
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // A lone member elects itself after one election timeout.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn");
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("open etcd's log")?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only sets this child's
        // parent-death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .context("start etcd (is etcd-server installed?)")?;
        self.child = Some(child);
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kill();
                let log = tail(&log_path);
                Err(e.context(format!("etcd's log ends:\n{log}")))
            }
        }
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("check on etcd")? {
                    bail!("etcd exited at start: {status}");
                }
            }
            if healthy(self.metrics_port).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("etcd was not healthy within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Asks etcd's `/health` endpoint, which says true once the member has a
/// leader and serves requests.
async fn healthy(port: u16) -> bool {
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

/// The PEM files of a TLS etcd: a CA, the server's certificate (for IP
/// 127.0.0.1) and key, a client certificate and key, all signed by the
/// CA.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTlsFiles {
    /// Makes them in `dir` with `openssl` (EC P-256, valid one day).
    pub fn make(dir: &Path) -> anyhow::Result<EtcdTlsFiles> {
        let path = |name: &str| dir.join(name);
        crate::tls::make_ca(dir)?;
        crate::tls::sign(
            dir,
            "server",
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        crate::tls::sign(dir, "client", "client", "extendedKeyUsage=clientAuth\n")?;
        Ok(EtcdTlsFiles {
            ca: path("ca.crt"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
        })
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr().context("read the bound port")?.port())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in
/// `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> anyhow::Result<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("list etcd's threads")?;
    for task in tasks {
        let stat = std::fs::read_to_string(task.context("etcd's thread")?.path().join("stat"))
            .unwrap_or_default();
        // The state follows the command name, which ends at the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't') | None) {
            return Ok(false);
        }
    }
    Ok(true)
}
