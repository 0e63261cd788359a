//! The routing table: the catalog compiled for the request path, with a
//! connection pool per shard.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use shardline_api::router::ShardKeyValue;
use shardline_api::{ApiError, ErrorCode};
use shardline_core::hash::{parse_uuid, routing_hash};
use shardline_core::shardmap::ShardRange;
use shardline_core::{Catalog, KeyType, ShardKey, ShardMap};

use crate::pg::pool::{Pool, PoolConfig};

/// Longest shard key accepted, in bytes (keys must stay under 4 KiB).
pub const MAX_SHARD_KEY_BYTES: usize = 4095;

/// A client app, as the router knows it.
#[derive(Debug)]
pub struct AppAuth {
    pub id: String,
    pub tenant: String,
}

/// A keyspace, compiled.
#[derive(Debug)]
pub struct KeyspaceRoute {
    pub key_type: KeyType,
    pub map: Option<ShardMap>,
}

/// A shard's connection target.
pub struct ShardTarget {
    pub generation: u64,
    pub primary_dsn: String,
    pub primary: Pool,
}

/// One catalog version, ready for routing.
#[derive(Default)]
pub struct Routing {
    pub version: u64,
    pub keyspaces: HashMap<String, KeyspaceRoute>,
    /// By SHA-256 of the token.
    pub apps: HashMap<[u8; 32], Arc<AppAuth>>,
    pub shards: HashMap<String, Arc<ShardTarget>>,
}

/// Where a request goes.
pub struct Route<'a> {
    pub hash: u64,
    pub range: &'a ShardRange,
}

impl Routing {
    /// Compiles a catalog, keeping the pools of unchanged shards from
    /// `previous`.
    pub fn build(cat: &Catalog, previous: &Routing, pool_cfg: &PoolConfig) -> Routing {
        let keyspaces = cat
            .keyspaces
            .iter()
            .map(|(name, ks)| {
                (
                    name.clone(),
                    KeyspaceRoute {
                        key_type: ks.key_type,
                        map: ks.map.clone(),
                    },
                )
            })
            .collect();
        let apps = cat
            .apps
            .values()
            .filter_map(|app| {
                let hash = decode_hex32(&app.token_hash)?;
                Some((
                    hash,
                    Arc::new(AppAuth {
                        id: app.id.clone(),
                        tenant: app.tenant.clone(),
                    }),
                ))
            })
            .collect();
        let shards = cat
            .shards
            .values()
            .filter_map(|s| {
                if let Some(old) = previous.shards.get(&s.id) {
                    if old.generation == s.generation && old.primary_dsn == s.primary.dsn {
                        return Some((s.id.clone(), Arc::clone(old)));
                    }
                }
                match Pool::new(&s.primary.dsn, pool_cfg.clone()) {
                    Ok(pool) => Some((
                        s.id.clone(),
                        Arc::new(ShardTarget {
                            generation: s.generation,
                            primary_dsn: s.primary.dsn.clone(),
                            primary: pool,
                        }),
                    )),
                    Err(e) => {
                        tracing::error!(shard = %s.id, error = %e, "bad shard DSN in catalog");
                        None
                    }
                }
            })
            .collect();
        Routing {
            version: cat.version,
            keyspaces,
            apps,
            shards,
        }
    }

    /// The app whose token this is.
    pub fn authenticate(&self, token: &str) -> Option<&Arc<AppAuth>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.apps.get(&hash)
    }

    /// Hashes a key and finds the owning range.
    pub fn route(&self, keyspace: &str, key: &ShardKeyValue) -> Result<Route<'_>, ApiError> {
        let ks = self.keyspaces.get(keyspace).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("no keyspace {keyspace:?}"))
        })?;
        let hash = routing_hash(typed_key(ks.key_type, key)?);
        let map = ks.map.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("keyspace {keyspace:?} has no shards yet"),
            )
            .with_retry_after(1)
        })?;
        Ok(Route {
            hash,
            range: map.lookup(hash),
        })
    }
}

/// Checks a key against the keyspace's key type.
pub fn typed_key(key_type: KeyType, key: &ShardKeyValue) -> Result<ShardKey<'_>, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidShardKey, m);
    match (key_type, key) {
        (_, ShardKeyValue::Text(s)) if s.is_empty() => Err(bad("shard_key is empty".into())),
        (_, ShardKeyValue::Text(s)) if s.len() > MAX_SHARD_KEY_BYTES => Err(bad(format!(
            "shard_key is {} bytes; the limit is {MAX_SHARD_KEY_BYTES}",
            s.len()
        ))),
        (KeyType::Text, ShardKeyValue::Text(s)) => Ok(ShardKey::Text(s)),
        (KeyType::Text, ShardKeyValue::Int(_)) => Err(bad(
            "this keyspace has text shard keys: send shard_key as a JSON string".into(),
        )),
        (KeyType::Bigint, ShardKeyValue::Int(i)) => Ok(ShardKey::Bigint(*i)),
        (KeyType::Bigint, ShardKeyValue::Text(s)) => {
            s.parse::<i64>().map(ShardKey::Bigint).map_err(|_| {
                bad(format!(
                    "this keyspace has bigint shard keys; {s:?} is not one"
                ))
            })
        }
        (KeyType::Uuid, ShardKeyValue::Text(s)) => {
            parse_uuid(s).map(ShardKey::Uuid).ok_or_else(|| {
                bad(format!(
                    "this keyspace has uuid shard keys; {s:?} is not one"
                ))
            })
        }
        (KeyType::Uuid, ShardKeyValue::Int(_)) => Err(bad(
            "this keyspace has uuid shard keys: send shard_key as a UUID string".into(),
        )),
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The current routing table, swapped whole on every catalog change.
#[derive(Default)]
pub struct RoutingCell {
    current: RwLock<Arc<Routing>>,
    loaded: std::sync::atomic::AtomicBool,
}

impl RoutingCell {
    /// The table requests route by.
    pub fn get(&self) -> Arc<Routing> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Installs a new table.
    pub fn set(&self, routing: Routing) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routing);
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a catalog has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_keys() {
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text("a".into())).is_ok());
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text(String::new())).is_err());
        let long = "x".repeat(4096);
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Text(long)).is_err());
        assert!(typed_key(KeyType::Text, &ShardKeyValue::Int(1)).is_err());
        assert_eq!(
            typed_key(KeyType::Bigint, &ShardKeyValue::Text("42".into())).unwrap(),
            ShardKey::Bigint(42)
        );
        assert!(typed_key(KeyType::Uuid, &ShardKeyValue::Text("nope".into())).is_err());
    }

    #[test]
    fn decodes_hex() {
        let h = shardline_core::auth::token_hash("t");
        let b = decode_hex32(&h).unwrap();
        assert_eq!(shardline_core::auth::hex(&b), h);
        assert!(decode_hex32("zz").is_none());
    }
}
