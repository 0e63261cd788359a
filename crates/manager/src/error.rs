//! The manager's service errors and their API classification.

use shardline_api::{ApiError, ErrorCode};
use shardline_catalog::StoreError;

/// Why a control-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists or is in a state that forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// A quota (such as a tenant's shard count) forbids the change.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Concurrent changes kept conflicting; retry.
    #[error("the catalog is changing too fast; retry")]
    Contended,
    /// A shard could not be reached.
    #[error("{0}")]
    ShardUnavailable(String),
    /// A statement failed on a shard (the operator's SQL).
    #[error("{message}")]
    Statement {
        message: String,
        sqlstate: Option<String>,
        detail: Option<String>,
        hint: Option<String>,
        position: Option<u32>,
    },
    /// The catalog store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// The API error answered for this.
    pub fn to_api(&self) -> ApiError {
        match self {
            ServiceError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest, m),
            ServiceError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            ServiceError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            ServiceError::QuotaExceeded(m) => ApiError::new(ErrorCode::QuotaExceeded, m),
            ServiceError::Contended => {
                ApiError::new(ErrorCode::Unavailable, self.to_string()).with_retry_after(1)
            }
            ServiceError::ShardUnavailable(m) => {
                ApiError::new(ErrorCode::ShardUnavailable, m).with_retry_after(1)
            }
            ServiceError::Statement {
                message,
                sqlstate,
                detail,
                hint,
                position,
            } => {
                let mut e = ApiError::new(ErrorCode::StatementFailed, message);
                e.sqlstate = sqlstate.clone();
                e.detail = detail.clone();
                e.hint = hint.clone();
                e.position = *position;
                e
            }
            ServiceError::Store(StoreError::Conflict) => ApiError::new(
                ErrorCode::Conflict,
                "the catalog changed concurrently; retry",
            ),
            ServiceError::Store(StoreError::NotLeader) => ApiError::new(
                ErrorCode::Unavailable,
                "this manager no longer leads; retry (another manager takes over)",
            )
            .with_retry_after(1),
            ServiceError::Store(
                StoreError::Unavailable(_) | StoreError::Corrupt(_) | StoreError::Compacted { .. },
            ) => {
                // Details go to the log, not to clients.
                ApiError::new(ErrorCode::Unavailable, "the catalog store is unavailable")
                    .with_retry_after(1)
            }
        }
    }
}
