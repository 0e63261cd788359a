//! Runs a client's statement, or a transaction of several, on a pooled
//! connection and returns JSON rows.
//!
//! Pooled connections are shared by every request of a tenant, so no
//! session state may outlive a request. Two layers see to it:
//!
//! - A keyword guard refuses, with a 400 before anything is sent,
//!   statements whose leading keyword controls transactions (`BEGIN`,
//!   `START`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE
//!   TRANSACTION`, and outside [`transaction`] `SAVEPOINT`, `RELEASE`,
//!   `ROLLBACK TO`) or changes the session (`SET` other than `SET
//!   LOCAL`/`SET TRANSACTION`/`SET CONSTRAINTS`, `RESET`, `DISCARD`,
//!   `LISTEN`, `PREPARE`, `DEALLOCATE`, `DECLARE`, `LOAD`), and `COPY`
//!   (the HTTP API carries no copy stream). It tells a client what it
//!   cannot do here; it is not what keeps sessions clean, since functions
//!   and `DO` blocks change sessions too.
//! - The reset: when asked (the caller decides whether the request could
//!   have changed the session, see `crate::dispatch`), the session reset
//!   ([`super::pool::SESSION_RESET`]) goes out right behind the request's
//!   last statement (or its `COMMIT`/`ROLLBACK`), in the same round trip;
//!   a session it cannot bring back to a known state is not reused.
//!
//! Statements are prepared once per connection and cached; when
//! PostgreSQL reports a cached statement stale (its result type changed
//! under DDL, SQLSTATE 0A000, or it was deallocated, 26000), the cache
//! entry is dropped and the statement, which did not run, is retried
//! once.

use futures_util::StreamExt as _;
use serde_json::Value;
use shardline_api::router::{Column, StatementResult};
use tokio_postgres::Statement;

use super::error::{breaks_connection, from_pg_error};
use super::pool::PooledConn;
use super::values::{self, RawValue};
use crate::error::{Reason, Refusal, RouterError};

/// Bounds on the result of one statement held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultLimits {
    /// Most rows returned (default 1,000,000).
    pub max_rows: usize,
    /// Most bytes of row data, counting the raw values plus 32 bytes per
    /// value (default 64 MiB).
    pub max_bytes: usize,
}

impl ResultLimits {
    /// The defaults, as a constant.
    pub const DEFAULT: ResultLimits = ResultLimits {
        max_rows: 1_000_000,
        max_bytes: 64 << 20,
    };
}

impl Default for ResultLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Runs one statement with default [`ResultLimits`], resetting the
/// session after it.
pub async fn execute(
    conn: &mut PooledConn,
    sql: &str,
    params: &[Value],
) -> Result<StatementResult, RouterError> {
    execute_with(conn, sql, params, &ResultLimits::default(), true).await
}

/// Runs one statement (refusing session-changing ones, see the module
/// docs) and returns its rows; with `reset`, the session is reset after
/// it (see [`PooledConn::reset_future`]).
pub async fn execute_with(
    conn: &mut PooledConn,
    sql: &str,
    params: &[Value],
    limits: &ResultLimits,
    reset: bool,
) -> Result<StatementResult, RouterError> {
    check_statement(sql, false)?;
    conn.set_busy(true);
    let mut result = run(conn, sql, params, limits, reset).await;
    if result.as_ref().is_err_and(RouterError::is_stale_statement) && !conn.is_broken() {
        result = run(conn, sql, params, limits, reset).await;
    }
    conn.set_busy(false);
    result
}

/// Runs one transaction with default [`ResultLimits`], resetting the
/// session after it.
pub async fn transaction(
    conn: &mut PooledConn,
    statements: &[(String, Vec<Value>)],
) -> Result<Vec<StatementResult>, (usize, RouterError)> {
    transaction_with(conn, statements, &ResultLimits::default(), true).await
}

