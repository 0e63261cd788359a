//! `shardline deploy kubernetes`: renders the manifests that run
//! shardline on a Kubernetes cluster, from typed options, as the objects
//! themselves (serialized with serde, never a text template).
//!
//! ## Layout
//! - `k8s`: the subset of the Kubernetes API types the manifests use.
//! - `workloads`: routers and managers (pods, Services, PDBs, the
//!   autoscaler, their configuration files) and the helpers every
//!   workload shares.
//! - `https`: HTTPS on the router's and the managers' APIs (their
//!   Secret, port name, probe and URL schemes).
//! - `etcd`: the etcd cluster the managers keep the catalog in.
//! - `isolation`: NetworkPolicies and each tenant namespace's quota.
//! - `monitoring`: the ServiceMonitor and the PrometheusRule.
//!
//! The rendered default is checked in at `deploy/kubernetes/shardline.yaml`;
//! `crates/cli/tests/deploy_kubernetes.rs` fails when it drifts and runs
//! `kubernetes-validate` and `checkov` on what this renders;
//! `crates/cli/tests/deploy_kubernetes_pods.rs` runs the rendered router
//! and manager pods on loopback, probes them and drains the router.

mod etcd;
mod https;
mod isolation;
mod k8s;
mod monitoring;
mod workloads;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;

/// `shardline deploy ...`
#[derive(Debug, Subcommand)]
pub enum DeployCmd {
    /// Print the Kubernetes manifests (multi-document YAML) for routers,
    /// managers, etcd, isolation, quotas and monitoring
    Kubernetes(Box<KubernetesArgs>),
}

/// Where the rules file is looked for when `--rules` is not given
/// (relative to the working directory).
pub const DEFAULT_RULES: &str = "deploy/prometheus/shardline-rules.yml";

