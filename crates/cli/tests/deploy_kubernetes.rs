//! `shardline deploy kubernetes` against the real tools: the checked-in
//! rendering is the binary's output; every core object validates against
//! the Kubernetes schemas (`kubernetes-validate --strict`); the Prometheus
//! Operator's objects, which those schemas lack, are checked here for the
//! fields their CRDs require; and `checkov` finds nothing, every check
//! it skips carrying its reason in the object. Each tool is also shown
//! failing on a broken object, so a pass means something.
//!
//! Needs `kubernetes-validate` and `checkov` on PATH (PyPI; `.ci/run`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;

/// The Kubernetes versions the objects are validated for: the oldest the
/// manifests need (the kubelet's `preStop: sleep` is on by default from
/// 1.30) and the newest the pinned tool bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The checks the manifests skip, each with its reason in the object.
const JUSTIFIED_SKIPS: [&str; 1] = ["CKV_K8S_43"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn checked_in() -> PathBuf {
    workspace().join("deploy/kubernetes/shardline.yaml")
}

/// Runs `shardline deploy kubernetes` with `extra` from the workspace
/// root (where the rule file is looked for).
fn render(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(["deploy", "kubernetes"])
        .args(extra)
        .current_dir(workspace())
        .output()
        .expect("run shardline");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// A tool from PyPI, with a hint when it is missing.
fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name} ({e}): pip install {name}, or run .ci/run"))
}

/// The first line where two texts differ, if any.
fn first_difference(a: &str, b: &str) -> Option<usize> {
    let (mut al, mut bl) = (a.lines(), b.lines());
    for n in 1.. {
        match (al.next(), bl.next()) {
            (None, None) => return (a.len() != b.len()).then_some(n),
            (x, y) if x != y => return Some(n),
            _ => {}
        }
    }
    None
}

#[test]
fn deploy_kubernetes_checked_in_file_is_the_rendering() {
    let rendered = render(&[]);
    let file =
        std::fs::read_to_string(checked_in()).expect("read deploy/kubernetes/shardline.yaml");
    if let Some(line) = first_difference(&rendered, &file) {
        panic!(
            "deploy/kubernetes/shardline.yaml differs from `shardline deploy kubernetes` at line {line}; \
             rerun `cargo run -p shardline -- deploy kubernetes --out deploy/kubernetes/shardline.yaml`"
        );
    }
    // Control: one byte changed is seen.
    let mut changed = file.into_bytes();
    let at = changed.len() / 2;
    changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
    let changed = String::from_utf8(changed).expect("ASCII file");
    assert!(first_difference(&rendered, &changed).is_some());
}

