//! PostgreSQL and pool errors → the router's [`RouterError`].
//!
//! A statement PostgreSQL failed keeps PostgreSQL's own `sqlstate`,
//! message, `detail`, `hint` and `position` ([`PgError`]); its SQLSTATE
//! is read once, here, into a typed [`Reason`] the router decides on and
//! the edges answer by (see [`crate::error`]). A shard we cannot reach or
//! use is ours (503, retryable). Messages for our own failures are fixed
//! phrases: they never carry a DSN, a user name or a driver's internals
//! (log the source error where it is handled).
//!
//! SQLSTATE classes:
//! - `23` integrity violation, `40002` → the statement's,
//!   `constraint_violation` (409);
//! - `40001` serialization failure, `40P01` deadlock, `55P03` lock not
//!   available → the statement's, `transaction_conflict` (409,
//!   retryable);
//! - `57014` query canceled (statement_timeout) → the statement's,
//!   `timeout` (504);
//! - `42501` insufficient privilege → the statement's, `forbidden` (403):
//!   a tenant's role touching what it does not own is an authorisation
//!   failure;
//! - `25006` read-only transaction (a failover is under way) →
//!   [`Reason::ReadOnly`]; `SLM01` (the key's range moved to another
//!   shard; see [`crate::reroute`]) → [`Reason::Moved`]; `57P01`..`57P05`
//!   shutdown/idle-session, `08` connection, `53` insufficient resources
//!   (but see below) → [`Reason::ShardDown`]; all `shard_unavailable`
//!   (503, retryable, Retry-After 1);
//! - `53200` out of memory (also "out of shared memory": a statement
//!   taking more locks than the lock table holds) and `53400`
//!   configuration limit exceeded (`temp_file_limit`) → the statement's,
//!   `statement_failed` (400): the statement asks for more than the shard
//!   gives, and sent again it fails again — answered as retryable, a
//!   client would repeat it forever and keep straining the shard. (A
//!   statement that fails so only because other sessions hold the memory
//!   is refused alike; the shard's own health is the health checks'.)
//! - `58` system error, `XX` internal error → [`Reason::ShardFault`],
//!   `shard_unavailable`, not retryable (the shard itself is in trouble);
//! - `0A000` "cached plan must not change result type" and `26000` (a
//!   prepared statement gone) → [`Reason::StaleStatement`],
//!   `statement_failed` (400): the cache entry is dropped and the
//!   statement, which did not run, is sent once more;
//! - everything else → the statement's, `statement_failed` (400).

use shardline_core::catalog::MOVED_SQLSTATE;

use super::pool::SessionError;
use super::rawpool::PoolError;
use super::server::{DbFields, ServerError};
use crate::error::{PgError, Reason, RouterError, StatementClass};

/// What a SQLSTATE says (see the module docs).
enum Class {
    Statement(StatementClass),
    Stale,
    Moved,
    ReadOnly,
    Down,
    Fault,
}

fn class_of(code: &str, message: &str) -> Class {
    match code {
        "40001" | "40P01" | "55P03" => Class::Statement(StatementClass::Conflict),
        "40002" => Class::Statement(StatementClass::Constraint),
        "57014" => Class::Statement(StatementClass::Timeout),
        "42501" => Class::Statement(StatementClass::Forbidden),
        "25006" => Class::ReadOnly,
        MOVED_SQLSTATE => Class::Moved,
        "26000" => Class::Stale,
        "0A000" if message.contains("cached plan must not change result type") => Class::Stale,
        "53200" | "53400" => Class::Statement(StatementClass::Invalid),
        c if c.starts_with("57P") => Class::Down,
        c => match c.get(..2) {
            Some("23") => Class::Statement(StatementClass::Constraint),
            Some("08" | "53") => Class::Down,
            Some("58" | "XX") => Class::Fault,
            _ => Class::Statement(StatementClass::Invalid),
        },
    }
}

/// What PostgreSQL's error means to the router, by its SQLSTATE (and,
/// for a stale cached plan, its message).
pub fn classify(pg: PgError) -> Reason {
    let class = class_of(&pg.sqlstate, &pg.message);
    let pg = Box::new(pg);
    match class {
        Class::Statement(class) => Reason::Statement { class, pg },
        Class::Stale => Reason::StaleStatement(pg),
        Class::Moved => Reason::Moved(pg),
        Class::ReadOnly => Reason::ReadOnly(pg),
        Class::Down => Reason::ShardDown(pg),
        Class::Fault => Reason::ShardFault(pg),
    }
}

