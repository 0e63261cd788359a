//! Control-plane API bodies (the manager).

use serde::{Deserialize, Serialize};
pub use shardline_core::catalog::{
    Limits, ReshardKind, ReshardPhase, TableSpec, TenantConfig, TenantState,
};
use shardline_core::KeyType;

/// `POST /v1/keyspaces`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "orders", "key_type": "text"})))]
pub struct CreateKeyspaceRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InitialMapRequest {
    pub shards: Vec<String>,
}

/// One range of a shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RangeInfo {
    /// Vitess-style range (`-40`, `40-80`, `80-`).
    pub range: String,
    pub shard: String,
}

/// A migration recorded in a keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationInfo {
    pub name: String,
    /// SHA-256 of the SQL text, hex.
    pub checksum: String,
}

/// A keyspace as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyspaceInfo {
    pub name: String,
    pub key_type: KeyType,
    pub map: Vec<RangeInfo>,
    pub migrations: Vec<MigrationInfo>,
    /// Each table's shard-key column (`PUT .../tables/{table}`).
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, TableSpec>,
    /// Ranges frozen for a resharding cutover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frozen: Vec<String>,
}

/// `POST /v1/shards`: registers a PostgreSQL server (and its replicas) as
/// a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterShardRequest {
    pub id: String,
    /// libpq key/value DSN or `postgresql://` URL of the primary.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Reserve the shard for this tenant's dedicated keyspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Synchronous replication: the primary acknowledges a commit only
    /// once any one replica has it (`synchronous_standby_names = 'ANY 1
    /// (...)'`, set by the manager on the primary and again on each new
    /// primary after a failover). Needs at least one replica.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous: bool,
}

/// The last health check of one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthInfo {
    pub up: bool,
    /// When it was checked, RFC 3339.
    pub checked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_recovery: Option<bool>,
    /// Failed checks in a row (0 when up).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// WAL position: written (primary) or replayed (replica), as
    /// PostgreSQL prints it (`0/3000060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// Replicas: bytes of WAL the primary has that this one has not
    /// replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Replicas: seconds behind the primary (0 when it has replayed
    /// everything the primary wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

/// `GET /v1/health` (router token): every instance's last check, for
/// routers choosing replicas for eventual reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthSnapshot {
    /// Grows with every round of checks.
    pub round: u64,
    pub instances: Vec<InstanceHealth>,
}

/// One instance in a [`HealthSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceHealth {
    pub shard: String,
    /// The instance id.
    pub instance: String,
    /// `primary` or `replica` (by the catalog).
    pub role: String,
    pub health: HealthInfo,
}

/// `POST /v1/shards/{id}/replicas`: registers a running streaming
/// replica of the shard's primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddReplicaRequest {
    pub dsn: String,
}

/// `POST /v1/shards/{id}/failover`: a planned switchover (the primary
/// must be up; a primary that is down is replaced automatically).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"to": "s0-1"})))]
pub struct FailoverRequest {
    /// Instance id of the replica to promote (default: the most
    /// caught-up healthy replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The answer to a failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailoverResult {
    pub shard: String,
    /// Instance ids.
    pub from: String,
    pub to: String,
    pub generation: u64,
    /// How long new writes to the shard were held, in milliseconds.
    pub write_pause_ms: u64,
    /// Replicas repointed to the new primary.
    pub repointed: Vec<String>,
    /// Replicas that could not follow and need a re-clone.
    pub needs_reclone: Vec<String>,
}

/// One PostgreSQL instance of a shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceInfo {
    /// Stable id within the shard.
    #[serde(default)]
    pub id: String,
    /// `primary`, `replica` or `fenced`.
    pub role: String,
    /// The DSN with any password replaced by `***`.
    pub dsn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthInfo>,
}

/// A shard as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShardInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    /// The ranges it owns.
    pub ranges: Vec<String>,
    pub generation: u64,
    pub instances: Vec<InstanceInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<String>,
    /// A failover under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<shardline_core::catalog::Failover>,
    /// Synchronous replication (see [`RegisterShardRequest`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous: bool,
}

