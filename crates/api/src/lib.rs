//! The shardline HTTP API's types: request and response bodies and the
//! error body, shared by the servers, the CLI and the client library so
//! they cannot drift apart.
//!
//! Every request body rejects unknown fields: a misspelt field is an error
//! naming it, never silently ignored.
//!
//! # Layout
//! - [`error`]: the one error body of both APIs.
//! - [`router`]: the data-plane API (`/v1/execute`, `/v1/transaction`,
//!   `/v1/route`).
//! - [`manager`]: the control-plane API (keyspaces, shards, migrations,
//!   apps, routers, status, catalog watch).

pub mod error;
pub mod manager;
pub mod router;

pub use error::{ApiError, ErrorBody, ErrorCode};
