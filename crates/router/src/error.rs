//! The router's own error: what went wrong on the request path, typed,
//! for the router to decide on. It becomes the HTTP error body
//! ([`ApiError`], `From<RouterError>`) or a wire `ErrorResponse`
//! (`WireError::from_router`, in the wire front end) only at the front ends' edges.
//!
//! - **The client's statement failed in PostgreSQL**
//!   ([`Reason::Statement`], [`Reason::StaleStatement`]): PostgreSQL's
//!   own SQLSTATE, message, detail, hint and position ([`PgError`]) are
//!   passed through — in the HTTP body, and on the wire as PostgreSQL's
//!   own SQLSTATE.
//! - **PostgreSQL answered, and the router acts on it**: the key's range
//!   moved ([`Reason::Moved`], SQLSTATE `SLM01`, and our own fence check
//!   [`Reason::Resharded`]), the primary is read-only during a switchover
//!   ([`Reason::ReadOnly`], 25006), the shard is going down or in trouble
//!   ([`Reason::ShardDown`], [`Reason::ShardFault`]). The decisions
//!   ([`RouterError::is_moved`], [`RouterError::is_read_only`],
//!   [`RouterError::is_stale_statement`]) look at these variants, never
//!   at SQLSTATE text.
//! - **The router refused the request** (4xx): statements the HTTP API
//!   cannot run, parameters, results, shard keys, keyspaces, tokens,
//!   tenants, quotas.
//! - **Our own work failed** (5xx): held too long, cut off from the
//!   manager, a fenced primary, a lost connection, no pooled connection.
//!   Their messages are fixed phrases: never a DSN, a user name or a
//!   driver's text (log the source where it is handled).
//!
//! Where it happened travels with the reason: the shard the request ran
//! on ([`RouterError::shard`]) and, in a transaction, the failing
//! statement's index ([`RouterError::statement_index`]).
//!
//! Every classifying method matches every [`Reason`] with no `_` arm: a
//! new reason does not compile until it has an HTTP code, a
//! retryability and a wire SQLSTATE.

use std::borrow::Cow;
use std::time::Duration;

use shardline_api::{ApiError, ErrorCode};
use shardline_core::catalog::MOVED_SQLSTATE;

/// Seconds a client should wait before retrying when a shard or the
/// router cannot serve now.
const RETRY_AFTER_SECS: u64 = 1;

/// Seconds to wait when the router's own configuration of a shard is
/// wrong (an operator has to act).
const MISCONFIGURED_RETRY_AFTER_SECS: u64 = 5;

/// Why a write is refused while the router counts itself cut off.
const CUT_OFF: &str = "this router has not heard from the manager for longer than its lease; \
                       writes resume when it does";

/// An error of the router's request path: the [`Reason`], and where it
/// happened.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct RouterError {
    reason: Reason,
    shard: Option<String>,
    statement_index: Option<usize>,
}

/// What a reason tells a client besides its text ([`RouterError::code`],
/// [`RouterError::retryable`], [`RouterError::retry_after`]), classified
/// in one match over every reason.
struct Answer {
    code: ErrorCode,
    retryable: bool,
    retry_after: Option<u64>,
}

/// An error PostgreSQL sent, with its own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the client's statement (not in a
    /// query PostgreSQL generated).
    pub position: Option<u32>,
}

/// What a statement PostgreSQL failed is, for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementClass {
    /// Wrong, or asking for more than the shard gives (400).
    Invalid,
    /// An integrity constraint (409).
    Constraint,
    /// Serialization failure, deadlock, lock not available (409,
    /// retryable).
    Conflict,
    /// Cancelled by `statement_timeout` (504, retryable).
    Timeout,
    /// Insufficient privilege: the tenant's role touched what it does
    /// not own (403).
    Forbidden,
}

/// Whose quota refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaHolder {
    Tenant,
    App,
}

