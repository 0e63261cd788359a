//! Named migrations: applied for every tenant on every shard (in the
//! tenant's database and schema), re-applying is a no-op, a changed
//! checksum is refused, and shards that join later get them.

mod common;

use common::{Stack, StackOptions};
use shardline_api::manager::{
    ApplyMigrationRequest, CreateKeyspaceRequest, CreateTenantRequest, InitialMapRequest,
    MigrationOutcome, RegisterShardRequest,
};
use shardline_client::ClientError;
use shardline_testkit::PgCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_everywhere_and_to_later_shards() {
    let stack = Stack::start(StackOptions {
        shards: 2,
        ..Default::default()
    })
    .await;
    let m = &stack.admin;
    let req = ApplyMigrationRequest {
        name: "001".into(),
        sql: "CREATE TABLE t (id int PRIMARY KEY)".into(),
    };
    let first = m.apply_migration("default", &req).await.unwrap();
    assert_eq!(first.shards.len(), 2);
    assert!(first
        .shards
        .iter()
        .all(|s| s.outcome == MigrationOutcome::Applied));
    let again = m.apply_migration("default", &req).await.unwrap();
    assert_eq!(again.shards.len(), 2);
    assert!(again
        .shards
        .iter()
        .all(|s| s.outcome == MigrationOutcome::AlreadyApplied));
    let changed = ApplyMigrationRequest {
        name: "001".into(),
        sql: "CREATE TABLE t2 (id int)".into(),
    };
    match m.apply_migration("default", &changed).await {
        Err(ClientError::Api { status: 409, .. }) => {}
        other => panic!("changed checksum must be refused with 409, got {other:?}"),
    }
    for pg in &stack.shards {
        let c = tenant_db(&pg.dsn(), &stack.pg_name("default").await).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM shardline.tenant_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let (t, t2): (bool, bool) = c
            .query_one(
                "SELECT to_regclass('t') IS NOT NULL, to_regclass('t2') IS NOT NULL",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert!(t && !t2, "only the first version was applied");
    }

    // A keyspace whose shard joins after its migrations were recorded.
    let late = PgCluster::start().await.unwrap();
    m.create_keyspace(&CreateKeyspaceRequest {
        name: "later".into(),
        key_type: Default::default(),
        shards: vec![],
    })
    .await
    .unwrap();
    let rec = m
        .apply_migration(
            "later",
            &ApplyMigrationRequest {
                name: "001".into(),
                sql: "CREATE TABLE late_t (id int)".into(),
            },
        )
        .await
        .unwrap();
    assert!(rec.shards.is_empty());
    m.create_tenant(&CreateTenantRequest {
        id: "latecomer".into(),
        keyspace: Some("later".into()),
        ..CreateTenantRequest::default()
    })
    .await
    .unwrap();
    m.register_shard(&RegisterShardRequest {
        id: "late".into(),
        primary: late.dsn(),
        replicas: vec![],
        tenant: None,
        synchronous: false,
    })
    .await
    .unwrap();
    let ks = m
        .set_initial_map(
            "later",
            &InitialMapRequest {
                shards: vec!["late".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(ks.map.len(), 1);
    let c = tenant_db(&late.dsn(), &stack.pg_name("latecomer").await).await;
    let exists: bool = c
        .query_one("SELECT to_regclass('late_t') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "the joining shard got the keyspace's migration");
    stack.stop().await;
}

/// A superuser session in the tenant database `db` (the tenant's
/// `pg_name`) on the shard at `dsn`, in the tenant's schema.
async fn tenant_db(dsn: &str, db: &str) -> tokio_postgres::Client {
    let dsn = format!("{dsn} dbname={db}");
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!("SET search_path = {db}"))
        .await
        .unwrap();
    client
}