/// `POST /v1/keyspaces/{name}/migrations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "001_events", "sql": "CREATE TABLE events (id bigint PRIMARY KEY, account_id text NOT NULL)"})))]
pub struct ApplyMigrationRequest {
    pub name: String,
    pub sql: String,
}

impl ApplyMigrationRequest {
    /// Refuses SQL PostgreSQL's protocol cannot carry (a NUL; see
    /// [`crate::checks`]).
    pub fn check(&self) -> Result<(), crate::ApiError> {
        crate::checks::no_nul("sql", &self.sql)
    }
}

/// What happened to a migration on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MigrationOutcome {
    Applied,
    AlreadyApplied,
    Failed,
}

/// A migration's result on one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShardMigrationStatus {
    pub shard: String,
    pub outcome: MigrationOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to applying a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MigrationResult {
    pub name: String,
    pub checksum: String,
    pub shards: Vec<ShardMigrationStatus>,
}

/// `POST /v1/tenants`: a tenant in a shared keyspace, or with a
/// dedicated keyspace built from shards registered for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"id": "acme", "name": "Acme Corp", "config": {"limits": {"requests_per_second": 500, "burst": 1000, "max_concurrent": 50}}})))]
pub struct CreateTenantRequest {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,47}$"))]
    pub id: String,
    /// Display name (default: the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// The shared keyspace to live in (default `default`). Not with
    /// `dedicated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    /// Give the tenant a keyspace of its own, named after it.
    #[serde(default)]
    pub dedicated: bool,
    /// Dedicated only: how many shards, taken from the unassigned shards
    /// registered for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Dedicated only: the key type of its keyspace.
    #[serde(default)]
    pub key_type: KeyType,
    #[serde(default)]
    pub config: TenantConfig,
}

/// `PATCH /v1/tenants/{id}`: fields to change; absent ones stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"config": {"limits": {"requests_per_second": 1000, "burst": 2000}}})))]
pub struct UpdateTenantRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    /// Replaces the whole config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<TenantConfig>,
}

/// A tenant as the API shows it (never its role password).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantInfo {
    pub id: String,
    pub name: String,
    pub keyspace: String,
    pub dedicated: bool,
    /// The shards its keyspace spans.
    pub shards: Vec<String>,
    /// The name of its login role, database and schema on every shard.
    pub pg_name: String,
    pub config: TenantConfig,
    pub state: TenantState,
    pub apps: usize,
    pub created_at: String,
}

/// `POST /v1/apps`: a client application of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "billing", "tenant": "default", "description": "Invoices service", "key_prefix": "acme:", "limits": {"requests_per_second": 100, "max_concurrent": 10}})))]
pub struct CreateAppRequest {
    /// The app's id, unique over all tenants.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))]
    pub name: String,
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Shard keys must start with this (else 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Limits tighter than the tenant's.
    #[serde(default)]
    pub limits: Limits,
}

/// `PATCH /v1/apps/{id}`: fields to change; absent ones stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"key_prefix": "", "limits": {"requests_per_second": 200}})))]
pub struct UpdateAppRequest {
    /// Display name (the id stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An empty string removes the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Replaces all the app's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// `POST /v1/apps/{id}/rotate`: a new token; the old one stays valid for
/// the grace period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"grace_seconds": 3600})))]
pub struct RotateTokenRequest {
    /// Seconds the old token keeps working (default 900, at most 604800;
    /// 0 ends it now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 604800))]
    pub grace_seconds: Option<u64>,
}

/// A client application as the API shows it (never its token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppInfo {
    pub id: String,
    pub name: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// When the token replaced by the last rotation stops working
    /// (RFC 3339), if it still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_token_expires_at: Option<String>,
    pub created_at: String,
}

/// The answer to creating an app or rotating its token: the token is
/// shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAppResponse {
    #[serde(flatten)]
    pub app: AppInfo,
    pub token: String,
}