impl std::fmt::Display for QuotaHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaHolder::Tenant => "tenant",
            QuotaHolder::App => "app",
        })
    }
}

/// A statement the HTTP API refuses before sending it (see
/// [`crate::pg::check_statement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, ...
    TransactionControl,
    /// `SAVEPOINT`, `RELEASE` outside a transaction.
    SavepointOutsideTransaction,
    /// `PREPARE TRANSACTION`.
    TwoPhaseCommit,
    /// `SET`, `RESET`, `DISCARD`, ...: the leading keyword, upper-cased.
    SessionState(String),
    /// `COPY`: the HTTP API carries no copy stream.
    Copy,
}

const TX_HINT: &str =
    "send the statements together to /v1/transaction, which begins and commits for you";
const SESSION_HINT: &str =
    "connections are shared between requests; use SET LOCAL inside /v1/transaction for settings";

impl Refusal {
    fn hint(&self) -> &'static str {
        match self {
            Refusal::TransactionControl
            | Refusal::SavepointOutsideTransaction
            | Refusal::TwoPhaseCommit => TX_HINT,
            Refusal::SessionState(_) => SESSION_HINT,
            Refusal::Copy => "use INSERT with parameters, or SELECT",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TransactionControl => {
                f.write_str("transaction control statements are not accepted")
            }
            Refusal::SavepointOutsideTransaction => {
                f.write_str("savepoints are only accepted inside a transaction")
            }
            Refusal::TwoPhaseCommit => f.write_str("two-phase commit is not accepted"),
            Refusal::SessionState(word) => write!(
                f,
                "{word} statements change session state and are not accepted"
            ),
            Refusal::Copy => f.write_str("COPY is not supported over this API"),
        }
    }
}

