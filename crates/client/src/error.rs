//! The client's one error type, and how a failed HTTP answer becomes one.

use std::time::Duration;

use hyper::{HeaderMap, StatusCode};
use shardline_api::{ApiError, ErrorBody, ErrorCode};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (a non-2xx status). When the body
    /// was not shardline's error body (e.g. a proxy's 502 page), `error`
    /// is made up from the status.
    #[error("{error} (HTTP {status})")]
    Api { status: u16, error: Box<ApiError> },
    /// No connection could be made, so the request was never sent: safe
    /// to retry, even for writes.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection failed after the request may have been sent; the
    /// server may or may not have acted on it.
    #[error("transport error: {0}")]
    Transport(String),
    /// No complete answer within the request timeout; the server may or
    /// may not have acted on the request.
    #[error("request timed out")]
    Timeout,
    /// The answer (or, rarely, the request body) was not the expected JSON.
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    /// The client was built or called with something unusable (a bad base
    /// URL, token or path).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// Whether sending the same request again may succeed without risk of
    /// doing its work twice: the server said so, or it never got it.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { error, .. } => error.retryable,
            ClientError::Connect(_) => true,
            ClientError::Transport(_)
            | ClientError::Timeout
            | ClientError::Decode(_)
            | ClientError::Config(_) => false,
        }
    }

    /// The server's error, if it answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            ClientError::Connect(_)
            | ClientError::Transport(_)
            | ClientError::Timeout
            | ClientError::Decode(_)
            | ClientError::Config(_) => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Connect(_)
            | ClientError::Transport(_)
            | ClientError::Timeout
            | ClientError::Decode(_)
            | ClientError::Config(_) => None,
        }
    }

    /// How long the server asked the client to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        self.api()
            .and_then(|e| e.retry_after)
            .map(Duration::from_secs)
    }
}

/// The error code a status stands for when the body does not say.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        // A proxy or load balancer in front of a server that is down or
        // restarting: the request did not get an answer from shardline.
        502..=503 => ErrorCode::Unavailable,
        504 => ErrorCode::Timeout,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    }
}

/// Longest piece of a non-JSON error body kept in the message.
const SNIPPET_CHARS: usize = 200;

/// Turns a non-2xx answer into [`ClientError::Api`]: shardline's error
/// body when it parses, else an error made up from the status and the
/// start of the body. A `Retry-After` header (in seconds) fills in
/// `retry_after` when the body has none.
pub(crate) fn api_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ClientError {
    let mut error = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let mut message = format!("HTTP {status}");
            if !text.is_empty() {
                let snippet: String = text.chars().take(SNIPPET_CHARS).collect();
                message.push_str(": ");
                message.push_str(&snippet);
                if text.chars().nth(SNIPPET_CHARS).is_some() {
                    message.push('…');
                }
            }
            ApiError::new(code_for_status(status.as_u16()), message)
        }
    };
    if error.retry_after.is_none() {
        error.retry_after = headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
    }
    ClientError::Api {
        status: status.as_u16(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn parses_error_body() {
        let body = br#"{"error":{"code":"statement_failed","message":"syntax error","retryable":false,"sqlstate":"42601","position":8}}"#;
        let err = api_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert_eq!(err.status(), Some(400));
        let api = err.api().unwrap();
        assert_eq!(api.code, ErrorCode::StatementFailed);
        assert_eq!(api.sqlstate.as_deref(), Some("42601"));
        assert_eq!(api.position, Some(8));
        assert!(!err.is_retryable());
    }

    #[test]
    fn synthesises_from_status() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let err = api_error(
            StatusCode::BAD_GATEWAY,
            &headers,
            b"<html>bad gateway</html>",
        );
        let api = err.api().unwrap();
        assert_eq!(api.code, ErrorCode::Unavailable);
        assert!(api.retryable);
        assert_eq!(api.retry_after, Some(7));
        assert!(api.message.contains("502"), "{}", api.message);
        assert!(api.message.contains("bad gateway"), "{}", api.message);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

        let long = "x".repeat(1000);
        let err = api_error(StatusCode::INTERNAL_SERVER_ERROR, &headers, long.as_bytes());
        let api = err.api().unwrap();
        assert_eq!(api.code, ErrorCode::Internal);
        assert!(!api.retryable);
        assert!(api.message.chars().count() < 300);
    }

    #[test]
    fn status_codes() {
        let cases = [
            (400, ErrorCode::InvalidRequest),
            (401, ErrorCode::Unauthorized),
            (403, ErrorCode::Forbidden),
            (404, ErrorCode::NotFound),
            (405, ErrorCode::MethodNotAllowed),
            (409, ErrorCode::Conflict),
            (413, ErrorCode::PayloadTooLarge),
            (418, ErrorCode::InvalidRequest),
            (429, ErrorCode::RateLimited),
            (500, ErrorCode::Internal),
            (502, ErrorCode::Unavailable),
            (503, ErrorCode::Unavailable),
            (504, ErrorCode::Timeout),
            (507, ErrorCode::Internal),
        ];
        for (status, code) in cases {
            assert_eq!(code_for_status(status), code, "{status}");
        }
    }

    #[test]
    fn display_is_readable() {
        let err = ClientError::Api {
            status: 429,
            error: Box::new(ApiError::new(ErrorCode::RateLimited, "slow down")),
        };
        assert_eq!(err.to_string(), "rate_limited: slow down (HTTP 429)");
        assert_eq!(ClientError::Timeout.to_string(), "request timed out");
    }

    #[test]
    fn body_retry_after_wins_over_header() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("9"));
        let body =
            br#"{"error":{"code":"rate_limited","message":"m","retryable":true,"retry_after":2}}"#;
        let err = api_error(StatusCode::TOO_MANY_REQUESTS, &headers, body);
        assert_eq!(err.api().unwrap().retry_after, Some(2));
    }
}
