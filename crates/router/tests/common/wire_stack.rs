//! A router's wire listener in-process over two real shards holding
//! one tenant's tables, for the wire protocol's tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{app, pg_name, tenant, TIMEOUT};
use shardline_core::catalog::{Instance, Keyspace, Limits, Shard, TableSpec};
use shardline_core::hash::{routing_hash, ShardKey};
use shardline_core::scram::Verifier;
use shardline_core::{Catalog, KeyType, ShardMap};
use shardline_manager::tenant_pg;
use shardline_router::lanes::Lanes;
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::wire::{self, WireShared};
use shardline_router::RouterConfig;
use shardline_testkit::PgCluster;
use tokio_util::sync::CancellationToken;

pub const APP: &str = "web";
pub const TOKEN: &str = "tok-web-0123456789abcdef";
pub const PASSWORD: &str = "role-pw-acme";

/// Tables of the tenant on every shard: `items` keyed by `id`, and the
/// pgbench tables keyed by their account.
pub const SCHEMA: &str = "CREATE TABLE items (id bigint PRIMARY KEY, v text); \
     CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84)); \
     CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88)); \
     CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84)); \
     CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));";

/// Two shards, one tenant, a router's wire listener on a free port.
pub struct Stack {
    pub shards: Vec<PgCluster>,
    pub addr: SocketAddr,
    pub routing: Arc<RoutingCell>,
    pub ctx: Arc<RouterContext>,
    pub stop: CancellationToken,
    /// The wire lanes, when the configuration asks for some.
    pub lanes: Option<Arc<Lanes>>,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with(|_| {}).await
    }

    /// [`Stack::start`] with the router's configuration changed by
    /// `edit` first.
    pub async fn start_with(edit: impl FnOnce(&mut RouterConfig)) -> anyhow::Result<Stack> {
        let mut shards = Vec::new();
        for _ in 0..2 {
            shards.push(PgCluster::start().await?);
        }
        let t = tenant("acme", PASSWORD);
        for (i, pg) in shards.iter().enumerate() {
            let admin = pg.connect().await?;
            let id = format!("s{}", i + 1);
            tenant_pg::prepare_database(&admin, &id).await?;
            tenant_pg::provision(&admin, &id, &pg.dsn(), &t, TIMEOUT).await?;
            let m = shardline_core::catalog::Migration {
                name: "001".into(),
                checksum: shardline_manager::migrations::checksum(SCHEMA),
                sql: SCHEMA.into(),
            };
            tenant_pg::apply_migration(&admin, &id, &pg.dsn(), &t, &m, TIMEOUT).await?;
        }
        let cat = catalog(&shards);
        let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
        cfg.failover_hold = Duration::from_millis(500);
        edit(&mut cfg);
        let ctx = Arc::new(RouterContext::new(&cfg));
        let routing = Arc::new(RoutingCell::default());
        routing.set(Routing::build(&cat, &routing.get(), &ctx));
        ctx.contact.answered(60_000);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = WireShared::new(Arc::clone(&routing), Arc::clone(&ctx));
        let lanes = match cfg.lanes {
            0 => None,
            n => Some(Arc::new(Lanes::start(n)?)),
        };
        let serve = wire::serve(
            listener,
            shared,
            stop.clone(),
            Duration::from_secs(1),
            lanes.clone(),
        );
        let lanes_after = lanes.clone();
        tokio::spawn(async move {
            let _ = serve.await;
            // As the router does: the lanes stop once the drain ended.
            if let Some(l) = lanes_after {
                let _ = tokio::task::spawn_blocking(move || l.stop()).await;
            }
        });
        Ok(Stack {
            shards,
            addr,
            routing,
            ctx,
            stop,
            lanes,
        })
    }

    pub fn url(&self, password: &str) -> String {
        format!(
            "postgresql://{APP}:{password}@127.0.0.1:{}/shared?sslmode=disable",
            self.addr.port()
        )
    }

    /// The index of the shard holding bigint key `k`.
    pub fn shard_of(&self, k: i64) -> usize {
        let r = self.routing.get();
        let route = r
            .route_hash("shared", routing_hash(ShardKey::Bigint(k)))
            .expect("route");
        if route.range.shard == "s1" {
            0
        } else {
            1
        }
    }

    /// A client of shard `i` as the tenant's role, bypassing the router.
    pub async fn direct(&self, i: usize) -> anyhow::Result<tokio_postgres::Client> {
        let dsn = format!(
            "{} user={u} dbname={u} password={PASSWORD} options=-csearch_path={u}",
            self.shards[i].dsn(),
            u = pg_name("acme")
        );
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }

    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (c, conn) = tokio_postgres::connect(&self.url(TOKEN), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn catalog(shards: &[PgCluster]) -> Catalog {
    let mut cat = Catalog {
        version: 1,
        ..Catalog::default()
    };
    let ids: Vec<String> = (1..=shards.len()).map(|i| format!("s{i}")).collect();
    let mut tables = BTreeMap::new();
    for (t, k) in [
        ("items", "id"),
        ("pgbench_accounts", "aid"),
        ("pgbench_history", "aid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_branches", "bid"),
    ] {
        tables.insert(
            t.to_string(),
            TableSpec {
                shard_key: k.to_string(),
            },
        );
    }
    cat.keyspaces.insert(
        "shared".into(),
        Keyspace {
            name: "shared".into(),
            key_type: KeyType::Bigint,
            map: Some(ShardMap::even(&ids).expect("map")),
            migrations: vec![],
            tables,
            frozen: Vec::new(),
            tenant_code: false,
        },
    );
    for (i, pg) in shards.iter().enumerate() {
        let id = ids[i].clone();
        cat.shards.insert(
            id.clone(),
            Shard {
                id: id.clone(),
                keyspace: Some("shared".into()),
                primary: Instance {
                    id: format!("{id}-a"),
                    dsn: pg.dsn(),
                },
                replicas: vec![],
                generation: 1,
                reserved_for: None,
                fenced: vec![],
                failover: None,
                synchronous: false,
            },
        );
    }
    let t = tenant("acme", PASSWORD);
    cat.tenants.insert(t.id.clone(), t);
    let mut a = app(APP, "acme", None, Limits::default());
    a.token_hash = shardline_core::auth::token_hash(TOKEN);
    a.token_scram = Some(Verifier::new(TOKEN, b"0123456789abcdef", 4096).to_string());
    cat.apps.insert(a.id.clone(), a);
    cat
}

/// Two keys on different shards.
pub fn keys_on_both(stack: &Stack) -> (i64, i64) {
    let a = (1..1000)
        .find(|k| stack.shard_of(*k) == 0)
        .expect("a key on s1");
    let b = (1..1000)
        .find(|k| stack.shard_of(*k) == 1)
        .expect("a key on s2");
    (a, b)
}

pub async fn count_on(stack: &Stack, shard: usize, id: i64) -> anyhow::Result<i64> {
    let c = stack.direct(shard).await?;
    let row = c
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&id])
        .await?;
    Ok(row.get(0))
}
