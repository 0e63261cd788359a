//! Routers and managers: their pods, Services, disruption budgets,
//! the routers' autoscaler, and the configuration files the pods read.
//!
//! The containers run exactly what `shardline router` and `shardline
//! manager` accept (checked by parsing them with the CLI's own flags in
//! `tests.rs`); the configuration files are built from typed values and
//! parsed back by the router's and the manager's config readers there.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::etcd::etcd_hosts;
use super::https::{
    api_port, api_probe_scheme, http_tls_files, http_tls_mount, http_tls_volume, url_scheme,
};
use super::k8s::*;
use super::{Docs, KubernetesArgs};

/// Port of the router's HTTP API (probes and `/metrics` too).
pub const ROUTER_HTTP: u16 = 8080;
/// Port of the router's PostgreSQL wire listener.
pub const ROUTER_PG: u16 = 6432;
/// Port of the manager's HTTP API.
pub const MANAGER_HTTP: u16 = 8081;
/// etcd's client, peer and plain-HTTP metrics/health ports.
pub const ETCD_CLIENT: u16 = 2379;
pub const ETCD_PEER: u16 = 2380;
pub const ETCD_METRICS: u16 = 2381;

/// How long the router lets in-flight HTTP and wire requests run after
/// SIGTERM (`DRAIN` in `shardline_router`, and the same in the manager).
pub const SERVER_DRAIN_SECS: u32 = 5;
/// The router keeps serving this long after Kubernetes marks its pod
/// terminating, before SIGTERM: endpoints and kube-proxy rules drop it
/// meanwhile, so no new connection is sent to a listener that has closed.
pub const ROUTER_PRE_STOP_SECS: u32 = 5;
/// After the drain, the router cancels its background tasks and the
/// manager gives its leadership key up (up to 2 s); this covers both.
const SHUTDOWN_SLACK_SECS: u32 = 5;

/// The user every container runs as (distroless's `nonroot`).
const UID: u32 = 65532;

/// Where the pods find their files.
const CONFIG_DIR: &str = "/etc/shardline/config";
const ROUTER_TLS_DIR: &str = "/etc/shardline/tls";
const ETCD_CLIENT_TLS_DIR: &str = "/etc/shardline/etcd-tls";
const SHARDS_DIR: &str = "/etc/shardline/shards";
/// Where the tokens Secret's keys are files (`SHARDLINE_*_TOKEN_FILE`).
const TOKENS_DIR: &str = "/etc/shardline/tokens";
const CACHE_DIR: &str = "/var/cache/shardline";

pub const ROUTER: &str = "router";
pub const MANAGER: &str = "manager";
pub const ETCD: &str = "etcd";

/// An object's name: `shardline-<component>`.
pub fn name(component: &str) -> String {
    format!("shardline-{component}")
}

/// The labels that pick one component's pods.
pub fn selector_labels(component: &str) -> Map {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "shardline".into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// The labels of every object of a component.
pub(super) fn labels(component: &str) -> Map {
    let mut l = selector_labels(component);
    l.insert("app.kubernetes.io/part-of".into(), "shardline".into());
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "shardline-cli".into(),
    );
    l
}

/// Metadata of an object of a component in shardline's namespace.
pub fn meta(args: &KubernetesArgs, component: &str, name: String) -> Meta {
    Meta {
        name,
        namespace: Some(args.namespace.clone()),
        labels: labels(component),
        annotations: Map::new(),
    }
}

/// checkov's skip annotations (`checkov.io/skipN: CHECK=why`): every
/// check these manifests do not pass, with the reason beside it.
pub(super) fn skips(list: &[(&str, &str)]) -> Map {
    list.iter()
        .enumerate()
        .map(|(i, (check, why))| {
            (
                format!("checkov.io/skip{}", i + 1),
                format!("{check}={why}"),
            )
        })
        .collect()
}

/// The skips every workload shares.
pub(super) const DIGEST_SKIP: (&str, &str) = (
    "CKV_K8S_43",
    "images are options of `shardline deploy kubernetes` (--image, --etcd-image); pass a digest there to pin one",
);

