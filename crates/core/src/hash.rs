//! The routing hash: PostgreSQL's own hash-partitioning hash.
//!
//! `h = hash<type>extended(key, HASH_PARTITION_SEED)`, then
//! `routing = h + ROUTING_OFFSET (mod 2^64)`, exactly what PostgreSQL
//! computes for a single-column hash partition key, so PostgreSQL can
//! compute it in SQL (see [`sql_routing_hash`]).

use serde::{Deserialize, Serialize};

/// PostgreSQL's `HASH_PARTITION_SEED`.
pub const HASH_PARTITION_SEED: u64 = 0x7A5B22367996DCFD;
/// The constant `hash_combine64` adds when combining into a zero hash.
pub const ROUTING_OFFSET: u64 = 0x49a0f4dd15e5a8e3;

/// How a keyspace's shard keys are typed and hashed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// UTF-8 text, hashed like `hashtextextended`.
    #[default]
    Text,
    /// 64-bit signed integer, hashed like `hashint8extended`.
    Bigint,
    /// UUID, hashed like `uuid_hash_extended`.
    Uuid,
}

/// A typed shard key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKey<'a> {
    Text(&'a str),
    Bigint(i64),
    Uuid([u8; 16]),
}

/// PostgreSQL's `hash_bytes_extended` (Bob Jenkins' lookup3).
pub fn hash_bytes_extended(data: &[u8], seed: u64) -> u64 {
    let _ = (data, seed);
    todo!()
}

/// PostgreSQL's `hashint8extended`.
pub fn hashint8_extended(value: i64, seed: u64) -> u64 {
    let _ = (value, seed);
    todo!()
}

/// The routing hash of a key.
pub fn routing_hash(key: ShardKey<'_>) -> u64 {
    let _ = key;
    todo!()
}

/// Parses a UUID in its canonical text form (hyphens optional,
/// case-insensitive).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let _ = s;
    todo!()
}

/// Formats a routing hash as 16 lowercase hex digits.
pub fn format_hash(h: u64) -> String {
    format!("{h:016x}")
}

/// A SQL expression (over the column or expression `key_sql`, of the
/// keyspace's key type) whose value is the key's routing hash as a
/// `numeric` in `[0, 2^64)`.
pub fn sql_routing_hash(key_type: KeyType, key_sql: &str) -> String {
    let _ = (key_type, key_sql);
    todo!()
}
