//! Who may talk to whom, and what a tenant namespace may use.
//!
//! In shardline's namespace everything is denied, then each component
//! is let in from, and out to, exactly its peers: tenants' namespaces
//! reach the router's two ports and nothing else; only routers and
//! managers reach the shards' port; only managers (and etcd's own
//! members) reach etcd. In each tenant namespace, pods take traffic from
//! their own namespace only and may leave it for DNS and the router
//! only (NetworkPolicies add up: an operator opens more egress with a
//! policy of their own).

use std::collections::BTreeMap;

use super::k8s::*;
use super::workloads::{
    meta, selector_labels, ETCD, ETCD_CLIENT, ETCD_METRICS, ETCD_PEER, MANAGER, MANAGER_HTTP,
    ROUTER, ROUTER_HTTP, ROUTER_PG,
};
use super::{Docs, KubernetesArgs};

/// The label every namespace carries with its own name (Kubernetes 1.22+).
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

fn pods(component: &str) -> Peer {
    Peer {
        pod_selector: Some(LabelSelector {
            match_labels: selector_labels(component),
        }),
        ..Peer::default()
    }
}

fn namespace(ns: &str) -> Peer {
    Peer {
        namespace_selector: Some(LabelSelector {
            match_labels: BTreeMap::from([(NAMESPACE_NAME.into(), ns.into())]),
        }),
        ..Peer::default()
    }
}

/// Pods of `component` in namespace `ns`.
fn pods_in(ns: &str, component: &str) -> Peer {
    Peer {
        pod_selector: pods(component).pod_selector,
        ..namespace(ns)
    }
}

fn tcp(ports: &[u16]) -> Vec<PolicyPort> {
    ports
        .iter()
        .map(|&port| PolicyPort {
            protocol: "TCP",
            port,
        })
        .collect()
}

fn from(peers: Vec<Peer>, ports: &[u16]) -> PolicyRule {
    PolicyRule {
        from: Some(peers),
        to: None,
        ports: tcp(ports),
    }
}

fn to(peers: Vec<Peer>, ports: &[u16]) -> PolicyRule {
    PolicyRule {
        from: None,
        to: Some(peers),
        ports: tcp(ports),
    }
}

/// DNS: the cluster's resolver in kube-system, UDP and TCP 53.
fn dns() -> PolicyRule {
    PolicyRule {
        from: None,
        to: Some(vec![Peer {
            pod_selector: Some(LabelSelector {
                match_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            }),
            ..namespace("kube-system")
        }]),
        ports: ["UDP", "TCP"]
            .into_iter()
            .map(|protocol| PolicyPort { protocol, port: 53 })
            .collect(),
    }
}

fn shards(args: &KubernetesArgs) -> PolicyRule {
    let peers = args
        .shard_cidrs
        .iter()
        .map(|cidr| Peer {
            ip_block: Some(IpBlock { cidr: cidr.clone() }),
            ..Peer::default()
        })
        .collect();
    to(peers, &[args.shard_port])
}

fn policy(
    meta: Meta,
    select: LabelSelector,
    ingress: Vec<PolicyRule>,
    egress: Vec<PolicyRule>,
) -> Object<Spec<NetworkPolicySpec>> {
    Object {
        api_version: "networking.k8s.io/v1",
        kind: "NetworkPolicy",
        metadata: meta,
        body: Spec {
            spec: NetworkPolicySpec {
                pod_selector: select,
                policy_types: vec!["Ingress", "Egress"],
                ingress: Some(ingress),
                egress: Some(egress),
            },
        },
    }
}

fn component_policy(
    args: &KubernetesArgs,
    component: &str,
    ingress: Vec<PolicyRule>,
    egress: Vec<PolicyRule>,
) -> Object<Spec<NetworkPolicySpec>> {
    policy(
        meta(args, component, format!("shardline-{component}")),
        LabelSelector {
            match_labels: selector_labels(component),
        },
        ingress,
        egress,
    )
}

