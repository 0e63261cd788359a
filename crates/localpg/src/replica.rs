//! Streaming replicas cloned with `pg_basebackup`, and signals to every
//! process of a cluster.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    io_err, make_owned_dir, pg_command, run_as, run_to_end, ClusterConfig, LocalPgError,
    PgBinaries, Result,
};

/// Whether `name` can be used unquoted as `application_name`,
/// `cluster_name` and in `synchronous_standby_names`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Clones the running `primary` into `replica.data_dir` as a hot standby
/// that streams from it, unless that directory already holds a cluster.
/// Returns whether it cloned.
///
/// The clone connects as `postgres` over 127.0.0.1 (initdb's default
/// `pg_hba.conf` admits replication connections from 127.0.0.1 with the
/// same method as other host connections), with the primary's password,
/// if any, in `PGPASSWORD`. `pg_basebackup -R` writes `standby.signal` and
/// a `primary_conninfo` (host, port, user, password, `application_name =
/// name`) into `postgresql.auto.conf`; `cluster_name = 'name'` is added
/// there too, so the standby keeps its name when a failover rewrites
/// `primary_conninfo` without one. `name` must be lower-case letters,
/// digits and `_`. Start the clone with [`start_cluster`](super::start_cluster)
/// and the replica's own port; keep the primary's `max_connections` and
/// similar settings, which a hot standby needs at least as high.
pub async fn create_replica(
    bins: &PgBinaries,
    primary: &ClusterConfig,
    replica: &ClusterConfig,
    name: &str,
) -> Result<bool> {
    if replica.data_dir.join("PG_VERSION").exists() {
        return Ok(false);
    }
    if !valid_name(name) {
        return Err(LocalPgError::Command {
            program: "pg_basebackup".into(),
            output: format!("invalid replica name {name:?}: use a-z, 0-9 and _"),
        });
    }
    let who = run_as()?;
    make_owned_dir(&replica.data_dir, who)?;
    let mut cmd = pg_command(&bins.program("pg_basebackup"), who);
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres application_name={name}",
        primary.port
    );
    cmd.arg("-D").arg(&replica.data_dir).args([
        "-R",
        "-X",
        "stream",
        "--checkpoint=fast",
        "-d",
        &conninfo,
    ]);
    // A throwaway replica need not wait for its files to reach the disk.
    if has_setting(replica, "fsync", "off") {
        cmd.arg("--no-sync");
    }
    match &primary.password {
        Some(pw) => cmd.env("PGPASSWORD", pw),
        None => cmd.env_remove("PGPASSWORD"),
    };
    // Never a password file of whoever runs this.
    cmd.env("PGPASSFILE", "/dev/null");
    run_to_end(cmd, "pg_basebackup").await?;
    append_line(
        &replica.data_dir.join("postgresql.auto.conf"),
        &format!("cluster_name = '{name}'\n"),
    )?;
    Ok(true)
}

fn has_setting(cfg: &ClusterConfig, key: &str, value: &str) -> bool {
    cfg.settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .is_some_and(|(_, v)| v == value)
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.write_all(line.as_bytes())
        .map_err(io_err(format!("write {}", path.display())))
}

/// The `status` of the standby's WAL receiver (`streaming`, `starting`,
/// ...), `None` when it has none or cannot be asked.
pub async fn wal_receiver_status(cfg: &ClusterConfig) -> Option<String> {
    let dsn = cfg.dsn();
    let connect = tokio_postgres::connect(&dsn, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let driver = tokio::spawn(conn);
    let row = client
        .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
        .await;
    drop(client);
    let _ = driver.await;
    row.ok()?.and_then(|r| r.try_get::<_, String>(0).ok())
}

/// Waits until the standby at `cfg` streams from its primary, up to
/// `timeout`.
pub async fn wait_streaming(cfg: &ClusterConfig, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = wal_receiver_status(cfg).await;
        if status.as_deref() == Some("streaming") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LocalPgError::Command {
                program: "wal receiver".into(),
                output: format!(
                    "replica on port {} is not streaming after {timeout:?} (status {status:?})",
                    cfg.port
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The direct children of `pid`: a postmaster's backends and auxiliary
/// processes (WAL receiver, startup, checkpointer, ...). Each is a session
/// leader of its own, so signalling the postmaster's process group would
/// not reach them.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `sig` to each of `pids`.
pub(crate) fn signal_pids(pids: impl IntoIterator<Item = u32>, sig: libc::c_int) {
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}
