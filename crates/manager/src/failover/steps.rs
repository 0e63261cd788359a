//! The PostgreSQL side of a failover: probing candidates, draining the old
//! primary, promoting, repointing replicas. Each step is idempotent, so a
//! resumed failover may run it again.

use std::time::Duration;

use shardline_core::catalog::{quote_literal, Instance};
use shardline_tls::pg::SslMode;
use tokio_postgres::Client;

use crate::pg;

/// How long `pg_promote` waits for the promotion to finish, in seconds.
const PROMOTE_WAIT_SECS: i32 = 10;
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(20);

/// A replica that could be promoted, as it was just seen.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub instance: Instance,
    /// WAL replayed.
    pub replay: u64,
    /// WAL received and flushed (replayed before a promotion completes).
    pub receive: u64,
    /// Its WAL receiver is streaming (from whichever primary).
    pub streaming: bool,
}

impl Candidate {
    /// How far it will be once promoted: promotion replays all it has
    /// received first.
    pub fn rank(&self) -> (u64, u64) {
        (self.receive.max(self.replay), self.replay)
    }
}

/// Probes a replica: `Ok(None)` when it answers but is not in recovery
/// (never a candidate: promoting it, or naming it primary beside another,
/// could make two primaries).
pub async fn probe_candidate(
    instance: &Instance,
    timeout: Duration,
) -> Result<Option<Candidate>, String> {
    let c = pg::connect(&instance.dsn, timeout).await?;
    let q = c.query_one(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
           pg_last_wal_receive_lsn()::text, \
           EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
        &[],
    );
    let row = tokio::time::timeout(timeout, q)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| pg::describe(&e))?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let lsn = |i: usize| {
        row.get::<_, Option<String>>(i)
            .as_deref()
            .and_then(pg::parse_lsn)
            .unwrap_or(0)
    };
    Ok(Some(Candidate {
        instance: instance.clone(),
        replay: lsn(1),
        receive: lsn(2),
        streaming: row.get(3),
    }))
}

/// Whether a server is in recovery; `None` when it does not answer within
/// `timeout`.
pub async fn in_recovery(dsn: &str, timeout: Duration) -> Option<bool> {
    let work = async {
        let c = pg::connect(dsn, timeout).await.ok()?;
        let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok()?;
        Some(row.get::<_, bool>(0))
    };
    tokio::time::timeout(timeout * 2, work).await.ok().flatten()
}

