//! The catalog model: what the manager persists (one store entry per
//! object) and routers follow as a whole, versioned snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::KeyType;
use crate::keyrange::KeyRange;
use crate::shardmap::ShardMap;

/// Store key prefixes, one per kind of object.
pub mod keys {
    pub const KEYSPACES: &str = "keyspaces/";
    pub const SHARDS: &str = "shards/";
    pub const APPS: &str = "apps/";
    pub const TENANTS: &str = "tenants/";
    pub const JOBS: &str = "jobs/";

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
    /// The store key of a tenant.
    pub fn tenant(id: &str) -> String {
        format!("{TENANTS}{id}")
    }
    /// The store key of a resharding job.
    pub fn job(id: &str) -> String {
        format!("{JOBS}{id}")
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
    pub tenants: BTreeMap<String, Tenant>,
    pub jobs: BTreeMap<String, ReshardJob>,
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
    /// Each table's shard-key column, so resharding can select a range's
    /// rows by the routing hash computed in SQL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableSpec>,
    /// Ranges being cut over: routers hold requests for keys in them
    /// until the map changes (or their hold window runs out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<KeyRange>,
    /// Whether a tenant database of this keyspace may hold code that can
    /// change a session's state: functions or procedures of the
    /// tenant's, or objects calling one of
    /// [`crate::session::SESSION_CHANGING_FUNCTIONS`]. While it may,
    /// routers reset every session after every request; while it cannot,
    /// only after requests whose text could (see [`crate::session`]).
    /// The manager sets it (and waits for routers to have it) before
    /// applying a migration, and clears it once it has checked every
    /// tenant database. A keyspace from before the flag existed may.
    #[serde(default = "may_hold_code")]
    pub tenant_code: bool,
}

fn may_hold_code() -> bool {
    true
}

/// The SQLSTATE a source shard raises for a write to a key range that
/// resharding moved away: nothing was written; retry on the new owner.
pub const MOVED_SQLSTATE: &str = "SLM01";

/// Reads the resharding fence of a tenant database: the catalog version
/// router sessions must have routed by to write there (0: no fence). The
/// manager keeps it in the body of the trigger function
/// `shardline.reshard_fence()` (`... v::int8 < VERSION ...`); any role can
/// read function bodies, so a router reads it as the tenant.
pub const FENCE_VERSION_SQL: &str = "SELECT coalesce((SELECT \
     substring(p.prosrc from 'v::int8 < ([0-9]+)')::int8 \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname = 'shardline' AND p.proname = 'reshard_fence' LIMIT 1), 0)";

/// How a table is sharded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The column holding the shard key of each row.
    pub shard_key: String,
}

/// An online resharding job: ranges of a keyspace moving between shards
/// while clients keep writing. Phases are persisted; progress figures
/// live in the manager's memory and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardJob {
    pub id: String,
    pub kind: ReshardKind,
    pub keyspace: String,
    /// The ranges that move, each from its source to its target shard.
    pub moves: Vec<RangeMove>,
    /// The map the job started from and the one it publishes at cutover
    /// (for a tenant move: the source keyspace's map and the target
    /// keyspace's).
    pub from_map: ShardMap,
    pub to_map: ShardMap,
    /// Tenant moves: the tenant, and the keyspace it moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_keyspace: Option<String>,
    pub phase: ReshardPhase,
    /// Why the job failed or what it is waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Write pause at cutover, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover_pause_ms: Option<u64>,
    /// Rows the copy phase copied, recorded when it ends (while it runs,
    /// the count is in the leader's memory), so it outlives the manager
    /// that copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_copied: Option<u64>,
    /// How long the copy phase took (its last run, which copied
    /// `rows_copied`), recorded with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_ms: Option<u64>,
    /// Per (tenant, table): row count and checksum of the moved rows at
    /// cutover, checked again before cleanup.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verified: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
}

/// One range moving from one shard to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeMove {
    pub range: KeyRange,
    pub from: String,
    pub to: String,
}

/// What a job does to the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReshardKind {
    Split,
    Merge,
    Move,
    /// One tenant's data from the shards of its keyspace to the shards
    /// of another keyspace (shared to dedicated, or back).
    TenantMove,
}

