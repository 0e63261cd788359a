//! Data-plane API bodies (the router).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{checks, ApiError};

/// The shared keyspace `shardline dev` creates and tenants join unless
/// told otherwise.
pub const DEFAULT_KEYSPACE: &str = "default";

/// Where a read may be served from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The shard's primary (reads your writes).
    #[default]
    Strong,
    /// A replica within the lag bound, else the primary.
    Eventual,
}

/// A shard key: a string (text and uuid keyspaces) or an integer (bigint
/// keyspaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ShardKeyValue {
    Text(String),
    Int(i64),
}

impl std::fmt::Display for ShardKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardKeyValue::Text(s) => f.write_str(s),
            ShardKeyValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// `POST /v1/execute`: one statement on the shard owning `shard_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"shard_key": "user:42", "sql": "SELECT $1::int8 AS id, 'alice' AS name", "params": [42], "consistency": "strong"})))]
pub struct ExecuteRequest {
    /// Default: the app's tenant's keyspace (the only one it may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    pub shard_key: ShardKeyValue,
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
    #[serde(default)]
    pub consistency: Consistency,
}

impl ExecuteRequest {
    /// Refuses what PostgreSQL's protocol cannot carry (see
    /// [`checks`]): a NUL in `sql`, more than 65,535 `params`.
    pub fn check(&self) -> Result<(), ApiError> {
        checks::no_nul("sql", &self.sql)?;
        checks::param_count("params", self.params.len())
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Column {
    pub name: String,
    /// PostgreSQL's type name (`int8`, `text`, `numeric`, ...).
    #[serde(rename = "type")]
    pub type_name: String,
}

/// The result of one statement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatementResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    /// Rows returned, or changed by INSERT/UPDATE/DELETE.
    pub rows_affected: u64,
}

/// The answer to `POST /v1/execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecuteResponse {
    pub shard: String,
    #[serde(flatten)]
    pub result: StatementResult,
}

/// One statement of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
}

/// `POST /v1/transaction`: statements run all-or-nothing on one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"shard_key": "user:42", "statements": [{"sql": "SELECT 1 AS one"}, {"sql": "SELECT $1::text AS t", "params": ["x"]}]})))]
pub struct TransactionRequest {
    /// Default: the app's tenant's keyspace (the only one it may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    pub shard_key: ShardKeyValue,
    pub statements: Vec<Statement>,
    /// `eventual`: a transaction of reads only may run on a replica.
    #[serde(default)]
    pub consistency: Consistency,
}

impl TransactionRequest {
    /// Refuses what PostgreSQL's protocol cannot carry in any statement
    /// (see [`checks`]), naming the statement (also in the error's
    /// `statement_index`).
    pub fn check(&self) -> Result<(), ApiError> {
        for (i, s) in self.statements.iter().enumerate() {
            checks::no_nul(&format!("statements[{i}].sql"), &s.sql)
                .and_then(|()| {
                    checks::param_count(&format!("statements[{i}].params"), s.params.len())
                })
                .map_err(|mut e| {
                    e.statement_index = Some(i);
                    e
                })?;
        }
        Ok(())
    }
}

/// The answer to `POST /v1/transaction`: one result per statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TransactionResponse {
    pub shard: String,
    pub results: Vec<StatementResult>,
}

/// `GET /v1/route?keyspace=..&key=..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct RouteQuery {
    /// Default: the app's tenant's keyspace (the only one it may use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyspace: Option<String>,
    /// The shard key, as text (an integer key by its decimal text).
    #[cfg_attr(feature = "openapi", param(example = "user:42"))]
    pub key: String,
}

/// Where a key is routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteResponse {
    pub keyspace: String,
    pub shard: String,
    /// The owning range, Vitess-style (`40-80`).
    pub range: String,
    /// The routing hash, 16 hex digits.
    pub hash: String,
    pub catalog_version: u64,
}
