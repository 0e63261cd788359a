//! A whole shardline in-process for integration tests: N throwaway
//! PostgreSQL shards, a manager (file catalog in a temp dir) and a router,
//! both on loopback port 0, keyspace `default` over the shards, tenant
//! `default` in it and one client app of that tenant.

#![allow(dead_code)]

pub mod ha;
pub mod link;
pub mod load;
pub mod procs;

use std::time::Duration;

use serde_json::{json, Value};
use shardline_api::manager::{
    CreateAppRequest, CreateKeyspaceRequest, CreateTenantRequest, RegisterShardRequest,
};
use shardline_api::router::{ExecuteRequest, ExecuteResponse, ShardKeyValue};
use shardline_client::{ManagerClient, RouterClient};
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";
pub const ROUTER_TOKEN: &str = "router-token-for-tests-0001";

pub struct Stack {
    pub shards: Vec<PgCluster>,
    /// The replicas of each shard, in registration order.
    pub replicas: Vec<Vec<PgCluster>>,
    pub manager_url: String,
    pub router_url: String,
    /// The router's PostgreSQL wire listener, when `tune_router` gave it
    /// one (`pg_listen`).
    pub router_pg: Option<std::net::SocketAddr>,
    pub app_token: String,
    pub admin: ManagerClient,
    pub router: RouterClient,
    pub manager_stop: CancellationToken,
    pub router_stop: CancellationToken,
    pub manager_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub router_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// With `StackOptions::etcd_managers`: the manager processes.
    pub ha: Option<ha::HaManagers>,
    pub dir: tempfile::TempDir,
}

/// Options of a test stack.
pub struct StackOptions {
    pub shards: usize,
    /// Shards registered (as `spare0`, `spare1`, ...) but in no keyspace,
    /// reserved for `spare_for` if set.
    pub spare: usize,
    pub spare_for: Option<String>,
    /// Streaming replicas per (non-spare) shard.
    pub replicas: usize,
    /// Synchronous replication: the shards registered as synchronous
    /// (the manager sets `synchronous_standby_names`), with
    /// `synchronous_commit = on`.
    pub synchronous: bool,
    /// The manager's health interval (default here 200 ms; `None` keeps
    /// the manager's own default).
    pub health_interval: Option<Duration>,
    pub statement_timeout: Duration,
    pub body_limit: usize,
    /// The manager's router lease (its default if `None`).
    pub router_lease: Option<Duration>,
    /// Extra PostgreSQL settings of every shard (e.g.
    /// `shared_preload_libraries`).
    pub pg_settings: &'static [(&'static str, &'static str)],
    /// Changes the router's settings before it starts (e.g. a shorter
    /// `request_timeout`).
    pub tune_router: fn(&mut shardline_router::RouterConfig),
    /// Changes the (in-process) manager's settings before it starts
    /// (e.g. a shorter `max_watch_wait`).
    pub tune_manager: fn(&mut shardline_manager::ManagerConfig),
    /// The address the router listens on (port 0: any free one).
    pub router_ip: std::net::IpAddr,
    /// The router's catalog cache file.
    pub catalog_cache: Option<std::path::PathBuf>,
    /// Managers as separate processes on one etcd instead of one in this
    /// process on a catalog file: each entry is that manager's failpoint,
    /// if any. Only the first is started (and leads); the test starts the
    /// others (`stack.ha`). The router and `admin` know every URL.
    pub etcd_managers: Vec<Option<&'static str>>,
    /// The manager's `failover_after` (its default if `None`).
    pub failover_after: Option<u32>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            shards: 2,
            spare: 0,
            spare_for: None,
            replicas: 0,
            synchronous: false,
            health_interval: Some(Duration::from_millis(200)),
            statement_timeout: Duration::from_secs(10),
            body_limit: 1024 * 1024,
            router_lease: None,
            pg_settings: &[],
            tune_router: |_| {},
            tune_manager: |_| {},
            router_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            catalog_cache: None,
            etcd_managers: Vec::new(),
            failover_after: None,
        }
    }
}

pub fn manager_config(dir: &std::path::Path) -> shardline_manager::ManagerConfig {
    let mut cfg =
        shardline_manager::ManagerConfig::new(dir.join("catalog.json"), ADMIN_TOKEN, ROUTER_TOKEN);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.health_interval = Duration::from_millis(200);
    cfg
}

pub async fn start_manager(
    cfg: shardline_manager::ManagerConfig,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let bound = shardline_manager::bind(cfg).await.expect("bind manager");
    let url = format!("http://{}", bound.local_addr());
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    (url, stop, task)
}

pub async fn start_router(
    manager_url: &str,
    opts: &StackOptions,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (url, _, stop, task) = start_router_with_pg(manager_url, opts).await;
    (url, stop, task)
}