/// `POST /v1/routers/heartbeat`: a router says it is alive and which
/// catalog version it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouterHeartbeat {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub id: String,
    /// Where clients reach it (informational).
    pub address: String,
    pub applied_version: u64,
}

/// A manager: its id and the URL others reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManagerRef {
    pub id: String,
    pub url: String,
}

/// A header a manager sets on a 503 it answers without having run the
/// request anywhere, because it knows no leader to pass it to (an
/// election is under way, or it cannot reach the store). A client that
/// knows several managers may send the same request to the next one.
pub const NO_LEADER_HEADER: &str = "x-shardline-no-leader";

/// `GET /v1/leader`: which manager leads (runs the health checks,
/// failovers, the reconciler and resharding jobs), as the asked manager
/// knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderResponse {
    /// `None` while no leader is known (an election is under way).
    pub leader: Option<ManagerRef>,
    /// Counts leaderships: a new leader has a higher term.
    pub term: u64,
    /// The manager that answered.
    pub this_manager: ManagerRef,
    /// Whether the manager that answered leads.
    pub is_leader: bool,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    /// The router counts as gone if it does not heartbeat within this.
    pub lease_ms: u64,
    /// Routers alive now (this one included): each enforces this share
    /// of every rate limit.
    #[serde(default = "one")]
    pub live_routers: u32,
    /// Whether the lease was renewed by this heartbeat. Not while the
    /// router is behind a catalog version the manager waits for (a
    /// cutover's frozen ranges, a keyspace marked as holding code): such
    /// a router's lease runs out, and from then on it counts itself cut
    /// off (reads check the resharding fence, every session is reset).
    #[serde(default = "yes")]
    pub renewed: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A live router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouterInfo {
    pub id: String,
    pub address: String,
    pub applied_version: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusResponse {
    pub catalog_version: u64,
    pub keyspaces: Vec<KeyspaceInfo>,
    pub shards: Vec<ShardInfo>,
    pub routers: Vec<RouterInfo>,
    #[serde(default)]
    pub tenants: Vec<TenantInfo>,
}

/// `POST /v1/reshard`: starts an online resharding job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"keyspace": "default", "kind": "split", "source": "s0", "targets": ["s9"]})))]
pub struct ReshardRequest {
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    pub kind: ReshardKind,
    /// Split and move: the shard whose range moves. Merge: the shard
    /// merged away (its range joins the adjacent range of the target).
    pub source: String,
    /// Split: the new shards taking the upper parts (the source keeps the
    /// lowest part). Move: the one shard receiving the range. Merge: the
    /// shard absorbing the source's range.
    pub targets: Vec<String>,
    /// Split only: split points as 16 hex digits (default: even).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<String>,
    /// Tenant move: the tenant (then `source` is ignored). With `targets`,
    /// it moves to a new dedicated keyspace over those shards; with
    /// `to_keyspace` instead, back to that shared keyspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_keyspace: Option<String>,
}

fn default_keyspace() -> String {
    crate::router::DEFAULT_KEYSPACE.to_string()
}

/// One range of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MoveInfo {
    pub range: String,
    pub from: String,
    pub to: String,
}

/// A resharding job as the API shows it, with live progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobInfo {
    pub id: String,
    pub kind: ReshardKind,
    pub keyspace: String,
    /// Tenant moves: the tenant and the keyspace it moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_keyspace: Option<String>,
    pub moves: Vec<MoveInfo>,
    pub phase: ReshardPhase,
    /// Rows copied so far / estimated to copy (this manager's view).
    pub rows_copied: u64,
    pub rows_estimated: u64,
    /// Captured changes not yet applied to the targets.
    pub changes_behind: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutover_pause_ms: Option<u64>,
    /// How long the copy phase took, once it ended (its last run, after
    /// a restart); `rows_copied` over it is the copy's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_ms: Option<u64>,
    pub created_at: String,
}
