//! HTTP plumbing shared by the router and the manager: the error answer,
//! body and query extractors that turn every bad input into a clear 4xx,
//! bearer tokens, the 404/405 fallbacks and serving (HTTP or HTTPS) with
//! graceful drain.
//!
//! # Layout
//! - [`error`]: [`ErrorResponse`], an [`ApiError`](shardline_api::ApiError)
//!   as an HTTP answer.
//! - [`extract`]: [`JsonBody`], [`QueryParams`], [`bearer_token`].
//! - [`serve`]: [`serve()`](serve::serve), [`serve_tls`],
//!   [`serve_spread`] (connections served on threads of the caller's
//!   choice) and [`with_fallbacks`].
//! - [`tls`]: [`TlsListener`](tls::TlsListener), HTTPS connections with
//!   their handshake done.
//! - [`request_id`]: [`RequestId`], [`with_request_ids`] and [`Api`], a
//!   router served with ids, fallbacks and body limit at little cost.
//! - [`openapi`]: serving an OpenAPI document.

pub mod error;
pub mod extract;
pub mod openapi;
pub mod request_id;
pub mod serve;
pub mod tls;

pub use error::ErrorResponse;
pub use extract::{bearer_token, JsonBody, PathParam, QueryParams, TokenCheck};
pub use request_id::{with_request_ids, Api, RequestId};
pub use serve::{serve, serve_spread, serve_tls, with_fallbacks, App, Job, Spread};
pub use shardline_tls::ServerTls;
