//! The router's (data plane's) API, typed, with retries.

use std::time::Duration;

use shardline_api::router::{
    ExecuteRequest, ExecuteResponse, RouteResponse, TransactionRequest, TransactionResponse,
};

use crate::encode::query_value;
use crate::error::ClientError;
use crate::http::HttpClient;
use crate::retry::RetryPolicy;

/// A client of a router (or a load balancer over several), with a client
/// application's token. Retryable failures are retried per its
/// [`RetryPolicy`]: the router answers retryable only when the statement
/// did not take effect (rate limits, a shard switching over, a
/// serialization failure rolled back), and a connect failure means the
/// request was never sent, so retrying never runs a write twice.
#[derive(Debug, Clone)]
pub struct RouterClient {
    http: HttpClient,
    retry: RetryPolicy,
}

impl RouterClient {
    /// A client of the router at `base_url` (`http://host:port` or
    /// `https://host:port`), with the default [`RetryPolicy`].
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
        Self {
            http,
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = self.http.with_timeout(timeout);
        self
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The underlying HTTP client, for endpoints without a method here.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// `POST /v1/execute`: one statement on the shard owning the key.
    pub async fn execute(&self, req: &ExecuteRequest) -> Result<ExecuteResponse, ClientError> {
        self.retry.run(|| self.http.post("/v1/execute", req)).await
    }

    /// `POST /v1/transaction`: statements run all-or-nothing on one shard.
    pub async fn transaction(
        &self,
        req: &TransactionRequest,
    ) -> Result<TransactionResponse, ClientError> {
        self.retry
            .run(|| self.http.post("/v1/transaction", req))
            .await
    }

    /// `GET /v1/route?keyspace=..&key=..`: where a key is routed.
    pub async fn route(&self, keyspace: &str, key: &str) -> Result<RouteResponse, ClientError> {
        let path = format!(
            "/v1/route?keyspace={}&key={}",
            query_value(keyspace),
            query_value(key)
        );
        self.retry.run(|| self.http.get(&path)).await
    }
}