/// Where a job is. The order is the order of the phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReshardPhase {
    /// Targets get the tenants' databases, roles and migrations; change
    /// capture is installed on the source.
    Prepare,
    /// Rows of the moving ranges are copied from a snapshot.
    Copy,
    /// Changes captured since are applied until few are left.
    CatchUp,
    /// Ranges frozen, last changes applied, verified, map published.
    Cutover,
    /// Moved rows deleted from the source in batches.
    Cleanup,
    Done,
    /// Cancelled before cutover: the source is as it was.
    Cancelled,
    /// Stopped with `error`; before cutover the source still owns the
    /// ranges.
    Failed,
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
    /// The tenant this shard was registered for: only that tenant's
    /// dedicated keyspace may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<String>,
    /// Former primaries replaced by a failover: never routed to, never
    /// promoted, until an operator re-adds one as a replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<Instance>,
    /// A failover or switchover under way: routers hold the shard's
    /// primary traffic until it ends (or their hold window runs out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// Synchronous replication: the primary commits once any one of its
    /// replicas has flushed the commit (`synchronous_standby_names =
    /// ANY 1 (...)`), kept valid across failovers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous: bool,
}

/// A change of a shard's primary in progress, recorded before anything is
/// done so a restarted manager resumes or rolls it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failover {
    pub kind: FailoverKind,
    /// Instance id of the primary being replaced.
    pub from: String,
    /// Instance id of the replica being promoted.
    pub to: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
}

/// Why a primary is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// The primary failed its health checks.
    Automatic,
    /// An operator asked (`shardline failover`): no acknowledged write
    /// is lost.
    Planned,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Stable name within the shard (`<shard>-<n>`), kept across role
    /// changes; empty in catalogs written before instances had ids.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// libpq key/value DSN or URL, with credentials.
    pub dsn: String,
}

impl Shard {
    /// The shard's instances that may serve: the primary, then replicas.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

/// A client application of a tenant, with the hash of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Shard keys this app may use must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Limits tighter than the tenant's (`max_shards` does not apply).
    #[serde(default)]
    pub limits: Limits,
    /// Hex SHA-256 of the token (see [`crate::auth::token_hash`]).
    pub token_hash: String,
    /// The SCRAM-SHA-256 verifier of the token, for the PostgreSQL wire
    /// protocol (see [`crate::scram::Verifier`]). Apps created before it
    /// existed get one at their next rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scram: Option<String>,
    /// The token replaced by the last rotation, valid until its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_token: Option<PreviousToken>,
    /// RFC 3339.
    pub created_at: String,
}

/// A rotated-out token that stays valid for a grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousToken {
    /// Hex SHA-256 of the old token.
    pub token_hash: String,
    /// The SCRAM-SHA-256 verifier of the old token, for the PostgreSQL
    /// wire protocol; it shares the salt and iteration count of the
    /// app's current one (see [`crate::scram`]). Tokens of apps created
    /// before verifiers existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scram: Option<String>,
    /// Unix time in milliseconds after which it is refused.
    pub expires_at_ms: u64,
}

/// Quotas of a tenant or an app. `None` means unlimited (for an app: only
/// its tenant's limit applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained requests per second (token bucket refill rate), summed
    /// over all live routers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub requests_per_second: Option<u32>,
    /// Bucket size: requests allowed at once above the rate (defaults to
    /// the rate, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub burst: Option<u32>,
    /// Requests in flight at once, per router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_concurrent: Option<u32>,
    /// Shards a dedicated tenant may have (tenants only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_shards: Option<u32>,
}

/// A tenant's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    #[serde(default)]
    pub limits: Limits,
    /// Most connections one router opens to one shard for this tenant
    /// (default: the router's per-tenant pool size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_connections_per_shard: Option<u32>,
}

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Serving.
    #[default]
    Active,
    /// Being deleted: routers refuse it; its schema and role are being
    /// dropped from the shards.
    Deleting,
}