/// The namespace of routers, managers and etcd, held to the `restricted`
/// Pod Security Standard.
pub fn namespace(args: &KubernetesArgs) -> Object<Empty> {
    let mut labels = labels("namespace");
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    Object {
        api_version: "v1",
        kind: "Namespace",
        metadata: Meta {
            name: args.namespace.clone(),
            namespace: None,
            labels,
            annotations: Map::new(),
        },
        body: Empty {},
    }
}

/// A ServiceAccount with no API token: no shardline pod talks to the
/// Kubernetes API.
pub(super) fn service_account(args: &KubernetesArgs, component: &str) -> Object<AccountBody> {
    Object {
        api_version: "v1",
        kind: "ServiceAccount",
        metadata: meta(args, component, name(component)),
        body: AccountBody {
            automount_service_account_token: false,
        },
    }
}

/// The first bytes of the SHA-256 of a ConfigMap's data, as hex: a pod
/// template annotation, so a changed file rolls the pods.
pub(super) fn checksum(data: &Map) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn config_map(args: &KubernetesArgs, component: &str, data: Map) -> Object<Data> {
    Object {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: meta(args, component, name(component)),
        body: Data { data },
    }
}

pub(super) fn pod_security() -> PodSecurity {
    PodSecurity {
        run_as_non_root: true,
        run_as_user: UID,
        run_as_group: UID,
        fs_group: UID,
        seccomp_profile: Seccomp {
            kind: "RuntimeDefault",
        },
    }
}

pub(super) fn container_security() -> ContainerSecurity {
    ContainerSecurity {
        allow_privilege_escalation: false,
        privileged: false,
        read_only_root_filesystem: true,
        run_as_non_root: true,
        run_as_user: UID,
        run_as_group: UID,
        capabilities: Capabilities { drop: vec!["ALL"] },
        seccomp_profile: Seccomp {
            kind: "RuntimeDefault",
        },
    }
}

/// Prefer other nodes, then other zones, for a component's pods; never
/// refuse to schedule for it (a small cluster still runs).
pub(super) fn spread(component: &str) -> (Affinity, Vec<TopologySpread>) {
    let select = || LabelSelector {
        match_labels: selector_labels(component),
    };
    let affinity = Affinity {
        pod_anti_affinity: PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: vec![
                WeightedTerm {
                    weight: 100,
                    pod_affinity_term: AffinityTerm {
                        label_selector: select(),
                        topology_key: "kubernetes.io/hostname",
                    },
                },
                WeightedTerm {
                    weight: 50,
                    pod_affinity_term: AffinityTerm {
                        label_selector: select(),
                        topology_key: "topology.kubernetes.io/zone",
                    },
                },
            ],
        },
    };
    let spread = ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpread {
            max_skew: 1,
            topology_key: key,
            when_unsatisfiable: "ScheduleAnyway",
            label_selector: select(),
        })
        .collect();
    (affinity, spread)
}

pub(super) fn resources(cpu: &super::RequestLimit, memory: &super::RequestLimit) -> Resources {
    Resources {
        requests: BTreeMap::from([
            ("cpu".into(), cpu.request.clone()),
            ("memory".into(), memory.request.clone()),
        ]),
        limits: BTreeMap::from([
            ("cpu".into(), cpu.limit.clone()),
            ("memory".into(), memory.limit.clone()),
        ]),
    }
}

/// A probe: `GET path` on the port named `port` in `scheme` (`HTTP` or
/// `HTTPS`; over HTTPS the kubelet checks no certificate, so a probe
/// says nothing about the certificate's names or expiry).
pub(super) fn probe(
    path: &'static str,
    port: &'static str,
    scheme: &'static str,
    period: u32,
    failures: u32,
) -> Probe {
    Probe {
        http_get: HttpGet { path, port, scheme },
        period_seconds: period,
        timeout_seconds: 2,
        failure_threshold: failures,
    }
}

pub(super) fn port(name: &'static str, number: u16) -> ContainerPort {
    ContainerPort {
        name,
        container_port: number,
        protocol: "TCP",
    }
}

