//! The shardline HTTP API's types: request and response bodies and the
//! error body, shared by the servers, the CLI and the client library so
//! they cannot drift apart.
//!
//! Every request body rejects unknown fields: a misspelt field is an error
//! naming it, never silently ignored.
//!
//! # Layout
//! - [`error`]: the one error body of both APIs.
//! - [`checks`]: what PostgreSQL's protocol cannot carry (NUL in text,
//!   more than 65,535 parameters), refused as the client's error.
//! - [`router`]: the data-plane API (`/v1/execute`, `/v1/transaction`,
//!   `/v1/route`).
//! - [`manager`]: the control-plane API (keyspaces, shards, migrations,
//!   apps, routers, status, catalog watch).
//! - [`probe`]: the answers of `/healthz` and `/readyz` (both servers).
//!
//! With the `openapi` feature every type also derives its OpenAPI schema
//! (utoipa); the servers build their documents from them. Clients leave
//! it off and do not compile utoipa.

pub mod checks;
pub mod error;
pub mod manager;
pub mod probe;
pub mod router;

pub use error::{ApiError, ErrorBody, ErrorCode};
