//! Test support: a catalog service over a file store in a temp dir, real
//! PostgreSQL shards, checks of what a shard holds (the tenant's role,
//! its database and what is inside), and a tiny HTTP/1.1
//! client for a manager on a loopback port.

#![allow(dead_code)]

pub mod reshard;
pub mod stack;

use std::sync::Arc;
use std::time::Duration;

use shardline_api::manager::{CreateKeyspaceRequest, CreateTenantRequest, RegisterShardRequest};
use shardline_catalog::FileStore;
use shardline_core::catalog::Tenant;
use shardline_manager::service::CatalogService;
use shardline_manager::{ops, tenants};
use shardline_testkit::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const ADMIN_TOKEN: &str = "admin-token-for-manager-tests";
pub const ROUTER_TOKEN: &str = "router-token-for-manager-tests";

/// A catalog service and the shards it knows.
pub struct Harness {
    pub svc: Arc<CatalogService>,
    /// No router heartbeats to it: migrations wait for none.
    pub routers: shardline_manager::routers::RouterRegistry,
    pub shards: Vec<PgCluster>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// A fresh catalog and `n` shards registered as `s0`, `s1`, ... (none
    /// in a keyspace yet).
    pub async fn start(n: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("catalog.json"))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let svc = CatalogService::start(Arc::new(store), stop.clone(), &tracker)
            .await
            .unwrap();
        let mut h = Harness {
            svc,
            routers: shardline_manager::routers::RouterRegistry::new(Duration::from_secs(2)),
            shards: Vec::new(),
            stop,
            tracker,
            dir,
        };
        for _ in 0..n {
            h.add_shard(None).await;
        }
        h
    }

    /// Starts and registers one more shard (`s<index>`), reserved for
    /// `tenant` if given; returns its id.
    pub async fn add_shard(&mut self, tenant: Option<&str>) -> String {
        let pg = PgCluster::start().await.unwrap();
        let id = format!("s{}", self.shards.len());
        ops::register_shard(
            &self.svc,
            &RegisterShardRequest {
                id: id.clone(),
                primary: pg.dsn(),
                replicas: vec![],
                tenant: tenant.map(str::to_string),
                synchronous: false,
            },
        )
        .await
        .unwrap();
        self.shards.push(pg);
        id
    }

    /// Creates a shared keyspace over the given shards.
    pub async fn keyspace(&self, name: &str, shards: &[&str]) {
        ops::create_keyspace(
            &self.svc,
            &CreateKeyspaceRequest {
                name: name.into(),
                key_type: Default::default(),
                shards: shards.iter().map(|s| s.to_string()).collect(),
            },
        )
        .await
        .unwrap();
    }

    /// Creates a tenant in a shared keyspace.
    pub async fn shared_tenant(&self, id: &str, keyspace: &str) {
        tenants::create_tenant(
            &self.svc,
            &CreateTenantRequest {
                id: id.into(),
                keyspace: Some(keyspace.into()),
                ..Default::default()
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    }

    /// The catalog's record of tenant `id` (its PostgreSQL name is
    /// `pg_name()`: random, so tests read it from here).
    pub fn tenant(&self, id: &str) -> Tenant {
        self.svc.current().catalog.tenants[id].clone()
    }

    /// The shard by catalog id (`s<index>`).
    pub fn pg(&self, id: &str) -> &PgCluster {
        let i: usize = id.trim_start_matches('s').parse().unwrap();
        &self.shards[i]
    }
}

/// A superuser session in database `db` of a shard (a later `dbname` in a
/// key/value DSN wins).
pub async fn connect_db(pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    let dsn = format!("{} dbname={db}", pg.dsn());
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A superuser session in the tenant's database on a shard.
pub async fn tenant_db(pg: &PgCluster, tenant: &Tenant) -> tokio_postgres::Client {
    connect_db(pg, &tenant.pg_name()).await
}

/// A session as `user` with `password` in database `db`, or why it was
/// refused.
pub async fn connect_as(
    pg: &PgCluster,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let dsn = format!("{} user={user} password={password} dbname={db}", pg.dsn());
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The SQLSTATE of a failed statement or connection.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// The attributes of a role on a shard.
#[derive(Debug, PartialEq)]
pub struct RoleState {
    pub superuser: bool,
    pub can_login: bool,
    pub inherit: bool,
    pub create_role: bool,
    pub create_db: bool,
    pub replication: bool,
    pub bypass_rls: bool,
}

/// The role `name` on a shard, if it exists.
pub async fn role_state(pg: &PgCluster, name: &str) -> Option<RoleState> {
    let c = pg.connect().await.unwrap();
    let row = c
        .query_opt(
            "SELECT rolsuper, rolcanlogin, rolinherit, rolcreaterole, rolcreatedb, \
               rolreplication, rolbypassrls \
             FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await
        .unwrap()?;
    Some(RoleState {
        superuser: row.get(0),
        can_login: row.get(1),
        inherit: row.get(2),
        create_role: row.get(3),
        create_db: row.get(4),
        replication: row.get(5),
        bypass_rls: row.get(6),
    })
}

/// Whether database `name` exists on a shard.
pub async fn database_exists(pg: &PgCluster, name: &str) -> bool {
    let c = pg.connect().await.unwrap();
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

/// What a shard holds of a tenant's database.
#[derive(Debug, PartialEq)]
pub struct DatabaseState {
    pub owner: String,
    pub owner_is_superuser: bool,
    /// Grantees of CONNECT other than the owner, sorted (`PUBLIC` for
    /// everyone); from the default ACL when none was set, so an untouched
    /// database shows `PUBLIC`.
    pub connect: Vec<String>,
    /// The owner of the schema named like the tenant inside it.
    pub schema_owner: Option<String>,
}

/// The tenant's database on a shard, if it exists.
pub async fn database_state(pg: &PgCluster, tenant: &Tenant) -> Option<DatabaseState> {
    let name = tenant.pg_name();
    let c = pg.connect().await.unwrap();
    let row = c
        .query_opt(
            "SELECT o.rolname::text, o.rolsuper, \
               ARRAY(SELECT DISTINCT coalesce(g.rolname::text, 'PUBLIC') \
                     FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
                     LEFT JOIN pg_roles g ON g.oid = a.grantee \
                     WHERE a.privilege_type = 'CONNECT' AND a.grantee <> d.datdba \
                     ORDER BY 1) \
             FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba WHERE d.datname = $1",
            &[&name],
        )
        .await
        .unwrap()?;
    let inside = connect_db(pg, &name).await;
    let schema_owner = inside
        .query_opt(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    Some(DatabaseState {
        owner: row.get(0),
        owner_is_superuser: row.get(1),
        connect: row.get(2),
        schema_owner,
    })
}

/// Asserts that a shard holds the tenant as designed: a login role with
/// no rights of its own, and a database owned by the superuser that only
/// that role (besides the owner) may connect to, holding the tenant's
/// schema owned by the role.
pub async fn assert_provisioned(pg: &PgCluster, tenant: &Tenant) {
    let name = tenant.pg_name();
    let role = role_state(pg, &name)
        .await
        .unwrap_or_else(|| panic!("role {name} exists"));
    assert_eq!(
        role,
        RoleState {
            superuser: false,
            can_login: true,
            inherit: false,
            create_role: false,
            create_db: false,
            replication: false,
            bypass_rls: false,
        },
        "{name}"
    );
    let db = database_state(pg, tenant)
        .await
        .unwrap_or_else(|| panic!("database {name} exists"));
    assert!(db.owner_is_superuser, "{name} owned by {}", db.owner);
    assert_eq!(db.connect, [name.as_str()], "who may connect to {name}");
    assert_eq!(db.schema_owner.as_deref(), Some(name.as_str()));
}

/// Asserts that a shard holds nothing of the tenant: no role, no
/// database, no entry in the shard's tenants table.
pub async fn assert_absent(pg: &PgCluster, tenant: &Tenant) {
    let name = tenant.pg_name();
    assert!(role_state(pg, &name).await.is_none(), "role {name} gone");
    assert!(!database_exists(pg, &name).await, "database {name} gone");
    assert_eq!(
        shard_count(pg, &tenant.id).await,
        None,
        "{} in shardline.tenants",
        tenant.id
    );
}

/// What a shard holds of any tenant, sorted: the roles that can log in
/// (not superusers), the databases other than the shard's own and the
/// templates, and the tenant ids in its tenants table. For tenants whose
/// (random) name is unknown, such as one whose creation failed.
pub async fn tenant_leftovers(pg: &PgCluster) -> Vec<String> {
    let c = pg.connect().await.unwrap();
    let has_table: bool = c
        .query_one("SELECT to_regclass('shardline.tenants') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    let rows = if has_table {
        "UNION ALL SELECT 'tenants row ' || tenant FROM shardline.tenants"
    } else {
        ""
    };
    let sql = format!(
        "SELECT 'role ' || rolname FROM pg_roles WHERE rolcanlogin AND NOT rolsuper \
         UNION ALL SELECT 'database ' || datname FROM pg_database \
           WHERE NOT datistemplate AND datname <> current_database() \
         {rows} ORDER BY 1"
    );
    c.query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The owner of `schema.table` in database `db` of a shard, if it exists
/// (none when the database does not).
pub async fn table_owner_in(pg: &PgCluster, db: &str, schema: &str, table: &str) -> Option<String> {
    if !database_exists(pg, db).await {
        return None;
    }
    let c = connect_db(pg, db).await;
    c.query_opt(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
        &[&schema, &table],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// The owner of `table` in the tenant's schema, in its database.
pub async fn table_owner(pg: &PgCluster, tenant: &Tenant, table: &str) -> Option<String> {
    let name = tenant.pg_name();
    table_owner_in(pg, &name, &name, table).await
}

/// The migrations recorded for a tenant in its database on a shard, by
/// name.
pub async fn tenant_records(pg: &PgCluster, tenant: &Tenant) -> Vec<String> {
    let c = tenant_db(pg, tenant).await;
    c.query(
        "SELECT name FROM shardline.tenant_migrations WHERE tenant = $1 ORDER BY name",
        &[&tenant.id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The tenant's migration count in the shard's own database
/// (`shardline.tenants`), if it has a row there.
pub async fn shard_count(pg: &PgCluster, tenant: &str) -> Option<i32> {
    let c = pg.connect().await.unwrap();
    let has_table: bool = c
        .query_one("SELECT to_regclass('shardline.tenants') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if !has_table {
        return None;
    }
    c.query_opt(
        "SELECT migrations FROM shardline.tenants WHERE tenant = $1",
        &[&tenant],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// An HTTP answer: status, headers (lowercase names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Asserts the answer is a 409 `conflict` error.
    #[track_caller]
    pub fn assert_conflict(&self) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (409, "conflict"),
            "{}",
            self.body
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request (connection closed after it).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// The health checker and the tenant reconciler running against a
/// harness's catalog (every 100 ms), as the manager runs them.
pub struct Reconciling {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Reconciling {
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

impl Harness {
    /// Starts the checker and the reconciler (see [`Reconciling`]).
    pub fn start_reconciling(&self) -> Reconciling {
        use shardline_manager::health::{self, HealthSettings, HealthTable};
        let table = Arc::new(HealthTable::default());
        let metrics = health::HealthMetrics::register(&shardline_metrics::Registry::new());
        let stop = CancellationToken::new();
        let reconciler = tokio::spawn(shardline_manager::reconcile::run(
            Arc::clone(&self.svc),
            Arc::clone(&table),
            Duration::from_millis(100),
            Duration::from_secs(5),
            stop.clone(),
        ));
        let checker = tokio::spawn(health::run(
            Arc::clone(&self.svc),
            table,
            metrics,
            HealthSettings {
                interval: Duration::from_millis(100),
                timeout: Duration::from_secs(1),
            },
            None,
            stop.clone(),
        ));
        Reconciling {
            stop,
            tasks: vec![reconciler, checker],
        }
    }
}
