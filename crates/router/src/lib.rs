//! The shardline router (data plane): authenticates a client app, checks
//! what its tenant may do and the quotas of both, hashes the request's
//! shard key, finds the owning shard in the tenant's keyspace, runs the
//! statement on a connection logged in as the tenant's own PostgreSQL
//! role, answers JSON.
//!
//! Stateless: it follows the manager's catalog (long poll) and keeps
//! routing by the last one it has when the manager is down. `eventual`
//! reads may go to a shard's replicas that the manager's health feed
//! shows caught up; requests for a primary that is failing over wait for
//! the new one, and requests for a key range being moved by resharding
//! for its new owner, within a bound. Start it
//! in-process with [`bind`] then [`BoundRouter::run`] (tests bind port 0).
//!
//! # Layout
//! - [`config`]: the settings.
//! - [`state`]: the routing table compiled from a catalog version, and
//!   the context that outlives versions.
//! - [`auth`]: tokens, tenant and app checks, admission
//!   ([`state::Routing::admit`]).
//! - [`quota`]: token buckets and concurrency limits per tenant and app.
//! - [`pools`]: a shard's instances (primary, replicas), each with its
//!   per-tenant pools under one connection budget.
//! - [`classify`]: which statements are reads (for replicas).
//! - [`dispatch`]: where a request runs: a replica for eventual reads,
//!   else the primary, held through failovers.
//! - [`reroute`]: keys in ranges being moved: held while frozen, run
//!   again on the new owner after the old one refused them.
//! - [`error`]: the router's own error ([`error::RouterError`]): typed
//!   reasons the request path decides on, PostgreSQL's own fields kept
//!   apart from our failures; made into the HTTP error body or a wire
//!   `ErrorResponse` only at the front ends' edges.
//! - [`follow`]: catalog long poll and heartbeat (live routers).
//! - [`health`]: the manager's health feed (which replicas may serve).
//! - [`http`]: the HTTP API.
//! - [`pg`]: pools, JSON ⇄ PostgreSQL values, statement execution, the
//!   reading of PostgreSQL's errors.
//! - [`metrics`]: Prometheus metrics, with bounded tenant/app labels.
//! - [`wire`]: the PostgreSQL wire protocol front end.
//! - [`lanes`]: threads with event loops and pools of their own, for
//!   client connections of both front ends (optional).

pub mod auth;
pub mod classify;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod follow;
pub mod health;
pub mod http;
pub mod lanes;
pub mod metrics;
pub mod pg;
pub mod pools;
pub mod quota;
pub mod reroute;
pub mod state;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use shardline_client::ManagerClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::RouterConfig;

/// How long in-flight requests may run after shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// A router with its listeners bound.
pub struct BoundRouter {
    listener: TcpListener,
    pg_listener: Option<TcpListener>,
    /// `pg_unix_dir`'s socket, for the port `pg_listener` got.
    pg_local: Option<wire::LocalListener>,
    pg_tls: Option<wire::tls::WireTls>,
    /// HTTPS on `listener`: the certificate served, reloaded when its
    /// files change.
    tls: Option<shardline_http::ServerTls>,
    config: RouterConfig,
}

/// Validates the settings, reads the wire listener's TLS certificate and
/// key, and binds the listeners.
pub async fn bind(mut config: RouterConfig) -> anyhow::Result<BoundRouter> {
    config.fill_from_env();
    config.validate()?;
    let pg_tls = wire::tls::WireTls::from_config(&config)?;
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
    let pg_listener = match config.pg_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for PostgreSQL clients on {addr}"))?,
        ),
        None => None,
    };
    let pg_local = match (&config.pg_unix_dir, &pg_listener) {
        (Some(dir), Some(tcp)) => {
            let port = tcp
                .local_addr()
                .context("read the PostgreSQL listener's address")?;
            Some(wire::LocalListener::bind(dir, port.port())?)
        }
        _ => None,
    };
    Ok(BoundRouter {
        listener,
        pg_listener,
        pg_local,
        pg_tls,
        tls,
        config,
    })
}

