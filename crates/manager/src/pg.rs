//! Connections from the manager to shards: control-plane sessions, error
//! mapping and health probes.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::error::ServiceError;

/// Opens a connection with a deadline; its driver runs in the background.
pub async fn connect(dsn: &str, timeout: Duration) -> Result<Client, String> {
    let cfg = tokio_postgres::Config::from_str(dsn).map_err(|e| describe(&e))?;
    connect_config(&cfg, timeout).await
}

/// Opens a connection to database `dbname` of the server at `dsn`, as the
/// DSN's user.
pub async fn connect_db(dsn: &str, dbname: &str, timeout: Duration) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::from_str(dsn).map_err(|e| describe(&e))?;
    cfg.dbname(dbname);
    connect_config(&cfg, timeout).await
}

async fn connect_config(cfg: &tokio_postgres::Config, timeout: Duration) -> Result<Client, String> {
    let fut = cfg.connect(NoTls);
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

/// A shard's own failure (`ShardUnavailable`), or the statement's
/// (`Statement`, with PostgreSQL's fields) when PostgreSQL answered.
pub fn statement_error(shard: &str, e: &tokio_postgres::Error) -> ServiceError {
    match e.as_db_error() {
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
#[derive(Debug, Clone)]
pub struct Probe {
    pub in_recovery: bool,
}

/// Checks an instance over `client`: `SELECT 1` and recovery state.
pub async fn probe(client: &Client) -> Result<Probe, String> {
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| describe(&e))?;
    Ok(Probe {
        in_recovery: row.get(0),
    })
}
