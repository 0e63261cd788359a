//! The Prometheus Operator's objects: a ServiceMonitor that scrapes the
//! routers, the managers and etcd, and a PrometheusRule that carries the
//! groups of the project's rule file (`deploy/prometheus/shardline-rules.yml`,
//! tested with `promtool test rules`), or none when there is no file.

use std::collections::BTreeMap;

use super::k8s::*;
use super::workloads::meta;
use super::{Docs, KubernetesArgs};

pub fn objects(
    args: &KubernetesArgs,
    rules: Option<serde_yaml::Value>,
    docs: &mut Docs,
) -> anyhow::Result<()> {
    // The router's and the manager's `/metrics` are on their `http`
    // port, etcd's on `metrics`; a Service without the port is skipped.
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
                endpoints: ["http", "metrics"]
                    .into_iter()
                    .map(|port| MonitorEndpoint {
                        port,
                        path: "/metrics",
                        interval: "15s",
                    })
                    .collect(),
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
