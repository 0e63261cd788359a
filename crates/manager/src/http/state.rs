//! What every handler module shares: the state, the result type, the
//! mapping of the service layer's errors to the wire, catalog views.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use shardline_api::manager::{KeyspaceInfo, MigrationInfo, RangeInfo};
use shardline_core::catalog::Keyspace;
use shardline_http::{ErrorResponse, TokenCheck};

use crate::error::ServiceError;
use crate::failover::Failovers;
use crate::health::HealthTable;
use crate::routers::RouterRegistry;
use crate::service::CatalogService;

/// What the handlers share.
pub struct AppState {
    pub leadership: Arc<crate::leader::Leadership>,
    pub service: Arc<CatalogService>,
    pub health: Arc<HealthTable>,
    pub failovers: Arc<Failovers>,
    pub routers: Arc<RouterRegistry>,
    /// With managers sharing a store: which routers hold leases.
    pub router_book: Option<Arc<crate::router_book::RouterBook>>,
    pub reshards: Arc<crate::reshard::Reshards>,
    pub admin: TokenCheck,
    pub router_auth: TokenCheck,
    pub metrics: shardline_metrics::Registry,
    pub catalog_version: shardline_metrics::GaugeVec,
    pub live_routers: shardline_metrics::GaugeVec,
    /// `manager_tenant_shards{tenant}`: shards of each tenant's keyspace.
    pub tenant_shards: shardline_metrics::GaugeVec,
    /// `manager_tenants`: tenants in the catalog.
    pub tenants: shardline_metrics::GaugeVec,
    pub max_watch_wait: Duration,
    pub connect_timeout: Duration,
}

/// The state as handlers take it.
pub(crate) type Shared = State<Arc<AppState>>;
/// What handlers answer.
pub(crate) type ApiResult<T> = Result<T, ErrorResponse>;

impl From<ServiceError> for ErrorResponse {
    fn from(e: ServiceError) -> Self {
        if matches!(e, ServiceError::Store(_)) {
            tracing::error!(error = %e, "catalog store");
        }
        ErrorResponse(e.to_api())
    }
}

/// A keyspace as the API shows it.
pub(crate) fn keyspace_info(ks: &Keyspace) -> KeyspaceInfo {
    KeyspaceInfo {
        name: ks.name.clone(),
        key_type: ks.key_type,
        map: ks
            .map
            .iter()
            .flat_map(|m| m.ranges())
            .map(|r| RangeInfo {
                range: r.range.to_string(),
                shard: r.shard.clone(),
            })
            .collect(),
        migrations: ks
            .migrations
            .iter()
            .map(|m| MigrationInfo {
                name: m.name.clone(),
                checksum: m.checksum.clone(),
            })
            .collect(),
        tables: ks.tables.clone(),
        frozen: ks.frozen.iter().map(|r| r.to_string()).collect(),
    }
}
