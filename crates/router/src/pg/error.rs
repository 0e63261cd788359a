//! PostgreSQL and pool errors → the API's [`ApiError`].
//!
//! A statement PostgreSQL rejected is the client's error (4xx) and
//! carries PostgreSQL's own `sqlstate`, `detail`, `hint` and `position`;
//! a shard we cannot reach or use is ours (503, retryable). Messages for
//! our own failures are fixed phrases: they never carry a DSN, a user
//! name or a driver's internals (log the source error where it is
//! handled).
//!
//! SQLSTATE classes:
//! - `23` integrity violation, `40002` → `constraint_violation` (409);
//! - `40001` serialization failure, `40P01` deadlock, `55P03` lock not
//!   available → `transaction_conflict` (409, retryable);
//! - `57014` query canceled (statement_timeout) → `timeout` (504);
//! - `57P01`..`57P05` shutdown/idle-session, `08` connection, `53`
//!   insufficient resources (but see below), `25006` read-only
//!   transaction (a failover is under way), `SLM01` (the key's range
//!   moved to another shard; see [`crate::reroute`]) →
//!   `shard_unavailable` (503, retryable, Retry-After 1);
//! - `53200` out of memory (also "out of shared memory": a statement
//!   taking more locks than the lock table holds) and `53400`
//!   configuration limit exceeded (`temp_file_limit`) →
//!   `statement_failed` (400): the statement asks for more than the shard
//!   gives, and sent again it fails again — answered as retryable, a
//!   client would repeat it forever and keep straining the shard. (A
//!   statement that fails so only because other sessions hold the memory
//!   is refused alike; the shard's own health is the health checks'.)
//! - `58` system error, `XX` internal error → `shard_unavailable`, not
//!   retryable (the shard itself is in trouble);
//! - `42501` insufficient privilege → `forbidden` (403): a tenant's role
//!   touching what it does not own is an authorisation failure;
//! - everything else → `statement_failed` (400).

use shardline_api::{ApiError, ErrorCode};
use shardline_core::catalog::MOVED_SQLSTATE;
use tokio_postgres::error::{DbError, ErrorPosition, Severity, SqlState};

use super::pool::PoolError;

/// Seconds a client should wait before retrying on a shard problem.
const RETRY_AFTER_SECS: u64 = 1;

/// The error code for a SQLSTATE.
pub fn classify_sqlstate(code: &str) -> ErrorCode {
    match code {
        "40001" | "40P01" | "55P03" => ErrorCode::TransactionConflict,
        "40002" => ErrorCode::ConstraintViolation,
        "57014" => ErrorCode::Timeout,
        "25006" | MOVED_SQLSTATE => ErrorCode::ShardUnavailable,
        "42501" => ErrorCode::Forbidden,
        "53200" | "53400" => ErrorCode::StatementFailed,
        c if c.starts_with("57P") => ErrorCode::ShardUnavailable,
        c => match c.get(..2) {
            Some("23") => ErrorCode::ConstraintViolation,
            Some("08" | "53" | "58" | "XX") => ErrorCode::ShardUnavailable,
            _ => ErrorCode::StatementFailed,
        },
    }
}

/// An error PostgreSQL sent, passed through with its own fields.
pub fn from_db_error(db: &DbError) -> ApiError {
    let sqlstate = db.code().code();
    let code = classify_sqlstate(sqlstate);
    let mut e = ApiError::new(code, db.message());
    if code == ErrorCode::ShardUnavailable {
        if matches!(sqlstate.get(..2), Some("58" | "XX")) {
            e.retryable = false;
        } else {
            e.retry_after = Some(RETRY_AFTER_SECS);
        }
    }
    if *db.code() == SqlState::QUERY_CANCELED {
        e.message = format!("{} (the statement ran past its time limit)", db.message());
    }
    if *db.code() == SqlState::SYNTAX_ERROR
        && db
            .message()
            .contains("cannot insert multiple commands into a prepared statement")
    {
        e.hint = Some("send one statement per request, or several in /v1/transaction".into());
    }
    e.sqlstate = Some(sqlstate.to_string());
    e.detail = db.detail().map(str::to_string);
    e.hint = e.hint.or_else(|| db.hint().map(str::to_string));
    // An internal position points into a query PostgreSQL generated, not
    // into the client's text.
    e.position = match db.position() {
        Some(ErrorPosition::Original(p)) => Some(*p),
        Some(ErrorPosition::Internal { .. }) | None => None,
    };
    e
}

/// The API error for a driver error on a statement.
///
/// Errors without a PostgreSQL error body are connection failures (the
/// connection closed, an I/O error, a protocol desync): the shard is
/// unavailable and the connection must not be reused.
pub fn from_pg_error(e: &tokio_postgres::Error) -> ApiError {
    match e.as_db_error() {
        Some(db) => from_db_error(db),
        None => ApiError::new(
            ErrorCode::ShardUnavailable,
            "lost the connection to the shard",
        )
        .with_retry_after(RETRY_AFTER_SECS),
    }
}