pub(super) fn service_port(name: &'static str, number: u16) -> ServicePort {
    ServicePort {
        name,
        port: number,
        target_port: name,
        protocol: "TCP",
    }
}

pub(super) fn mount(name: &'static str, path: &str) -> VolumeMount {
    VolumeMount {
        name,
        mount_path: path.to_string(),
        read_only: true,
    }
}

pub(super) fn secret_volume(name: &'static str, secret: &str, optional: bool) -> Volume {
    Volume {
        name,
        source: VolumeSource::Secret {
            secret: SecretRef {
                secret_name: secret.to_string(),
                items: None,
                optional: optional.then_some(true),
            },
        },
    }
}

/// `$(POD_NAME)` in a container's arguments is the pod's name.
pub(super) fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME",
        value: None,
        value_from: Some(EnvSource::Field {
            field_ref: FieldRef {
                field_path: "metadata.name",
            },
        }),
    }
}

/// The tokens Secret as files, only `keys` of it (a router never sees
/// the admin token): files, not environment variables, so they stay out
/// of `/proc/*/environ`, crash reports and `kubectl describe`.
pub(super) fn tokens_volume(args: &KubernetesArgs, keys: &[&'static str]) -> Volume {
    Volume {
        name: "tokens",
        source: VolumeSource::Secret {
            secret: SecretRef {
                secret_name: args.tokens_secret.clone(),
                items: Some(
                    keys.iter()
                        .map(|&key| KeyToPath { key, path: key })
                        .collect(),
                ),
                optional: None,
            },
        },
    }
}

/// `SHARDLINE_<NAME>_FILE`: the file of the tokens volume holding `key`.
pub(super) fn token_file_env(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        value: Some(format!("{TOKENS_DIR}/{key}")),
        value_from: None,
    }
}

pub(super) fn disruption_budget(args: &KubernetesArgs, component: &str) -> Object<Spec<PdbSpec>> {
    Object {
        api_version: "policy/v1",
        kind: "PodDisruptionBudget",
        metadata: meta(args, component, name(component)),
        body: Spec {
            spec: PdbSpec {
                max_unavailable: 1,
                selector: LabelSelector {
                    match_labels: selector_labels(component),
                },
            },
        },
    }
}

/// The pod template of a component.
pub(super) fn template(
    component: &str,
    annotations: Map,
    grace: u32,
    container: Container,
    volumes: Vec<Volume>,
) -> PodTemplate {
    let (affinity, topology_spread_constraints) = spread(component);
    PodTemplate {
        metadata: Meta {
            name: String::new(),
            namespace: None,
            labels: labels(component),
            annotations,
        },
        spec: PodSpec {
            service_account_name: name(component),
            automount_service_account_token: false,
            enable_service_links: false,
            termination_grace_period_seconds: grace,
            security_context: pod_security(),
            affinity,
            topology_spread_constraints,
            containers: vec![container],
            volumes,
        },
    }
}

/// The managers' URLs, as routers list them (each manager's own name
/// under the headless Service, so a router can move to the next).
pub fn manager_urls(args: &KubernetesArgs) -> Vec<String> {
    let scheme = url_scheme(args);
    (0..args.manager_replicas)
        .map(|i| {
            format!(
                "{scheme}://{m}-{i}.{m}.{ns}.svc:{MANAGER_HTTP}",
                m = name(MANAGER),
                ns = args.namespace
            )
        })
        .collect()
}

/// The router's configuration file (`shardline router --config`).
#[derive(Serialize)]
pub struct RouterToml {
    pub listen: String,
    pub pg_listen: String,
    pub pg_tls_cert: String,
    pub pg_tls_key: String,
    pub pg_tls_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Trusted for the managers' `https://` URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_ca_file: Option<String>,
    pub manager_url: String,
    pub catalog_cache: String,
    pub tenant_pool_size: u32,
    pub shard_max_connections: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lanes: Option<u16>,
}

