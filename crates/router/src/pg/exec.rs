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

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use serde_json::Value;
use shardline_api::router::{Column, StatementResult};

use super::error::{breaks_connection, from_pg_error};
use super::pool::{data_row, put_bind, tag_rows, PooledConn, SessionError};
use super::server::send_cancel;
use super::statements::Described;
use super::values;
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
    let read = crate::classify::is_read(sql);
    execute_with(
        conn,
        sql,
        params,
        read,
        &ResultLimits::default(),
        true,
        None,
    )
    .await
}

/// Runs one statement (refusing session-changing ones, see the module
/// docs) and returns its rows; `read` is [`crate::classify::is_read`] of
/// `sql` (the caller has read the text already); with `reset`, the
/// session is reset after
/// it (see [`PooledConn::reset_future`]); with `name` (a request id), the
/// session is named after it first (see [`PooledConn::put_naming`]).
pub async fn execute_with(
    conn: &mut PooledConn,
    sql: &str,
    params: &[Value],
    read: bool,
    limits: &ResultLimits,
    reset: bool,
    name: Option<&str>,
) -> Result<StatementResult, RouterError> {
    check_statement(sql, false)?;
    conn.set_busy(true);
    let mut result = run(conn, sql, params, read, limits, reset, name).await;
    if result.as_ref().is_err_and(RouterError::is_stale_statement) && !conn.is_broken() {
        result = run(conn, sql, params, read, limits, reset, name).await;
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
    transaction_with(conn, statements, &ResultLimits::default(), true, None).await
}

/// Runs the statements in one transaction: `BEGIN`, each statement,
/// `COMMIT`. On the first failure the transaction is rolled back and the
/// failing statement's 0-based index is returned with the error (also
/// set in `statement_index`); an index equal to the number of statements
/// means `COMMIT` failed (e.g. a deferred constraint or a serialization
/// failure). If the rollback fails, the connection is discarded. With
/// `reset`, the session reset goes out with the `COMMIT` or `ROLLBACK`;
/// with `name`, the session is named with the first statement.
pub async fn transaction_with(
    conn: &mut PooledConn,
    statements: &[(String, Vec<Value>)],
    limits: &ResultLimits,
    reset: bool,
    name: Option<&str>,
) -> Result<Vec<StatementResult>, (usize, RouterError)> {
    let at = |i: usize, e: RouterError| (i, e.at_statement(i));
    for (i, (sql, _)) in statements.iter().enumerate() {
        check_statement(sql, true).map_err(|e| at(i, e))?;
    }
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    let reset = reset && conn.resets_sessions();
    conn.set_busy(true);
    // Prepared before `BEGIN`: nothing can be prepared in a transaction
    // a statement failed.
    if let Err(e) = prepare_own(conn, reset, name.is_some()).await {
        let api = fail(conn, "", &e);
        conn.set_busy(false);
        return Err(at(0, api));
    }
    if let Err(e) = conn.batch_execute("BEGIN").await {
        let api = fail(conn, "", &e);
        // Whether BEGIN took effect is unknown: never reuse the connection.
        conn.discard();
        conn.set_busy(false);
        return Err(at(0, api));
    }
    let mut results = Vec::with_capacity(statements.len());
    for (i, (sql, params)) in statements.iter().enumerate() {
        let name = if i == 0 { name } else { None };
        let read = crate::classify::is_read(sql);
        match run(conn, sql, params, read, limits, false, name).await {
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

/// Prepares the router's own statements a request uses: the reset check
/// with `reset`, the naming with `named`.
async fn prepare_own(conn: &mut PooledConn, reset: bool, named: bool) -> Result<(), SessionError> {
    if reset {
        conn.prepare_reset().await?;
    }
    if named {
        conn.prepare_naming().await?;
    }
    Ok(())
}

/// Sends `COMMIT` or `ROLLBACK`, with `reset` the session reset right
/// behind it (one round trip; [`PooledConn::prepare_reset`] first).
async fn end_transaction(
    conn: &mut PooledConn,
    end: &str,
    reset: bool,
) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    frontend::query(end, &mut out).expect("a constant without NUL");
    if reset {
        conn.put_reset(&mut out);
    }
    conn.send(&out).await?;
    let ended = conn.read_to_ready().await;
    if reset && !conn.is_lost() {
        let outcome = conn.read_reset().await;
        conn.reset_done(outcome);
    }
    ended
}

/// Rolls back after a failed statement; a connection that cannot roll
/// back is discarded.
async fn rollback(conn: &mut PooledConn, reset: bool) {
    if conn.is_lost() {
        conn.discard();
    } else if let Err(e) = end_transaction(conn, "ROLLBACK", reset).await {
        tracing::debug!(error = %e, "rollback failed; discarding the connection");
        conn.discard();
    }
    conn.set_busy(false);
}

/// Maps a session error, dropping a connection it broke and a cached
/// statement it showed stale.
fn fail(conn: &mut PooledConn, sql: &str, e: &SessionError) -> RouterError {
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
fn result_columns(stmt: &Described) -> Result<Vec<Column>, RouterError> {
    stmt.columns
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| {
            if values::shape_of(ty).is_none() {
                return Err(Reason::UnreturnableColumn {
                    column: i + 1,
                    name: name.clone(),
                    type_name: values::type_display(ty),
                }
                .into());
            }
            Ok(Column {
                name: name.clone(),
                type_name: values::type_display(ty),
            })
        })
        .collect()
}

/// Runs one statement; with `name`, [`PooledConn::put_naming`] goes
/// before it, and with `reset`, the session reset (see
/// [`PooledConn::put_reset`]) right behind it, all in the same write.
async fn run(
    conn: &mut PooledConn,
    sql: &str,
    params: &[Value],
    read: bool,
    limits: &ResultLimits,
    reset: bool,
    name: Option<&str>,
) -> Result<StatementResult, RouterError> {
    // Preparing runs nothing, nor do the client-side checks: a failure
    // here leaves the session as it was, with no reset needed.
    let stmt = match conn.prepare_cached(sql).await {
        Ok(s) => s,
        Err(e) => return Err(fail(conn, sql, &e)),
    };
    let encoded = values::encode_params(&stmt.params, params)?;
    let columns = result_columns(&stmt)?;
    let reset = reset && conn.resets_sessions();
    if let Err(e) = prepare_own(conn, reset, name.is_some()).await {
        return Err(fail(conn, "", &e));
    }
    let mut out = BytesMut::new();
    conn.put_closes(&mut out);
    if let Some(name) = name {
        conn.put_naming(&mut out, name);
    }
    put_execute(&mut out, &stmt.name, &encoded);
    if reset {
        conn.put_reset(&mut out);
    }
    if let Err(e) = conn.send(&out).await {
        return Err(fail(conn, sql, &e));
    }
    let named = match name {
        Some(_) => conn.read_naming().await.map_err(RunError::Pg),
        None => Ok(()),
    };
    let result = match named {
        Ok(()) => collect(conn, &stmt, columns, limits, read).await,
        Err(e) => Err(e),
    };
    if reset && !conn.is_lost() {
        let outcome = conn.read_reset().await;
        conn.reset_done(outcome);
    }
    result.map_err(|e| match e {
        RunError::Pg(e) => fail(conn, sql, &e),
        RunError::TooLarge(e) | RunError::Api(e) => e,
    })
}

/// Appends `Bind` (binary parameters and results), `Execute` and `Sync`
/// of the prepared statement `name`.
fn put_execute(out: &mut BytesMut, name: &str, encoded: &[values::EncodedParam]) {
    put_bind(out, name, 1, encoded.iter().map(|p| p.0.as_deref()));
    frontend::execute("", 0, out).expect("the unnamed portal");
    frontend::sync(out);
}

/// Why [`collect`] failed.
enum RunError {
    Pg(SessionError),
    /// The result outgrew the limits while the statement ran.
    TooLarge(RouterError),
    Api(RouterError),
}

/// The longest a cancelled statement's remaining answer is read for;
/// past it the session is lost (and closed).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads a statement's answer, its rows within `limits`, to its
/// `ReadyForQuery`. A `read` whose result outgrows them is cancelled at
/// once and the session discarded: it would go on sending rows no one
/// reads (forever, for a recursive query without end). A write runs to
/// its end (its rows are read and dropped before the session serves
/// anyone else), so that what it wrote is committed, as answered.
async fn collect(
    conn: &mut PooledConn,
    stmt: &Described,
    columns: Vec<Column>,
    limits: &ResultLimits,
    read: bool,
) -> Result<StatementResult, RunError> {
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut affected = None;
    let mut failed: Option<RunError> = None;
    let mut drain_until = None;
    loop {
        let f = match drain_until {
            None => conn.read().await.map_err(RunError::Pg)?,
            Some(deadline) => match tokio::time::timeout_at(deadline, conn.read()).await {
                Ok(f) => f.map_err(RunError::Pg)?,
                Err(_) => {
                    conn.set_lost();
                    break;
                }
            },
        };
        match f.tag {
            b'D' if failed.is_none() => {
                bytes = bytes.saturating_add(f.body.len() + 32 * columns.len());
                if rows.len() >= limits.max_rows || bytes > limits.max_bytes {
                    let e = Reason::ResultTooLarge {
                        max_rows: limits.max_rows,
                        max_bytes: limits.max_bytes,
                        cancelled: read,
                    };
                    if read {
                        // Stopped now; the rest of its answer is read
                        // and dropped (bounded, see `DRAIN`), and the
                        // session, which a late cancel could still hit,
                        // is not reused.
                        let key = conn.cancel_key();
                        tokio::spawn(async move {
                            let _ = send_cancel(&key).await;
                        });
                        conn.discard();
                        drain_until = Some(tokio::time::Instant::now() + DRAIN);
                    }
                    rows.clear();
                    failed = Some(RunError::TooLarge(e.into()));
                    continue;
                }
                match decode_row(stmt, &f.body) {
                    Ok(row) => rows.push(row),
                    Err(e) => failed = Some(RunError::Api(e)),
                }
            }
            b'C' => affected = Some(tag_rows(&f.body)),
            b'E' => {
                let e = conn.db_error(&f.body);
                // PostgreSQL's error outranks ours (the statement
                // failed), except the one our cancel caused.
                if drain_until.is_none() && !matches!(failed, Some(RunError::Pg(_))) {
                    failed = Some(RunError::Pg(e));
                }
            }
            b'Z' => break,
            _ => {}
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let rows_affected = affected.unwrap_or(rows.len() as u64);
    Ok(StatementResult {
        columns,
        rows,
        rows_affected,
    })
}

/// One `DataRow` as JSON values.
fn decode_row(stmt: &Described, body: &[u8]) -> Result<Vec<Value>, RouterError> {
    let raw = data_row(body).map_err(|_| decode_error(0))?;
    let mut out = Vec::with_capacity(stmt.columns.len());
    for (i, (_, ty)) in stmt.columns.iter().enumerate() {
        let value = values::decode_column(ty, raw.get(i).copied().flatten()).map_err(|why| {
            tracing::error!(column = i + 1, type_name = ty.name(), %why, "cannot decode a column");
            decode_error(i)
        })?;
        out.push(value);
    }
    Ok(out)
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
    let mut words = crate::classify::Keywords::new(sql);
    let lead = words.next().unwrap_or("");
    let (second, third) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let is = |word: &str, any: &[&str]| any.iter().any(|w| word.eq_ignore_ascii_case(w));
    let refuse = |r: Refusal| Err(Reason::StatementRefused(r).into());
    if is(lead, &["BEGIN", "START", "COMMIT", "END", "ABORT"]) {
        refuse(Refusal::TransactionControl)
    } else if is(lead, &["ROLLBACK"]) {
        if in_transaction && (is(second, &["TO"]) || is(third, &["TO"])) {
            Ok(())
        } else {
            refuse(Refusal::TransactionControl)
        }
    } else if is(lead, &["SAVEPOINT", "RELEASE"]) {
        if in_transaction {
            Ok(())
        } else {
            refuse(Refusal::SavepointOutsideTransaction)
        }
    } else if is(lead, &["PREPARE"]) && is(second, &["TRANSACTION"]) {
        refuse(Refusal::TwoPhaseCommit)
    } else if is(lead, &["SET"]) && is(second, &["LOCAL", "TRANSACTION", "CONSTRAINTS"]) {
        Ok(())
    } else if is(
        lead,
        &[
            "SET",
            "RESET",
            "DISCARD",
            "LISTEN",
            "PREPARE",
            "DEALLOCATE",
            "DECLARE",
            "LOAD",
        ],
    ) {
        refuse(Refusal::SessionState(lead.to_ascii_uppercase()))
    } else if is(lead, &["COPY"]) {
        refuse(Refusal::Copy)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_statement_upper_cased() {
        for (sql, word) in [("set search_path = x", "SET"), ("Discard all", "DISCARD")] {
            let e = check_statement(sql, false).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{word} statements change session state")),
                "{sql}: {e}"
            );
        }
    }

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
