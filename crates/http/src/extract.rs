//! Extractors whose rejections are our JSON errors.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use shardline_api::ErrorCode;
use shardline_core::auth::{constant_time_eq, token_hash};

use crate::error::ErrorResponse;

/// The largest request body accepted unless a route says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Request-body size limit, set as a request extension by the server;
/// [`DEFAULT_BODY_LIMIT`] when absent.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body: over the limit is 413; malformed JSON, wrong types,
/// missing or unknown fields are 400 with serde's message naming the
/// field.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ErrorResponse;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let too_large = || {
            ErrorResponse::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let body = http_body_util::Limited::new(req.into_body(), limit);
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(_) => {
                return Err(ErrorResponse::new(
                    ErrorCode::InvalidRequest,
                    "could not read the request body",
                ))
            }
        };
        if bytes.is_empty() {
            return Err(ErrorResponse::new(
                ErrorCode::InvalidRequest,
                "request body is empty; expected a JSON object",
            ));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "malformed JSON"
                }
                _ => "invalid request",
            };
            ErrorResponse::new(ErrorCode::InvalidRequest, format!("{what}: {e}"))
        })
    }
}

/// Query-string parameters; bad ones are 400 naming the problem.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryParams(q.0))
            .map_err(|e| {
                ErrorResponse::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid query string: {}", e.body_text()),
                )
            })
    }
}

/// One path segment (a name or id), percent-decoded; a bad one is 400.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ErrorResponse;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| {
                ErrorResponse::new(
                    ErrorCode::InvalidRequest,
                    format!("invalid path: {}", e.body_text()),
                )
            })
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks requests against one secret token, kept only as its hash.
#[derive(Clone)]
pub struct TokenCheck {
    hash: String,
}

impl TokenCheck {
    /// A check for `token`.
    pub fn new(token: &str) -> Self {
        Self {
            hash: token_hash(token),
        }
    }

    /// Ok when the request carries the token; else 401.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ErrorResponse> {
        let Some(presented) = bearer_token(headers) else {
            return Err(ErrorResponse::new(
                ErrorCode::Unauthorized,
                "missing bearer token (Authorization: Bearer <token>)",
            ));
        };
        if constant_time_eq(token_hash(presented).as_bytes(), self.hash.as_bytes()) {
            Ok(())
        } else {
            Err(ErrorResponse::new(ErrorCode::Unauthorized, "invalid token"))
        }
    }
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(..)")
    }
}