/// Planned switchover, on the old primary: stops new writes and ends the
/// sessions that could still write, then returns the WAL position every
/// acknowledged write is below.
///
/// `default_transaction_read_only` (set for the whole server and
/// reloaded) makes every new transaction read-only. Ended: every
/// non-superuser session (routers' tenants) and any session inside a
/// transaction, whoever it is, since a transaction begun before the
/// reload stays writable. An idle superuser session is left: its next
/// transaction is read-only, unless its owner deliberately overrides it.
pub async fn drain(old: &Client) -> Result<u64, String> {
    old.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .map_err(|e| format!("make the old primary read-only: {}", pg::describe(&e)))?;
    pg::reload(old).await?;
    // This session sees the setting once the postmaster has re-read it,
    // which it does before signalling every other session to.
    let mut applied = false;
    for _ in 0..100 {
        let row = old
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .map_err(|e| pg::describe(&e))?;
        if row.get::<_, String>(0) == "on" {
            applied = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    if !applied {
        return Err("the old primary did not apply read-only mode within 2 s".into());
    }
    // With a timeout, pg_terminate_backend waits for the session to end,
    // so its last commit (if any) is in the WAL read below.
    old.query_one(
        "SELECT count(pg_terminate_backend(a.pid, 2000)) FROM pg_stat_activity a \
         LEFT JOIN pg_roles r ON r.oid = a.usesysid \
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
           AND (NOT coalesce(r.rolsuper, false) OR a.xact_start IS NOT NULL)",
        &[],
    )
    .await
    .map_err(|e| format!("end sessions on the old primary: {}", pg::describe(&e)))?;
    // With asynchronous commit an acknowledged commit may still be only
    // in WAL buffers, which the WAL writer flushes (and so streams) some
    // 200-600 ms later. One synchronous commit of our own flushes all WAL
    // before it now (`local`: a synchronous standby need not answer).
    old.batch_execute(
        "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; \
         SELECT pg_current_xact_id(); COMMIT",
    )
    .await
    .map_err(|e| format!("flush the old primary's WAL: {}", pg::describe(&e)))?;
    // The insert position: everything acknowledged is below it.
    let row = old
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| pg::describe(&e))?;
    pg::parse_lsn(&row.get::<_, String>(0)).ok_or_else(|| "unreadable WAL position".to_string())
}

/// Waits until `target` has replayed up to `lsn`.
pub async fn wait_replayed(
    target: &Instance,
    lsn: u64,
    connect_timeout: Duration,
    limit: Duration,
) -> Result<(), String> {
    let c = pg::connect(&target.dsn, connect_timeout).await?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row = c
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await
            .map_err(|e| pg::describe(&e))?;
        let replayed = row
            .get::<_, Option<String>>(0)
            .as_deref()
            .and_then(pg::parse_lsn)
            .unwrap_or(0);
        if replayed >= lsn {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the target replayed up to {} but not to {} within {limit:?}",
                pg::format_lsn(replayed),
                pg::format_lsn(lsn)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ends the old primary's WAL senders, so no replica receives WAL past
/// the point the new primary starts its timeline from (best effort).
pub async fn stop_wal_senders(old: &Client) {
    let ended = old
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'walsender'",
            &[],
        )
        .await;
    if let Err(e) = ended {
        tracing::warn!(error = %pg::describe(&e), "end the old primary's WAL senders");
    }
}

/// Lets writes in again on a server drained by [`drain`].
pub async fn undo_read_only(dsn: &str, timeout: Duration) -> Result<(), String> {
    let c = pg::connect(dsn, timeout).await?;
    c.batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
        .await
        .map_err(|e| pg::describe(&e))?;
    pg::reload(&c).await
}

/// Promotes a replica (`pg_promote`, waiting for it to finish); a server
/// already out of recovery is left as it is. Either way it then takes
/// writes, whatever read-only mode it was left in.
pub async fn promote(target: &Instance, timeout: Duration) -> Result<(), String> {
    let c = pg::connect(&target.dsn, timeout).await?;
    if recovering(&c).await? {
        let wait = Duration::from_secs(PROMOTE_WAIT_SECS as u64) + timeout;
        let q = c.query_one("SELECT pg_promote(true, $1)", &[&PROMOTE_WAIT_SECS]);
        let done: bool = tokio::time::timeout(wait, q)
            .await
            .map_err(|_| format!("pg_promote gave no answer within {wait:?}"))?
            .map_err(|e| pg::describe(&e))?
            .get(0);
        if !done {
            return Err(format!(
                "the promotion did not finish within {PROMOTE_WAIT_SECS} s"
            ));
        }
        if recovering(&c).await? {
            return Err("still in recovery after pg_promote".into());
        }
    }
    c.batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
        .await
        .map_err(|e| pg::describe(&e))?;
    pg::reload(&c).await
}

/// The timeline a (new) primary writes on.
pub async fn timeline(primary: &Instance, timeout: Duration) -> Result<u32, String> {
    let c = pg::connect(&primary.dsn, timeout).await?;
    let row = c
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .map_err(|e| pg::describe(&e))?;
    let name: String = row.get(0);
    name.get(..8)
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .ok_or_else(|| format!("unreadable WAL file name {name}"))
}

/// Where a replica's WAL receiver must connect to follow `primary`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    user: Option<String>,
    password: Option<String>,
    /// The new primary's DSN's `sslmode`: the least the replica's own
    /// connection gets.
    ssl_mode: SslMode,
    pub timeline: u32,
}

/// libpq's `sslmode` values, from the weakest to the strongest (`allow`
/// too: a replica's own `primary_conninfo` may say it).
const LIBPQ_SSL_MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The replica's own TLS settings, kept from its `primary_conninfo`
/// across a failover: files on the replica's host (the DSN's are on the
/// manager's) and its own choices.
const REPLICA_TLS_KEYS: [&str; 9] = [
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

fn mode_rank(mode: &str) -> Option<usize> {
    LIBPQ_SSL_MODES.iter().position(|m| *m == mode)
}

/// A replica's new `primary_conninfo`, and why its TLS is less than the
/// DSN asks, if it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conninfo {
    pub text: String,
    pub downgraded: Option<String>,
}

impl Upstream {
    /// From the new primary's DSN and its timeline.
    pub fn new(dsn: &str, timeline: u32) -> Result<Self, String> {
        // Only the DSN's sslmode reaches the replica: its sslrootcert,
        // sslcert and sslkey are paths on the manager's machine.
        let (cfg, tls) = shardline_tls::pg::split_dsn(dsn).map_err(|e| e.to_string())?;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        Ok(Self {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().map(str::to_string),
            password: cfg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            ssl_mode: tls.mode,
            timeline,
        })
    }

    /// A libpq conninfo for `primary_conninfo`, from the replica's
    /// `current` one: its `application_name` (synchronous replication
    /// names standbys by it) and its own TLS settings
    /// ([`REPLICA_TLS_KEYS`]) are kept; its `sslmode` is the stronger of
    /// its own and the DSN's. A verifying mode that only the DSN asks
    /// for needs the replica's own `sslrootcert`: without one it becomes
    /// `require` (libpq then verifies the chain if the replica's host has
    /// `~/.postgresql/root.crt`, and encrypts either way) rather than a
    /// mode that would stop the replica streaming.
    pub fn conninfo(&self, current: &str) -> Conninfo {
        let mut parts = vec![
            format!("host={}", pg::conninfo_quote(&self.host)),
            format!("port={}", self.port),
        ];
        if let Some(u) = &self.user {
            parts.push(format!("user={}", pg::conninfo_quote(u)));
        }
        if let Some(p) = &self.password {
            parts.push(format!("password={}", pg::conninfo_quote(p)));
        }
        if let Some(a) = pg::conninfo_value(current, "application_name") {
            parts.push(format!("application_name={}", pg::conninfo_quote(&a)));
        }
        let mut has_root = false;
        for key in REPLICA_TLS_KEYS {
            if let Some(v) = pg::conninfo_value(current, key) {
                has_root |= key == "sslrootcert";
                parts.push(format!("{key}={}", pg::conninfo_quote(&v)));
            }
        }
        let theirs = pg::conninfo_value(current, "sslmode");
        let ours = self.ssl_mode;
        let their_rank = theirs.as_deref().and_then(mode_rank);
        let verifying = |rank: Option<usize>| rank >= mode_rank("verify-ca");
        let mut downgraded = None;
        let mode = if ours == SslMode::Disable || their_rank >= mode_rank(ours.name()) {
            // The DSN asks for nothing more than the replica has (no
            // sslmode in the DSN is shardline's `disable`, which never
            // lowers a replica's own, or libpq's default `prefer`).
            theirs
        } else if verifying(mode_rank(ours.name())) && !has_root && !verifying(their_rank) {
            downgraded = Some(format!(
                "sslmode={} needs the CAs on the replica's host (sslrootcert in its \
                 primary_conninfo), and it names none: it streams with sslmode=require",
                ours.name()
            ));
            Some("require".to_string())
        } else {
            Some(ours.name().to_string())
        };
        if let Some(m) = mode {
            parts.push(format!("sslmode={}", pg::conninfo_quote(&m)));
        }
        Conninfo {
            text: parts.join(" "),
            downgraded,
        }
    }
}

/// Tells a replica to stream from `upstream` (`primary_conninfo`, then a
/// reload restarts its WAL receiver; `recovery_target_timeline` =
/// `latest`, the default, makes it follow the new timeline).
pub async fn repoint(
    replica: &Instance,
    upstream: &Upstream,
    timeout: Duration,
) -> Result<(), String> {
    let c = pg::connect(&replica.dsn, timeout).await?;
    let row = c
        .query_one("SHOW primary_conninfo", &[])
        .await
        .map_err(|e| pg::describe(&e))?;
    let current: String = row.get(0);
    let conninfo = upstream.conninfo(&current);
    if let Some(why) = &conninfo.downgraded {
        tracing::warn!(replica = %replica.id, "{why}");
    }
    c.batch_execute(&format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        quote_literal(&conninfo.text)
    ))
    .await
    .map_err(|e| pg::describe(&e))?;
    pg::reload(&c).await
}

