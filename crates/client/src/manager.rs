//! The manager's (control plane's) API, typed.

use std::time::Duration;

use serde::de::IgnoredAny;
use shardline_api::manager::{
    AddReplicaRequest, AppInfo, ApplyMigrationRequest, CreateAppRequest, CreateAppResponse,
    CreateKeyspaceRequest, CreateTenantRequest, FailoverRequest, FailoverResult, HealthSnapshot,
    HeartbeatResponse, InitialMapRequest, JobInfo, KeyspaceInfo, LeaderResponse, MigrationInfo,
    MigrationResult, RegisterShardRequest, ReshardRequest, RotateTokenRequest, RouterHeartbeat,
    RouterInfo, ShardInfo, StatusResponse, TableSpec, TenantInfo, UpdateAppRequest,
    UpdateTenantRequest,
};
use shardline_core::Catalog;

use crate::encode::{path_segment, query_value};
use crate::error::ClientError;
use crate::http::HttpClient;

/// A client of one manager. Built with the admin token for the admin
/// endpoints, or a router token for the catalog watch and heartbeats.
/// Requests are not retried: admin verbs report failures to a person, and
/// a router's watch loop has its own cadence.
#[derive(Debug, Clone)]
pub struct ManagerClient {
    http: HttpClient,
}

