//! Connections from the manager to shards: migrations and health checks.

use std::time::Duration;

use shardline_api::manager::MigrationOutcome;
use shardline_core::catalog::Migration;
use tokio_postgres::{Client, NoTls};

use crate::error::ServiceError;

/// Opens a connection with a deadline; its driver runs in the background.
pub async fn connect(dsn: &str, timeout: Duration) -> Result<Client, String> {
    let fut = tokio_postgres::connect(dsn, NoTls);
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

/// Where each shard records the migrations applied to it, in the same
/// transaction as the migration itself.
const BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS shardline; \
     CREATE TABLE IF NOT EXISTS shardline.schema_migrations ( \
       name text PRIMARY KEY, checksum text NOT NULL, \
       applied_at timestamptz NOT NULL DEFAULT now())";

fn statement_error(shard: &str, e: &tokio_postgres::Error) -> ServiceError {
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

/// Applies one migration to one shard, atomically with its record.
/// Already applied with the same checksum is a no-op; with another
/// checksum it is refused.
pub async fn apply_migration(
    shard: &str,
    dsn: &str,
    migration: &Migration,
    timeout: Duration,
) -> Result<MigrationOutcome, ServiceError> {
    let mut client = connect(dsn, timeout)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("shard {shard}: {e}")))?;
    // Two managers (or two requests) bootstrapping at once can race on
    // CREATE ... IF NOT EXISTS; the loser's retry sees the table.
    if client.batch_execute(BOOTSTRAP).await.is_err() {
        client
            .batch_execute(BOOTSTRAP)
            .await
            .map_err(|e| statement_error(shard, &e))?;
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| statement_error(shard, &e))?;
    // Serialises concurrent appliers of this shard.
    tx.batch_execute("LOCK TABLE shardline.schema_migrations IN EXCLUSIVE MODE")
        .await
        .map_err(|e| statement_error(shard, &e))?;
    let existing = tx
        .query_opt(
            "SELECT checksum FROM shardline.schema_migrations WHERE name = $1",
            &[&migration.name],
        )
        .await
        .map_err(|e| statement_error(shard, &e))?;
    if let Some(row) = existing {
        let checksum: String = row.get(0);
        return if checksum == migration.checksum {
            Ok(MigrationOutcome::AlreadyApplied)
        } else {
            Err(ServiceError::Conflict(format!(
                "migration {} was applied to shard {shard} with another checksum ({checksum})",
                migration.name
            )))
        };
    }
    tx.batch_execute(&migration.sql)
        .await
        .map_err(|e| statement_error(shard, &e))?;
    tx.execute(
        "INSERT INTO shardline.schema_migrations (name, checksum) VALUES ($1, $2)",
        &[&migration.name, &migration.checksum],
    )
    .await
    .map_err(|e| statement_error(shard, &e))?;
    tx.commit().await.map_err(|e| statement_error(shard, &e))?;
    Ok(MigrationOutcome::Applied)
}

/// Applies every migration, in order, to a shard (one joining a keyspace,
/// or one that missed some while it was down).
pub async fn ensure_migrations(
    shard: &str,
    dsn: &str,
    migrations: &[Migration],
    timeout: Duration,
) -> Result<(), ServiceError> {
    for m in migrations {
        apply_migration(shard, dsn, m, timeout).await?;
    }
    Ok(())
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