/// The options of `deploy kubernetes`. Every default is the checked-in
/// `deploy/kubernetes/shardline.yaml`.
#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// Namespace of routers, managers and etcd (created by the manifests)
    #[arg(long, default_value = "shardline")]
    pub namespace: String,
    /// shardline's image (routers and managers)
    #[arg(long, default_value = concat!("shardline:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// etcd's image (3.5 or later, with `etcd` on its PATH)
    #[arg(long, default_value = "registry.k8s.io/etcd:3.5.16-0")]
    pub etcd_image: String,
    /// Routers at first; the autoscaler moves them between its bounds
    #[arg(long, default_value_t = 3)]
    pub router_replicas: u32,
    /// Fewest routers the autoscaler keeps
    #[arg(long, default_value_t = 3)]
    pub router_min_replicas: u32,
    /// Most routers the autoscaler starts (also divides the connection budget)
    #[arg(long, default_value_t = 10)]
    pub router_max_replicas: u32,
    /// Average CPU use (percent of the request) the autoscaler aims at
    #[arg(long, default_value_t = 70)]
    pub router_cpu_target: u32,
    /// Also scale on in-flight requests per router (`router_in_flight_requests`,
    /// served as a Pods metric by a metrics adapter such as prometheus-adapter)
    #[arg(long, value_name = "REQUESTS")]
    pub hpa_in_flight_target: Option<u32>,
    /// Managers (one leads, by election in etcd)
    #[arg(long, default_value_t = 3)]
    pub manager_replicas: u32,
    /// etcd members (odd: 3 survives one loss, 5 two)
    #[arg(long, default_value_t = 3)]
    pub etcd_members: u32,
    /// Size of each etcd member's volume
    #[arg(long, default_value = "10Gi")]
    pub etcd_storage: String,
    /// StorageClass of etcd's volumes (default: the cluster's default)
    #[arg(long)]
    pub etcd_storage_class: Option<String>,
    /// Router CPU as REQUEST/LIMIT
    #[arg(long, default_value = "500m/2")]
    pub router_cpu: RequestLimit,
    /// Routers serve client connections on N lanes, each a thread with
    /// its own event loop and pools (`lanes` in router.toml;
    /// docs/operations.md, "Threads") [default: none]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(shardline_router::config::MAX_LANES)))]
    pub router_lanes: Option<u16>,
    /// Router memory as REQUEST/LIMIT
    #[arg(long, default_value = "256Mi/512Mi")]
    pub router_memory: RequestLimit,
    /// Manager CPU as REQUEST/LIMIT
    #[arg(long, default_value = "250m/1")]
    pub manager_cpu: RequestLimit,
    /// Manager memory as REQUEST/LIMIT
    #[arg(long, default_value = "128Mi/256Mi")]
    pub manager_memory: RequestLimit,
    /// etcd CPU as REQUEST/LIMIT
    #[arg(long, default_value = "250m/1")]
    pub etcd_cpu: RequestLimit,
    /// etcd memory as REQUEST/LIMIT
    #[arg(long, default_value = "256Mi/1Gi")]
    pub etcd_memory: RequestLimit,
    /// Secret with the keys `admin-token` and `router-token` (16+ characters each)
    #[arg(long, default_value = "shardline-tokens")]
    pub tokens_secret: String,
    /// kubernetes.io/tls Secret of the router's PostgreSQL listener (TLS required)
    #[arg(long, default_value = "shardline-router-tls")]
    pub router_tls_secret: String,
    /// kubernetes.io/tls Secret, with `ca.crt`, of the router's and the
    /// managers' HTTPS listeners; its CA is the one routers, managers and
    /// Prometheus trust for them
    #[arg(long, default_value = "shardline-http-tls")]
    pub http_tls_secret: String,
    /// Serve the router's and the managers' HTTP APIs in plain HTTP (only
    /// where the pod network is encrypted already, as by a service mesh)
    #[arg(long, conflicts_with = "http_tls_secret")]
    pub no_http_tls: bool,
    /// Secret of etcd's serving and peer certificate: `ca.crt`, `tls.crt`, `tls.key`
    #[arg(long, default_value = "shardline-etcd-tls")]
    pub etcd_tls_secret: String,
    /// Secret of the managers' etcd client certificate: `ca.crt`, `tls.crt`, `tls.key`
    #[arg(long, default_value = "shardline-etcd-client-tls")]
    pub etcd_client_tls_secret: String,
    /// Secret with one shard DSN per key, mounted in the managers at
    /// /etc/shardline/shards for `shardline shard register`
    #[arg(long, default_value = "shardline-shard-dsns")]
    pub shard_dsn_secret: String,
    /// Addresses of the PostgreSQL shards (CIDR, repeatable): only routers
    /// and managers may connect there
    #[arg(long = "shard-cidr", default_value = "10.0.0.0/8")]
    pub shard_cidrs: Vec<String>,
    /// The shards' PostgreSQL port
    #[arg(long, default_value_t = 5432)]
    pub shard_port: u16,
    /// Connections one PostgreSQL server gives all routers together; each
    /// router's `shard_max_connections` is this divided by --router-max-replicas
    #[arg(long, default_value_t = 90)]
    pub shard_connection_budget: u32,
    /// Namespace of a tenant's applications (repeatable): may reach the
    /// router only, and gets a ResourceQuota and a LimitRange
    #[arg(long = "tenant-namespace")]
    pub tenant_namespaces: Vec<String>,
    /// CPU each tenant namespace may request in total (limits: twice this)
    #[arg(long, default_value = "4")]
    pub tenant_cpu: String,
    /// Memory each tenant namespace may request in total (limits: twice this)
    #[arg(long, default_value = "8Gi")]
    pub tenant_memory: String,
    /// Most pods in each tenant namespace
    #[arg(long, default_value_t = 50)]
    pub tenant_pods: u32,
    /// Namespace of Prometheus (scrapes /metrics)
    #[arg(long, default_value = "monitoring")]
    pub monitoring_namespace: String,
    /// Prometheus rule file whose groups the PrometheusRule carries
    /// [default: deploy/prometheus/shardline-rules.yml when it exists]
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Write to this file instead of standard output
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A resource as `REQUEST/LIMIT` (Kubernetes quantities: `500m/2`,
/// `256Mi/512Mi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimit {
    pub request: String,
    pub limit: String,
}

impl std::str::FromStr for RequestLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (request, limit) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not REQUEST/LIMIT (for example 500m/2)"))?;
        for q in [request, limit] {
            if !is_quantity(q) {
                return Err(format!(
                    "{q:?} is not a Kubernetes quantity (for example 500m, 2, 256Mi)"
                ));
            }
        }
        Ok(Self {
            request: request.to_string(),
            limit: limit.to_string(),
        })
    }
}

/// A plain Kubernetes quantity: digits (a decimal point allowed) and an
/// optional suffix.
fn is_quantity(q: &str) -> bool {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &q[digits.len()..];
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && SUFFIXES.contains(&suffix)
}