/// What went wrong. Its `Display` is the message clients see.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    // The client's statement failed in PostgreSQL.
    /// PostgreSQL failed the client's statement.
    #[error("{}", statement_message(*.class, .pg))]
    Statement {
        class: StatementClass,
        pg: Box<PgError>,
    },
    /// A cached prepared statement is stale: its result type changed
    /// under DDL (0A000) or it was deallocated (26000). It did not run:
    /// the cache entry is dropped and the statement sent once more.
    #[error("{}", .0.message)]
    StaleStatement(Box<PgError>),

    // PostgreSQL answered; the router acts on it.
    /// The source of a resharding refused the write because the key's
    /// range moved (SQLSTATE `SLM01`): nothing was written.
    #[error("{}", .0.message)]
    Moved(Box<PgError>),
    /// The primary refused a write as read-only (25006): a switchover
    /// has made it so, or a replica was asked to write.
    #[error("{}", .0.message)]
    ReadOnly(Box<PgError>),
    /// The shard is shutting down, starting up, out of connections or
    /// lost the connection (57P*, 08*, 53* but 53200/53400).
    #[error("{}", .0.message)]
    ShardDown(Box<PgError>),
    /// The shard itself is in trouble (58*, XX*): not retryable.
    #[error("{}", .0.message)]
    ShardFault(Box<PgError>),

    // The router refused the request (4xx).
    /// A statement the HTTP API does not run.
    #[error("{0}")]
    StatementRefused(Refusal),
    /// A parameter could not be converted to its SQL type.
    #[error("{message}")]
    InvalidParameter {
        message: String,
        hint: Option<String>,
    },
    /// The result outgrew the limits; a read was cancelled, a write ran
    /// to its end.
    #[error(
        "the result is larger than {max_rows} rows or {max_bytes} bytes; {}",
        if *.cancelled { "the statement was cancelled" } else { "the statement ran, its rows are not returned" }
    )]
    ResultTooLarge {
        max_rows: usize,
        max_bytes: usize,
        cancelled: bool,
    },
    /// A result column of a type that cannot be returned as JSON
    /// (`column` is 1-based).
    #[error("column {column} ({name:?}) has type {type_name}, which cannot be returned as JSON")]
    UnreturnableColumn {
        column: usize,
        name: String,
        type_name: String,
    },
    /// A value that cannot be returned as JSON (`column` is 1-based).
    #[error("the value of column {column} cannot be returned as JSON")]
    UndecodableValue { column: usize },
    /// The shard key is empty, too long or of the wrong type.
    #[error("{0}")]
    InvalidShardKey(String),
    /// No such keyspace.
    #[error("no keyspace {keyspace:?}")]
    NoKeyspace { keyspace: String },
    /// No bearer token.
    #[error("missing bearer token (Authorization: Bearer <app token>)")]
    NoToken,
    /// An unknown or expired token (the same answer for both).
    #[error("invalid token")]
    InvalidToken,
    #[error("this app's tenant is being deleted")]
    TenantDeleting,
    #[error("this app's tenant is unknown")]
    TenantUnknown,
    /// The request names a keyspace other than its tenant's.
    #[error("this app may only use keyspace {allowed:?} (or leave keyspace out)")]
    ForbiddenKeyspace { allowed: String },
    /// A key outside the app's key prefix.
    #[error("this app's shard keys must start with {prefix:?}")]
    ForbiddenKeyPrefix { prefix: String },
    #[error("too many requests of this {0} in flight")]
    ConcurrencyLimited(QuotaHolder),
    #[error("over this {holder}'s request rate")]
    RateLimited {
        holder: QuotaHolder,
        /// Seconds until a token is due.
        retry_after: u64,
    },

    // Our own work failed (5xx).
    /// The keyspace has no shard map yet.
    #[error("keyspace {keyspace:?} has no shards yet")]
    NoShards { keyspace: String },
    #[error("shard {shard} is not in the catalog")]
    ShardNotInCatalog { shard: String },
    /// A write while the router counts itself cut off from the manager.
    #[error("{CUT_OFF}")]
    CutOff,
    /// The router's lease ran out while a write ran: it was cancelled,
    /// its outcome is unknown.
    #[error(
        "this router's lease ran out while the write ran (it has not heard from the \
         manager); the statement was cancelled and may or may not have taken effect"
    )]
    LeaseRanOut,
    /// The statement ran on a primary a failover fenced: cancelled, its
    /// outcome unknown.
    #[error(
        "shard {shard}'s primary {primary} is being replaced by a failover; the statement was \
         cancelled and may or may not have taken effect"
    )]
    PrimaryFenced { shard: String, primary: String },
    /// Held, the primary still could not be reached.
    #[error("shard {shard} is unavailable: its primary is failing over or cannot be reached")]
    PrimaryUnreachable { shard: String },
    /// Held for the whole window, the failover is still under way.
    #[error("shard {shard} is failing over; it did not end within {hold:?}")]
    FailoverTimedOut { shard: String, hold: Duration },
    /// Held for the whole window (or refused as moved twice), the key's
    /// range is still being moved.
    #[error("the key's range on shard {shard} is moving to another shard; retry shortly")]
    RangeMoving { shard: String },
    /// Our own check of the shard's resharding fence: the shard was
    /// resharded after the routing table the request was routed by (as
    /// [`Reason::Moved`]; the HTTP body says `SLM01`).
    #[error(
        "the shard was resharded at catalog version {fence}, after this router's \
         routing table ({version}); retry shortly"
    )]
    Resharded { fence: u64, version: u64 },
    /// The connection broke with no PostgreSQL error (closed, I/O, a
    /// protocol desync).
    #[error("lost the connection to the shard")]
    ConnectionLost,
    /// Every connection of the pool stayed busy.
    #[error("all connections to the shard are busy (waited {} ms)", .waited.as_millis())]
    PoolBusy { waited: Duration },
    /// The connection budget to the server stayed used up.
    #[error(
        "this router's connections to the shard are all in use (waited {} ms)",
        .waited.as_millis()
    )]
    BudgetExhausted { waited: Duration },
    #[error("the shard's connection pool is closed")]
    PoolClosed,
    #[error("timed out connecting to the shard")]
    ConnectTimeout,
    /// Connecting failed: refused, reset, or PostgreSQL's error
    /// (`sqlstate`, e.g. too many connections, starting up).
    #[error("cannot connect to the shard")]
    CannotConnect { sqlstate: Option<String> },
    /// The shard refused the router's login (authentication, database,
    /// role settings): our configuration is wrong.
    #[error("the router cannot log in to the shard")]
    LoginRefused,
    /// The shard's connection settings do not parse.
    #[error("the shard's connection settings are invalid")]
    InvalidShardSettings,
}

