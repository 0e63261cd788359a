//! The error body: `{"error": {"code": ..., "message": ..., "retryable": ...}}`.

use serde::{Deserialize, Serialize};

/// What went wrong, in a word a program can match on. Each code has one
/// HTTP status ([`ErrorCode::http_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or query is malformed (400).
    InvalidRequest,
    /// The shard key is empty, too long or of the wrong type (400).
    InvalidShardKey,
    /// A statement parameter could not be converted to its SQL type (400).
    InvalidParameter,
    /// The client's statement failed in PostgreSQL (400).
    StatementFailed,
    /// The client's statement violated a constraint (409).
    ConstraintViolation,
    /// Serialization failure or deadlock; retry the transaction (409).
    TransactionConflict,
    /// No or a wrong bearer token (401).
    Unauthorized,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// No such route or object (404).
    NotFound,
    /// The path exists, the method does not (405).
    MethodNotAllowed,
    /// The object exists already or is in another state (409).
    Conflict,
    /// The body is over the size limit (413).
    PayloadTooLarge,
    /// A rate limit was exceeded (429).
    RateLimited,
    /// A concurrency limit was exceeded (429).
    ConcurrencyLimited,
    /// A quota (such as the shard count) was exceeded (429).
    QuotaExceeded,
    /// The shard cannot be reached now (503).
    ShardUnavailable,
    /// This server cannot serve now, e.g. its catalog is not loaded (503).
    Unavailable,
    /// The statement or request took longer than allowed (504).
    Timeout,
    /// A bug of ours (500). Never expected.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidShardKey
            | ErrorCode::InvalidParameter
            | ErrorCode::StatementFailed => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::ConstraintViolation
            | ErrorCode::TransactionConflict
            | ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::ConcurrencyLimited | ErrorCode::QuotaExceeded => {
                429
            }
            ErrorCode::Internal => 500,
            ErrorCode::ShardUnavailable | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidShardKey => "invalid_shard_key",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::StatementFailed => "statement_failed",
            ErrorCode::ConstraintViolation => "constraint_violation",
            ErrorCode::TransactionConflict => "transaction_conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ConcurrencyLimited => "concurrency_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::ShardUnavailable => "shard_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn default_retryable(self) -> bool {
        match self {
            ErrorCode::TransactionConflict
            | ErrorCode::RateLimited
            | ErrorCode::ConcurrencyLimited
            | ErrorCode::ShardUnavailable
            | ErrorCode::Unavailable
            | ErrorCode::Timeout => true,
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidShardKey
            | ErrorCode::InvalidParameter
            | ErrorCode::StatementFailed
            | ErrorCode::ConstraintViolation
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::Conflict
            | ErrorCode::PayloadTooLarge
            | ErrorCode::QuotaExceeded
            | ErrorCode::Internal => false,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ApiError,
}

/// One error. PostgreSQL's own fields are present when the client's
/// statement failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// PostgreSQL's SQLSTATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// 1-based character position in the statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// In a transaction, the 0-based index of the failed statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_index: Option<usize>,
    /// The shard the statement ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

impl ApiError {
    /// An error with the code's default retryability.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.default_retryable(),
            retry_after: None,
            sqlstate: None,
            detail: None,
            hint: None,
            position: None,
            statement_index: None,
            shard: None,
        }
    }

    /// Sets `retry_after` (seconds).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(s) = &self.sqlstate {
            write!(f, " (SQLSTATE {s})")?;
        }
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_match_serde() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidShardKey,
            ErrorCode::InvalidParameter,
            ErrorCode::StatementFailed,
            ErrorCode::ConstraintViolation,
            ErrorCode::TransactionConflict,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::ConcurrencyLimited,
            ErrorCode::QuotaExceeded,
            ErrorCode::ShardUnavailable,
            ErrorCode::Unavailable,
            ErrorCode::Timeout,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
