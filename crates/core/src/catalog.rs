//! The catalog model: what the manager persists (one store entry per
//! object) and routers follow as a whole, versioned snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::KeyType;
use crate::shardmap::ShardMap;

/// Store key prefixes, one per kind of object.
pub mod keys {
    pub const KEYSPACES: &str = "keyspaces/";
    pub const SHARDS: &str = "shards/";
    pub const APPS: &str = "apps/";

    /// The store key of a keyspace.
    pub fn keyspace(name: &str) -> String {
        format!("{KEYSPACES}{name}")
    }
    /// The store key of a shard.
    pub fn shard(id: &str) -> String {
        format!("{SHARDS}{id}")
    }
    /// The store key of an app.
    pub fn app(id: &str) -> String {
        format!("{APPS}{id}")
    }
}

/// A store entry that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("catalog entry {key}: {message}")]
pub struct CatalogDecodeError {
    pub key: String,
    pub message: String,
}

/// The whole catalog at one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// The store revision this snapshot reflects; grows on every change.
    pub version: u64,
    pub keyspaces: BTreeMap<String, Keyspace>,
    pub shards: BTreeMap<String, Shard>,
    pub apps: BTreeMap<String, App>,
}

/// A keyspace: a key type, a shard map, and the schema every shard of it
/// carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyspace {
    pub name: String,
    pub key_type: KeyType,
    /// `None` until shards are assigned.
    pub map: Option<ShardMap>,
    /// Migrations in the order they were first applied.
    #[serde(default)]
    pub migrations: Vec<Migration>,
}

/// A named schema change applied to every shard of a keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub name: String,
    /// Hex SHA-256 of `sql`.
    pub checksum: String,
    pub sql: String,
}

/// A shard: a primary PostgreSQL server and its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: String,
    /// The keyspace it serves, once assigned.
    pub keyspace: Option<String>,
    pub primary: Instance,
    #[serde(default)]
    pub replicas: Vec<Instance>,
    /// Grows on every change of primary; fences a demoted one.
    pub generation: u64,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// libpq key/value DSN or URL, with credentials.
    pub dsn: String,
}

/// A client application and the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// Hex SHA-256 of the token (see [`crate::auth::token_hash`]).
    pub token_hash: String,
    /// RFC 3339.
    pub created_at: String,
}

impl Catalog {
    /// Builds a catalog from store entries (`key`, JSON value) at
    /// `version`. Keys outside the known prefixes are ignored, so newer
    /// managers can add kinds of objects.
    pub fn from_entries<'a>(
        version: u64,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, CatalogDecodeError> {
        fn decode<T: serde::de::DeserializeOwned>(
            key: &str,
            value: &[u8],
        ) -> Result<T, CatalogDecodeError> {
            serde_json::from_slice(value).map_err(|e| CatalogDecodeError {
                key: key.to_string(),
                message: e.to_string(),
            })
        }
        let mut cat = Catalog {
            version,
            ..Catalog::default()
        };
        for (key, value) in entries {
            if let Some(name) = key.strip_prefix(keys::KEYSPACES) {
                cat.keyspaces.insert(name.to_string(), decode(key, value)?);
            } else if let Some(id) = key.strip_prefix(keys::SHARDS) {
                cat.shards.insert(id.to_string(), decode(key, value)?);
            } else if let Some(id) = key.strip_prefix(keys::APPS) {
                cat.apps.insert(id.to_string(), decode(key, value)?);
            }
        }
        Ok(cat)
    }
}

impl Catalog {
    /// Applies one stored put (as a watch reports it).
    pub fn apply_put(&mut self, key: &str, value: &[u8]) -> Result<(), CatalogDecodeError> {
        let one = Catalog::from_entries(0, [(key, value)])?;
        self.keyspaces.extend(one.keyspaces);
        self.shards.extend(one.shards);
        self.apps.extend(one.apps);
        Ok(())
    }

    /// Applies one stored delete.
    pub fn apply_delete(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(keys::KEYSPACES) {
            self.keyspaces.remove(name);
        } else if let Some(id) = key.strip_prefix(keys::SHARDS) {
            self.shards.remove(id);
        } else if let Some(id) = key.strip_prefix(keys::APPS) {
            self.apps.remove(id);
        }
    }
}

/// Whether `name` is a valid identifier for a keyspace, shard, tenant or
/// app: 1-63 characters of `[a-z0-9_-]`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("default"));
        assert!(valid_name("shard-01"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("A"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn decodes_entries() {
        let shard = Shard {
            id: "s1".into(),
            keyspace: None,
            primary: Instance {
                dsn: "host=x".into(),
            },
            replicas: vec![],
            generation: 1,
        };
        let v = serde_json::to_vec(&shard).unwrap();
        let cat = Catalog::from_entries(
            7,
            [("shards/s1", v.as_slice()), ("other/x", b"?".as_slice())],
        )
        .unwrap();
        assert_eq!(cat.version, 7);
        assert_eq!(cat.shards["s1"], shard);
        let bad = Catalog::from_entries(1, [("apps/a", b"{".as_slice())]);
        assert!(bad.is_err());
    }
}
