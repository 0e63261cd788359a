//! The shardline core: the routing hash, key ranges, shard maps and the
//! catalog model. No I/O; everything here is pure and unit-tested.
//!
//! # Layout
//! - [`hash`]: PostgreSQL's hash-partitioning hash, as the routing hash.
//! - [`keyrange`]: `[start, end)` ranges of the 64-bit routing space,
//!   written Vitess-style (`-40`, `40-80`, `80-`).
//! - [`shardmap`]: a keyspace's complete, non-overlapping ranges and the
//!   shard owning each; lookup by binary search.
//! - [`catalog`]: keyspaces, shards, client apps: what the manager stores
//!   and routers follow.
//! - [`auth`]: token hashing.
//! - [`scram`]: SCRAM-SHA-256 verifiers of app tokens and the server
//!   side of the exchange, for the PostgreSQL wire protocol.
//! - [`fence`]: version claims router sessions make to fenced shards.
//! - [`session`]: what can change a pooled session's state.

pub mod auth;
pub mod catalog;
pub mod fence;
pub mod hash;
pub mod keyrange;
pub mod scram;
pub mod session;
pub mod shardmap;

pub use catalog::Catalog;
pub use hash::{KeyType, ShardKey};
pub use keyrange::KeyRange;
pub use shardmap::ShardMap;
