//! Unit tests of the rendering: the containers' command lines are ones
//! the CLI accepts, and the configuration files are ones the router and
//! the manager accept. The real Kubernetes tools run in
//! `crates/cli/tests/deploy_kubernetes.rs`.

use clap::Parser;

use super::workloads::{manager_tomls, router_toml};
use super::*;
use crate::{Cli, Command};

fn args(extra: &[&str]) -> KubernetesArgs {
    let argv = ["shardline", "deploy", "kubernetes"]
        .into_iter()
        .chain(extra.iter().copied());
    let Command::Deploy(DeployCmd::Kubernetes(args)) = Cli::try_parse_from(argv).unwrap().command
    else {
        panic!("not deploy kubernetes");
    };
    *args
}

/// Every document of a rendering, parsed back.
fn documents(text: &str) -> Vec<serde_yaml::Value> {
    text.split("\n---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

/// The command line of each container of the rendering, with the pod
/// name Kubernetes would put in for `$(POD_NAME)`.
fn command_lines(docs: &[serde_yaml::Value]) -> Vec<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for d in docs {
        let Some(containers) = d["spec"]["template"]["spec"]["containers"].as_sequence() else {
            continue;
        };
        let pod = format!("{}-0", d["metadata"]["name"].as_str().unwrap());
        for c in containers {
            let words: Vec<String> = c["command"]
                .as_sequence()
                .unwrap()
                .iter()
                .chain(c["args"].as_sequence().into_iter().flatten())
                .map(|w| w.as_str().unwrap().replace("$(POD_NAME)", &pod))
                .collect();
            lines.push((c["name"].as_str().unwrap().to_string(), words));
        }
    }
    lines
}

#[test]
fn containers_run_what_the_cli_accepts() {
    let text = render(&args(&[]), None).unwrap();
    let lines = command_lines(&documents(&text));
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["router", "manager", "etcd"]);
    for (name, words) in &lines[..2] {
        assert_eq!(words[0], "shardline");
        let cli = Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(cli.log_json);
        match (name.as_str(), cli.command) {
            ("router", Command::Router(r)) => {
                assert_eq!(
                    r.config.as_deref(),
                    Some(std::path::Path::new("/etc/shardline/config/router.toml"))
                );
                assert_eq!(r.id.as_deref(), Some("shardline-router-0"));
            }
            ("manager", Command::Manager(m)) => {
                // The file the ConfigMap holds for this pod.
                assert_eq!(
                    m.config,
                    std::path::Path::new("/etc/shardline/config/shardline-manager-0.toml")
                );
            }
            (n, c) => panic!("{n} runs {c:?}"),
        }
    }
}

#[test]
fn containers_set_only_variables_the_cli_reads() {
    let docs = documents(&render(&args(&[]), None).unwrap());
    let mut cli = crate::cli_command();
    cli.build();
    let mut checked = 0;
    for d in &docs {
        let Some(containers) = d["spec"]["template"]["spec"]["containers"].as_sequence() else {
            continue;
        };
        for c in containers {
            let Some(sub) = c["args"]
                .as_sequence()
                .and_then(|a| a.iter().find_map(|w| cli.find_subcommand(w.as_str()?)))
            else {
                continue;
            };
            let known: Vec<String> = sub
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect();
            for e in c["env"].as_sequence().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                if name.starts_with("SHARDLINE_") {
                    assert!(known.iter().any(|k| k == name), "{name} is no setting");
                    checked += 1;
                }
            }
        }
    }
    // The router's token file, the manager's two.
    assert_eq!(checked, 3);
}

#[test]
fn config_files_are_what_the_servers_accept() {
    let a = args(&["--manager-replicas", "2", "--etcd-members", "5"]);
    let text = toml::to_string(&router_toml(&a)).unwrap();
    let mut router = shardline_router::RouterConfig::from_toml(&text).unwrap();
    router.router_token = Some("r".repeat(20));
    router.validate().unwrap();
    assert_eq!(router.listen.port(), 8080);
    assert_eq!(router.pg_listen.map(|l| l.port()), Some(6432));
    assert!(router.pg_tls_required);
    assert_eq!(router.manager_url.split(',').count(), 2);

    // HTTPS by default: served with the Secret's pair, managers trusted
    // by its CA.
    assert!(router.tls_cert.is_some() && router.tls_key.is_some());
    assert!(router.manager_ca_file.is_some());

    let managers = manager_tomls(&a);
    assert_eq!(managers.len(), 2);
    for (id, file) in managers {
        let text = toml::to_string(&file).unwrap();
        let mut m = shardline_manager::ManagerConfig::from_toml(&text).unwrap();
        m.admin_token = Some("a".repeat(20));
        m.router_token = Some("r".repeat(20));
        m.validate().unwrap();
        assert_eq!(m.id.as_deref(), Some(id.as_str()));
        assert_eq!(m.etcd.unwrap().endpoints.len(), 5);
        assert!(m.tls_cert.is_some() && m.tls_key.is_some() && m.tls_ca_file.is_some());
    }

    // Plain HTTP: none of those settings.
    let a = args(&["--no-http-tls"]);
    let text = toml::to_string(&router_toml(&a)).unwrap();
    let mut router = shardline_router::RouterConfig::from_toml(&text).unwrap();
    router.router_token = Some("r".repeat(20));
    router.validate().unwrap();
    assert!(router.tls_cert.is_none() && router.manager_ca_file.is_none());
    let (_, file) = &manager_tomls(&a)[0];
    let m = shardline_manager::ManagerConfig::from_toml(&toml::to_string(file).unwrap()).unwrap();
    assert!(m.tls_cert.is_none() && m.tls_ca_file.is_none());
}

