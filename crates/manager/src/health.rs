//! The health checker: checks every PostgreSQL instance on an interval,
//! publishes `shard_health_status`, and runs the tenant reconciler
//! ([`crate::reconcile`]) over the shards that answered.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use shardline_api::manager::HealthInfo;
use shardline_core::Catalog;
use shardline_metrics::GaugeVec;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg;
use crate::service::CatalogService;

/// The role of an instance within its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    /// As shown in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// An instance's label: `host:port` from its DSN.
pub fn instance_label(dsn: &str) -> String {
    let Ok(cfg) = tokio_postgres::Config::from_str(dsn) else {
        return "invalid".into();
    };
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Last check results, by DSN.
#[derive(Default)]
pub struct HealthTable {
    by_dsn: RwLock<HashMap<String, HealthInfo>>,
}

impl HealthTable {
    /// The last check of an instance.
    pub fn get(&self, dsn: &str) -> Option<HealthInfo> {
        self.by_dsn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dsn)
            .cloned()
    }

    fn set(&self, dsn: &str, info: HealthInfo) {
        self.by_dsn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dsn.to_string(), info);
    }

    fn retain(&self, live: &std::collections::HashSet<String>) {
        self.by_dsn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|dsn, _| live.contains(dsn));
    }
}

/// Settings of the checker.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

/// Runs the checker until shutdown.
pub async fn run(
    svc: Arc<CatalogService>,
    table: Arc<HealthTable>,
    gauge: GaugeVec,
    settings: HealthSettings,
    shutdown: CancellationToken,
) {
    // One kept connection per instance; a failed check drops it.
    let mut conns: HashMap<String, Client> = HashMap::new();
    let mut reconciler = crate::reconcile::Reconciler::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let published = svc.current();
        let cat = &published.catalog;
        let instances = instances(cat);
        let checks = instances.iter().map(|(shard, role, dsn)| {
            let client = conns.remove(dsn);
            let timeout = settings.timeout;
            async move {
                let res = tokio::time::timeout(timeout, check(client, dsn, timeout)).await;
                let res = res.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                (shard.clone(), *role, dsn.clone(), res)
            }
        });
        let results = futures_util::future::join_all(checks).await;
        gauge.clear();
        let mut live = std::collections::HashSet::new();
        for (shard, role, dsn, res) in results {
            live.insert(dsn.clone());
            let label = instance_label(&dsn);
            let checked_at = crate::time::rfc3339(SystemTime::now());
            let info = match res {
                Ok((client, probe)) => {
                    conns.insert(dsn.clone(), client);
                    HealthInfo {
                        up: true,
                        checked_at,
                        error: None,
                        in_recovery: Some(probe.in_recovery),
                        ..HealthInfo::default()
                    }
                }
                Err(error) => {
                    tracing::debug!(%shard, instance = %label, %error, "health check failed");
                    HealthInfo {
                        up: false,
                        checked_at,
                        error: Some(error),
                        ..HealthInfo::default()
                    }
                }
            };
            gauge
                .with(&[&shard, &label, role.as_str()])
                .set(if info.up { 1.0 } else { 0.0 });
            table.set(&dsn, info);
        }
        table.retain(&live);
        reconciler.pass(&svc, &table, settings.timeout * 5).await;
    }
}

/// Every (shard, role, dsn) of the catalog.
fn instances(cat: &Catalog) -> Vec<(String, Role, String)> {
    let mut out = Vec::new();
    for shard in cat.shards.values() {
        out.push((shard.id.clone(), Role::Primary, shard.primary.dsn.clone()));
        for r in &shard.replicas {
            out.push((shard.id.clone(), Role::Replica, r.dsn.clone()));
        }
    }
    out
}

async fn check(
    client: Option<Client>,
    dsn: &str,
    timeout: Duration,
) -> Result<(Client, pg::Probe), String> {
    let client = match client {
        Some(c) if !c.is_closed() => c,
        _ => pg::connect(dsn, timeout).await?,
    };
    let probe = pg::probe(&client).await?;
    Ok((client, probe))
}
