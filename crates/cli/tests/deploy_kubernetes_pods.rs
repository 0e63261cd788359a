//! The rendered pods, run as the kubelet would run them, on loopback:
//! the manager's and the router's containers start with exactly the
//! command, arguments and environment variables of the manifests, read
//! the files of their ConfigMaps, and mount their Secrets' keys (made
//! here: throwaway certificates, test tokens). Their APIs serve HTTPS,
//! the default: every probe of the manifests answers in its rendered
//! scheme (HTTPS, where a plain HTTP request gets no answer), the router
//! follows the manager over `https://` trusting the Secret's CA, and
//! SIGTERM drains the router within its grace period: in-flight HTTPS
//! and wire requests finish, new connections are refused at once (so the
//! readiness probe fails first), and the process exits before the
//! kubelet would kill it.
//!
//! What the kubelet and the cluster provide is stood in for: each
//! volume's mount path becomes a directory of the test, the Services'
//! names become loopback addresses, and each container port is served
//! on a free loopback port (the pods' own IPs, where 8080 and friends
//! would be free, do not exist here). Those substitutions are the only
//! edits made to the rendered text.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{free_port, Proc, BIN};
use common::{eventually, ADMIN_TOKEN, ROUTER_TOKEN};
use serde_yaml::Value;
use shardline_api::manager::{
    ApplyMigrationRequest, CreateAppRequest, CreateKeyspaceRequest, CreateTenantRequest,
    RegisterShardRequest,
};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{HttpClient, ManagerClient, RetryPolicy, RouterClient};
use shardline_testkit::{EtcdServer, PgCluster, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn render(extra: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["deploy", "kubernetes"])
        .args(extra)
        .output()
        .expect("run shardline");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// Secret contents the test provides: (secret, key) → file.
type Secrets = BTreeMap<(String, String), PathBuf>;

/// A workload's pod template, started as one pod.
struct Pod {
    proc: Proc,
    /// Container port name → loopback address.
    ports: BTreeMap<String, String>,
    /// Each probe as rendered.
    probes: Vec<Probe>,
    grace: u64,
    pre_stop: u64,
    log: PathBuf,
}

impl Pod {
    /// Starts the pod `pod_name` of `workload`: its volumes as
    /// directories under `dir`, `addresses` (rendered → loopback)
    /// replaced in its arguments and configuration files.
    fn start(
        docs: &[Value],
        workload: &Value,
        pod_name: &str,
        dir: &Path,
        secrets: &Secrets,
        addresses: &[(String, String)],
    ) -> Pod {
        let spec = &workload["spec"]["template"]["spec"];
        let containers = spec["containers"].as_sequence().expect("containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let root = dir.join(pod_name);

        // Volumes: each mount path becomes a directory of the test.
        let mut replace: Vec<(String, String)> = addresses.to_vec();
        for m in c["volumeMounts"].as_sequence().expect("mounts") {
            let vname = m["name"].as_str().expect("mount name");
            let vdir = root.join(vname);
            std::fs::create_dir_all(&vdir).expect("volume dir");
            let volume = spec["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == vname)
                .expect("a volume for the mount");
            replace.push((
                m["mountPath"].as_str().expect("path").to_string(),
                vdir.display().to_string(),
            ));
            if let Some(name) = volume["secret"]["secretName"].as_str() {
                // `items`: only those keys, each at its path.
                let items: Option<BTreeMap<&str, &str>> =
                    volume["secret"]["items"].as_sequence().map(|items| {
                        items
                            .iter()
                            .map(|i| {
                                let key = i["key"].as_str().expect("item key");
                                (key, i["path"].as_str().expect("item path"))
                            })
                            .collect()
                    });
                for ((secret, key), file) in secrets {
                    let path = match &items {
                        None => Some(key.as_str()),
                        Some(items) => items.get(key.as_str()).copied(),
                    };
                    if let (true, Some(path)) = (secret == name, path) {
                        std::fs::copy(file, vdir.join(path)).expect("copy a secret key");
                    }
                }
            }
        }
        let edit = |text: &str| {
            replace
                .iter()
                .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
        };
        // ConfigMaps' files, after the mounts are known.
        for v in spec["volumes"].as_sequence().expect("volumes") {
            if let Some(name) = v["configMap"]["name"].as_str() {
                let data = find(docs, "ConfigMap", name)["data"]
                    .as_mapping()
                    .expect("ConfigMap data");
                let vdir = root.join(v["name"].as_str().expect("volume name"));
                for (k, text) in data {
                    let text = edit(text.as_str().expect("text"));
                    std::fs::write(vdir.join(k.as_str().expect("key")), text).expect("write");
                }
            }
        }

        // Environment, as the kubelet fills it.
        let mut env = BTreeMap::new();
        for e in c["env"].as_sequence().expect("env") {
            let name = e["name"].as_str().expect("env name").to_string();
            let from = &e["valueFrom"];
            let value = if let Some(value) = e["value"].as_str() {
                // Paths under the mounts (`SHARDLINE_*_TOKEN_FILE`).
                edit(value)
            } else if from["fieldRef"]["fieldPath"] == "metadata.name" {
                pod_name.to_string()
            } else {
                panic!("{name} from {from:?}: secrets are mounted as files")
            };
            env.insert(name, value);
        }
        let mut words = strings(&c["command"]);
        words.extend(strings(&c["args"]));
        let words: Vec<String> = words
            .iter()
            .map(|w| {
                let w = env
                    .iter()
                    .fold(w.clone(), |w, (k, v)| w.replace(&format!("$({k})"), v));
                edit(&w)
            })
            .collect();
        assert_eq!(words[0], "shardline", "the image's binary");

        let log = dir.join(format!("{pod_name}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let child = Command::new(BIN)
            .args(&words[1..])
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("start the container");

        let ports = c["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| {
                let rendered = format!("0.0.0.0:{}", p["containerPort"].as_u64().expect("port"));
                let local = addresses
                    .iter()
                    .find(|(from, _)| *from == rendered)
                    .map(|(_, to)| to.clone())
                    .unwrap_or_else(|| panic!("no loopback address for {rendered}"));
                (p["name"].as_str().expect("port name").to_string(), local)
            })
            .collect();
        let probes = probes(c);
        Pod {
            proc: Proc(child),
            ports,
            probes,
            grace: spec["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace"),
            pre_stop: c["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0),
            log,
        }
    }

    fn addr(&self, port: &str) -> &str {
        &self.ports[port]
    }

    /// Every probe answers 200 in its scheme, as the kubelet would see
    /// it (over HTTPS verifying the certificate with `ca`, which the
    /// kubelet does not: a stricter probe).
    async fn probes_answer(&self, ca: &Path) -> bool {
        for p in &self.probes {
            if probe(self.addr(&p.port), p, ca).await != Some(200) {
                return false;
            }
        }
        true
    }

    fn probe(&self, kind: &str) -> &Probe {
        self.probes
            .iter()
            .find(|p| p.kind == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    /// The API's `https://` URL (the port the probes use).
    fn api_url(&self) -> String {
        let p = self.probe("readinessProbe");
        assert_eq!(p.scheme, "HTTPS", "{p:?}");
        format!("https://{}", self.addr(&p.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A container's probe as rendered.
#[derive(Debug, Clone)]
struct Probe {
    kind: &'static str,
    path: String,
    /// The container port's name.
    port: String,
    /// `HTTP` (the default) or `HTTPS`.
    scheme: String,
}

fn probes(container: &Value) -> Vec<Probe> {
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .into_iter()
        .map(|kind| {
            let get = &container[kind]["httpGet"];
            Probe {
                kind,
                path: get["path"].as_str().expect("probe path").to_string(),
                port: get["port"].as_str().expect("probe port name").to_string(),
                scheme: get["scheme"].as_str().unwrap_or("HTTP").to_string(),
            }
        })
        .collect()
}

/// The probes of a workload's container.
fn workload_probes(docs: &[Value], kind: &str, name: &str) -> Vec<Probe> {
    probes(&find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0])
}

/// A probe's GET in its scheme: the status, or `None` when there is no
/// answer (refused, or no HTTP in that scheme).
async fn probe(addr: &str, p: &Probe, ca: &Path) -> Option<u16> {
    match p.scheme.as_str() {
        "HTTPS" => {
            let client = HttpClient::with_ca_file(&format!("https://{addr}"), None, Some(ca))
                .expect("HTTPS client")
                .with_timeout(Duration::from_secs(5));
            client.get_raw(&p.path).await.ok().map(|(status, _)| status)
        }
        _ => get(addr, &p.path).await,
    }
}

/// A plain HTTP GET as a probe makes it: the status, or `None` when the
/// connection is refused or not answered in HTTP.
async fn get(addr: &str, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether a new PostgreSQL client is refused at connect: the router
/// closes its wire listener at SIGTERM, while its sessions drain.
async fn wire_refuses_new_clients(addr: &str) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_kubernetes_pods_answer_probes_and_drain() {
    let docs = render(&["--manager-replicas", "1", "--etcd-members", "1"]);
    // The APIs' probes are HTTPS by default; control: plain HTTP when
    // turned off (rendered only).
    let plain = render(&["--manager-replicas", "1", "--no-http-tls"]);
    for (kind, name) in [
        ("Deployment", "shardline-router"),
        ("StatefulSet", "shardline-manager"),
    ] {
        for (rendering, scheme) in [(&docs, "HTTPS"), (&plain, "HTTP")] {
            let probes = workload_probes(rendering, kind, name);
            assert!(probes.iter().all(|p| p.scheme == scheme), "{probes:?}");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = EtcdServer::start_tls().await.expect("start etcd");
    let pg = PgCluster::start().await.expect("start PostgreSQL");
    let etcd_tls = etcd.tls_files().expect("TLS etcd").clone();
    let ca_dir = dir.path().join("router-ca");
    std::fs::create_dir_all(&ca_dir).expect("certificate dir");
    let router_tls = TlsFiles::make(&ca_dir).expect("certificates");
    // The APIs' Secret, of a CA of its own: the router trusts the
    // manager by this `ca.crt` alone.
    let http_ca_dir = dir.path().join("http-ca");
    std::fs::create_dir_all(&http_ca_dir).expect("certificate dir");
    let http_tls = TlsFiles::make(&http_ca_dir).expect("certificates");

    let secret = |s: &str, k: &str, f: &Path| ((s.to_string(), k.to_string()), f.to_path_buf());
    // As `kubectl create secret generic --from-file` keeps them: with
    // the newline an editor leaves.
    let (admin_token, router_token) = (
        dir.path().join("admin-token"),
        dir.path().join("router-token"),
    );
    std::fs::write(&admin_token, format!("{ADMIN_TOKEN}\n")).expect("write a token");
    std::fs::write(&router_token, format!("{ROUTER_TOKEN}\n")).expect("write a token");
    let secrets: Secrets = [
        secret("shardline-etcd-client-tls", "ca.crt", &etcd_tls.ca),
        secret(
            "shardline-etcd-client-tls",
            "tls.crt",
            &etcd_tls.client_cert,
        ),
        secret("shardline-etcd-client-tls", "tls.key", &etcd_tls.client_key),
        secret("shardline-router-tls", "tls.crt", &router_tls.server_cert),
        secret("shardline-router-tls", "tls.key", &router_tls.server_key),
        secret("shardline-http-tls", "tls.crt", &http_tls.server_cert),
        secret("shardline-http-tls", "tls.key", &http_tls.server_key),
        secret("shardline-http-tls", "ca.crt", &http_tls.ca),
        secret("shardline-tokens", "admin-token", &admin_token),
        secret("shardline-tokens", "router-token", &router_token),
    ]
    .into_iter()
    .collect();
    let (mport, rport, pgport) = (free_port(), free_port(), free_port());
    let local = |p: u16| format!("127.0.0.1:{p}");
    let etcd_addr = etcd.endpoint().trim_start_matches("https://").to_string();
    let addresses = vec![
        ("0.0.0.0:8081".to_string(), local(mport)),
        ("0.0.0.0:8080".to_string(), local(rport)),
        ("0.0.0.0:6432".to_string(), local(pgport)),
        (
            "shardline-manager-0.shardline-manager.shardline.svc:8081".to_string(),
            local(mport),
        ),
        (
            "shardline-etcd-0.shardline-etcd.shardline.svc:2379".to_string(),
            etcd_addr,
        ),
    ];

    let manager = Pod::start(
        &docs,
        find(&docs, "StatefulSet", "shardline-manager"),
        "shardline-manager-0",
        dir.path(),
        &secrets,
        &addresses,
    );
    let ca = http_tls.ca.as_path();
    assert!(
        eventually(Duration::from_secs(30), || manager.probes_answer(ca)).await,
        "manager probes {:?}: {}",
        manager.probes,
        manager.log()
    );
    // Control: the probe's port answers no plain HTTP, so a probe in
    // the wrong scheme would fail.
    let p = manager.probe("readinessProbe");
    assert_eq!(get(manager.addr(&p.port), &p.path).await, None);
    let admin = ManagerClient::with_ca_file(&manager.api_url(), Some(ADMIN_TOKEN.into()), Some(ca))
        .expect("manager client");
    assert!(
        eventually(Duration::from_secs(20), || async {
            admin
                .register_shard(&RegisterShardRequest {
                    id: "s0".into(),
                    primary: pg.dsn(),
                    replicas: vec![],
                    tenant: None,
                    synchronous: false,
                })
                .await
                .is_ok()
        })
        .await,
        "register a shard (the manager leads): {}",
        manager.log()
    );
    admin
        .create_keyspace(&CreateKeyspaceRequest {
            name: "default".into(),
            key_type: Default::default(),
            shards: vec!["s0".into()],
        })
        .await
        .expect("keyspace");
    admin
        .apply_migration(
            "default",
            &ApplyMigrationRequest {
                name: "001".into(),
                sql: "CREATE TABLE t (k text PRIMARY KEY)".into(),
            },
        )
        .await
        .expect("migration");
    admin
        .create_tenant(&CreateTenantRequest {
            id: "default".into(),
            ..CreateTenantRequest::default()
        })
        .await
        .expect("tenant");
    let app = admin
        .create_app(&CreateAppRequest {
            name: "app".into(),
            ..CreateAppRequest::default()
        })
        .await
        .expect("app");

    let mut router = Pod::start(
        &docs,
        find(&docs, "Deployment", "shardline-router"),
        "shardline-router-0",
        dir.path(),
        &secrets,
        &addresses,
    );
    // The router's readiness needs a catalog, which it follows over
    // https:// from the manager: the probes answering shows it trusts
    // the manager's certificate by the Secret's CA.
    assert!(
        eventually(Duration::from_secs(30), || router.probes_answer(ca)).await,
        "router probes {:?}: {}",
        router.probes,
        router.log()
    );
    let p = router.probe("readinessProbe");
    assert_eq!(get(router.addr(&p.port), &p.path).await, None);
    let client = RouterClient::with_ca_file(&router.api_url(), Some(app.token.clone()), Some(ca))
        .expect("router client")
        .with_retry(RetryPolicy::none());
    let wire = router.addr("postgres").to_string();
    let exec = |sql: &str| ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text("a".into()),
        sql: sql.into(),
        params: vec![],
        consistency: Default::default(),
    };
    let insert = exec("INSERT INTO t VALUES ('a')");
    assert!(
        eventually(Duration::from_secs(20), || async {
            client.execute(&insert).await.is_ok()
        })
        .await,
        "a write through the router: {}",
        router.log()
    );

    // In flight when SIGTERM comes: an HTTPS request and a wire session
    // (TLS, as the router requires it), each sleeping 3 s on the shard.
    let in_http = tokio::spawn({
        let (client, req) = (
            client.clone(),
            exec("SELECT k, pg_sleep(3) FROM t WHERE k = 'a'"),
        );
        async move { client.execute(&req).await }
    });
    let (host, port) = wire.split_once(':').expect("host:port");
    let dsn = format!(
        "host={host} port={port} user={} password={} dbname=default sslmode=require",
        app.app.id, app.token
    );
    let in_wire = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args([
                &dsn,
                "-Atc",
                "/* shardline.shard_key='a' */ SELECT k, pg_sleep(3) FROM t WHERE k = 'a'",
            ])
            .output()
            .expect("run psql")
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let term = Instant::now();
    router.proc.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Readiness fails first: the listeners are closed while the requests
    // still run, so the probe (and any new client) is refused.
    let ready = router.probe("readinessProbe");
    assert_eq!(probe(router.addr(&ready.port), ready, ca).await, None);
    assert!(
        !in_http.is_finished(),
        "the HTTP request ended before the check"
    );
    assert!(
        wire_refuses_new_clients(&wire).await,
        "wire still accepts connections after SIGTERM"
    );

    let answered = in_http.await.expect("HTTP task");
    assert!(answered.is_ok(), "in-flight HTTPS: {answered:?}");
    let psql = in_wire.await.expect("psql task");
    assert!(
        psql.status.success(),
        "in-flight wire session: {}{}",
        String::from_utf8_lossy(&psql.stdout),
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "a|");

    // The kubelet kills after the grace period, counted from the start
    // of preStop; SIGTERM comes after preStop.
    let limit = Duration::from_secs(router.grace - router.pre_stop);
    let status = loop {
        if let Some(s) = router.proc.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            term.elapsed() < limit,
            "the router did not exit within {limit:?}: {}",
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "router drained and exited {status} in {:?} (grace after preStop: {limit:?})",
        term.elapsed()
    );
    assert!(status.success(), "{}", router.log());
}