/// The rendered object `kind`/`name`.
fn object<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Whether the router's and the managers' APIs are HTTPS throughout a
/// rendering (namespace `shardline`, the default Secret): their
/// containers' probes and API port, the Secret mounted, the
/// ServiceMonitor's endpoint on that port (scheme, CA, server name), the
/// routers' manager URLs and CA, and the managers' own certificate,
/// advertise URL and CA. `Err` names the first thing that is not.
fn api_is_https(docs: &[serde_yaml::Value]) -> Result<(), String> {
    let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    for (kind, name) in [
        ("Deployment", "shardline-router"),
        ("StatefulSet", "shardline-manager"),
    ] {
        let pod = &object(docs, kind, name)["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        for p in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = &c[p]["httpGet"];
            check(
                get["scheme"] == "HTTPS" && get["port"] == "https",
                format!("{name} {p}: {get:?}"),
            )?;
        }
        check(
            c["ports"][0]["name"] == "https",
            format!("{name} port {:?}", c["ports"][0]),
        )?;
        let mounted = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "http-tls" && m["mountPath"] == "/etc/shardline/http-tls");
        let volume =
            pod["volumes"].as_sequence().into_iter().flatten().any(|v| {
                v["name"] == "http-tls" && v["secret"]["secretName"] == "shardline-http-tls"
            });
        check(mounted && volume, format!("{name}: http-tls not mounted"))?;
    }
    let monitor = object(docs, "ServiceMonitor", "shardline");
    let endpoint = monitor["spec"]["endpoints"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["port"] == "https")
        .ok_or("no ServiceMonitor endpoint on port https")?;
    let tls = &endpoint["tlsConfig"];
    check(
        endpoint["scheme"] == "https"
            && tls["ca"]["secret"]["name"] == "shardline-http-tls"
            && tls["ca"]["secret"]["key"] == "ca.crt"
            && tls["serverName"] == "shardline-router.shardline.svc",
        format!("ServiceMonitor endpoint {endpoint:?}"),
    )?;

    let files = |name: &str| -> Vec<String> {
        object(docs, "ConfigMap", name)["data"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(_, v)| v.as_str().unwrap().to_string())
            .collect()
    };
    let router = shardline_router::RouterConfig::from_toml(&files("shardline-router")[0]).unwrap();
    check(
        router.tls_cert.is_some()
            && router.manager_ca_file.as_deref()
                == Some(std::path::Path::new("/etc/shardline/http-tls/ca.crt"))
            && router
                .manager_url
                .split(',')
                .all(|u| u.starts_with("https://")),
        format!("router.toml: {router:?}"),
    )?;
    for text in files("shardline-manager") {
        let m = shardline_manager::ManagerConfig::from_toml(&text).unwrap();
        check(
            m.tls_cert.is_some()
                && m.tls_ca_file.is_some()
                && m.advertise_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")),
            format!("manager file: {text}"),
        )?;
    }
    Ok(())
}

