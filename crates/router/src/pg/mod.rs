//! The router's PostgreSQL layer: connection pools, JSON ↔ PostgreSQL
//! value conversion, statement and transaction execution, and the reading
//! of PostgreSQL's errors into the router's own ([`crate::error`]).
//!
//! # Layout
//! - [`pool`]: the HTTP front end's face of a pool: sessions with their
//!   prepared statements, routing version and reset.
//! - [`budget`]: a bound on the connections of all pools to one server.
//! - [`frame`]: protocol v3 message framing.
//! - [`server`]: a raw server session (login, messages passed through).
//! - [`rawpool`]: a pool of server sessions, shared by both front ends.
//! - [`statements`]: the HTTP front end's prepared statements on a
//!   session.
//! - [`exec`]: runs one statement or a transaction on a pooled connection.
//! - [`values`]: JSON parameters → binary values, binary rows → JSON.
//! - [`numeric`]: exact `numeric` binary encoding and decoding.
//! - [`datetime`]: date, time, timestamp and interval text forms.
//! - [`error`]: PostgreSQL and pool errors → [`crate::error::RouterError`].

pub mod budget;
pub mod datetime;
pub mod error;
pub mod exec;
pub mod frame;
pub mod numeric;
pub mod pool;
pub mod rawpool;
pub mod server;
pub mod statements;
pub mod values;

pub use budget::ConnBudget;
pub use error::{from_pg_error, from_pool_error};
pub use exec::{
    check_statement, execute, execute_with, transaction, transaction_with, ResultLimits,
};
pub use pool::{Pool, PoolConfig, PooledConn, SessionError};
pub use rawpool::{PoolError, PoolStats};