impl ManagerClient {
    /// A client of the manager at `base_url` (`http://host:port` or
    /// `https://host:port`; several comma-separated).
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Ok(Self::from_http(HttpClient::new(base_url, token)?))
    }

    /// [`new`](Self::new), trusting the CAs of the PEM file `ca_file` for
    /// `https://` (else the system's).
    pub fn with_ca_file(
        base_url: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        Ok(Self::from_http(HttpClient::with_ca_file(
            base_url, token, ca_file,
        )?))
    }

    /// Wraps an already configured [`HttpClient`].
    pub fn from_http(http: HttpClient) -> Self {
        Self { http }
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self::from_http(self.http.with_timeout(timeout))
    }

    /// The underlying HTTP client, for endpoints without a method here.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.http.get("/v1/status").await
    }

    /// `GET /v1/leader`: which manager leads, as this one knows it.
    pub async fn leader(&self) -> Result<LeaderResponse, ClientError> {
        self.http.get("/v1/leader").await
    }

    /// `POST /v1/keyspaces`.
    pub async fn create_keyspace(
        &self,
        req: &CreateKeyspaceRequest,
    ) -> Result<KeyspaceInfo, ClientError> {
        self.http.post("/v1/keyspaces", req).await
    }

    /// `GET /v1/keyspaces`.
    pub async fn list_keyspaces(&self) -> Result<Vec<KeyspaceInfo>, ClientError> {
        self.http.get("/v1/keyspaces").await
    }

    /// `GET /v1/keyspaces/{name}`.
    pub async fn get_keyspace(&self, name: &str) -> Result<KeyspaceInfo, ClientError> {
        self.http
            .get(&format!("/v1/keyspaces/{}", path_segment(name)))
            .await
    }

    /// `PUT /v1/keyspaces/{name}/map`: the first map of a keyspace.
    pub async fn set_initial_map(
        &self,
        name: &str,
        req: &InitialMapRequest,
    ) -> Result<KeyspaceInfo, ClientError> {
        self.http
            .put(&format!("/v1/keyspaces/{}/map", path_segment(name)), req)
            .await
    }

    /// `POST /v1/keyspaces/{name}/migrations`.
    pub async fn apply_migration(
        &self,
        keyspace: &str,
        req: &ApplyMigrationRequest,
    ) -> Result<MigrationResult, ClientError> {
        self.http
            .post(
                &format!("/v1/keyspaces/{}/migrations", path_segment(keyspace)),
                req,
            )
            .await
    }

    /// `GET /v1/keyspaces/{name}/migrations`.
    pub async fn list_migrations(&self, keyspace: &str) -> Result<Vec<MigrationInfo>, ClientError> {
        self.http
            .get(&format!(
                "/v1/keyspaces/{}/migrations",
                path_segment(keyspace)
            ))
            .await
    }

    /// `PUT /v1/keyspaces/{name}/tables/{table}`: records the column
    /// holding each row's shard key (what resharding moves rows by).
    pub async fn set_table(
        &self,
        keyspace: &str,
        table: &str,
        spec: &TableSpec,
    ) -> Result<KeyspaceInfo, ClientError> {
        self.http
            .put(
                &format!(
                    "/v1/keyspaces/{}/tables/{}",
                    path_segment(keyspace),
                    path_segment(table)
                ),
                spec,
            )
            .await
    }

    /// `POST /v1/reshard`: starts an online resharding job; it runs in
    /// the manager, and [`ManagerClient::get_job`] follows it.
    pub async fn reshard(&self, req: &ReshardRequest) -> Result<JobInfo, ClientError> {
        self.http.post("/v1/reshard", req).await
    }

    /// `GET /v1/reshard`: every resharding job, finished ones included.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>, ClientError> {
        self.http.get("/v1/reshard").await
    }

    /// `GET /v1/reshard/{id}`: one job with its live progress.
    pub async fn get_job(&self, id: &str) -> Result<JobInfo, ClientError> {
        self.http
            .get(&format!("/v1/reshard/{}", path_segment(id)))
            .await
    }

    /// `POST /v1/reshard/{id}/cancel`: cancels a job before its cutover
    /// (409 after it).
    pub async fn cancel_job(&self, id: &str) -> Result<JobInfo, ClientError> {
        self.http
            .post(
                &format!("/v1/reshard/{}/cancel", path_segment(id)),
                &serde_json::json!({}),
            )
            .await
    }

    /// `POST /v1/shards`.
    pub async fn register_shard(
        &self,
        req: &RegisterShardRequest,
    ) -> Result<ShardInfo, ClientError> {
        self.http.post("/v1/shards", req).await
    }

    /// `GET /v1/shards`.
    pub async fn list_shards(&self) -> Result<Vec<ShardInfo>, ClientError> {
        self.http.get("/v1/shards").await
    }

    /// `GET /v1/shards/{id}`.
    pub async fn get_shard(&self, id: &str) -> Result<ShardInfo, ClientError> {
        self.http
            .get(&format!("/v1/shards/{}", path_segment(id)))
            .await
    }

    /// `DELETE /v1/shards/{id}`. Any 2xx body is accepted and ignored.
    pub async fn delete_shard(&self, id: &str) -> Result<(), ClientError> {
        self.http
            .delete::<IgnoredAny>(&format!("/v1/shards/{}", path_segment(id)))
            .await
            .map(|_| ())
    }

    /// `POST /v1/shards/{id}/replicas`: registers a running streaming
    /// replica of the shard's primary; the answer shows it with its new
    /// instance id.
    pub async fn add_replica(
        &self,
        shard: &str,
        req: &AddReplicaRequest,
    ) -> Result<ShardInfo, ClientError> {
        self.http
            .post(&format!("/v1/shards/{}/replicas", path_segment(shard)), req)
            .await
    }

    /// `POST /v1/shards/{id}/failover`: a planned switchover to `req.to`
    /// (or the most caught-up healthy replica). It returns once the new
    /// primary is published, so the client's timeout must cover the
    /// drain; the CLI raises it.
    pub async fn failover(
        &self,
        shard: &str,
        req: &FailoverRequest,
    ) -> Result<FailoverResult, ClientError> {
        self.http
            .post(&format!("/v1/shards/{}/failover", path_segment(shard)), req)
            .await
    }

    /// `GET /v1/health` (router token): the last check of every instance
    /// of every shard.
    pub async fn health(&self) -> Result<HealthSnapshot, ClientError> {
        self.http.get("/v1/health").await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(
        &self,
        req: &CreateTenantRequest,
    ) -> Result<TenantInfo, ClientError> {
        self.http.post("/v1/tenants", req).await
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self) -> Result<Vec<TenantInfo>, ClientError> {
        self.http.get("/v1/tenants").await
    }

    /// `GET /v1/tenants/{id}`.
    pub async fn get_tenant(&self, id: &str) -> Result<TenantInfo, ClientError> {
        self.http
            .get(&format!("/v1/tenants/{}", path_segment(id)))
            .await
    }

    /// `PATCH /v1/tenants/{id}`: a given `config` replaces the whole
    /// config, so callers changing one limit send the current config with
    /// that limit changed.
    pub async fn update_tenant(
        &self,
        id: &str,
        req: &UpdateTenantRequest,
    ) -> Result<TenantInfo, ClientError> {
        self.http
            .patch(&format!("/v1/tenants/{}", path_segment(id)), req)
            .await
    }

    /// `DELETE /v1/tenants/{id}`, with `?drop_data=true` when `drop_data`:
    /// without it the manager refuses a tenant that may have data. Any 2xx
    /// body is accepted and ignored.
    pub async fn delete_tenant(&self, id: &str, drop_data: bool) -> Result<(), ClientError> {
        let mut path = format!("/v1/tenants/{}", path_segment(id));
        if drop_data {
            path.push_str("?drop_data=true");
        }
        self.http.delete::<IgnoredAny>(&path).await.map(|_| ())
    }

    /// `POST /v1/apps`: the answer carries the app's token, shown this once.
    pub async fn create_app(
        &self,
        req: &CreateAppRequest,
    ) -> Result<CreateAppResponse, ClientError> {
        self.http.post("/v1/apps", req).await
    }

    /// `GET /v1/apps`, or `GET /v1/apps?tenant=..` for one tenant's apps.
    pub async fn list_apps(&self, tenant: Option<&str>) -> Result<Vec<AppInfo>, ClientError> {
        match tenant {
            Some(t) => {
                self.http
                    .get(&format!("/v1/apps?tenant={}", query_value(t)))
                    .await
            }
            None => self.http.get("/v1/apps").await,
        }
    }

    /// `GET /v1/apps/{id}`.
    pub async fn get_app(&self, id: &str) -> Result<AppInfo, ClientError> {
        self.http
            .get(&format!("/v1/apps/{}", path_segment(id)))
            .await
    }

    /// `PATCH /v1/apps/{id}`: a given `limits` replaces all the app's
    /// limits.
    pub async fn update_app(
        &self,
        id: &str,
        req: &UpdateAppRequest,
    ) -> Result<AppInfo, ClientError> {
        self.http
            .patch(&format!("/v1/apps/{}", path_segment(id)), req)
            .await
    }

    /// `POST /v1/apps/{id}/rotate`: a new token, shown this once; the old
    /// one keeps working until `app.previous_token_expires_at`.
    pub async fn rotate_app_token(
        &self,
        id: &str,
        req: &RotateTokenRequest,
    ) -> Result<CreateAppResponse, ClientError> {
        self.http
            .post(&format!("/v1/apps/{}/rotate", path_segment(id)), req)
            .await
    }

    /// `DELETE /v1/apps/{id}`. Any 2xx body is accepted and ignored.
    pub async fn delete_app(&self, id: &str) -> Result<(), ClientError> {
        self.http
            .delete::<IgnoredAny>(&format!("/v1/apps/{}", path_segment(id)))
            .await
            .map(|_| ())
    }

    /// `GET /v1/catalog?after_version=N&wait_ms=M` (router token): the
    /// catalog once its version is above `after_version`, or `None` if the
    /// manager saw nothing newer within `wait` (304). The request's
    /// timeout is the client's timeout on top of `wait`, so a long poll
    /// held open for its full wait is not cut short.
    pub async fn watch_catalog(
        &self,
        after_version: u64,
        wait: Duration,
    ) -> Result<Option<Catalog>, ClientError> {
        let path = format!(
            "/v1/catalog?after_version={after_version}&wait_ms={}",
            wait.as_millis()
        );
        let timeout = self.http.timeout().saturating_add(wait);
        self.http.get_opt_with_timeout(&path, timeout).await
    }

    /// `POST /v1/routers/heartbeat` (router token).
    pub async fn heartbeat(&self, hb: &RouterHeartbeat) -> Result<HeartbeatResponse, ClientError> {
        self.http.post("/v1/routers/heartbeat", hb).await
    }

    /// `GET /v1/routers`: the live routers.
    pub async fn list_routers(&self) -> Result<Vec<RouterInfo>, ClientError> {
        self.http.get("/v1/routers").await
    }
}
