//! HTTPS on the router's and the managers' APIs (on unless
//! `--no-http-tls`): one `kubernetes.io/tls` Secret with `ca.crt`
//! (`--http-tls-secret`) mounted in both, which they serve with and
//! trust each other by, and what the rest of the manifests say of it:
//! the port's name, the probes' scheme, the URLs' scheme and the name
//! Prometheus checks. Why it is the default: docs/architecture.md,
//! "TLS everywhere".

use super::k8s::{Volume, VolumeMount};
use super::workloads::{mount, name, secret_volume, ROUTER};
use super::KubernetesArgs;

/// Where the Secret is mounted in routers and managers: `tls.crt` and
/// `tls.key` to serve, `ca.crt` to trust each other.
const HTTP_TLS_DIR: &str = "/etc/shardline/http-tls";

/// The name of the API port, in the containers, the Services, the
/// probes and the ServiceMonitor: `https` when it serves HTTPS, as
/// meshes that guess a protocol from the port's name (Istio) expect.
pub fn api_port(args: &KubernetesArgs) -> &'static str {
    match args.http_tls() {
        Some(_) => "https",
        None => "http",
    }
}

/// The probes' scheme on that port (the kubelet's spelling). Over HTTPS
/// the kubelet checks no certificate.
pub fn api_probe_scheme(args: &KubernetesArgs) -> &'static str {
    match args.http_tls() {
        Some(_) => "HTTPS",
        None => "HTTP",
    }
}

/// The scheme of the managers' URLs (routers' `manager_url`, managers'
/// `advertise_url`).
pub fn url_scheme(args: &KubernetesArgs) -> &'static str {
    match args.http_tls() {
        Some(_) => "https",
        None => "http",
    }
}

/// The router Service's name in the cluster's DNS: a name the
/// certificate must carry for clients, and the one Prometheus checks
/// every router and manager against (one certificate serves both).
pub fn router_host(args: &KubernetesArgs) -> String {
    format!("{}.{}.svc", name(ROUTER), args.namespace)
}

/// `tls.crt`, `tls.key` and `ca.crt` as mounted; none when off.
pub fn http_tls_files(args: &KubernetesArgs) -> [Option<String>; 3] {
    ["tls.crt", "tls.key", "ca.crt"].map(|f| args.http_tls().map(|_| format!("{HTTP_TLS_DIR}/{f}")))
}

/// The Secret's mount, in routers and managers alike.
pub fn http_tls_mount(args: &KubernetesArgs) -> Option<VolumeMount> {
    args.http_tls().map(|_| mount("http-tls", HTTP_TLS_DIR))
}

pub fn http_tls_volume(args: &KubernetesArgs) -> Option<Volume> {
    args.http_tls()
        .map(|secret| secret_volume("http-tls", secret, false))
}