/// Core objects go to kubernetes-validate; the CRDs' objects do not.
fn is_crd(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

fn write_docs(dir: &Path, name: &str, docs: &[&Value]) -> PathBuf {
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML")))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// Runs kubernetes-validate in strict mode; the number of objects it
/// passed, or its complaint.
fn kubernetes_validate(file: &Path, version: &str) -> Result<usize, String> {
    let out = tool(
        "kubernetes-validate",
        &["--strict", "-k", version, &file.to_string_lossy()],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("ERROR") || text.contains("WARN") {
        return Err(text);
    }
    Ok(text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count())
}

#[test]
fn deploy_kubernetes_objects_validate_against_the_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The default (HTTPS), and one with every optional object (tenants'
    // quotas and policies, the in-flight autoscaling metric) and plain
    // HTTP.
    for extra in [
        &[][..],
        &[
            "--tenant-namespace",
            "acme",
            "--tenant-namespace",
            "globex",
            "--hpa-in-flight-target",
            "50",
            "--etcd-storage-class",
            "fast-ssd",
            "--no-http-tls",
        ],
    ] {
        let docs = documents(&render(extra));
        let (crds, core): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| is_crd(d));
        let file = write_docs(dir.path(), "core.yaml", &core);
        for version in KUBERNETES_VERSIONS {
            let passed = kubernetes_validate(&file, version)
                .unwrap_or_else(|e| panic!("{extra:?} on {version}:\n{e}"));
            assert_eq!(passed, core.len(), "{extra:?} on {version}");
            eprintln!(
                "kubernetes-validate --strict {version}: {passed} objects passed ({extra:?})"
            );
        }
        check_monitoring(&crds, &docs);
    }

    // Control: a Deployment whose replicas is a string is refused.
    let broken: Value = serde_yaml::from_str(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\n\
         spec:\n  replicas: \"three\"\n  selector: {matchLabels: {a: b}}\n\
         \x20 template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n",
    )
    .expect("YAML");
    let file = write_docs(dir.path(), "broken.yaml", &[&broken]);
    let err = kubernetes_validate(&file, KUBERNETES_VERSIONS[1])
        .expect_err("accepted a broken Deployment");
    assert!(err.contains("replicas"), "{err}");
}

/// The ServiceMonitor and the PrometheusRule, checked for what their
/// CRDs require (no schema for them ships with kubernetes-validate):
/// a ServiceMonitor's `selector` and `endpoints`, each endpoint's `port`
/// naming a port of a Service it selects and scraped in its pods' scheme
/// ([`monitor_schemes`]); a rule group's `name` and `rules`, each rule's
/// `expr` and exactly one of `alert` or `record`.
fn check_monitoring(crds: &[&Value], all: &[Value]) {
    let kinds: Vec<&str> = crds.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceMonitor", "PrometheusRule"]);
    for d in crds {
        assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
        assert!(d["metadata"]["name"].is_string() && d["metadata"]["namespace"].is_string());
    }
    let monitor = &crds[0]["spec"];
    let selector = monitor["selector"]["matchLabels"]
        .as_mapping()
        .expect("ServiceMonitor selector.matchLabels");
    let ports: Vec<&str> = monitor["endpoints"]
        .as_sequence()
        .expect("ServiceMonitor endpoints")
        .iter()
        .map(|e| {
            assert_eq!(e["path"], "/metrics");
            e["port"].as_str().expect("endpoint port name")
        })
        .collect();
    let services: Vec<&Value> = all
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|d| {
            selector
                .iter()
                .all(|(k, v)| d["metadata"]["labels"][k] == *v)
        })
        .collect();
    assert_eq!(services.len(), 3, "router, manager and etcd Services");
    for s in services {
        let names: Vec<&str> = s["spec"]["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            ports.iter().any(|p| names.contains(p)),
            "{} has none of the ports {ports:?}",
            s["metadata"]["name"].as_str().unwrap_or_default()
        );
    }
    monitor_schemes(crds[0], all).unwrap_or_else(|e| panic!("{e}"));
    // Control: an endpoint whose scheme is not its pods' is caught.
    let mut wrong = crds[0].clone();
    let flipped = match wrong["spec"]["endpoints"][0]["scheme"].as_str() {
        Some("https") => "http",
        _ => "https",
    };
    wrong["spec"]["endpoints"][0]["scheme"] = flipped.into();
    let e = monitor_schemes(&wrong, all).expect_err("a flipped scheme passed");
    assert!(e.contains("probes"), "{e}");

    let groups = crds[1]["spec"]["groups"]
        .as_sequence()
        .expect("PrometheusRule spec.groups");
    for g in groups {
        assert!(g["name"].is_string(), "group without name: {g:?}");
        for r in g["rules"].as_sequence().expect("group rules") {
            assert!(r["expr"].is_string() || r["expr"].is_number(), "{r:?}");
            assert!(r["alert"].is_string() != r["record"].is_string(), "{r:?}");
        }
    }
}

/// Whether the ServiceMonitor scrapes each port the way the pods serve
/// it: the scheme of the kubelet's probes on the port of that name; for
/// `https`, the CA of a Secret the pods mount (its `ca.crt`) and, as the
/// server name, a Service's name in the cluster's DNS.
fn monitor_schemes(monitor: &Value, all: &[Value]) -> Result<(), String> {
    let namespace = monitor["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let pods: Vec<&Value> = all
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .map(|d| &d["spec"]["template"]["spec"])
        .collect();
    for e in monitor["spec"]["endpoints"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let port = &e["port"];
        let scheme = e["scheme"].as_str().unwrap_or("http");
        let mut seen = 0;
        for pod in &pods {
            for c in pod["containers"].as_sequence().into_iter().flatten() {
                let serves = c["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == *port);
                if !serves {
                    continue;
                }
                for p in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let get = &c[p]["httpGet"];
                    if get["port"] != *port {
                        continue;
                    }
                    seen += 1;
                    let probe = get["scheme"].as_str().unwrap_or("HTTP");
                    if !probe.eq_ignore_ascii_case(scheme) {
                        return Err(format!(
                            "port {port:?} is scraped in {scheme}, its probes use {probe}"
                        ));
                    }
                }
                if scheme == "https" {
                    let ca = &e["tlsConfig"]["ca"]["secret"];
                    let mounted = pod["volumes"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .any(|v| v["secret"]["secretName"] == ca["name"]);
                    if !mounted || ca["key"] != "ca.crt" {
                        return Err(format!(
                            "port {port:?}: CA {ca:?} is no Secret the pods mount"
                        ));
                    }
                }
            }
        }
        if seen == 0 {
            return Err(format!("no probe on port {port:?}"));
        }
        if scheme == "https" {
            let name = e["tlsConfig"]["serverName"].as_str().unwrap_or_default();
            let names_a_service = all.iter().filter(|d| d["kind"] == "Service").any(|s| {
                let svc = s["metadata"]["name"].as_str().unwrap_or_default();
                name == format!("{svc}.{namespace}.svc")
            });
            if !names_a_service {
                return Err(format!(
                    "port {port:?}: server name {name:?} names no Service"
                ));
            }
        }
    }
    Ok(())
}

/// checkov's summary and results for a file.
struct Checkov {
    passed: u64,
    failed: u64,
    resources: u64,
    failed_ids: Vec<String>,
    /// (check, resource, reason)
    skipped: Vec<(String, String, String)>,
}

fn checkov(files: &[&Path]) -> Checkov {
    let mut args = vec!["--framework", "kubernetes", "-o", "json", "--skip-download"];
    let names: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    for f in &names {
        args.extend(["-f", f.as_str()]);
    }
    let out = tool("checkov", &args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov's output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // One framework: an object; several: a list of them.
    let report = report.as_array().and_then(|a| a.first()).unwrap_or(&report);
    let summary = &report["summary"];
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    let results = &report["results"];
    let list = |key: &str| results[key].as_array().cloned().unwrap_or_default();
    Checkov {
        passed: summary["passed"].as_u64().unwrap_or_default(),
        failed: summary["failed"].as_u64().unwrap_or_default(),
        resources: summary["resource_count"].as_u64().unwrap_or_default(),
        failed_ids: list("failed_checks")
            .iter()
            .map(|c| format!("{} {}", c["check_id"], c["resource"]))
            .collect(),
        skipped: list("skipped_checks")
            .iter()
            .map(|c| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&c["check_id"]),
                    s(&c["resource"]),
                    s(&c["check_result"]["suppress_comment"]),
                )
            })
            .collect(),
    }
}

#[test]
fn deploy_kubernetes_passes_checkov() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = dir.path().join("full.yaml");
    std::fs::write(
        &full,
        render(&[
            "--tenant-namespace",
            "acme",
            "--hpa-in-flight-target",
            "50",
            "--no-http-tls",
        ]),
    )
    .expect("write");
    let checked_in = checked_in();
    let c = checkov(&[&checked_in, &full]);
    eprintln!(
        "checkov: {} passed, {} failed, {} skipped over {} resources",
        c.passed,
        c.failed,
        c.skipped.len(),
        c.resources
    );
    assert_eq!(c.failed, 0, "failed checks: {:?}", c.failed_ids);
    assert!(c.passed > 0 && c.resources > 0);
    for (check, resource, reason) in &c.skipped {
        eprintln!("  skipped {check} on {resource}: {reason}");
        assert!(
            JUSTIFIED_SKIPS.contains(&check.as_str()),
            "{check} skipped on {resource} without being listed here"
        );
        assert!(
            reason.len() > 20,
            "{check} on {resource} skipped without a reason"
        );
    }

    // Control: a privileged container that runs as root is caught.
    let broken = dir.path().join("privileged.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad, namespace: bad}\n\
         spec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n\
         \x20   metadata: {labels: {a: b}}\n    spec:\n      containers:\n\
         \x20     - name: c\n        image: nginx:1.27\n        securityContext: {privileged: true}\n",
    )
    .expect("write");
    let c = checkov(&[&broken]);
    assert!(c.failed > 0);
    assert!(
        c.failed_ids.iter().any(|id| id.contains("CKV_K8S_16")),
        "privileged not caught: {:?}",
        c.failed_ids
    );
}
