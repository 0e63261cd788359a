//! The Prometheus Operator's objects: a ServiceMonitor that scrapes the
//! routers, the managers and etcd, and a PrometheusRule that carries the
//! groups of the project's rule file (`deploy/prometheus/shardline-rules.yml`,
//! tested with `promtool test rules`), or none when there is no file.

use std::collections::BTreeMap;

use super::https::{api_port, router_host};
use super::k8s::*;
use super::workloads::meta;
use super::{Docs, KubernetesArgs};

pub fn objects(
    args: &KubernetesArgs,
    rules: Option<serde_yaml::Value>,
    docs: &mut Docs,
) -> anyhow::Result<()> {
    // The router's and the manager's `/metrics` are on their API port
    // (`https`, or `http` with --no-http-tls), etcd's on `metrics` (plain
    // HTTP); a Service without the port is skipped. One certificate
    // serves routers and managers, so one server name checks both.
    let api = match args.http_tls() {
        Some(secret) => MonitorEndpoint {
            port: api_port(args),
            scheme: "https",
            path: "/metrics",
            interval: "15s",
            tls_config: Some(MonitorTls {
                ca: MonitorCa {
                    secret: SecretKey {
                        name: secret.to_string(),
                        key: "ca.crt",
                    },
                },
                server_name: router_host(args),
            }),
        },
        None => plain(api_port(args)),
    };
    docs.push(&Object {
        api_version: "monitoring.coreos.com/v1",
        kind: "ServiceMonitor",
        metadata: meta(args, "monitoring", "shardline".into()),
        body: Spec {
            spec: ServiceMonitorSpec {
                selector: LabelSelector {
                    match_labels: BTreeMap::from([(
                        "app.kubernetes.io/part-of".into(),
                        "shardline".into(),
                    )]),
                },
                namespace_selector: MatchNames {
                    match_names: vec![args.namespace.clone()],
                },
                endpoints: vec![api, plain("metrics")],
            },
        },
    })?;
    docs.push(&Object {
        api_version: "monitoring.coreos.com/v1",
        kind: "PrometheusRule",
        metadata: meta(args, "monitoring", "shardline".into()),
        body: Spec {
            spec: RuleSpec {
                groups: rules.unwrap_or_else(|| serde_yaml::Value::Sequence(Vec::new())),
            },
        },
    })
}

/// `/metrics` in plain HTTP on the port named `port`.
fn plain(port: &'static str) -> MonitorEndpoint {
    MonitorEndpoint {
        port,
        scheme: "http",
        path: "/metrics",
        interval: "15s",
        tls_config: None,
    }
}
