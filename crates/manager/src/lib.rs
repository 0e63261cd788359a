//! The shardline manager (control plane): the catalog of keyspaces,
//! shards, tenants and client apps behind an HTTP API; each tenant's
//! PostgreSQL role and schema on every shard of its keyspace; schema
//! migrations applied per tenant; health checks and a reconciler; the
//! catalog served to routers as a long-poll watch; replicas, health
//! checks with replication lag, and failover (automatic and planned);
//! online resharding.
//!
//! Start it in-process with [`bind`] then [`BoundManager::run`] (tests
//! bind port 0), or with [`run`].
//!
//! # Layout
//! - [`config`]: the TOML configuration.
//! - [`service`]: the catalog in memory, kept current from the store, and
//!   compare-and-swap updates.
//! - [`ops`]: keyspace and shard operations.
//! - [`tenants`]: tenant create, update, delete.
//! - [`apps`]: client apps and token rotation.
//! - [`migrations`]: migrations, applied per tenant on every shard.
//! - [`checks`]: validation of request fields.
//! - [`pg`]: connections to shards, error mapping, probes.
//! - [`tenant_pg`]: tenants' roles, schemas and migrations on a shard.
//! - [`health`]: the periodic health checker (LSNs, lag, failures).
//! - [`failover`]: automatic failover and planned switchover, resumed
//!   after a restart.
//! - [`replicas`]: instance ids and registering replicas.
//! - [`reconcile`]: brings every shard up to its tenants and migrations.
//! - [`reshard`]: online resharding jobs (split, merge, move), resumed
//!   after a restart.
//! - [`routers`]: live routers and their leases.
//! - [`router_book`]: which routers hold leases, in the shared store.
//! - [`health_book`]: failing primaries, in the shared store.
//! - [`leader`]: which manager leads; the leader-only work.
//! - [`forward`]: requests a follower passes to the leader.
//! - [`http`]: the HTTP API.
//! - [`error`]: service errors and their HTTP classification.
//! - [`time`]: RFC 3339 timestamps.

pub mod apps;
pub mod checks;
pub mod config;
pub mod error;
pub mod failover;
pub mod failpoints;
pub mod forward;
pub mod health;
pub mod health_book;
pub mod http;
pub mod leader;
pub mod migrations;
pub mod ops;
pub mod pg;
pub mod reconcile;
pub mod replicas;
pub mod reshard;
pub mod router_book;
pub mod routers;
pub mod service;
pub mod standbys;
pub mod tenant_code;
pub mod tenant_pg;
pub mod tenants;
pub mod time;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shardline_catalog::{CatalogStore, ElectionOptions, EtcdStore, EtcdStoreOptions, FileStore};
use shardline_http::TokenCheck;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::ManagerConfig;

/// How long in-flight requests may run after shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// A manager whose listener is bound and catalog loaded.
pub struct BoundManager {
    listener: TcpListener,
    /// HTTPS: the certificate served, reloaded when its files change.
    tls: Option<shardline_http::ServerTls>,
    config: ManagerConfig,
    store: Arc<dyn CatalogStore>,
    /// On etcd: the store that campaigns for leadership.
    election: Option<(EtcdStore, ElectionOptions)>,
    /// On etcd: the router book's store.
    router_book: Option<Arc<dyn CatalogStore>>,
    /// On etcd: the health book's store.
    health_book: Option<Arc<dyn CatalogStore>>,
}

