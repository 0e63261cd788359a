//! etcd, where the managers keep the catalog: a StatefulSet with a
//! volume per member, TLS with client certificates between members and
//! from the managers, and health and metrics over plain HTTP on a port
//! of their own.

use std::collections::BTreeMap;

use super::k8s::*;
use super::workloads::{
    container_security, disruption_budget, headless_service, labels, meta, mount, name,
    pod_name_env, port, probe, resources, secret_volume, selector_labels, service_account,
    service_port, skips, template, DIGEST_SKIP, ETCD, ETCD_CLIENT, ETCD_METRICS, ETCD_PEER,
};
use super::{Docs, KubernetesArgs};

/// Where etcd keeps its certificate and its data.
const ETCD_TLS_DIR: &str = "/etc/etcd/tls";
const ETCD_DATA_DIR: &str = "/var/lib/etcd";

/// etcd's members' host names under its headless Service.
pub fn etcd_hosts(args: &KubernetesArgs) -> Vec<(String, String)> {
    (0..args.etcd_members)
        .map(|i| {
            let member = format!("{}-{i}", name(ETCD));
            let host = format!("{member}.{}.{}.svc", name(ETCD), args.namespace);
            (member, host)
        })
        .collect()
}

/// etcd's command line: TLS with client certificates on both the client
/// and the peer port; health and metrics over plain HTTP on their own
/// port (probes and Prometheus carry no certificate).
fn etcd_args(args: &KubernetesArgs) -> Vec<String> {
    let hosts = etcd_hosts(args);
    let cluster = hosts
        .iter()
        .map(|(member, host)| format!("{member}=https://{host}:{ETCD_PEER}"))
        .collect::<Vec<_>>()
        .join(",");
    let me = format!("$(POD_NAME).{}.{}.svc", name(ETCD), args.namespace);
    let tls = |f: &str| format!("{ETCD_TLS_DIR}/{f}");
    vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={ETCD_DATA_DIR}/data"),
        format!("--listen-client-urls=https://0.0.0.0:{ETCD_CLIENT}"),
        format!("--advertise-client-urls=https://{me}:{ETCD_CLIENT}"),
        format!("--listen-peer-urls=https://0.0.0.0:{ETCD_PEER}"),
        format!("--initial-advertise-peer-urls=https://{me}:{ETCD_PEER}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{ETCD_METRICS}"),
        format!("--initial-cluster={cluster}"),
        "--initial-cluster-state=new".into(),
        format!("--initial-cluster-token=shardline-{}", args.namespace),
        format!("--cert-file={}", tls("tls.crt")),
        format!("--key-file={}", tls("tls.key")),
        format!("--trusted-ca-file={}", tls("ca.crt")),
        "--client-cert-auth=true".into(),
        format!("--peer-cert-file={}", tls("tls.crt")),
        format!("--peer-key-file={}", tls("tls.key")),
        format!("--peer-trusted-ca-file={}", tls("ca.crt")),
        "--peer-client-cert-auth=true".into(),
        "--auto-tls=false".into(),
        "--peer-auto-tls=false".into(),
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=1h".into(),
    ]
}

/// etcd: a StatefulSet with a volume per member, its headless Service
/// (members find each other by name before they are ready), a budget
/// that keeps a majority up.
pub fn etcd(args: &KubernetesArgs, docs: &mut Docs) -> anyhow::Result<()> {
    docs.push(&service_account(args, ETCD))?;
    // Liveness asks the member alone (`serializable`), so losing quorum
    // does not restart every member; readiness asks for the cluster's
    // health, so a member without quorum takes no manager traffic.
    let container = Container {
        name: ETCD,
        image: args.etcd_image.clone(),
        image_pull_policy: "Always",
        // All in `command`, as kubeadm writes etcd's: the flags then read
        // as one command line, which is also where checkov's CIS checks
        // of etcd's TLS flags look.
        command: std::iter::once("etcd".to_string())
            .chain(etcd_args(args))
            .collect(),
        args: Vec::new(),
        env: vec![pod_name_env()],
        ports: vec![
            port("client", ETCD_CLIENT),
            port("peer", ETCD_PEER),
            port("metrics", ETCD_METRICS),
        ],
        resources: resources(&args.etcd_cpu, &args.etcd_memory),
        startup_probe: probe("/health?serializable=true", "metrics", "HTTP", 5, 60),
        liveness_probe: probe(
            "/health?exclude=NOSPACE&serializable=true",
            "metrics",
            "HTTP",
            10,
            6,
        ),
        readiness_probe: probe("/health", "metrics", "HTTP", 5, 3),
        lifecycle: None,
        security_context: container_security(),
        volume_mounts: vec![
            VolumeMount {
                name: "data",
                mount_path: ETCD_DATA_DIR.into(),
                read_only: false,
            },
            mount("tls", ETCD_TLS_DIR),
        ],
    };
    let volumes = vec![secret_volume("tls", &args.etcd_tls_secret, false)];
    let mut metadata = meta(args, ETCD, name(ETCD));
    metadata.annotations = skips(&[DIGEST_SKIP]);
    let claim = Object {
        api_version: "v1",
        kind: "PersistentVolumeClaim",
        metadata: Meta {
            name: "data".into(),
            namespace: None,
            labels: labels(ETCD),
            annotations: Map::new(),
        },
        body: Spec {
            spec: ClaimSpec {
                access_modes: vec!["ReadWriteOnce"],
                storage_class_name: args.etcd_storage_class.clone(),
                resources: ClaimResources {
                    requests: BTreeMap::from([("storage".into(), args.etcd_storage.clone())]),
                },
            },
        },
    };
    docs.push(&Object {
        api_version: "apps/v1",
        kind: "StatefulSet",
        metadata,
        body: Spec {
            spec: StatefulSetSpec {
                replicas: args.etcd_members,
                service_name: name(ETCD),
                // Every member must start for the first to find a quorum.
                pod_management_policy: "Parallel",
                selector: LabelSelector {
                    match_labels: selector_labels(ETCD),
                },
                template: template(ETCD, Map::new(), 30, container, volumes),
                volume_claim_templates: vec![claim],
            },
        },
    })?;
    docs.push(&headless_service(
        args,
        ETCD,
        true,
        vec![
            service_port("client", ETCD_CLIENT),
            service_port("peer", ETCD_PEER),
            service_port("metrics", ETCD_METRICS),
        ],
    ))?;
    docs.push(&disruption_budget(args, ETCD))
}
