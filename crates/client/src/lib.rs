//! The Rust client of shardline's HTTP APIs: [`RouterClient`] for the data
//! plane (execute a statement or a transaction, ask where a key routes)
//! and [`ManagerClient`] for the control plane (keyspaces, shards and
//! their replicas, failover, health, tenants, apps, migrations, table
//! shard keys, resharding jobs, the catalog watch, router heartbeats).
//! Both
//! sit on [`HttpClient`]: pooled HTTP/1 connections, a bearer token, a
//! timeout per request, and shardline's error body decoded into
//! [`ClientError`].
//! Retries (exponential backoff, full jitter, `retry_after` honoured) apply
//! only to errors that are safe to retry.
//!
//! # Layout
//! - [`error`]: the error type, [`ClientError`], and its classification.
//! - [`http`]: JSON over HTTP/1, [`HttpClient`].
//! - [`retry`]: backoff and jitter, [`RetryPolicy`].
//! - [`encode`]: percent-encoding of path segments and query values.
//! - [`manager`]: the control plane's API, [`ManagerClient`].
//! - [`router`]: the data plane's API, [`RouterClient`].

pub mod encode;
pub mod error;
pub mod http;
pub mod manager;
pub mod retry;
pub mod router;

pub use error::ClientError;
pub use http::HttpClient;
pub use manager::ManagerClient;
pub use retry::RetryPolicy;
pub use router::RouterClient;