/// Whether a driver error leaves the connection unusable.
pub fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // FATAL errors end the session.
        Some(db) => {
            // The parsed severity is the untranslated one (PostgreSQL 9.6+).
            let fatal = match db.parsed_severity() {
                Some(sev) => matches!(sev, Severity::Fatal | Severity::Panic),
                None => matches!(db.severity(), "FATAL" | "PANIC"),
            };
            fatal || db.code().code().starts_with("08")
        }
        None => true,
    }
}

/// The API error for a failure to get a pooled connection.
pub fn from_pool_error(e: &PoolError) -> ApiError {
    match e {
        PoolError::Timeout(waited) => ApiError::new(
            ErrorCode::ShardUnavailable,
            format!(
                "all connections to the shard are busy (waited {} ms)",
                waited.as_millis()
            ),
        )
        .with_retry_after(RETRY_AFTER_SECS),
        PoolError::Closed => ApiError::new(
            ErrorCode::Unavailable,
            "the shard's connection pool is closed",
        )
        .with_retry_after(RETRY_AFTER_SECS),
        PoolError::ConnectTimeout(_) => ApiError::new(
            ErrorCode::ShardUnavailable,
            "timed out connecting to the shard",
        )
        .with_retry_after(RETRY_AFTER_SECS),
        PoolError::InvalidDsn(_) => ApiError::new(
            ErrorCode::Unavailable,
            "the shard's connection settings are invalid",
        )
        .with_retry_after(5),
        PoolError::BudgetExhausted(waited) => ApiError::new(
            ErrorCode::ShardUnavailable,
            format!(
                "this router's connections to the shard are all in use (waited {} ms)",
                waited.as_millis()
            ),
        )
        .with_retry_after(RETRY_AFTER_SECS),
        PoolError::Connect(source) => from_connect_error(source),
    }
}

fn from_connect_error(e: &tokio_postgres::Error) -> ApiError {
    let Some(db) = e.as_db_error() else {
        return ApiError::new(ErrorCode::ShardUnavailable, "cannot connect to the shard")
            .with_retry_after(RETRY_AFTER_SECS);
    };
    let code = db.code().code();
    match code.get(..2) {
        // Authentication or authorisation (28), missing database (3D) or
        // role settings: our configuration is wrong, not the client's
        // request. The server's text names the user: not shown.
        Some("28" | "3D" | "42") => ApiError::new(
            ErrorCode::Unavailable,
            "the router cannot log in to the shard",
        )
        .with_retry_after(5),
        _ => {
            let mut api = ApiError::new(ErrorCode::ShardUnavailable, "cannot connect to the shard")
                .with_retry_after(RETRY_AFTER_SECS);
            api.sqlstate = Some(code.to_string());
            api
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        let cases = [
            ("23505", ErrorCode::ConstraintViolation),
            ("23503", ErrorCode::ConstraintViolation),
            ("40001", ErrorCode::TransactionConflict),
            ("40P01", ErrorCode::TransactionConflict),
            ("57014", ErrorCode::Timeout),
            ("57P01", ErrorCode::ShardUnavailable),
            ("57P03", ErrorCode::ShardUnavailable),
            ("08006", ErrorCode::ShardUnavailable),
            ("53300", ErrorCode::ShardUnavailable),
            ("53100", ErrorCode::ShardUnavailable),
            ("53200", ErrorCode::StatementFailed),
            ("53400", ErrorCode::StatementFailed),
            ("54000", ErrorCode::StatementFailed),
            ("54001", ErrorCode::StatementFailed),
            ("22021", ErrorCode::StatementFailed),
            ("25006", ErrorCode::ShardUnavailable),
            ("SLM01", ErrorCode::ShardUnavailable),
            ("42501", ErrorCode::Forbidden),
            ("42601", ErrorCode::StatementFailed),
            ("42P01", ErrorCode::StatementFailed),
            ("22012", ErrorCode::StatementFailed),
            ("25P02", ErrorCode::StatementFailed),
        ];
        for (state, code) in cases {
            assert_eq!(classify_sqlstate(state), code, "{state}");
        }
    }

    #[test]
    fn pool_errors_hide_details() {
        let e = from_pool_error(&PoolError::InvalidDsn("password=hunter2".into()));
        assert!(!e.message.contains("hunter2"));
        assert_eq!(e.http_status(), 503);
        let e = from_pool_error(&PoolError::Timeout(std::time::Duration::from_millis(250)));
        assert_eq!(
            (e.code, e.retry_after, e.retryable),
            (ErrorCode::ShardUnavailable, Some(1), true)
        );
    }
}