fn statement_message(class: StatementClass, pg: &PgError) -> Cow<'_, str> {
    match class {
        StatementClass::Timeout => Cow::Owned(format!(
            "{} (the statement ran past its time limit)",
            pg.message
        )),
        StatementClass::Invalid
        | StatementClass::Constraint
        | StatementClass::Conflict
        | StatementClass::Forbidden => Cow::Borrowed(&pg.message),
    }
}

/// Quotes an identifier for a hint, unless it needs none.
fn quote_ident(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

impl From<Reason> for RouterError {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            shard: None,
            statement_index: None,
        }
    }
}

impl RouterError {
    /// What went wrong.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The message clients see.
    pub fn message(&self) -> String {
        self.reason.to_string()
    }

    /// The shard the request ran on, when known.
    pub fn shard(&self) -> Option<&str> {
        self.shard.as_deref()
    }

    /// Names the shard the request ran on, unless one is named already.
    pub fn or_shard(mut self, shard: impl Into<String>) -> Self {
        self.shard.get_or_insert_with(|| shard.into());
        self
    }

    /// In a transaction, the 0-based index of the failed statement.
    pub fn statement_index(&self) -> Option<usize> {
        self.statement_index
    }

    /// Marks the error as the failure of statement `i` of a transaction.
    pub fn at_statement(mut self, i: usize) -> Self {
        self.statement_index = Some(i);
        self
    }

    /// Whether a shard refused the statement because its key's range
    /// moved away (told by the shard, or found by our fence check):
    /// nothing was written, it may run again by a newer routing table.
    pub fn is_moved(&self) -> bool {
        matches!(self.reason, Reason::Moved(_) | Reason::Resharded { .. })
    }

    /// Whether the primary refused the statement as read-only (25006).
    pub fn is_read_only(&self) -> bool {
        matches!(self.reason, Reason::ReadOnly(_))
    }

    /// Whether a cached prepared statement was found stale.
    pub fn is_stale_statement(&self) -> bool {
        matches!(self.reason, Reason::StaleStatement(_))
    }

    /// PostgreSQL's own error, when PostgreSQL sent one.
    pub fn postgres(&self) -> Option<&PgError> {
        match &self.reason {
            Reason::Statement { pg, .. }
            | Reason::StaleStatement(pg)
            | Reason::Moved(pg)
            | Reason::ReadOnly(pg)
            | Reason::ShardDown(pg)
            | Reason::ShardFault(pg) => Some(pg),
            Reason::StatementRefused(_)
            | Reason::InvalidParameter { .. }
            | Reason::ResultTooLarge { .. }
            | Reason::UnreturnableColumn { .. }
            | Reason::UndecodableValue { .. }
            | Reason::InvalidShardKey(_)
            | Reason::NoKeyspace { .. }
            | Reason::NoToken
            | Reason::InvalidToken
            | Reason::TenantDeleting
            | Reason::TenantUnknown
            | Reason::ForbiddenKeyspace { .. }
            | Reason::ForbiddenKeyPrefix { .. }
            | Reason::ConcurrencyLimited(_)
            | Reason::RateLimited { .. }
            | Reason::NoShards { .. }
            | Reason::ShardNotInCatalog { .. }
            | Reason::CutOff
            | Reason::LeaseRanOut
            | Reason::PrimaryFenced { .. }
            | Reason::PrimaryUnreachable { .. }
            | Reason::FailoverTimedOut { .. }
            | Reason::RangeMoving { .. }
            | Reason::Resharded { .. }
            | Reason::ConnectionLost
            | Reason::PoolBusy { .. }
            | Reason::BudgetExhausted { .. }
            | Reason::PoolClosed
            | Reason::ConnectTimeout
            | Reason::CannotConnect { .. }
            | Reason::LoginRefused
            | Reason::InvalidShardSettings => None,
        }
    }