/// Runs the statements in one transaction: `BEGIN`, each statement,
/// `COMMIT`. On the first failure the transaction is rolled back and the
/// failing statement's 0-based index is returned with the error (also
/// set in `statement_index`); an index equal to the number of statements
/// means `COMMIT` failed (e.g. a deferred constraint or a serialization
/// failure). If the rollback fails, the connection is discarded. With
/// `reset`, the session reset goes out with the `COMMIT` or `ROLLBACK`.
pub async fn transaction_with(
    conn: &mut PooledConn,
    statements: &[(String, Vec<Value>)],
    limits: &ResultLimits,
    reset: bool,
) -> Result<Vec<StatementResult>, (usize, RouterError)> {
    let at = |i: usize, e: RouterError| (i, e.at_statement(i));
    for (i, (sql, _)) in statements.iter().enumerate() {
        check_statement(sql, true).map_err(|e| at(i, e))?;
    }
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    conn.set_busy(true);
    if let Err(e) = conn.client().batch_execute("BEGIN").await {
        let api = fail(conn, "", &e);
        // Whether BEGIN took effect is unknown: never reuse the connection.
        conn.discard();
        conn.set_busy(false);
        return Err(at(0, api));
    }
    let mut results = Vec::with_capacity(statements.len());
    for (i, (sql, params)) in statements.iter().enumerate() {
        match run(conn, sql, params, limits, false).await {
            Ok(r) => results.push(r),
            Err(e) => {
                rollback(conn, reset).await;
                return Err(at(i, e));
            }
        }
    }
    if let Err(e) = end_transaction(conn, "COMMIT", reset).await {
        let api = fail(conn, "", &e);
        // A failed COMMIT ends the transaction; a lost connection is
        // discarded by `fail`.
        conn.set_busy(false);
        return Err(at(statements.len(), api));
    }
    conn.set_busy(false);
    Ok(results)
}

/// Sends `COMMIT` or `ROLLBACK`, with `reset` the session reset right
/// behind it (one round trip).
async fn end_transaction(
    conn: &mut PooledConn,
    end: &str,
    reset: bool,
) -> Result<(), tokio_postgres::Error> {
    if !(reset && conn.resets_sessions()) {
        return conn.client().batch_execute(end).await;
    }
    if let Err(e) = conn.prepare_reset().await {
        // Inside a failed transaction nothing can be prepared: end it,
        // then reset on the next round trip.
        let ended = conn.client().batch_execute(end).await;
        if ended.is_ok() {
            conn.reset().await;
        } else {
            tracing::debug!(error = %e, "cannot prepare the session reset");
            conn.discard();
        }
        return ended;
    }
    let (ended, outcome) =
        futures_util::future::join(conn.client().batch_execute(end), conn.reset_future()).await;
    conn.reset_done(outcome);
    ended
}

/// Rolls back after a failed statement; a connection that cannot roll
/// back is discarded.
async fn rollback(conn: &mut PooledConn, reset: bool) {
    if conn.is_broken() {
        conn.discard();
    } else if let Err(e) = end_transaction(conn, "ROLLBACK", reset).await {
        tracing::debug!(error = %e, "rollback failed; discarding the connection");
        conn.discard();
    }
    conn.set_busy(false);
}

/// Maps a driver error, dropping a connection it broke and a cached
/// statement it showed stale.
fn fail(conn: &mut PooledConn, sql: &str, e: &tokio_postgres::Error) -> RouterError {
    if breaks_connection(e) {
        conn.discard();
    }
    let error = from_pg_error(e);
    if error.is_stale_statement() {
        conn.evict_statement(sql);
    }
    error
}

/// The result columns, refusing types that cannot be returned before the
/// statement runs.
fn result_columns(stmt: &Statement) -> Result<Vec<Column>, RouterError> {
    stmt.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if values::shape_of(c.type_()).is_none() {
                return Err(Reason::UnreturnableColumn {
                    column: i + 1,
                    name: c.name().to_string(),
                    type_name: values::type_display(c.type_()),
                }
                .into());
            }
            Ok(Column {
                name: c.name().to_string(),
                type_name: values::type_display(c.type_()),
            })
        })
        .collect()
}