#[test]
fn the_apis_serve_https_unless_told_not_to() {
    let docs = documents(&render(&args(&[]), None).unwrap());
    api_is_https(&docs).unwrap();
    // etcd's health and metrics port stays plain HTTP.
    let etcd = object(&docs, "StatefulSet", "shardline-etcd");
    assert_eq!(
        etcd["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
        "HTTP"
    );

    // Control: plain HTTP fails the check, at the first probe.
    let plain = documents(&render(&args(&["--no-http-tls"]), None).unwrap());
    let e = api_is_https(&plain).unwrap_err();
    assert!(e.starts_with("shardline-router startupProbe"), "{e}");
    // ... and so does one endpoint left in plain HTTP.
    let mut docs = docs;
    let monitor = docs
        .iter_mut()
        .find(|d| d["kind"] == "ServiceMonitor")
        .unwrap();
    monitor["spec"]["endpoints"][0]["scheme"] = "http".into();
    let e = api_is_https(&docs).unwrap_err();
    assert!(e.starts_with("ServiceMonitor endpoint"), "{e}");

    // Off, it is plain throughout: probes, port names, URLs.
    let router = object(&plain, "Deployment", "shardline-router");
    let c = &router["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    let monitor = object(&plain, "ServiceMonitor", "shardline");
    assert_eq!(monitor["spec"]["endpoints"][0]["scheme"], "http");
    assert!(monitor["spec"]["endpoints"][0]["tlsConfig"].is_null());

    // A Secret for a listener told to serve plain HTTP is a mistake.
    let refused = Cli::try_parse_from([
        "shardline",
        "deploy",
        "kubernetes",
        "--no-http-tls",
        "--http-tls-secret",
        "mine",
    ]);
    assert!(refused.is_err());
}

#[test]
fn pools_share_the_budget_among_the_most_routers() {
    let a = args(&[]);
    assert_eq!(a.router_shard_connections(), 9);
    assert_eq!(router_toml(&a).tenant_pool_size, 8);
    let a = args(&[
        "--router-max-replicas",
        "20",
        "--shard-connection-budget",
        "100",
    ]);
    assert_eq!(router_toml(&a).shard_max_connections, 5);
    // A tenant's pool never exceeds the router's share.
    assert_eq!(router_toml(&a).tenant_pool_size, 5);
}

#[test]
fn lanes_reach_the_routers_file_only_when_asked() {
    let none = toml::to_string(&router_toml(&args(&[]))).unwrap();
    assert!(!none.contains("lanes"), "{none}");
    assert_eq!(
        shardline_router::RouterConfig::from_toml(&none)
            .unwrap()
            .lanes,
        0
    );
    let one = toml::to_string(&router_toml(&args(&["--router-lanes", "1"]))).unwrap();
    assert_eq!(
        shardline_router::RouterConfig::from_toml(&one)
            .unwrap()
            .lanes,
        1
    );
}

#[test]
fn the_autoscaler_follows_the_options() {
    let text = render(&args(&["--hpa-in-flight-target", "40"]), None).unwrap();
    let docs = documents(&text);
    let hpa = docs
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 10);
    let metrics = hpa["spec"]["metrics"].as_sequence().unwrap();
    assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
    assert_eq!(
        metrics[1]["pods"]["metric"]["name"],
        "router_in_flight_requests"
    );
    assert_eq!(metrics[1]["pods"]["target"]["averageValue"], "40");
    let default = documents(&render(&args(&[]), None).unwrap());
    let hpa = default
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(hpa["spec"]["metrics"].as_sequence().unwrap().len(), 1);
}

#[test]
fn a_changed_config_changes_the_pods_checksum() {
    let checksum = |extra: &[&str]| {
        let docs = documents(&render(&args(extra), None).unwrap());
        let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(checksum(&[]), checksum(&[]));
    assert_ne!(
        checksum(&[]),
        checksum(&["--shard-connection-budget", "200"])
    );
}

#[test]
fn tenants_get_isolation_quota_and_limits() {
    let docs = documents(
        &render(
            &args(&["--tenant-namespace", "acme", "--tenant-namespace", "globex"]),
            None,
        )
        .unwrap(),
    );
    for ns in ["acme", "globex"] {
        let kinds: Vec<&str> = docs
            .iter()
            .filter(|d| d["metadata"]["namespace"] == ns)
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["NetworkPolicy", "ResourceQuota", "LimitRange"]);
    }
    let quota = docs.iter().find(|d| d["kind"] == "ResourceQuota").unwrap();
    assert_eq!(quota["spec"]["hard"]["limits.memory"], "16Gi");
}

#[test]
fn rules_are_embedded_when_given() {
    let groups: serde_yaml::Value =
        serde_yaml::from_str("- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n").unwrap();
    let docs = documents(&render(&args(&[]), Some(groups)).unwrap());
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    assert_eq!(rule["spec"]["groups"][0]["rules"][0]["alert"], "A");
    let docs = documents(&render(&args(&[]), None).unwrap());
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    assert_eq!(rule["spec"]["groups"].as_sequence().map(Vec::len), Some(0));
}

#[test]
fn impossible_settings_are_refused() {
    for bad in [
        &["--router-min-replicas", "0"][..],
        &["--router-min-replicas", "5", "--router-replicas", "3"],
        &["--router-max-replicas", "2"],
        &["--router-cpu-target", "0"],
        &["--etcd-members", "4"],
        &["--shard-connection-budget", "5"],
        &["--tenant-namespace", "Bad_Name"],
        &["--tenant-namespace", "shardline"],
        &["--hpa-in-flight-target", "0"],
    ] {
        assert!(render(&args(bad), None).is_err(), "{bad:?}");
    }
    for bad in ["2", "1/x", "/1", "500m/"] {
        assert!(bad.parse::<RequestLimit>().is_err(), "{bad}");
    }
    assert_eq!(
        "500m/1.5Gi".parse::<RequestLimit>().unwrap(),
        RequestLimit {
            request: "500m".into(),
            limit: "1.5Gi".into()
        }
    );
}