    /// What the reason tells a client besides its text: the code of the
    /// HTTP error body (and so its status), whether sending the same
    /// request again may succeed, and how long to wait first.
    fn answer(&self) -> Answer {
        let (code, retryable, retry_after) = match &self.reason {
            Reason::Statement { class, .. } => match class {
                StatementClass::Invalid => (ErrorCode::StatementFailed, false, None),
                StatementClass::Constraint => (ErrorCode::ConstraintViolation, false, None),
                StatementClass::Conflict => (ErrorCode::TransactionConflict, true, None),
                StatementClass::Timeout => (ErrorCode::Timeout, true, None),
                StatementClass::Forbidden => (ErrorCode::Forbidden, false, None),
            },
            Reason::StaleStatement(_) => (ErrorCode::StatementFailed, false, None),
            // Sent again, it fails again (the shard itself is broken).
            Reason::ShardFault(_) => (ErrorCode::ShardUnavailable, false, None),
            Reason::StatementRefused(_)
            | Reason::ResultTooLarge { .. }
            | Reason::UnreturnableColumn { .. }
            | Reason::UndecodableValue { .. } => (ErrorCode::InvalidRequest, false, None),
            Reason::InvalidParameter { .. } => (ErrorCode::InvalidParameter, false, None),
            Reason::InvalidShardKey(_) => (ErrorCode::InvalidShardKey, false, None),
            Reason::NoKeyspace { .. } => (ErrorCode::NotFound, false, None),
            Reason::NoToken | Reason::InvalidToken => (ErrorCode::Unauthorized, false, None),
            Reason::TenantDeleting
            | Reason::TenantUnknown
            | Reason::ForbiddenKeyspace { .. }
            | Reason::ForbiddenKeyPrefix { .. } => (ErrorCode::Forbidden, false, None),
            Reason::ConcurrencyLimited(_) => {
                (ErrorCode::ConcurrencyLimited, true, Some(RETRY_AFTER_SECS))
            }
            Reason::RateLimited { retry_after, .. } => {
                (ErrorCode::RateLimited, true, Some(*retry_after))
            }
            Reason::NoShards { .. } | Reason::PoolClosed => {
                (ErrorCode::Unavailable, true, Some(RETRY_AFTER_SECS))
            }
            Reason::LoginRefused | Reason::InvalidShardSettings => (
                ErrorCode::Unavailable,
                true,
                Some(MISCONFIGURED_RETRY_AFTER_SECS),
            ),
            Reason::Moved(_)
            | Reason::ReadOnly(_)
            | Reason::ShardDown(_)
            | Reason::ShardNotInCatalog { .. }
            | Reason::CutOff
            | Reason::LeaseRanOut
            | Reason::PrimaryFenced { .. }
            | Reason::PrimaryUnreachable { .. }
            | Reason::FailoverTimedOut { .. }
            | Reason::RangeMoving { .. }
            | Reason::Resharded { .. }
            | Reason::ConnectionLost
            | Reason::PoolBusy { .. }
            | Reason::BudgetExhausted { .. }
            | Reason::ConnectTimeout
            | Reason::CannotConnect { .. } => {
                (ErrorCode::ShardUnavailable, true, Some(RETRY_AFTER_SECS))
            }
        };
        Answer {
            code,
            retryable,
            retry_after,
        }
    }