/// A tenant: the isolation and quota boundary. On every shard of its
/// keyspace it owns a login role, a database and a schema in it, all
/// named [`Tenant::pg_name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    /// Display name.
    pub name: String,
    pub keyspace: String,
    /// Whether its keyspace (and so every shard of it) is its alone.
    pub dedicated: bool,
    #[serde(default)]
    pub config: TenantConfig,
    /// The password of its PostgreSQL role on every shard; routers log in
    /// with it. Never shown by the API.
    pub role_password: String,
    /// The name of its role, database and schema on every shard: random
    /// (`t_` and 24 hex digits), chosen by the manager at creation, so
    /// other tenants, who can list role and database names, learn nothing
    /// of who it is. `None` in records written before names were opaque:
    /// those keep `tenant_<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_name: Option<String>,
    #[serde(default)]
    pub state: TenantState,
    /// A tenant move is cutting over: routers hold this tenant's requests
    /// until it clears (or their hold window runs out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moving: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// Longest tenant id, so the PostgreSQL names of tenants from before
/// opaque names (`tenant_<id>`) fit in 63 bytes.
pub const MAX_TENANT_ID_LEN: usize = 48;

impl Tenant {
    /// The name of the tenant's login role, of its database and of the
    /// schema in it on every shard (the same, so PostgreSQL's default
    /// `"$user"` search path finds the schema): the record's opaque
    /// [`Tenant::pg_name`](Tenant#structfield.pg_name), or `tenant_<id>`
    /// for a record from before opaque names. Unquoted; quote with
    /// [`quote_ident`].
    pub fn pg_name(&self) -> String {
        match &self.pg_name {
            Some(name) => name.clone(),
            None => format!("tenant_{}", self.id),
        }
    }
}

/// Quotes a PostgreSQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a PostgreSQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
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
            } else if let Some(id) = key.strip_prefix(keys::TENANTS) {
                cat.tenants.insert(id.to_string(), decode(key, value)?);
            } else if let Some(id) = key.strip_prefix(keys::JOBS) {
                cat.jobs.insert(id.to_string(), decode(key, value)?);
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
        self.tenants.extend(one.tenants);
        self.jobs.extend(one.jobs);
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
        } else if let Some(id) = key.strip_prefix(keys::TENANTS) {
            self.tenants.remove(id);
        } else if let Some(id) = key.strip_prefix(keys::JOBS) {
            self.jobs.remove(id);
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
    fn quotes() {
        assert_eq!(quote_ident("tenant_a-b"), "\"tenant_a-b\"");
        assert_eq!(quote_ident("x\"y"), "\"x\"\"y\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn decodes_entries() {
        let shard = Shard {
            id: "s1".into(),
            keyspace: None,
            primary: Instance {
                id: String::new(),
                dsn: "host=x".into(),
            },
            replicas: vec![],
            generation: 1,
            reserved_for: None,
            fenced: vec![],
            failover: None,
            synchronous: false,
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

    #[test]
    fn tenant_pg_name_opaque_or_legacy() {
        // A record from before opaque names keeps `tenant_<id>`, and is
        // written back without the field.
        let legacy = br#"{"id": "acme", "name": "Acme", "keyspace": "default",
            "dedicated": false, "role_password": "pw", "created_at": ""}"#;
        let t: Tenant = serde_json::from_slice(legacy).unwrap();
        assert_eq!(t.pg_name, None);
        assert_eq!(t.pg_name(), "tenant_acme");
        assert!(!serde_json::to_string(&t).unwrap().contains("pg_name"));
        let opaque = Tenant {
            pg_name: Some("t_0123456789abcdef01234567".into()),
            ..t
        };
        assert_eq!(opaque.pg_name(), "t_0123456789abcdef01234567");
        let back: Tenant = serde_json::from_str(&serde_json::to_string(&opaque).unwrap()).unwrap();
        assert_eq!(back, opaque);
    }

    #[test]
    fn apps_from_before_scram_verifiers_load() {
        let legacy = br#"{"id": "a", "name": "a", "tenant": "default",
            "token_hash": "00", "previous_token": {"token_hash": "11",
            "expires_at_ms": 5}, "created_at": ""}"#;
        let app: App = serde_json::from_slice(legacy).unwrap();
        assert_eq!(app.token_scram, None);
        assert_eq!(app.previous_token.as_ref().unwrap().token_scram, None);
        assert!(!serde_json::to_string(&app).unwrap().contains("token_scram"));
    }
}