/// [`start_router`], also returning the address of its PostgreSQL wire
/// listener (if `tune_router` set `pg_listen`).
pub async fn start_router_with_pg(
    manager_url: &str,
    opts: &StackOptions,
) -> (
    String,
    Option<std::net::SocketAddr>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut cfg = shardline_router::RouterConfig::new(manager_url, ROUTER_TOKEN);
    cfg.listen = std::net::SocketAddr::new(opts.router_ip, 0);
    cfg.catalog_cache = opts.catalog_cache.clone();
    cfg.statement_timeout = opts.statement_timeout;
    cfg.body_limit = opts.body_limit;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.acquire_timeout = Duration::from_secs(1);
    (opts.tune_router)(&mut cfg);
    let bound = shardline_router::bind(cfg).await.expect("bind router");
    let url = format!("http://{}", bound.local_addr());
    let pg = bound.pg_local_addr();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    (url, pg, stop, task)
}

/// Keyspace `default` over `shards` (registered), tenant `default` in
/// it and app `test-app` of that tenant; returns the app's token.
pub async fn default_keyspace(admin: &ManagerClient, shards: Vec<String>) -> String {
    admin
        .create_keyspace(&CreateKeyspaceRequest {
            name: "default".into(),
            key_type: Default::default(),
            shards,
        })
        .await
        .unwrap();
    admin
        .create_tenant(&CreateTenantRequest {
            id: "default".into(),
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap();
    let app = admin
        .create_app(&CreateAppRequest {
            name: "test-app".into(),
            ..CreateAppRequest::default()
        })
        .await
        .unwrap();
    app.token
}

/// An admin write (a new app named `name`) through `m`, sent again until
/// it succeeds (up to 30 s: while managers take over from one another
/// an answer may be a retryable 503); when it did.
pub async fn admin_write(m: &ManagerClient, name: &str) -> Option<std::time::Instant> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let made = m
            .create_app(&CreateAppRequest {
                name: name.into(),
                ..CreateAppRequest::default()
            })
            .await;
        if made.is_ok() {
            return Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until `check` passes, up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Stack {
    /// Logs go to the test's output when `SHARDLINE_LOG` is set (e.g.
    /// `SHARDLINE_LOG=shardline_manager::reshard=info`).
    pub async fn start(opts: StackOptions) -> Stack {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let mut shards = Vec::new();
        let mut replicas = Vec::new();
        for i in 0..opts.shards + opts.spare {
            let mut settings = opts.pg_settings.to_vec();
            if opts.synchronous && i < opts.shards {
                settings.extend_from_slice(shardline_testkit::SYNC_REPLICATION);
            } else if opts.replicas > 0 && i < opts.shards {
                // Asynchronous replication as deployed: a commit waits for
                // its WAL to be written locally (the test default does
                // not), not for a standby.
                settings.push(("synchronous_commit", "local"));
            }
            let primary = PgCluster::start_with(&settings).await.expect("start shard");
            let mut mine = Vec::new();
            for _ in 0..if i < opts.shards { opts.replicas } else { 0 } {
                mine.push(
                    PgCluster::start_replica_of(&primary)
                        .await
                        .expect("start replica"),
                );
            }
            shards.push(primary);
            replicas.push(mine);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = manager_config(dir.path());
        if let Some(interval) = opts.health_interval {
            cfg.health_interval = interval;
        } else {
            cfg.health_interval = shardline_manager::ManagerConfig::new(
                dir.path().join("unused.json"),
                ADMIN_TOKEN,
                ROUTER_TOKEN,
            )
            .health_interval;
        }
        if let Some(n) = opts.failover_after {
            cfg.failover_after = n;
        }
        if let Some(lease) = opts.router_lease {
            cfg.router_lease = lease;
        }
        (opts.tune_manager)(&mut cfg);
        let (manager_url, manager_stop, manager_task, ha) = if opts.etcd_managers.is_empty() {
            let (url, stop, task) = start_manager(cfg).await;
            (url, stop, Some(task), None)
        } else {
            let ha = ha::HaManagers::new(
                dir.path(),
                opts.etcd_managers.clone(),
                cfg.health_interval,
                opts.router_lease,
                opts.failover_after,
            )
            .await;
            ha.start(0);
            assert!(
                ha.wait_leader(0, Duration::from_secs(30)).await,
                "the first manager did not lead: {}",
                ha.log(0)
            );
            (
                ha.urls().join(","),
                CancellationToken::new(),
                None,
                Some(ha),
            )
        };
        let admin = ManagerClient::new(&manager_url, Some(ADMIN_TOKEN.into())).unwrap();
        for (i, pg) in shards.iter().enumerate() {
            let spare = i >= opts.shards;
            admin
                .register_shard(&RegisterShardRequest {
                    id: if spare {
                        format!("spare{}", i - opts.shards)
                    } else {
                        format!("s{i}")
                    },
                    primary: pg.dsn(),
                    replicas: replicas[i].iter().map(|r| r.dsn()).collect(),
                    tenant: if spare { opts.spare_for.clone() } else { None },
                    // The manager lists the replicas (replacing the
                    // settings' `*`) and keeps the list across failovers.
                    synchronous: opts.synchronous && !spare && opts.replicas > 0,
                })
                .await
                .unwrap();
        }
        let app_token =
            default_keyspace(&admin, (0..opts.shards).map(|i| format!("s{i}")).collect()).await;
        let (router_url, router_pg, router_stop, router_task) =
            start_router_with_pg(&manager_url, &opts).await;
        let router = RouterClient::new(&router_url, Some(app_token.clone())).unwrap();
        let ready = wait_for_token(&router).await;
        assert!(ready, "router did not load the catalog");
        Stack {
            shards,
            replicas,
            manager_url,
            router_url,
            router_pg,
            app_token,
            admin,
            router,
            manager_stop,
            router_stop,
            manager_task,
            router_task: Some(router_task),
            ha,
            dir,
        }
    }

    /// Creates a tenant (from `req`) and one app of it; returns a router
    /// client holding the app's token, once the router knows the app.
    pub async fn tenant(&self, req: CreateTenantRequest) -> Tenant {
        let id = req.id.clone();
        self.admin.create_tenant(&req).await.expect("create tenant");
        let app = self
            .admin
            .create_app(&CreateAppRequest {
                name: format!("{id}-app"),
                tenant: Some(id.clone()),
                ..CreateAppRequest::default()
            })
            .await
            .expect("create app");
        let router = RouterClient::new(&self.router_url, Some(app.token.clone())).unwrap();
        assert!(
            wait_for_token(&router).await,
            "router did not learn app of {id}"
        );
        Tenant {
            id,
            token: app.token,
            router,
        }
    }

    /// Tenant `id`'s PostgreSQL role, database and schema name, as the
    /// manager's API shows it (random: `Tenant::pg_name`).
    pub async fn pg_name(&self, id: &str) -> String {
        self.admin.get_tenant(id).await.expect("get tenant").pg_name
    }

    /// Applies a migration through the manager.
    pub async fn migrate(&self, name: &str, sql: &str) {
        self.admin
            .apply_migration(
                "default",
                &shardline_api::manager::ApplyMigrationRequest {
                    name: name.into(),
                    sql: sql.into(),
                },
            )
            .await
            .expect("apply migration");
    }

    pub async fn stop(mut self) {
        self.router_stop.cancel();
        self.manager_stop.cancel();
        if let Some(t) = self.router_task.take() {
            t.await.unwrap().unwrap();
        }
        if let Some(t) = self.manager_task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A tenant made by [`Stack::tenant`].
pub struct Tenant {
    pub id: String,
    pub token: String,
    pub router: RouterClient,
}

impl Tenant {
    /// Runs one statement in the tenant's own keyspace.
    pub async fn exec(
        &self,
        key: &str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<ExecuteResponse, shardline_client::ClientError> {
        self.router
            .execute(&ExecuteRequest {
                keyspace: None,
                shard_key: ShardKeyValue::Text(key.into()),
                sql: sql.into(),
                params,
                consistency: Default::default(),
            })
            .await
    }
}

/// Waits until the router accepts the client's token (it learns new apps
/// from the catalog within milliseconds).
pub async fn wait_for_token(router: &RouterClient) -> bool {
    eventually(Duration::from_secs(10), || async {
        !matches!(
            router
                .execute(&ExecuteRequest {
                    keyspace: None,
                    shard_key: ShardKeyValue::Text("probe".into()),
                    sql: "SELECT 1".into(),
                    params: vec![],
                    consistency: Default::default(),
                })
                .await,
            Err(shardline_client::ClientError::Api {
                status: 401 | 503,
                ..
            })
        )
    })
    .await
}

/// A raw HTTP answer: status, headers, body as JSON (or null).
pub struct Raw {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub request_id: Option<String>,
    pub body: Value,
    pub text: String,
}

/// Sends a raw HTTP/1.1 request over a fresh TCP connection, so tests can
/// send anything (bad JSON, wrong methods, huge bodies).
pub async fn raw(
    base_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a huge body.
    let _ = stream.write_all(body).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Raw {
        status,
        retry_after: header("retry-after"),
        content_type: header("content-type"),
        request_id: header("x-request-id"),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        text: body,
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// `{"keyspace": "default", "shard_key": key, "sql": sql, "params": params}`.
pub fn exec_body(key: &str, sql: &str, params: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"shard_key": key, "sql": sql, "params": params})).unwrap()
}