/// Runs one statement; with `reset`, the session reset (see
/// [`PooledConn::reset_future`]) is sent right behind it, in the same
/// round trip.
async fn run(
    conn: &mut PooledConn,
    sql: &str,
    params: &[Value],
    limits: &ResultLimits,
    reset: bool,
) -> Result<StatementResult, RouterError> {
    // Preparing runs nothing, nor do the client-side checks: a failure
    // here leaves the session as it was, with no reset needed.
    let stmt = match conn.prepare_cached(sql).await {
        Ok(s) => s,
        Err(e) => return Err(fail(conn, sql, &e)),
    };
    let encoded = values::encode_params(stmt.params(), params)?;
    let columns = result_columns(&stmt)?;
    if reset && conn.resets_sessions() {
        if let Err(e) = conn.prepare_reset().await {
            return Err(fail(conn, "", &e));
        }
    }
    let read = crate::classify::is_read(sql);
    let rows = collect(conn.client(), &stmt, &encoded, columns, limits, read);
    let (result, reset_outcome) = if reset && conn.resets_sessions() {
        // `join` polls `rows` first, so the statement goes out before
        // the reset; both in one write.
        let (a, b) = futures_util::future::join(rows, conn.reset_future()).await;
        (a, Some(b))
    } else {
        (rows.await, None)
    };
    if let Some(outcome) = reset_outcome {
        conn.reset_done(outcome);
    }
    result.map_err(|e| match e {
        RunError::Pg(e) => fail(conn, sql, &e),
        RunError::TooLarge(e) => {
            // A read `collect` cancelled: the connection is not reused. A
            // write runs to its end (its rows are read and dropped before
            // the connection serves anyone else), so that what it wrote
            // is committed, as answered.
            if read {
                conn.discard();
            }
            e
        }
        RunError::Api(e) => e,
    })
}

/// Why [`collect`] failed.
enum RunError {
    Pg(tokio_postgres::Error),
    /// The result outgrew the limits while the statement ran.
    TooLarge(RouterError),
    Api(RouterError),
}

/// Executes a prepared statement and reads its rows within `limits`. A
/// `read` whose result outgrows them is cancelled at once: it would go
/// on sending rows no one reads (forever, for a recursive query without
/// end), and anything sent behind it on the connection would wait.
async fn collect(
    client: &tokio_postgres::Client,
    stmt: &Statement,
    encoded: &[values::EncodedParam],
    columns: Vec<Column>,
    limits: &ResultLimits,
    read: bool,
) -> Result<StatementResult, RunError> {
    let stream = client
        .query_raw(stmt, encoded.iter())
        .await
        .map_err(RunError::Pg)?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = stream.next().await {
        let row = row.map_err(RunError::Pg)?;
        bytes = bytes.saturating_add(row.raw_size_bytes() + 32 * columns.len());
        if rows.len() >= limits.max_rows || bytes > limits.max_bytes {
            let e = Reason::ResultTooLarge {
                max_rows: limits.max_rows,
                max_bytes: limits.max_bytes,
                cancelled: read,
            };
            if read {
                let token = client.cancel_token();
                tokio::spawn(async move {
                    let _ = token.cancel_query(tokio_postgres::NoTls).await;
                });
            }
            return Err(RunError::TooLarge(e.into()));
        }
        let mut out = Vec::with_capacity(columns.len());
        for (i, col) in stmt.columns().iter().enumerate() {
            let raw = row
                .try_get::<_, Option<RawValue<'_>>>(i)
                .map_err(|_| RunError::Api(decode_error(i)))?;
            let value = values::decode_column(col.type_(), raw.map(|r| r.0)).map_err(|why| {
                tracing::error!(column = i + 1, type_name = col.type_().name(), %why, "cannot decode a column");
                RunError::Api(decode_error(i))
            })?;
            out.push(value);
        }
        rows.push(out);
    }
    let rows_affected = stream.rows_affected().unwrap_or(rows.len() as u64);
    Ok(StatementResult {
        columns,
        rows,
        rows_affected,
    })
}

