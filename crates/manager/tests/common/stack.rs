//! A manager in-process over a file store that outlives it, so a test can
//! stop it, change the catalog behind its back (as a crashed manager
//! would have left it) and start another; with typed calls of its API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_api::manager::{HealthSnapshot, ShardInfo};
use shardline_catalog::{CatalogStore, FileStore, Op, Precondition};
use shardline_core::catalog::{keys, Shard};
use shardline_manager::ManagerConfig;
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

use super::{http, Answer, ADMIN_TOKEN, ROUTER_TOKEN};

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A catalog store, and a manager on it while started.
pub struct Stack {
    pub store: Arc<FileStore>,
    running: Option<Running>,
    dir: tempfile::TempDir,
}

impl Stack {
    /// An empty catalog and no manager yet. Failover steps are logged
    /// (shown with `--nocapture`; other logs by `SHARDLINE_LOG`, e.g.
    /// `SHARDLINE_LOG=shardline_manager::reshard=info`).
    pub async fn new() -> Stack {
        Stack::open(tempfile::tempdir().unwrap()).await
    }

    /// The catalog in `dir` (as [`Stack::close`] left it), no manager yet.
    pub async fn open(dir: tempfile::TempDir) -> Stack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SHARDLINE_LOG").unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("shardline_manager::failover=info")
                }),
            )
            .with_test_writer()
            .try_init();
        let store = FileStore::open(catalog_path(dir.path())).await.unwrap();
        Stack {
            store: Arc::new(store),
            running: None,
            dir,
        }
    }

    /// Stops the manager and closes the store (so another process may
    /// open it); returns its directory.
    pub async fn close(mut self) -> tempfile::TempDir {
        self.stop().await;
        let store = Arc::into_inner(self.store).expect("no one else holds the store");
        drop(store);
        self.dir
    }

    /// The default settings (as a deployment has them) on port 0.
    pub fn config(&self) -> ManagerConfig {
        let mut cfg = ManagerConfig::new(catalog_path(self.dir.path()), ADMIN_TOKEN, ROUTER_TOKEN);
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg
    }

    /// Starts a manager with `cfg`.
    pub async fn start_with(&mut self, cfg: ManagerConfig) {
        assert!(self.running.is_none());
        let store: Arc<dyn CatalogStore> = self.store.clone();
        let bound = shardline_manager::bind_with_store(cfg, store)
            .await
            .unwrap();
        let addr = bound.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(bound.run(stop.clone()));
        self.running = Some(Running { addr, stop, task });
    }

    /// Starts a manager with the default settings.
    pub async fn start(&mut self) {
        let cfg = self.config();
        self.start_with(cfg).await;
    }

    /// Stops the manager and waits for it.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop.cancel();
            tokio::time::timeout(Duration::from_secs(60), r.task)
                .await
                .expect("manager stops")
                .unwrap()
                .unwrap();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.as_ref().expect("manager running").addr
    }

    /// An admin call.
    pub async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        http(self.addr(), method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Registers shard `id` with a primary and replicas (ids `<id>-0`,
    /// `<id>-1`, ...).
    pub async fn register(&self, id: &str, primary: &PgCluster, replicas: &[&PgCluster]) {
        let body = serde_json::json!({
            "id": id,
            "primary": primary.dsn(),
            "replicas": replicas.iter().map(|r| r.dsn()).collect::<Vec<_>>(),
        });
        let a = self
            .admin("POST", "/v1/shards", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    /// `GET /v1/shards/{id}`.
    pub async fn shard(&self, id: &str) -> ShardInfo {
        let a = self.admin("GET", &format!("/v1/shards/{id}"), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    /// `GET /v1/health` as a router.
    pub async fn health(&self) -> HealthSnapshot {
        let a = http(self.addr(), "GET", "/v1/health", Some(ROUTER_TOKEN), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        http(self.addr(), "GET", "/metrics", None, None).await.body
    }

    /// Waits until every instance of `shard` answered its checks.
    pub async fn wait_healthy(&self, shard: &str, instances: usize) {
        let ok = super::eventually(Duration::from_secs(20), || async {
            let h = self.health().await;
            let up = h
                .instances
                .iter()
                .filter(|i| i.shard == shard && i.health.up)
                .count();
            up == instances
        })
        .await;
        assert!(
            ok,
            "{instances} instances of {shard} up: {:?}",
            self.health().await
        );
    }

    /// The shard as stored.
    pub async fn stored_shard(&self, id: &str) -> Shard {
        let e = self.store.get(&keys::shard(id)).await.unwrap().unwrap();
        serde_json::from_slice(&e.value).unwrap()
    }

    /// Changes the stored shard directly (no manager involved).
    pub async fn edit_shard(&self, id: &str, edit: impl FnOnce(&mut Shard)) {
        let key = keys::shard(id);
        let e = self.store.get(&key).await.unwrap().unwrap();
        let mut shard: Shard = serde_json::from_slice(&e.value).unwrap();
        edit(&mut shard);
        self.store
            .txn(
                &[Precondition::ModRevision(key.clone(), e.mod_revision)],
                &[Op::Put {
                    key,
                    value: serde_json::to_vec(&shard).unwrap(),
                }],
            )
            .await
            .unwrap();
    }

    /// Polls the shard until `done` holds (up to `limit`); returns it and
    /// when it first held.
    pub async fn wait_shard(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&ShardInfo) -> bool,
    ) -> Option<(ShardInfo, Instant)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let s = self.shard(id).await;
            if done(&s) {
                return Some((s, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

/// The catalog file in a stack's directory.
pub fn catalog_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("catalog.json")
}

/// The role of instance `id` in a shard as the API shows it.
pub fn role_of(shard: &ShardInfo, id: &str) -> Option<String> {
    shard
        .instances
        .iter()
        .find(|i| i.id == id)
        .map(|i| i.role.clone())
}

/// Ids of a shard's instances with `role`.
pub fn ids_with_role(shard: &ShardInfo, role: &str) -> Vec<String> {
    shard
        .instances
        .iter()
        .filter(|i| i.role == role)
        .map(|i| i.id.clone())
        .collect()
}

/// Whether a server is in recovery.
pub async fn in_recovery(pg: &PgCluster) -> bool {
    let c = pg.connect().await.unwrap();
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Rows of `t(id int)` on a server (0 when the table is missing yet).
pub async fn ids(pg: &PgCluster) -> Vec<i32> {
    let c = pg.connect().await.unwrap();
    match c.query("SELECT id FROM t ORDER BY id", &[]).await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => vec![],
    }
}

/// Waits until a server holds row `id` of `t`.
pub async fn wait_row(pg: &PgCluster, id: i32, limit: Duration) -> bool {
    super::eventually(limit, || async { ids(pg).await.contains(&id) }).await
}
