//! The router's Prometheus metrics.

use shardline_metrics::{CounterVec, GaugeVec, HistogramVec, Registry, LATENCY_BUCKETS};

/// Every metric the router exports.
#[derive(Clone)]
pub struct RouterMetrics {
    pub registry: Registry,
    /// `router_requests_total{endpoint,keyspace,shard,outcome}`.
    pub requests: CounterVec,
    /// `router_request_duration_seconds{endpoint,keyspace,shard}`.
    pub duration: HistogramVec,
    /// `router_active_connections{shard,state}`: pooled connections in use
    /// or idle.
    pub connections: GaugeVec,
    /// `router_catalog_version`.
    pub catalog_version: GaugeVec,
    /// `router_in_flight_requests`.
    pub in_flight: GaugeVec,
}

impl RouterMetrics {
    /// Registers the metrics in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            requests: registry.counter(
                "router_requests_total",
                "Requests answered, by endpoint, keyspace, shard and outcome (ok or error code).",
                &["endpoint", "keyspace", "shard", "outcome"],
            ),
            duration: registry.histogram(
                "router_request_duration_seconds",
                "Time from request to answer, by endpoint, keyspace and shard.",
                &["endpoint", "keyspace", "shard"],
                LATENCY_BUCKETS,
            ),
            connections: registry.gauge(
                "router_active_connections",
                "Pooled PostgreSQL connections per shard, in use or idle.",
                &["shard", "state"],
            ),
            catalog_version: registry.gauge(
                "router_catalog_version",
                "Version of the catalog this router routes by.",
                &[],
            ),
            in_flight: registry.gauge(
                "router_in_flight_requests",
                "Requests being served now.",
                &[],
            ),
            registry,
        }
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}
