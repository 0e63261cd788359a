//! Control-plane API bodies (the manager).

use serde::{Deserialize, Serialize};
use shardline_core::KeyType;

/// `POST /v1/keyspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyspaceRequest {
    pub name: String,
    /// How shard keys are hashed (`text`, `bigint`, `uuid`).
    #[serde(default)]
    pub key_type: KeyType,
    /// Registered, unassigned shards to split the key space evenly over.
    /// Empty: the keyspace has no map until `PUT .../map`.
    #[serde(default)]
    pub shards: Vec<String>,
}

/// `PUT /v1/keyspaces/{name}/map`: the initial map of a keyspace that has
/// none yet, split evenly over these shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMapRequest {
    pub shards: Vec<String>,
}

/// One range of a shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeInfo {
    /// Vitess-style range (`-40`, `40-80`, `80-`).
    pub range: String,
    pub shard: String,
}

/// A migration recorded in a keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    pub name: String,
    /// SHA-256 of the SQL text, hex.
    pub checksum: String,
}

/// A keyspace as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyspaceInfo {
    pub name: String,
    pub key_type: KeyType,
    pub map: Vec<RangeInfo>,
    pub migrations: Vec<MigrationInfo>,
}

/// `POST /v1/shards`: registers a PostgreSQL server (and its replicas) as
/// a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterShardRequest {
    pub id: String,
    /// libpq key/value DSN or `postgresql://` URL of the primary.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// The last health check of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthInfo {
    pub up: bool,
    /// When it was checked, RFC 3339.
    pub checked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_recovery: Option<bool>,
}

/// One PostgreSQL instance of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `primary` or `replica`.
    pub role: String,
    /// The DSN with any password replaced by `***`.
    pub dsn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthInfo>,
}

/// A shard as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    /// The ranges it owns.
    pub ranges: Vec<String>,
    pub generation: u64,
    pub instances: Vec<InstanceInfo>,
}

/// `POST /v1/keyspaces/{name}/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyMigrationRequest {
    pub name: String,
    pub sql: String,
}

/// What happened to a migration on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationOutcome {
    Applied,
    AlreadyApplied,
    Failed,
}

/// A migration's result on one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMigrationStatus {
    pub shard: String,
    pub outcome: MigrationOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to applying a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationResult {
    pub name: String,
    pub checksum: String,
    pub shards: Vec<ShardMigrationStatus>,
}

/// `POST /v1/apps`: a client application and its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAppRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A client application as the API shows it (never its token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub created_at: String,
}

/// The answer to creating an app: the token is shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateAppResponse {
    #[serde(flatten)]
    pub app: AppInfo,
    pub token: String,
}

/// `POST /v1/routers/heartbeat`: a router says it is alive and which
/// catalog version it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterHeartbeat {
    pub id: String,
    /// Where clients reach it (informational).
    pub address: String,
    pub applied_version: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The router counts as gone if it does not heartbeat within this.
    pub lease_ms: u64,
}

/// A live router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterInfo {
    pub id: String,
    pub address: String,
    pub applied_version: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub catalog_version: u64,
    pub keyspaces: Vec<KeyspaceInfo>,
    pub shards: Vec<ShardInfo>,
    pub routers: Vec<RouterInfo>,
}