    /// The code of the HTTP error body (and so its status).
    pub fn code(&self) -> ErrorCode {
        self.answer().code
    }

    /// The HTTP status.
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }

    /// Whether sending the same request again may succeed.
    pub fn retryable(&self) -> bool {
        self.answer().retryable
    }

    /// Seconds to wait before retrying (`Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        self.answer().retry_after
    }

    /// The SQLSTATE the HTTP body names: PostgreSQL's own when it sent
    /// one (also of a failed connect), `SLM01` for our own fence check.
    pub fn sqlstate(&self) -> Option<&str> {
        match &self.reason {
            Reason::Statement { pg, .. }
            | Reason::StaleStatement(pg)
            | Reason::Moved(pg)
            | Reason::ReadOnly(pg)
            | Reason::ShardDown(pg)
            | Reason::ShardFault(pg) => Some(&pg.sqlstate),
            Reason::Resharded { .. } => Some(MOVED_SQLSTATE),
            Reason::CannotConnect { sqlstate } => sqlstate.as_deref(),
            Reason::StatementRefused(_)
            | Reason::InvalidParameter { .. }
            | Reason::ResultTooLarge { .. }
            | Reason::UnreturnableColumn { .. }
            | Reason::UndecodableValue { .. }
            | Reason::InvalidShardKey(_)
            | Reason::NoKeyspace { .. }
            | Reason::NoToken
            | Reason::InvalidToken
            | Reason::TenantDeleting
            | Reason::TenantUnknown
            | Reason::ForbiddenKeyspace { .. }
            | Reason::ForbiddenKeyPrefix { .. }
            | Reason::ConcurrencyLimited(_)
            | Reason::RateLimited { .. }
            | Reason::NoShards { .. }
            | Reason::ShardNotInCatalog { .. }
            | Reason::CutOff
            | Reason::LeaseRanOut
            | Reason::PrimaryFenced { .. }
            | Reason::PrimaryUnreachable { .. }
            | Reason::FailoverTimedOut { .. }
            | Reason::RangeMoving { .. }
            | Reason::ConnectionLost
            | Reason::PoolBusy { .. }
            | Reason::BudgetExhausted { .. }
            | Reason::PoolClosed
            | Reason::ConnectTimeout
            | Reason::LoginRefused
            | Reason::InvalidShardSettings => None,
        }
    }

    /// PostgreSQL's detail.
    pub fn detail(&self) -> Option<&str> {
        self.postgres().and_then(|pg| pg.detail.as_deref())
    }

    /// PostgreSQL's hint, or ours on how to do it instead.
    pub fn hint(&self) -> Option<Cow<'_, str>> {
        match &self.reason {
            Reason::Statement { pg, .. }
            | Reason::StaleStatement(pg)
            | Reason::Moved(pg)
            | Reason::ReadOnly(pg)
            | Reason::ShardDown(pg)
            | Reason::ShardFault(pg) => pg.hint.as_deref().map(Cow::Borrowed),
            Reason::StatementRefused(r) => Some(Cow::Borrowed(r.hint())),
            Reason::InvalidParameter { hint, .. } => hint.as_deref().map(Cow::Borrowed),
            Reason::ResultTooLarge { .. } => {
                Some(Cow::Borrowed("add LIMIT and fetch the rows in pages"))
            }
            Reason::UnreturnableColumn { name, .. } => Some(Cow::Owned(format!(
                "cast it in SQL, e.g. {}::text",
                quote_ident(name)
            ))),
            Reason::UndecodableValue { .. } => Some(Cow::Borrowed(
                "cast the column to text in SQL, e.g. col::text",
            )),
            Reason::InvalidShardKey(_)
            | Reason::NoKeyspace { .. }
            | Reason::NoToken
            | Reason::InvalidToken
            | Reason::TenantDeleting
            | Reason::TenantUnknown
            | Reason::ForbiddenKeyspace { .. }
            | Reason::ForbiddenKeyPrefix { .. }
            | Reason::ConcurrencyLimited(_)
            | Reason::RateLimited { .. }
            | Reason::NoShards { .. }
            | Reason::ShardNotInCatalog { .. }
            | Reason::CutOff
            | Reason::LeaseRanOut
            | Reason::PrimaryFenced { .. }
            | Reason::PrimaryUnreachable { .. }
            | Reason::FailoverTimedOut { .. }
            | Reason::RangeMoving { .. }
            | Reason::Resharded { .. }
            | Reason::ConnectionLost
            | Reason::PoolBusy { .. }
            | Reason::BudgetExhausted { .. }
            | Reason::PoolClosed
            | Reason::ConnectTimeout
            | Reason::CannotConnect { .. }
            | Reason::LoginRefused
            | Reason::InvalidShardSettings => None,
        }
    }

    /// PostgreSQL's position in the client's statement.
    pub fn position(&self) -> Option<u32> {
        self.postgres().and_then(|pg| pg.position)
    }

    /// The SQLSTATE of a wire `ErrorResponse`: PostgreSQL's own when it
    /// sent one, else the class of the router's reason.
    pub fn wire_sqlstate(&self) -> Cow<'static, str> {
        let code = match &self.reason {
            Reason::Statement { pg, .. }
            | Reason::StaleStatement(pg)
            | Reason::Moved(pg)
            | Reason::ReadOnly(pg)
            | Reason::ShardDown(pg)
            | Reason::ShardFault(pg) => return Cow::Owned(pg.sqlstate.clone()),
            // invalid_parameter_value
            Reason::StatementRefused(_)
            | Reason::InvalidParameter { .. }
            | Reason::ResultTooLarge { .. }
            | Reason::UnreturnableColumn { .. }
            | Reason::UndecodableValue { .. }
            | Reason::InvalidShardKey(_) => "22023",
            // invalid_catalog_name
            Reason::NoKeyspace { .. } => "3D000",
            // invalid_authorization_specification
            Reason::NoToken | Reason::InvalidToken => "28000",
            // insufficient_privilege
            Reason::TenantDeleting
            | Reason::TenantUnknown
            | Reason::ForbiddenKeyspace { .. }
            | Reason::ForbiddenKeyPrefix { .. } => "42501",
            // too_many_connections
            Reason::ConcurrencyLimited(_) | Reason::RateLimited { .. } => "53300",
            // cannot_connect_now
            Reason::NoShards { .. }
            | Reason::ShardNotInCatalog { .. }
            | Reason::CutOff
            | Reason::LeaseRanOut
            | Reason::PrimaryFenced { .. }
            | Reason::PrimaryUnreachable { .. }
            | Reason::FailoverTimedOut { .. }
            | Reason::RangeMoving { .. }
            | Reason::Resharded { .. }
            | Reason::ConnectionLost
            | Reason::PoolBusy { .. }
            | Reason::BudgetExhausted { .. }
            | Reason::PoolClosed
            | Reason::ConnectTimeout
            | Reason::CannotConnect { .. }
            | Reason::LoginRefused
            | Reason::InvalidShardSettings => "57P03",
        };
        Cow::Borrowed(code)
    }
}

/// The HTTP error body (the HTTP front end's edge).
impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        ApiError {
            code: e.code(),
            message: e.message(),
            retryable: e.retryable(),
            retry_after: e.retry_after(),
            sqlstate: e.sqlstate().map(str::to_string),
            detail: e.detail().map(str::to_string),
            hint: e.hint().map(Cow::into_owned),
            position: e.position(),
            statement_index: e.statement_index,
            shard: e.shard,
        }
    }
}

#[cfg(test)]
mod tests;