/// A value that cannot be returned as JSON — a json number beyond a
/// double's range, json nested deeper than 128 levels — fails the same
/// way every time: the client's to change (400), by casting in SQL.
fn decode_error(i: usize) -> RouterError {
    Reason::UndecodableValue { column: i + 1 }.into()
}

/// Refuses statements that would leave transaction or session state on
/// a shared connection (see the module docs). `in_transaction` allows
/// savepoints inside [`transaction`].
pub fn check_statement(sql: &str, in_transaction: bool) -> Result<(), RouterError> {
    let words = leading_words(sql, 3);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let refuse = |r: Refusal| Err(Reason::StatementRefused(r).into());
    match word(0) {
        "BEGIN" | "START" | "COMMIT" | "END" | "ABORT" => refuse(Refusal::TransactionControl),
        "ROLLBACK" if in_transaction && (word(1) == "TO" || word(2) == "TO") => Ok(()),
        "ROLLBACK" => refuse(Refusal::TransactionControl),
        "SAVEPOINT" | "RELEASE" if in_transaction => Ok(()),
        "SAVEPOINT" | "RELEASE" => refuse(Refusal::SavepointOutsideTransaction),
        "PREPARE" if word(1) == "TRANSACTION" => refuse(Refusal::TwoPhaseCommit),
        "SET" if matches!(word(1), "LOCAL" | "TRANSACTION" | "CONSTRAINTS") => Ok(()),
        "SET" | "RESET" | "DISCARD" | "LISTEN" | "PREPARE" | "DEALLOCATE" | "DECLARE" | "LOAD" => {
            refuse(Refusal::SessionState(word(0).to_string()))
        }
        "COPY" => refuse(Refusal::Copy),
        _ => Ok(()),
    }
}

/// The first `n` keywords of `sql`, upper-cased, outside comments,
/// strings and quoted identifiers.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    crate::classify::Keywords::new(sql)
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_session_and_transaction_control() {
        for sql in [
            "BEGIN",
            "  begin;",
            "start transaction",
            "COMMIT",
            "end",
            "-- c\nROLLBACK",
            "/* a /* nested */ comment */ abort",
            ";BEGIN",
            "(begin)",
            "SET search_path = x",
            "set session authorization other",
            "SET ROLE other",
            "RESET ALL",
            "DISCARD ALL",
            "LISTEN ch",
            "PREPARE p AS SELECT 1",
            "PREPARE TRANSACTION 'x'",
            "DEALLOCATE ALL",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "LOAD 'x'",
            "COPY t TO STDOUT",
            "SAVEPOINT a",
        ] {
            let e = check_statement(sql, false).unwrap_err();
            assert!(
                matches!(e.reason(), Reason::StatementRefused(_)),
                "{sql}: {e:?}"
            );
            assert_eq!(e.code(), shardline_api::ErrorCode::InvalidRequest, "{sql}");
        }
        for sql in ["ROLLBACK", "COMMIT", "BEGIN", "SET x = 1"] {
            assert!(check_statement(sql, true).is_err(), "{sql}");
        }
    }

    #[test]
    fn accepts_ordinary_statements() {
        for sql in [
            "SELECT 1",
            "select 'BEGIN'",
            "-- BEGIN\nSELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "INSERT INTO t VALUES (1)",
            "SET LOCAL statement_timeout = '1s'",
            "set transaction isolation level serializable",
            "SET CONSTRAINTS ALL DEFERRED",
            "NOTIFY ch",
            "",
            "settings_table_select",
        ] {
            assert!(check_statement(sql, false).is_ok(), "{sql}");
        }
        for sql in [
            "SAVEPOINT a",
            "RELEASE a",
            "ROLLBACK TO a",
            "rollback to savepoint a",
            "ROLLBACK WORK TO a",
        ] {
            assert!(check_statement(sql, true).is_ok(), "{sql}");
        }
    }
}