/// An error PostgreSQL sent, passed through with its own fields.
pub fn from_db_error(db: &DbFields) -> RouterError {
    let multiple_commands = db.code == "42601"
        && db
            .message
            .contains("cannot insert multiple commands into a prepared statement");
    let hint = if multiple_commands {
        Some("send one statement per request, or several in /v1/transaction".into())
    } else {
        db.hint.clone()
    };
    let pg = PgError {
        sqlstate: db.code.clone(),
        message: db.message.clone(),
        detail: db.detail.clone(),
        hint,
        // Only a position in the client's text is kept (an internal
        // query's is another field).
        position: db.position,
    };
    classify(pg).into()
}

/// The router's error for a session error on a statement.
///
/// Errors without a PostgreSQL error body are connection failures (the
/// connection closed, an I/O error, a protocol desync): the shard is
/// unavailable and the connection must not be reused.
pub fn from_pg_error(e: &SessionError) -> RouterError {
    match e.as_db_error() {
        Some(db) => from_db_error(db),
        None => Reason::ConnectionLost.into(),
    }
}

/// Whether a session error leaves the connection unusable.
pub fn breaks_connection(e: &SessionError) -> bool {
    match e.as_db_error() {
        // FATAL errors end the session.
        Some(db) => db.is_fatal() || db.code.starts_with("08"),
        None => true,
    }
}

/// The router's error for a failure to get a pooled connection.
pub fn from_pool_error(e: &PoolError) -> RouterError {
    match e {
        PoolError::Timeout(waited) => Reason::PoolBusy { waited: *waited },
        PoolError::Closed => Reason::PoolClosed,
        PoolError::ConnectTimeout(_) => Reason::ConnectTimeout,
        PoolError::InvalidDsn(_) => Reason::InvalidShardSettings,
        PoolError::BudgetExhausted(waited) => Reason::BudgetExhausted { waited: *waited },
        PoolError::Connect(source) => from_connect_error(source),
    }
    .into()
}

fn from_connect_error(e: &ServerError) -> Reason {
    let ServerError::Refused(db) = e else {
        return Reason::CannotConnect { sqlstate: None };
    };
    let code = db.code.as_str();
    match code.get(..2) {
        // Authentication or authorisation (28), missing database (3D) or
        // role settings: our configuration is wrong, not the client's
        // request. The server's text names the user: not shown.
        Some("28" | "3D" | "42") => Reason::LoginRefused,
        _ => Reason::CannotConnect {
            sqlstate: Some(code.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use shardline_api::{ApiError, ErrorCode};

    use super::*;

    fn pg(sqlstate: &str, message: &str) -> PgError {
        PgError {
            sqlstate: sqlstate.into(),
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

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
            ("0A000", ErrorCode::StatementFailed),
            ("26000", ErrorCode::StatementFailed),
            ("58030", ErrorCode::ShardUnavailable),
            ("XX000", ErrorCode::ShardUnavailable),
        ];
        for (state, code) in cases {
            let e = RouterError::from(classify(pg(state, "m")));
            assert_eq!(e.code(), code, "{state}");
            // PostgreSQL's own SQLSTATE, in the body and on the wire.
            assert_eq!(e.sqlstate(), Some(state));
            assert_eq!(e.wire_sqlstate(), state);
            // A shard in trouble is not worth retrying; going down is.
            let fault = matches!(state.get(..2), Some("58" | "XX"));
            if code == ErrorCode::ShardUnavailable {
                assert_eq!(e.retryable(), !fault, "{state}");
                assert_eq!(e.retry_after(), (!fault).then_some(1), "{state}");
            } else {
                assert_eq!(e.retry_after(), None, "{state}");
            }
        }
        // The reasons the router acts on are typed.
        let reason = |state, message| RouterError::from(classify(pg(state, message)));
        assert!(reason("SLM01", "moved").is_moved());
        assert!(!reason("57P01", "shutting down").is_moved());
        assert!(reason("25006", "read-only").is_read_only());
        assert!(reason("26000", "gone").is_stale_statement());
        assert!(reason("0A000", "cached plan must not change result type").is_stale_statement());
        assert!(!reason("0A000", "not supported").is_stale_statement());
        let t = ApiError::from(reason(
            "57014",
            "canceling statement due to statement timeout",
        ));
        assert_eq!(
            t.message,
            "canceling statement due to statement timeout (the statement ran past its time limit)"
        );
    }

    #[test]
    fn pool_errors_hide_details() {
        let e = from_pool_error(&PoolError::InvalidDsn("password=hunter2".into()));
        assert!(!e.message().contains("hunter2"));
        assert_eq!(e.http_status(), 503);
        let e = from_pool_error(&PoolError::Timeout(std::time::Duration::from_millis(250)));
        assert_eq!(
            (e.code(), e.retry_after(), e.retryable()),
            (ErrorCode::ShardUnavailable, Some(1), true)
        );
    }
}