/// Tenant pools hold at most this many connections to a shard by
/// default (the router's own default), fewer when the per-router budget
/// is smaller.
const TENANT_POOL_DEFAULT: u32 = 8;

pub fn router_toml(args: &KubernetesArgs) -> RouterToml {
    let per_router = args.router_shard_connections();
    let [cert, key, ca] = http_tls_files(args);
    RouterToml {
        listen: format!("0.0.0.0:{ROUTER_HTTP}"),
        pg_listen: format!("0.0.0.0:{ROUTER_PG}"),
        pg_tls_cert: format!("{ROUTER_TLS_DIR}/tls.crt"),
        pg_tls_key: format!("{ROUTER_TLS_DIR}/tls.key"),
        pg_tls_required: true,
        tls_cert: cert,
        tls_key: key,
        manager_ca_file: ca,
        manager_url: manager_urls(args).join(","),
        catalog_cache: format!("{CACHE_DIR}/catalog.json"),
        tenant_pool_size: TENANT_POOL_DEFAULT.min(per_router),
        shard_max_connections: per_router,
        lanes: args.router_lanes,
    }
}

/// Routers: ServiceAccount, ConfigMap, Deployment, Service, autoscaler,
/// disruption budget.
pub fn router(args: &KubernetesArgs, docs: &mut Docs) -> anyhow::Result<()> {
    let toml_text = toml::to_string(&router_toml(args))?;
    let data = BTreeMap::from([("router.toml".to_string(), toml_text)]);
    let annotations = BTreeMap::from([("checksum/config".to_string(), checksum(&data))]);
    docs.push(&service_account(args, ROUTER))?;
    docs.push(&config_map(args, ROUTER, data))?;
    let (api, scheme) = (api_port(args), api_probe_scheme(args));

    let container = Container {
        name: ROUTER,
        image: args.image.clone(),
        image_pull_policy: "Always",
        command: vec!["shardline".into()],
        args: [
            "--log-json",
            "router",
            "--config",
            &format!("{CONFIG_DIR}/router.toml"),
            "--id",
            "$(POD_NAME)",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            pod_name_env(),
            token_file_env("SHARDLINE_ROUTER_TOKEN_FILE", "router-token"),
        ],
        ports: vec![port(api, ROUTER_HTTP), port("postgres", ROUTER_PG)],
        resources: resources(&args.router_cpu, &args.router_memory),
        // /healthz answers once the listener is bound; /readyz only once
        // a catalog is loaded (503 before).
        startup_probe: probe("/healthz", api, scheme, 2, 30),
        liveness_probe: probe("/healthz", api, scheme, 10, 3),
        readiness_probe: probe("/readyz", api, scheme, 5, 2),
        lifecycle: Some(Lifecycle {
            pre_stop: PreStop {
                sleep: Sleep {
                    seconds: ROUTER_PRE_STOP_SECS,
                },
            },
        }),
        security_context: container_security(),
        volume_mounts: [
            mount("config", CONFIG_DIR),
            mount("tls", ROUTER_TLS_DIR),
            mount("tokens", TOKENS_DIR),
            VolumeMount {
                name: "cache",
                mount_path: CACHE_DIR.into(),
                read_only: false,
            },
        ]
        .into_iter()
        .chain(http_tls_mount(args))
        .collect(),
    };
    let mut volumes = vec![
        Volume {
            name: "config",
            source: VolumeSource::ConfigMap {
                config_map: ConfigMapRef { name: name(ROUTER) },
            },
        },
        secret_volume("tls", &args.router_tls_secret, false),
        tokens_volume(args, &["router-token"]),
        Volume {
            name: "cache",
            source: VolumeSource::EmptyDir {
                empty_dir: EmptyDir { size_limit: "64Mi" },
            },
        },
    ];
    volumes.extend(http_tls_volume(args));
    let grace = ROUTER_PRE_STOP_SECS + SERVER_DRAIN_SECS + SHUTDOWN_SLACK_SECS;
    let mut metadata = meta(args, ROUTER, name(ROUTER));
    metadata.annotations = skips(&[DIGEST_SKIP]);
    docs.push(&Object {
        api_version: "apps/v1",
        kind: "Deployment",
        metadata,
        body: Spec {
            spec: DeploymentSpec {
                replicas: args.router_replicas,
                revision_history_limit: 5,
                selector: LabelSelector {
                    match_labels: selector_labels(ROUTER),
                },
                // One new router before an old one goes: capacity never
                // dips during a rollout.
                strategy: DeploymentStrategy {
                    kind: "RollingUpdate",
                    rolling_update: RollingUpdate {
                        max_surge: 1,
                        max_unavailable: 0,
                    },
                },
                template: template(ROUTER, annotations, grace, container, volumes),
            },
        },
    })?;
    docs.push(&Object {
        api_version: "v1",
        kind: "Service",
        metadata: meta(args, ROUTER, name(ROUTER)),
        body: Spec {
            spec: ServiceSpec {
                kind: "ClusterIP",
                cluster_ip: None,
                publish_not_ready_addresses: false,
                selector: selector_labels(ROUTER),
                ports: vec![
                    service_port(api, ROUTER_HTTP),
                    service_port("postgres", ROUTER_PG),
                ],
            },
        },
    })?;
    let mut metrics = vec![HpaMetric::Resource {
        resource: ResourceMetric {
            name: "cpu",
            target: MetricTarget::Utilization {
                average_utilization: args.router_cpu_target,
            },
        },
    }];
    if let Some(n) = args.hpa_in_flight_target {
        metrics.push(HpaMetric::Pods {
            pods: PodsMetric {
                metric: MetricName {
                    name: "router_in_flight_requests",
                },
                target: MetricTarget::AverageValue {
                    average_value: n.to_string(),
                },
            },
        });
    }
    docs.push(&Object {
        api_version: "autoscaling/v2",
        kind: "HorizontalPodAutoscaler",
        metadata: meta(args, ROUTER, name(ROUTER)),
        body: Spec {
            spec: HpaSpec {
                scale_target_ref: TargetRef {
                    api_version: "apps/v1",
                    kind: "Deployment",
                    name: name(ROUTER),
                },
                min_replicas: args.router_min_replicas,
                max_replicas: args.router_max_replicas,
                metrics,
            },
        },
    })?;
    docs.push(&disruption_budget(args, ROUTER))
}

