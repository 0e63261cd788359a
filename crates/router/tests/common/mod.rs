//! Helpers shared by the router's integration tests: tenants provisioned
//! with the manager's own code, hand-built catalogs, a router HTTP API
//! served in-process, and a raw HTTP/1.1 client.

#![allow(dead_code)]

pub mod wire_stack;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shardline_core::auth::token_hash;
use shardline_core::catalog::{
    App, Instance, Keyspace, Limits, Migration, Shard, Tenant, TenantConfig, TenantState,
};
use shardline_core::{Catalog, KeyType, ShardMap};
use shardline_manager::tenant_pg;
use shardline_router::state::{RouterContext, RoutingCell};
use shardline_testkit::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the tenants' roles, databases and schemas on shard `s1` with
/// the manager's own provisioning code.
pub async fn provision(pg: &PgCluster, tenants: &[(&str, &str)]) -> anyhow::Result<()> {
    let admin = pg.connect().await?;
    tenant_pg::prepare_database(&admin, "s1").await?;
    for (id, password) in tenants {
        tenant_pg::provision(&admin, "s1", &pg.dsn(), &tenant(id, password), TIMEOUT).await?;
    }
    Ok(())
}

/// Applies `sql` for the tenant as the manager does (as its role, in its
/// schema and database).
pub async fn migrate(pg: &PgCluster, id: &str, password: &str, sql: &str) -> anyhow::Result<()> {
    migrate_named(pg, id, password, "001", sql).await
}

/// [`migrate`] with a migration name of its own.
pub async fn migrate_named(
    pg: &PgCluster,
    id: &str,
    password: &str,
    name: &str,
    sql: &str,
) -> anyhow::Result<()> {
    let admin = pg.connect().await?;
    let m = Migration {
        name: name.into(),
        checksum: shardline_manager::migrations::checksum(sql),
        sql: sql.into(),
    };
    tenant_pg::apply_migration(&admin, "s1", &pg.dsn(), &tenant(id, password), &m, TIMEOUT).await?;
    Ok(())
}

/// The PostgreSQL name these tests give tenant `id` (role, database and
/// schema): not `tenant_<id>`, so the router must take it from the record.
pub fn pg_name(id: &str) -> String {
    format!("t_{id}")
}

pub fn tenant(id: &str, password: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: id.into(),
        keyspace: "shared".into(),
        dedicated: false,
        config: TenantConfig::default(),
        role_password: password.into(),
        pg_name: Some(pg_name(id)),
        state: TenantState::Active,
        moving: false,
        created_at: String::new(),
    }
}

pub fn app(id: &str, tenant: &str, prefix: Option<&str>, limits: Limits) -> App {
    App {
        id: id.into(),
        name: id.into(),
        tenant: tenant.into(),
        description: String::new(),
        key_prefix: prefix.map(str::to_string),
        limits,
        token_hash: token_hash(&format!("tok-{id}")),
        token_scram: None,
        previous_token: None,
        created_at: String::new(),
    }
}

/// An instance of shard `s1`.
pub fn instance(id: &str, dsn: &str) -> Instance {
    Instance {
        id: id.into(),
        dsn: dsn.into(),
    }
}

/// One text keyspace `shared` on shard `s1` (generation 1).
pub fn shard_catalog(
    primary: Instance,
    replicas: Vec<Instance>,
    tenants: Vec<Tenant>,
    apps: Vec<App>,
) -> Catalog {
    let mut cat = Catalog {
        version: 1,
        ..Catalog::default()
    };
    cat.keyspaces.insert(
        "shared".into(),
        Keyspace {
            name: "shared".into(),
            key_type: KeyType::Text,
            map: Some(ShardMap::even(&["s1".to_string()]).unwrap()),
            migrations: vec![],
            tables: Default::default(),
            frozen: Vec::new(),
            tenant_code: false,
        },
    );
    cat.shards.insert(
        "s1".into(),
        Shard {
            id: "s1".into(),
            keyspace: Some("shared".into()),
            primary,
            replicas,
            generation: 1,
            reserved_for: None,
            fenced: vec![],
            failover: None,
            synchronous: false,
        },
    );
    cat.tenants = tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
    cat.apps = apps
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect::<BTreeMap<_, _>>();
    cat
}

/// The router's HTTP API served in-process on a free port.
pub struct Served {
    pub addr: SocketAddr,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(
        cell: &Arc<RoutingCell>,
        ctx: &Arc<RouterContext>,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(shardline_router::http::RouterState {
            routing: Arc::clone(cell),
            ctx: Arc::clone(ctx),
            request_timeout,
            name_sessions: false,
            lanes: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let server = tokio::spawn(shardline_http::serve(
            listener,
            shardline_router::http::router(state, 1 << 20),
            stop.clone(),
            Duration::from_secs(1),
        ));
        Ok(Self { addr, stop, server })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await??;
        Ok(())
    }
}

/// One HTTP/1.1 exchange: status, headers (lowercase names), body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: router\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

pub fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

/// The value of a header, if present.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
