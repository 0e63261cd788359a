//! Checks of request text that PostgreSQL's protocol cannot carry.
//!
//! Statement text, identifiers and connection settings travel to
//! PostgreSQL as NUL-terminated strings, and a statement's parameters are
//! counted in 16 bits. A request that breaks either rule fails the same
//! way every time it is sent, so the servers refuse it up front as the
//! client's error (400 `invalid_request`, not retryable) instead of
//! letting the driver fail mid-protocol, which would look like a lost
//! shard (503, retryable) and cost the pooled connection.

use crate::{ApiError, ErrorCode};

/// Most parameters one statement can have: PostgreSQL's protocol
/// counts them in 16 bits.
pub const MAX_PARAMS: usize = 65_535;

/// Refuses `text` (the request's `field`) if it contains a NUL character,
/// naming the field and the character's 1-based position (also in the
/// error's `position`).
pub fn no_nul(field: &str, text: &str) -> Result<(), ApiError> {
    let Some(at) = text.chars().position(|c| c == '\0') else {
        return Ok(());
    };
    let mut e = ApiError::new(
        ErrorCode::InvalidRequest,
        format!(
            "{field} contains a NUL character (\\u0000) at character {}; \
             PostgreSQL does not accept NUL in text",
            at + 1
        ),
    );
    e.position = u32::try_from(at + 1).ok();
    e.hint = Some("remove it; send binary data as a bytea parameter (base64)".into());
    Err(e)
}

/// Refuses a statement with more than [`MAX_PARAMS`] parameter values.
pub fn param_count(field: &str, count: usize) -> Result<(), ApiError> {
    if count <= MAX_PARAMS {
        return Ok(());
    }
    let mut e = ApiError::new(
        ErrorCode::InvalidRequest,
        format!(
            "{field} has {count} values; PostgreSQL takes at most {MAX_PARAMS} parameters \
             per statement"
        ),
    );
    e.hint = Some("pass many values as one array parameter, e.g. = ANY($1)".into());
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_refused_with_its_place() {
        assert!(no_nul("sql", "SELECT 1").is_ok());
        assert!(no_nul("sql", "").is_ok());
        let e = no_nul("statements[2].sql", "SELECT 'é\0'").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(!e.retryable);
        assert_eq!(e.position, Some(10));
        assert!(
            e.message.starts_with("statements[2].sql contains a NUL"),
            "{}",
            e.message
        );
        assert!(e.message.contains("character 10"), "{}", e.message);
    }

    #[test]
    fn parameter_counts_stop_at_the_protocol_limit() {
        assert!(param_count("params", MAX_PARAMS).is_ok());
        let e = param_count("params", MAX_PARAMS + 1).unwrap_err();
        assert_eq!((e.code, e.retryable), (ErrorCode::InvalidRequest, false));
        assert!(e.message.contains("65536 values"), "{}", e.message);
    }
}