/// The manager's configuration file, one per manager.
#[derive(Serialize)]
pub struct ManagerToml {
    pub listen: String,
    pub id: String,
    pub advertise_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// Trusted for the other managers' `https://` advertise URLs (a
    /// follower passes writes to the leader).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    pub etcd: EtcdToml,
}

#[derive(Serialize)]
pub struct EtcdToml {
    pub endpoints: Vec<String>,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

/// Each manager's file, keyed by its pod's name (the StatefulSet's
/// `shardline-manager-N`), as the container's `--config` picks it.
pub fn manager_tomls(args: &KubernetesArgs) -> Vec<(String, ManagerToml)> {
    let endpoints: Vec<String> = etcd_hosts(args)
        .into_iter()
        .map(|(_, host)| format!("https://{host}:{ETCD_CLIENT}"))
        .collect();
    let [cert, key, ca] = http_tls_files(args);
    (0..args.manager_replicas)
        .zip(manager_urls(args))
        .map(|(i, url)| {
            let id = format!("{}-{i}", name(MANAGER));
            let file = ManagerToml {
                listen: format!("0.0.0.0:{MANAGER_HTTP}"),
                id: id.clone(),
                advertise_url: url,
                tls_cert: cert.clone(),
                tls_key: key.clone(),
                tls_ca_file: ca.clone(),
                etcd: EtcdToml {
                    endpoints: endpoints.clone(),
                    ca_file: format!("{ETCD_CLIENT_TLS_DIR}/ca.crt"),
                    cert_file: format!("{ETCD_CLIENT_TLS_DIR}/tls.crt"),
                    key_file: format!("{ETCD_CLIENT_TLS_DIR}/tls.key"),
                },
            };
            (id, file)
        })
        .collect()
}

/// Managers: a StatefulSet (stable names: each manager's `id` and
/// `advertise_url`), its headless Service, ConfigMap, budget.
pub fn manager(args: &KubernetesArgs, docs: &mut Docs) -> anyhow::Result<()> {
    let mut data = Map::new();
    for (id, file) in manager_tomls(args) {
        data.insert(format!("{id}.toml"), toml::to_string(&file)?);
    }
    let annotations = BTreeMap::from([("checksum/config".to_string(), checksum(&data))]);
    docs.push(&service_account(args, MANAGER))?;
    docs.push(&config_map(args, MANAGER, data))?;
    let (api, scheme) = (api_port(args), api_probe_scheme(args));

    // The manager serves one handler at /healthz and /readyz: up means
    // ready (followers answer reads and pass writes to the leader).
    let container = Container {
        name: MANAGER,
        image: args.image.clone(),
        image_pull_policy: "Always",
        command: vec!["shardline".into()],
        args: [
            "--log-json",
            "manager",
            "--config",
            &format!("{CONFIG_DIR}/$(POD_NAME).toml"),
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            pod_name_env(),
            token_file_env("SHARDLINE_ADMIN_TOKEN_FILE", "admin-token"),
            token_file_env("SHARDLINE_ROUTER_TOKEN_FILE", "router-token"),
        ],
        ports: vec![port(api, MANAGER_HTTP)],
        resources: resources(&args.manager_cpu, &args.manager_memory),
        startup_probe: probe("/healthz", api, scheme, 2, 30),
        liveness_probe: probe("/healthz", api, scheme, 10, 3),
        readiness_probe: probe("/readyz", api, scheme, 5, 2),
        lifecycle: None,
        security_context: container_security(),
        volume_mounts: [
            mount("config", CONFIG_DIR),
            mount("etcd-tls", ETCD_CLIENT_TLS_DIR),
            mount("shards", SHARDS_DIR),
            mount("tokens", TOKENS_DIR),
        ]
        .into_iter()
        .chain(http_tls_mount(args))
        .collect(),
    };
    let mut volumes = vec![
        Volume {
            name: "config",
            source: VolumeSource::ConfigMap {
                config_map: ConfigMapRef {
                    name: name(MANAGER),
                },
            },
        },
        secret_volume("etcd-tls", &args.etcd_client_tls_secret, false),
        secret_volume("shards", &args.shard_dsn_secret, true),
        tokens_volume(args, &["admin-token", "router-token"]),
    ];
    volumes.extend(http_tls_volume(args));
    let grace = SERVER_DRAIN_SECS + SHUTDOWN_SLACK_SECS;
    let mut metadata = meta(args, MANAGER, name(MANAGER));
    metadata.annotations = skips(&[DIGEST_SKIP]);
    docs.push(&Object {
        api_version: "apps/v1",
        kind: "StatefulSet",
        metadata,
        body: Spec {
            spec: StatefulSetSpec {
                replicas: args.manager_replicas,
                service_name: name(MANAGER),
                pod_management_policy: "Parallel",
                selector: LabelSelector {
                    match_labels: selector_labels(MANAGER),
                },
                template: template(MANAGER, annotations, grace, container, volumes),
                volume_claim_templates: Vec::new(),
            },
        },
    })?;
    docs.push(&headless_service(
        args,
        MANAGER,
        false,
        vec![service_port(api, MANAGER_HTTP)],
    ))?;
    docs.push(&disruption_budget(args, MANAGER))
}

pub(super) fn headless_service(
    args: &KubernetesArgs,
    component: &str,
    publish_not_ready: bool,
    ports: Vec<ServicePort>,
) -> Object<Spec<ServiceSpec>> {
    Object {
        api_version: "v1",
        kind: "Service",
        metadata: meta(args, component, name(component)),
        body: Spec {
            spec: ServiceSpec {
                kind: "ClusterIP",
                cluster_ip: Some("None"),
                publish_not_ready_addresses: publish_not_ready,
                selector: selector_labels(component),
                ports,
            },
        },
    }
}