/// Opens the catalog store (etcd when configured, else the file) and
/// binds the listener.
pub async fn bind(mut config: ManagerConfig) -> anyhow::Result<BoundManager> {
    config.fill_from_env();
    config.validate()?;
    let Some(etcd) = config.etcd.clone() else {
        let store = FileStore::open(&config.catalog_path)
            .await
            .with_context(|| format!("open catalog {}", config.catalog_path.display()))?;
        return bind_with_store(config, Arc::new(store)).await;
    };
    let book_prefix = format!("{}.routers/", etcd.prefix.trim_end_matches('/'));
    let health_prefix = format!("{}.health/", etcd.prefix.trim_end_matches('/'));
    let mut options = EtcdStoreOptions::new(etcd.endpoints).with_prefix(etcd.prefix);
    options.request_timeout = etcd.request_timeout;
    options.user = etcd.username.zip(etcd.password);
    if let Some(ca) = &etcd.ca_file {
        let read =
            |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        let identity = match (&etcd.cert_file, &etcd.key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        options.tls = Some(shardline_catalog::EtcdTls {
            ca: read(ca)?,
            identity,
        });
    }
    let book = EtcdStore::connect(options.clone().with_prefix(book_prefix))
        .await
        .context("set up the etcd router book")?;
    let health = EtcdStore::connect(options.clone().with_prefix(health_prefix))
        .await
        .context("set up the etcd health book")?;
    let store = EtcdStore::connect(options)
        .await
        .context("set up the etcd catalog store")?;
    let election = ElectionOptions {
        ttl: etcd.leader_ttl,
        ..ElectionOptions::default()
    };
    let mut bound = bind_with_store(config, Arc::new(store.clone())).await?;
    bound.election = Some((store, election));
    bound.router_book = Some(Arc::new(book));
    bound.health_book = Some(Arc::new(health));
    Ok(bound)
}

/// Like [`bind`], with a given store.
pub async fn bind_with_store(
    config: ManagerConfig,
    store: Arc<dyn CatalogStore>,
) -> anyhow::Result<BoundManager> {
    config.validate()?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(shardline_http::ServerTls::load(
            cert,
            key,
            &[shardline_http::tls::ALPN_HTTP1],
        )?),
        _ => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    Ok(BoundManager {
        listener,
        tls,
        config,
        store,
        election: None,
        router_book: None,
        health_book: None,
    })
}

impl BoundManager {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` is cancelled, then drains and stops the
    /// background tasks.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = self.config;
        let tracker = TaskTracker::new();
        let tasks = shutdown.child_token();
        let service = service::CatalogService::start(self.store, tasks.clone(), &tracker)
            .await
            .context("load the catalog")?;
        if self.election.is_none() {
            // The only manager of its catalog: before it serves. (Under an
            // election the leader does it, at the start of its term.)
            if let Err(e) = replicas::assign_missing_ids(&service).await {
                tracing::error!(error = %e, "give instances ids");
            }
        }
        let metrics = shardline_metrics::Registry::new();
        let health_metrics = health::HealthMetrics::register(&metrics);
        let health_table = Arc::new(health::HealthTable::default());
        let mut routers = routers::RouterRegistry::new(cfg.router_lease);
        if !service.current().catalog.shards.is_empty() {
            // Not a first start: routers may hold leases from before.
            routers = routers.inherit_leases();
        }
        let routers = Arc::new(routers);
        let failovers = failover::Failovers::new(
            Arc::clone(&service),
            Arc::clone(&routers),
            failover::FailoverSettings::from_config(&cfg),
            &metrics,
            tracker.clone(),
        );
        let reshards = reshard::Reshards::new(
            Arc::clone(&service),
            Arc::clone(&routers),
            reshard::ReshardSettings::from_config(&cfg),
            &metrics,
            tracker.clone(),
            tasks.clone(),
        );
        let local = self.listener.local_addr().unwrap_or(cfg.listen);
        let me = shardline_api::manager::ManagerRef {
            id: cfg
                .id
                .clone()
                .unwrap_or_else(|| format!("manager-{}", local.port())),
            url: cfg.advertise_url.clone().unwrap_or_else(|| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{local}")
            }),
        };
        // The file store admits one manager per catalog file: it leads.
        // On etcd, managers campaign; the campaign ends (and the lease is
        // given up) once the leader's work has stopped.
        let (stop_campaign, campaign_stopped) = tokio::sync::watch::channel(false);
        let (leadership, campaign) = match &self.election {
            None => (leader::Leadership::sole(me, &metrics), None),
            Some((store, options)) => {
                let value = serde_json::to_string(&me).unwrap_or_default();
                let (views, task) = store.campaign(value, options.clone(), campaign_stopped);
                let store = store.clone();
                let lease = move || store.leads();
                (
                    leader::Leadership::elected(me, &metrics, views, lease),
                    Some(task),
                )
            }
        };
        let router_book = self
            .router_book
            .map(|store| Arc::new(router_book::RouterBook::new(store)));
        let health_book = self
            .health_book
            .map(|store| Arc::new(health_book::HealthBook::new(store)));
        let state = Arc::new(http::AppState {
            router_book: router_book.clone(),
            leadership: Arc::clone(&leadership),
            service: Arc::clone(&service),
            health: Arc::clone(&health_table),
            failovers: Arc::clone(&failovers),
            routers,
            reshards: Arc::clone(&reshards),
            admin: TokenCheck::new(cfg.admin_token.as_deref().unwrap_or_default()),
            router_auth: TokenCheck::new(cfg.router_token.as_deref().unwrap_or_default()),
            catalog_version: metrics.gauge(
                "manager_catalog_version",
                "Version of the catalog this manager serves.",
                &[],
            ),
            live_routers: metrics.gauge(
                "manager_live_routers",
                "Routers whose heartbeat lease is current.",
                &[],
            ),
            tenant_shards: metrics.gauge(
                "manager_tenant_shards",
                "Shards of each tenant's keyspace.",
                &["tenant"],
            ),
            tenants: metrics.gauge("manager_tenants", "Tenants in the catalog.", &[]),
            metrics,
            max_watch_wait: cfg.max_watch_wait,
            connect_timeout: cfg.connect_timeout,
        });
        let settings = health::HealthSettings {
            interval: cfg.health_interval,
            timeout: cfg.health_timeout,
        };
        // The leader's work: checks, failovers, the reconciler, jobs.
        let elected = self.election.is_some();
        let leader_work = {
            let (service, health_table, failovers, reshards, routers) = (
                Arc::clone(&service),
                Arc::clone(&health_table),
                Arc::clone(&failovers),
                Arc::clone(&reshards),
                Arc::clone(&state.routers),
            );
            let jobs_interval = cfg.health_interval.max(Duration::from_millis(500));
            move |term: CancellationToken| {
                let ids = {
                    let (service, routers, book) = (
                        Arc::clone(&service),
                        Arc::clone(&routers),
                        router_book.clone(),
                    );
                    async move {
                        if !elected {
                            return;
                        }
                        // Routers heartbeated to the leader before this
                        // one: their leases may still run.
                        match &book {
                            Some(book) => book.inherit(&routers).await,
                            None => routers.inherit_leases_now(),
                        }
                        if let Err(e) = replicas::assign_missing_ids(&service).await {
                            tracing::error!(error = %e, "give instances ids");
                        }
                    }
                };
                let reconciler = reconcile::run(
                    Arc::clone(&service),
                    Arc::clone(&health_table),
                    settings.interval,
                    settings.timeout * 5,
                    term.clone(),
                );
                let follower =
                    Arc::clone(&failovers).follow(Arc::clone(&health_table), term.clone());
                let checker = health::run(
                    Arc::clone(&service),
                    Arc::clone(&health_table),
                    health_metrics.clone(),
                    settings.clone(),
                    health_book.clone(),
                    term.clone(),
                );
                // Unfinished jobs resume at once, then from the loop.
                let jobs = Arc::clone(&reshards).run(jobs_interval, term.clone());
                let pruner = {
                    let (routers, book, term) =
                        (Arc::clone(&routers), router_book.clone(), term.clone());
                    async move {
                        if let Some(book) = book {
                            book.prune(&routers, term).await;
                        }
                    }
                };
                async move {
                    ids.await;
                    tokio::join!(reconciler, follower, checker, jobs, pruner);
                }
            }
        };
        tracker.spawn({
            let (leadership, tasks) = (Arc::clone(&leadership), tasks.clone());
            async move { leadership.run_while_leader(tasks, leader_work).await }
        });
        tracker.close();
        tracing::info!(addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "manager listening");
        let forwarder =
            forward::Forwarder::new(Arc::clone(&leadership), cfg.tls_ca_file.as_deref())?;
        let app = http::router(state, cfg.body_limit).layer(axum::middleware::from_fn_with_state(
            forwarder,
            forward::to_leader,
        ));
        let served = match self.tls {
            Some(tls) => {
                shardline_http::serve_tls(self.listener, tls, app, shutdown.clone(), DRAIN).await
            }
            None => shardline_http::serve(self.listener, app, shutdown.clone(), DRAIN).await,
        };
        // HTTP first, then the background tasks, then the leadership.
        tasks.cancel();
        tracker.wait().await;
        let _ = stop_campaign.send(true);
        if let Some(task) = campaign {
            // Let the campaign give up the key, so another leads at once.
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        served.context("serve HTTP")
    }
}

/// Binds and runs a manager until `shutdown`.
pub async fn run(config: ManagerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    bind(config).await?.run(shutdown).await
}