impl BoundRouter {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The address of the PostgreSQL wire listener, if it has one.
    pub fn pg_local_addr(&self) -> Option<SocketAddr> {
        self.pg_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = self.config;
        let addr = self.listener.local_addr().context("read listen address")?;
        let id = cfg
            .id
            .clone()
            .unwrap_or_else(|| format!("router-{:08x}", rand::random::<u32>()));
        let token = cfg.router_token.clone().unwrap_or_default();
        let manager = ManagerClient::with_ca_file(
            &cfg.manager_url,
            Some(token),
            cfg.manager_ca_file.as_deref(),
        )
        .context("manager client")?;
        let ctx = Arc::new(state::RouterContext::new(&cfg));
        let routing = Arc::new(state::RoutingCell::default());
        if let Some(path) = &cfg.catalog_cache {
            // Served until a manager answers; the follower asks for what
            // came after it.
            if let Some(catalog) = follow::load_cache(path)? {
                let version = catalog.version;
                routing.set(state::Routing::build(&catalog, &routing.get(), &ctx));
                ctx.contact.serving_from_cache();
                ctx.metrics.catalog_version.with(&[]).set(version as f64);
                tracing::info!(version, path = %path.display(),
                    "serving the cached catalog until a manager answers (reads only)");
            }
        }
        let tracker = TaskTracker::new();
        let tasks = shutdown.child_token();
        let version_gauge = ctx.metrics.catalog_version.clone();
        let follower = follow::Follower {
            manager: manager.clone(),
            routing: Arc::clone(&routing),
            ctx: Arc::clone(&ctx),
            wait: cfg.watch_wait,
            on_version: Box::new(move |v| version_gauge.with(&[]).set(v as f64)),
            cache: cfg.catalog_cache.clone(),
        };
        tracker.spawn(follower.run(tasks.clone()));
        tracker.spawn(health::poll(
            manager.clone(),
            Arc::clone(&ctx.health),
            cfg.health_poll,
            tasks.clone(),
        ));
        tracker.spawn(follow::heartbeat(
            manager,
            Arc::clone(&routing),
            Arc::clone(&ctx),
            id.clone(),
            addr.to_string(),
            Duration::from_secs(2),
            tasks.clone(),
        ));
        let reaper = Arc::clone(&routing);
        let reap_token = tasks.clone();
        let idle_timeout = cfg.idle_timeout;
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = reap_token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let closed = reaper.get().reap_pools(idle_timeout, Instant::now());
                if closed > 0 {
                    tracing::debug!(closed, "closed idle tenant pools");
                }
            }
        });
        tracker.close();
        tracing::info!(%addr, %id, manager = %cfg.manager_url, https = self.tls.is_some(), "router listening");
        let tls = match &self.pg_tls {
            None => "off",
            Some(t) if t.required() => "required",
            Some(_) => "offered",
        };
        let (pg_tls, shared_ctx) = (self.pg_tls, Arc::clone(&ctx));
        let lanes = match cfg.lanes {
            0 => None,
            n => Some(Arc::new(lanes::Lanes::start(n).context("start the lanes")?)),
        };
        let shared = wire::WireShared::with_tls(Arc::clone(&routing), shared_ctx, pg_tls);
        let wire_task = self.pg_listener.map(|l| {
            if let Ok(a) = l.local_addr() {
                tracing::info!(addr = %a, tls, lanes = cfg.lanes, "router listening for PostgreSQL clients");
            }
            let (shared, lanes) = (Arc::clone(&shared), lanes.clone());
            tokio::spawn(wire::serve(l, shared, shutdown.clone(), DRAIN, lanes))
        });
        let local_task = self.pg_local.map(|l| {
            tracing::info!(path = %l.path().display(), "router listening for PostgreSQL clients on a local socket");
            let (shared, lanes) = (Arc::clone(&shared), lanes.clone());
            tokio::spawn(wire::serve(l, shared, shutdown.clone(), DRAIN, lanes))
        });
        let state = Arc::new(http::RouterState {
            routing,
            ctx,
            request_timeout: cfg.request_timeout,
            name_sessions: cfg.name_sessions,
            lanes: lanes.clone(),
        });
        let app = http::router(state, cfg.body_limit);
        let served = match (self.tls, &lanes) {
            (tls, Some(lanes)) => {
                let spread: Arc<dyn shardline_http::Spread> = lanes.clone();
                shardline_http::serve_spread(
                    self.listener,
                    tls,
                    app,
                    shutdown.clone(),
                    DRAIN,
                    spread,
                )
                .await
            }
            (Some(tls), None) => {
                shardline_http::serve_tls(self.listener, tls, app, shutdown.clone(), DRAIN).await
            }
            (None, None) => {
                shardline_http::serve(self.listener, app, shutdown.clone(), DRAIN).await
            }
        };
        for t in wire_task.into_iter().chain(local_task) {
            match t.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "PostgreSQL listener"),
                Err(e) => tracing::warn!(error = %e, "PostgreSQL listener task"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(lanes) = lanes {
            // Their connections drained above; joining the threads blocks.
            let _ = tokio::task::spawn_blocking(move || lanes.stop()).await;
        }
        tasks.cancel();
        tracker.wait().await;
        served.context("serve HTTP")
    }
}

/// Binds and runs a router until `shutdown`.
pub async fn run(config: RouterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    bind(config).await?.run(shutdown).await
}
