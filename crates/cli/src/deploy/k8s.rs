//! The Kubernetes objects `deploy kubernetes` writes, as typed values:
//! only the fields shardline's manifests use, named as the Kubernetes
//! API names them (camelCase), absent fields left out. Kept small on
//! purpose — a full API crate (k8s-openapi) would compile thousands of
//! types for the twenty kinds used here — and checked against the real
//! schemas by `kubernetes-validate --strict` in
//! `crates/cli/tests/deploy_kubernetes.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

/// String keys in a stable order (labels, annotations, data).
pub type Map = BTreeMap<String, String>;

/// Any object: its type, its metadata and the rest of its fields
/// (`spec`, `data`, ...).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<B> {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: Meta,
    #[serde(flatten)]
    pub body: B,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub labels: Map,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub annotations: Map,
}

/// The body of most kinds.
#[derive(Debug, Clone, Serialize)]
pub struct Spec<T> {
    pub spec: T,
}

/// A ConfigMap's body.
#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub data: Map,
}

/// A ServiceAccount's body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountBody {
    pub automount_service_account_token: bool,
}

/// A Namespace has no body worth writing.
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub match_labels: Map,
}

// ---- workloads ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub replicas: u32,
    pub revision_history_limit: u32,
    pub selector: LabelSelector,
    pub strategy: DeploymentStrategy,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub rolling_update: RollingUpdate,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_surge: u32,
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetSpec {
    pub replicas: u32,
    pub service_name: String,
    pub pod_management_policy: &'static str,
    pub selector: LabelSelector,
    pub template: PodTemplate,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<Object<Spec<ClaimSpec>>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    pub access_modes: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    pub resources: ClaimResources,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimResources {
    pub requests: Map,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodTemplate {
    pub metadata: Meta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: String,
    pub automount_service_account_token: bool,
    /// Service links put every Service of the namespace in the
    /// environment; nothing here reads them.
    pub enable_service_links: bool,
    pub termination_grace_period_seconds: u32,
    pub security_context: PodSecurity,
    pub affinity: Affinity,
    pub topology_spread_constraints: Vec<TopologySpread>,
    pub containers: Vec<Container>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurity {
    pub run_as_non_root: bool,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub fs_group: u32,
    pub seccomp_profile: Seccomp,
}

#[derive(Debug, Clone, Serialize)]
pub struct Seccomp {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSecurity {
    pub allow_privilege_escalation: bool,
    pub privileged: bool,
    pub read_only_root_filesystem: bool,
    pub run_as_non_root: bool,
    pub run_as_user: u32,
    pub run_as_group: u32,
    pub capabilities: Capabilities,
    pub seccomp_profile: Seccomp,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub drop: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub pod_anti_affinity: PodAntiAffinity,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodAntiAffinity {
    pub preferred_during_scheduling_ignored_during_execution: Vec<WeightedTerm>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedTerm {
    pub weight: u32,
    pub pod_affinity_term: AffinityTerm,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityTerm {
    pub label_selector: LabelSelector,
    pub topology_key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpread {
    pub max_skew: u32,
    pub topology_key: &'static str,
    pub when_unsatisfiable: &'static str,
    pub label_selector: LabelSelector,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: &'static str,
    pub image: String,
    pub image_pull_policy: &'static str,
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    pub ports: Vec<ContainerPort>,
    pub resources: Resources,
    pub startup_probe: Probe,
    pub liveness_probe: Probe,
    pub readiness_probe: Probe,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    pub security_context: ContainerSecurity,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: &'static str,
    /// A literal value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Or where the value comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

/// Where a variable's value comes from (one of the two, by its field
/// name: untagged, as the API writes it).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum EnvSource {
    Field { field_ref: FieldRef },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: &'static str,
}

/// One key of a Secret volume and the file it becomes.
#[derive(Debug, Clone, Serialize)]
pub struct KeyToPath {
    pub key: &'static str,
    pub path: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: &'static str,
    pub container_port: u16,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub requests: Map,
    pub limits: Map,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http_get: HttpGet,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpGet {
    pub path: &'static str,
    pub port: &'static str,
    /// `HTTP` or `HTTPS`; the kubelet verifies no certificate.
    pub scheme: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub pre_stop: PreStop,
}

/// The kubelet's own sleep (Kubernetes 1.30 and later): no shell or
/// `sleep` binary is needed in the image.
#[derive(Debug, Clone, Serialize)]
pub struct PreStop {
    pub sleep: Sleep,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sleep {
    pub seconds: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: &'static str,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: &'static str,
    #[serde(flatten)]
    pub source: VolumeSource,
}

/// A volume's source, one of three (untagged: the field name says which).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum VolumeSource {
    ConfigMap { config_map: ConfigMapRef },
    Secret { secret: SecretRef },
    EmptyDir { empty_dir: EmptyDir },
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigMapRef {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub secret_name: String,
    /// Only these keys, at these paths (absent: every key, by its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<KeyToPath>>,
    /// Absent Secrets leave the directory empty rather than keep the
    /// pod from starting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDir {
    pub size_limit: &'static str,
}

// ---- services and scaling ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<&'static str>,
    pub publish_not_ready_addresses: bool,
    pub selector: Map,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: &'static str,
    pub port: u16,
    pub target_port: &'static str,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PdbSpec {
    pub max_unavailable: u32,
    pub selector: LabelSelector,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    pub scale_target_ref: TargetRef,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metrics: Vec<HpaMetric>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
}

/// One metric the autoscaler follows.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum HpaMetric {
    Resource { resource: ResourceMetric },
    Pods { pods: PodsMetric },
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceMetric {
    pub name: &'static str,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodsMetric {
    pub metric: MetricName,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricName {
    pub name: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum MetricTarget {
    Utilization {
        #[serde(rename = "averageUtilization")]
        average_utilization: u32,
    },
    AverageValue {
        #[serde(rename = "averageValue")]
        average_value: String,
    },
}

// ---- isolation and quotas ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    pub pod_selector: LabelSelector,
    pub policy_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
}

/// One ingress (`from`) or egress (`to`) rule: any of `peers` on any
/// of `ports`.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(rename = "ipBlock", skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpBlock {
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyPort {
    pub protocol: &'static str,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuotaSpec {
    pub hard: Map,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitRangeSpec {
    pub limits: Vec<LimitItem>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitItem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub default: Map,
    pub default_request: Map,
    pub max: Map,
}

// ---- monitoring (the Prometheus Operator's CRDs) ----

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub namespace_selector: MatchNames,
    pub endpoints: Vec<MonitorEndpoint>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchNames {
    pub match_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEndpoint {
    pub port: &'static str,
    /// `http` or `https`.
    pub scheme: &'static str,
    pub path: &'static str,
    pub interval: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<MonitorTls>,
}

/// How Prometheus checks an `https` endpoint: the CA from a Secret in
/// the ServiceMonitor's namespace, and the name the certificate must
/// carry (targets are pod IPs, which certificates do not name).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorTls {
    pub ca: MonitorCa,
    pub server_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorCa {
    pub secret: SecretKey,
}

/// One key of a Secret.
#[derive(Debug, Clone, Serialize)]
pub struct SecretKey {
    pub name: String,
    pub key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleSpec {
    /// The groups of a Prometheus rule file, as they are.
    pub groups: serde_yaml::Value,
}