/// Waits until a repointed replica streams from `upstream` on its
/// timeline.
pub async fn wait_streaming(
    replica: &Instance,
    upstream: &Upstream,
    connect_timeout: Duration,
    limit: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let c = pg::connect(&replica.dsn, connect_timeout).await?;
    let mut last = String::from("no WAL receiver");
    while tokio::time::Instant::now() < deadline {
        let row = c
            .query_opt(
                "SELECT status, received_tli, sender_host, sender_port \
                 FROM pg_stat_wal_receiver",
                &[],
            )
            .await
            .map_err(|e| pg::describe(&e))?;
        if let Some(row) = row {
            let status: Option<String> = row.get(0);
            let tli: Option<i32> = row.get(1);
            let port: Option<i32> = row.get(3);
            let follows = status.as_deref() == Some("streaming")
                && port == Some(i32::from(upstream.port))
                && tli.is_some_and(|t| i64::from(t) >= i64::from(upstream.timeline));
            if follows {
                return Ok(());
            }
            last = format!(
                "WAL receiver {} on timeline {} from port {}",
                status.unwrap_or_default(),
                tli.unwrap_or_default(),
                port.unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL * 5).await;
    }
    Err(format!(
        "not streaming from the new primary within {limit:?} ({last})"
    ))
}

async fn recovering(c: &Client) -> Result<bool, String> {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg::describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_conninfo_values() {
        let ci = "user=postgres passfile='/root/.pgpass' host='127.0.0.1' port=5433 \
                  application_name='s1 r\\'1' sslmode=prefer";
        assert_eq!(
            pg::conninfo_value(ci, "application_name").as_deref(),
            Some("s1 r'1")
        );
        assert_eq!(pg::conninfo_value(ci, "port").as_deref(), Some("5433"));
        assert_eq!(pg::conninfo_value(ci, "dbname"), None);
        assert_eq!(pg::conninfo_value("", "host"), None);
        assert_eq!(pg::conninfo_value("host = x", "host").as_deref(), Some("x"));
        // The last of a key given twice, as libpq reads it.
        assert_eq!(
            pg::conninfo_value("sslmode=prefer host=h sslmode='disable'", "sslmode").as_deref(),
            Some("disable")
        );
    }

    #[test]
    fn builds_conninfo() {
        let u = Upstream::new("host=127.0.0.1 port=6000 user=postgres password=it's", 2).unwrap();
        assert_eq!(u.port, 6000);
        let ci = u.conninfo("host=old port=1 application_name=r1").text;
        assert_eq!(
            ci,
            "host='127.0.0.1' port=6000 user='postgres' password='it\\'s' application_name='r1'"
        );
        assert_eq!(pg::conninfo_value(&ci, "password").as_deref(), Some("it's"));
    }

    /// The replica's current conninfo, as `pg_basebackup -R` writes it,
    /// with the replica's own CA file.
    const CURRENT: &str = "user=postgres passfile='/var/lib/postgresql/.pgpass' \
        host='10.0.0.1' port=5432 sslmode=prefer sslrootcert='/etc/pg/ca.pem' \
        sslcert='/etc/pg/r.crt' sslkey='/etc/pg/r.key' sslsni=1 application_name=r2";

    fn tls_of(ci: &str) -> Vec<(&'static str, Option<String>)> {
        ["sslmode", "sslrootcert", "sslcert", "sslkey"]
            .into_iter()
            .map(|k| (k, pg::conninfo_value(ci, k)))
            .collect()
    }

    #[test]
    fn the_dsn_sslmode_reaches_the_replica_with_the_replicas_own_files() {
        let dsn = "host=10.0.0.2 user=postgres sslmode=verify-full \
                   sslrootcert=/manager/ca.pem sslcert=/manager/c.pem sslkey=/manager/c.key";
        let ci = Upstream::new(dsn, 3).unwrap().conninfo(CURRENT);
        assert_eq!(ci.downgraded, None);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            tls_of(&ci.text),
            vec![
                ("sslmode", s("verify-full")),
                ("sslrootcert", s("/etc/pg/ca.pem")),
                ("sslcert", s("/etc/pg/r.crt")),
                ("sslkey", s("/etc/pg/r.key")),
            ]
        );
        assert_eq!(pg::conninfo_value(&ci.text, "sslsni"), s("1"));
        // No path of the manager's machine, and no passfile of the old
        // conninfo.
        assert!(!ci.text.contains("/manager/"), "{}", ci.text);
        assert!(!ci.text.contains("passfile"), "{}", ci.text);
    }

    #[test]
    fn a_verifying_mode_without_the_replicas_cas_becomes_require() {
        let u = Upstream::new("host=h sslmode=verify-ca sslrootcert=/m/ca.pem", 3).unwrap();
        let ci = u.conninfo("host=old sslmode=prefer application_name=r2");
        assert_eq!(
            pg::conninfo_value(&ci.text, "sslmode").as_deref(),
            Some("require")
        );
        assert_eq!(pg::conninfo_value(&ci.text, "sslrootcert"), None);
        assert!(ci
            .downgraded
            .is_some_and(|w| w.contains("sslmode=verify-ca")));
        // A replica that verified already (its own root.crt) keeps doing so.
        let ci = u.conninfo("host=old sslmode=verify-full");
        assert_eq!(
            pg::conninfo_value(&ci.text, "sslmode").as_deref(),
            Some("verify-full")
        );
        assert_eq!(ci.downgraded, None);
    }

    #[test]
    fn a_dsn_without_tls_never_lowers_the_replicas_own_mode() {
        let u = Upstream::new("host=h user=postgres", 3).unwrap();
        let ci = u.conninfo(CURRENT);
        assert_eq!(
            pg::conninfo_value(&ci.text, "sslmode").as_deref(),
            Some("prefer")
        );
        assert_eq!(
            pg::conninfo_value(&ci.text, "sslrootcert").as_deref(),
            Some("/etc/pg/ca.pem")
        );
        // Nothing said anywhere: libpq's default, as before.
        let ci = u.conninfo("host=old port=1");
        assert_eq!(pg::conninfo_value(&ci.text, "sslmode"), None);
        // `require` in the DSN lifts a replica's `disable`.
        let u = Upstream::new("host=h sslmode=require", 3).unwrap();
        let ci = u.conninfo("host=old sslmode=disable");
        assert_eq!(
            pg::conninfo_value(&ci.text, "sslmode").as_deref(),
            Some("require")
        );
    }

    #[test]
    fn ranks_by_what_promotion_replays() {
        let c = |replay, receive| Candidate {
            instance: Instance {
                id: "x".into(),
                dsn: String::new(),
            },
            replay,
            receive,
            streaming: true,
        };
        assert!(c(10, 30).rank() > c(20, 20).rank());
        assert!(c(20, 20).rank() > c(10, 20).rank());
    }
}
