//! Connections from the manager to shards: control-plane sessions, error
//! mapping and health probes.

use std::time::Duration;

use shardline_tls::pg::{parse_dsn, PgTls};
use tokio_postgres::Client;

use crate::error::ServiceError;

/// Opens a connection with a deadline, over TLS as the DSN's `sslmode`
/// says (see `shardline_tls::pg`); its driver runs in the background.
pub async fn connect(dsn: &str, timeout: Duration) -> Result<Client, String> {
    let (cfg, tls) = parse_dsn(dsn).map_err(|e| e.to_string())?;
    connect_config(&cfg, tls, timeout).await
}

/// Opens a connection to database `dbname` of the server at `dsn`, as the
/// DSN's user.
pub async fn connect_db(dsn: &str, dbname: &str, timeout: Duration) -> Result<Client, String> {
    let (mut cfg, tls) = parse_dsn(dsn).map_err(|e| e.to_string())?;
    cfg.dbname(dbname);
    connect_config(&cfg, tls, timeout).await
}

async fn connect_config(
    cfg: &tokio_postgres::Config,
    tls: PgTls,
    timeout: Duration,
) -> Result<Client, String> {
    let fut = cfg.connect(tls);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A message for an error, without the DSN.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            msg
        }
    }
}

/// A shard's own failure (`ShardUnavailable`: no answer, or an answer
/// of passing trouble, see [`is_transient`]), or the statement's
/// (`Statement`, with PostgreSQL's fields) when PostgreSQL refused it.
pub fn statement_error(shard: &str, e: &tokio_postgres::Error) -> ServiceError {
    match e.as_db_error() {
        Some(db) if is_transient(db.code().code()) => {
            ServiceError::ShardUnavailable(format!("shard {shard}: {}", db.message()))
        }
        Some(db) => ServiceError::Statement {
            message: format!("on shard {shard}: {}", db.message()),
            sqlstate: Some(db.code().code().to_string()),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
            position: match db.position() {
                Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                _ => None,
            },
        },
        None => ServiceError::ShardUnavailable(format!("shard {shard}: {}", describe(e))),
    }
}

/// Whether a SQLSTATE is the shard's passing trouble rather than the
/// statement's fault, so that the same request may succeed later:
/// connection failures (`08`), shutdown and restart (`57P01`-`57P05`),
/// too many connections (`53300`), a full disk (`53100`) and a primary
/// turned read-only by a switchover (`25006`). Everything else PostgreSQL
/// answers fails the same way again, and is the request's (400).
pub fn is_transient(sqlstate: &str) -> bool {
    matches!(sqlstate, "53100" | "53300" | "25006")
        || sqlstate.starts_with("08")
        || sqlstate.starts_with("57P")
}

/// Connects to a shard's primary for control-plane work; unreachable is
/// `ShardUnavailable` (503).
pub async fn connect_shard(
    shard: &str,
    dsn: &str,
    timeout: Duration,
) -> Result<Client, ServiceError> {
    connect(dsn, timeout)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("shard {shard} is unreachable: {e}")))
}

/// What one health check saw.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub in_recovery: bool,
    /// A primary's current WAL write position; a replica's replay
    /// position.
    pub lsn: Option<u64>,
    /// Replicas: the WAL received and flushed so far.
    pub receive_lsn: Option<u64>,
    /// Replicas: seconds since the commit of the last transaction
    /// replayed, by this server's clock.
    pub replay_age: Option<f64>,
}

/// Checks an instance over `client` with one round trip (it doubles as
/// `SELECT 1`): recovery state, WAL positions, replay age.
pub async fn probe(client: &Client) -> Result<Probe, String> {
    // CASE evaluates one branch: pg_current_wal_lsn() fails in recovery.
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), \
               (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                     ELSE pg_current_wal_lsn() END)::text, \
               pg_last_wal_receive_lsn()::text, \
               extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await
        .map_err(|e| describe(&e))?;
    let in_recovery: bool = row.get(0);
    let lsn: Option<String> = row.get(1);
    let receive: Option<String> = row.get(2);
    Ok(Probe {
        in_recovery,
        lsn: lsn.as_deref().and_then(parse_lsn),
        receive_lsn: receive
            .as_deref()
            .and_then(parse_lsn)
            .filter(|_| in_recovery),
        replay_age: if in_recovery { row.get(3) } else { None },
    })
}

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Prints an LSN as PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// `pg_reload_conf()`.
pub async fn reload(c: &Client) -> Result<(), String> {
    c.query_one("SELECT pg_reload_conf()", &[])
        .await
        .map(|_| ())
        .map_err(|e| format!("reload the configuration: {}", describe(&e)))
}

/// Quotes a libpq conninfo value.
pub fn conninfo_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The value of `key` in a libpq key/value conninfo.
pub fn conninfo_value(conninfo: &str, key: &str) -> Option<String> {
    // libpq takes the last of a key given twice (an operator's setting
    // appended to what pg_basebackup wrote).
    let mut found = None;
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut k = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            k.push(c);
        }
        if k.is_empty() {
            return found;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return found;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut v = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c) => v.push(c),
                        None => return found,
                    },
                    Some('\'') => break,
                    Some(c) => v.push(c),
                    None => return found,
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    match chars.next() {
                        Some(c) => v.push(c),
                        None => return found,
                    }
                } else {
                    v.push(c);
                }
            }
        }
        if k == key {
            found = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates() {
        for code in [
            "08006", "08P01", "57P01", "57P03", "53300", "53100", "25006",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in [
            "42601", "22021", "53200", "54000", "42501", "23505", "57014",
        ] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn lsns() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/"), None);
    }
}