impl KubernetesArgs {
    /// Refuses settings that cannot work together.
    fn check(&self) -> anyhow::Result<()> {
        let (min, max, n) = (
            self.router_min_replicas,
            self.router_max_replicas,
            self.router_replicas,
        );
        if min == 0 || min > max {
            bail!("--router-min-replicas ({min}) must be at least 1 and at most --router-max-replicas ({max})");
        }
        if n < min || n > max {
            bail!("--router-replicas ({n}) must lie between --router-min-replicas ({min}) and --router-max-replicas ({max})");
        }
        if !(1..=100).contains(&self.router_cpu_target) {
            bail!("--router-cpu-target must be a percentage from 1 to 100");
        }
        if self.hpa_in_flight_target == Some(0) {
            bail!("--hpa-in-flight-target must be at least 1");
        }
        if self.manager_replicas == 0 {
            bail!("--manager-replicas must be at least 1");
        }
        if self.etcd_members.is_multiple_of(2) {
            bail!(
                "--etcd-members must be odd (an even count tolerates no more losses than one fewer)"
            );
        }
        if self.shard_connection_budget < max {
            bail!(
                "--shard-connection-budget ({}) gives fewer than one connection per router at --router-max-replicas ({max})",
                self.shard_connection_budget
            );
        }
        if !is_quantity(&self.etcd_storage)
            || !is_quantity(&self.tenant_cpu)
            || !is_quantity(&self.tenant_memory)
        {
            bail!("--etcd-storage, --tenant-cpu and --tenant-memory must be Kubernetes quantities");
        }
        for name in std::iter::once(&self.namespace)
            .chain(&self.tenant_namespaces)
            .chain(std::iter::once(&self.monitoring_namespace))
        {
            if !is_dns_label(name) {
                bail!("{name:?} is not a namespace name (lower-case letters, digits and '-', at most 63)");
            }
        }
        if self.tenant_namespaces.contains(&self.namespace) {
            bail!(
                "a tenant namespace cannot be shardline's own ({})",
                self.namespace
            );
        }
        Ok(())
    }

    /// The Secret of the HTTPS listeners; `None` with `--no-http-tls`.
    pub fn http_tls(&self) -> Option<&str> {
        (!self.no_http_tls).then_some(self.http_tls_secret.as_str())
    }

    /// Each router's `shard_max_connections`: the per-server budget
    /// shared by the most routers the autoscaler may run.
    pub fn router_shard_connections(&self) -> u32 {
        self.shard_connection_budget / self.router_max_replicas
    }
}

/// A name Kubernetes accepts for a namespace (RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Runs `deploy ...`.
pub fn run(cmd: DeployCmd) -> anyhow::Result<()> {
    match cmd {
        DeployCmd::Kubernetes(args) => {
            let rules = load_rules(args.rules.as_deref())?;
            if rules.is_none() {
                eprintln!(
                    "note: {DEFAULT_RULES} not found: the PrometheusRule carries no groups (--rules FILE to embed some)"
                );
            }
            let text = render(&args, rules)?;
            match &args.out {
                Some(path) => std::fs::write(path, text)
                    .with_context(|| format!("write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
    }
}

/// The groups of the rule file: the one named, or the default one when
/// it exists (`None`: no file).
pub fn load_rules(path: Option<&Path>) -> anyhow::Result<Option<serde_yaml::Value>> {
    let path = match path {
        Some(p) => p,
        None if Path::new(DEFAULT_RULES).exists() => Path::new(DEFAULT_RULES),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read rule file {}", path.display()))?;
    let file: RuleFile = serde_yaml::from_str(&text)
        .with_context(|| format!("parse rule file {}", path.display()))?;
    Ok(Some(file.groups))
}

/// A Prometheus rule file: its groups, kept as written.
#[derive(serde::Deserialize)]
struct RuleFile {
    groups: serde_yaml::Value,
}

/// The manifests as one multi-document YAML text.
pub fn render(args: &KubernetesArgs, rules: Option<serde_yaml::Value>) -> anyhow::Result<String> {
    args.check()?;
    let docs = objects(args, rules)?;
    let mut out = format!(
        "# shardline {}: rendered by `shardline deploy kubernetes`; do not edit by hand.\n",
        env!("CARGO_PKG_VERSION")
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).context("write YAML")?);
    }
    Ok(out)
}

/// Every object, in the order `kubectl apply` wants them: the namespace,
/// then what pods refer to, then the pods' owners.
fn objects(
    args: &KubernetesArgs,
    rules: Option<serde_yaml::Value>,
) -> anyhow::Result<Vec<serde_yaml::Value>> {
    let mut docs = Docs::default();
    docs.push(&workloads::namespace(args))?;
    workloads::router(args, &mut docs)?;
    workloads::manager(args, &mut docs)?;
    etcd::etcd(args, &mut docs)?;
    isolation::policies(args, &mut docs)?;
    isolation::tenants(args, &mut docs)?;
    monitoring::objects(args, rules, &mut docs)?;
    Ok(docs.0)
}

/// The rendered objects so far.
#[derive(Default)]
pub struct Docs(Vec<serde_yaml::Value>);

impl Docs {
    /// Adds one object.
    pub fn push(&mut self, object: &impl Serialize) -> anyhow::Result<()> {
        self.0
            .push(serde_yaml::to_value(object).context("serialize an object")?);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