/// The policies of shardline's namespace.
pub fn policies(args: &KubernetesArgs, docs: &mut Docs) -> anyhow::Result<()> {
    let monitoring = || namespace(&args.monitoring_namespace);
    docs.push(&policy(
        meta(args, "network", "shardline-default-deny".into()),
        LabelSelector::default(),
        Vec::new(),
        Vec::new(),
    ))?;

    let mut router_in = Vec::new();
    if !args.tenant_namespaces.is_empty() {
        let tenants = args
            .tenant_namespaces
            .iter()
            .map(|t| namespace(t))
            .collect();
        router_in.push(from(tenants, &[ROUTER_HTTP, ROUTER_PG]));
    }
    router_in.push(from(vec![monitoring()], &[ROUTER_HTTP]));
    docs.push(&component_policy(
        args,
        ROUTER,
        router_in,
        vec![
            dns(),
            to(vec![pods(MANAGER)], &[MANAGER_HTTP]),
            shards(args),
        ],
    ))?;

    // Managers pass writes to the leader, so they reach each other.
    docs.push(&component_policy(
        args,
        MANAGER,
        vec![
            from(vec![pods(ROUTER), pods(MANAGER)], &[MANAGER_HTTP]),
            from(vec![monitoring()], &[MANAGER_HTTP]),
        ],
        vec![
            dns(),
            to(vec![pods(MANAGER)], &[MANAGER_HTTP]),
            to(vec![pods(ETCD)], &[ETCD_CLIENT]),
            shards(args),
        ],
    ))?;

    docs.push(&component_policy(
        args,
        ETCD,
        vec![
            from(vec![pods(MANAGER)], &[ETCD_CLIENT]),
            from(vec![pods(ETCD)], &[ETCD_CLIENT, ETCD_PEER]),
            // The kubelet's probes come from the node, which
            // NetworkPolicies do not govern; Prometheus needs a rule.
            from(vec![monitoring()], &[ETCD_METRICS]),
        ],
        vec![dns(), to(vec![pods(ETCD)], &[ETCD_CLIENT, ETCD_PEER])],
    ))
}

/// Per tenant namespace: isolation, a ResourceQuota and a LimitRange.
pub fn tenants(args: &KubernetesArgs, docs: &mut Docs) -> anyhow::Result<()> {
    let twice = |q: &str| -> String {
        // Limits may burst to twice the requests; a quantity with a
        // suffix keeps it (4 → 8, 8Gi → 16Gi, 1.5 → 3).
        let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = &q[digits.len()..];
        match digits.parse::<f64>() {
            Ok(n) => format!("{}{suffix}", n * 2.0),
            Err(_) => q.to_string(),
        }
    };
    for ns in &args.tenant_namespaces {
        let meta = |name: &str| Meta {
            name: name.to_string(),
            namespace: Some(ns.clone()),
            labels: BTreeMap::from([
                ("app.kubernetes.io/part-of".into(), "shardline".into()),
                ("app.kubernetes.io/component".into(), "tenant".into()),
                (
                    "app.kubernetes.io/managed-by".into(),
                    "shardline-cli".into(),
                ),
            ]),
            annotations: Map::new(),
        };
        docs.push(&policy(
            meta("shardline-tenant-isolation"),
            LabelSelector::default(),
            vec![PolicyRule {
                from: Some(vec![Peer {
                    pod_selector: Some(LabelSelector::default()),
                    ..Peer::default()
                }]),
                to: None,
                ports: Vec::new(),
            }],
            vec![
                dns(),
                PolicyRule {
                    from: None,
                    to: Some(vec![Peer {
                        pod_selector: Some(LabelSelector::default()),
                        ..Peer::default()
                    }]),
                    ports: Vec::new(),
                },
                to(
                    vec![pods_in(&args.namespace, ROUTER)],
                    &[ROUTER_HTTP, ROUTER_PG],
                ),
            ],
        ))?;
        docs.push(&Object {
            api_version: "v1",
            kind: "ResourceQuota",
            metadata: meta("shardline-tenant-quota"),
            body: Spec {
                spec: QuotaSpec {
                    hard: BTreeMap::from([
                        ("requests.cpu".into(), args.tenant_cpu.clone()),
                        ("requests.memory".into(), args.tenant_memory.clone()),
                        ("limits.cpu".into(), twice(&args.tenant_cpu)),
                        ("limits.memory".into(), twice(&args.tenant_memory)),
                        ("pods".into(), args.tenant_pods.to_string()),
                        ("services.loadbalancers".into(), "0".into()),
                        ("services.nodeports".into(), "0".into()),
                    ]),
                },
            },
        })?;
        // Containers that say nothing get small defaults (the quota
        // refuses pods without requests and limits otherwise); none may
        // ask for more than the whole namespace's requests.
        docs.push(&Object {
            api_version: "v1",
            kind: "LimitRange",
            metadata: meta("shardline-tenant-limits"),
            body: Spec {
                spec: LimitRangeSpec {
                    limits: vec![LimitItem {
                        kind: "Container",
                        default: BTreeMap::from([
                            ("cpu".into(), "500m".into()),
                            ("memory".into(), "512Mi".into()),
                        ]),
                        default_request: BTreeMap::from([
                            ("cpu".into(), "100m".into()),
                            ("memory".into(), "128Mi".into()),
                        ]),
                        max: BTreeMap::from([
                            ("cpu".into(), args.tenant_cpu.clone()),
                            ("memory".into(), args.tenant_memory.clone()),
                        ]),
                    }],
                },
            },
        })?;
    }
    Ok(())
}
