//! Migrations per tenant: applied as each tenant's role in its schema, in
//! its database, on every shard, recorded in the keyspace, caught up by tenants created
//! later, by shards joining later, and by the reconciler on a shard that
//! lost a tenant.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_provisioned, eventually, shard_count, table_owner, table_owner_in, tenant_db,
    tenant_records, Harness, TIMEOUT,
};
use shardline_api::manager::{ApplyMigrationRequest, CreateTenantRequest, MigrationOutcome};
use shardline_manager::error::ServiceError;
use shardline_manager::{migrations, ops, tenants};

fn migration(name: &str, sql: &str) -> ApplyMigrationRequest {
    ApplyMigrationRequest {
        name: name.into(),
        sql: sql.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_per_tenant_and_caught_up_by_new_tenants() {
    let h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    h.shared_tenant("a", "default").await;
    h.shared_tenant("b", "default").await;
    let req = migration("001", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    let res = migrations::apply_migration(&h.svc, &h.routers, "default", &req, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(res.shards.len(), 2, "one entry per shard");
    assert!(res
        .shards
        .iter()
        .all(|s| s.outcome == MigrationOutcome::Applied));
    let (a, b) = (h.tenant("a"), h.tenant("b"));
    for pg in &h.shards {
        for t in [&a, &b] {
            let role = t.pg_name();
            assert_eq!(
                table_owner(pg, t, "items").await.as_deref(),
                Some(role.as_str()),
                "items in {role}'s schema and database, owned by its role"
            );
            assert_eq!(table_owner_in(pg, &role, "public", "items").await, None);
            assert_eq!(tenant_records(pg, t).await, ["001"]);
            assert_eq!(shard_count(pg, &t.id).await, Some(1));
        }
        assert_eq!(
            table_owner_in(pg, "postgres", "public", "items").await,
            None
        );
    }
    let again = migrations::apply_migration(&h.svc, &h.routers, "default", &req, TIMEOUT)
        .await
        .unwrap();
    assert!(again
        .shards
        .iter()
        .all(|s| s.outcome == MigrationOutcome::AlreadyApplied));
    let changed = migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration("001", "CREATE TABLE other (id int)"),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(changed, ServiceError::Conflict(_)), "{changed}");

    // A migration runs with the tenant's rights only, in its database:
    // writing outside its schema or forging its own record is refused
    // (tenant a goes first and stops the shard's run), another tenant's
    // schema is not even there, and nothing is recorded.
    for (sql, state) in [
        ("CREATE TABLE public.planted (id int)", "42501"),
        (
            "INSERT INTO shardline.tenant_migrations (tenant, name, checksum) \
             VALUES ('a', '009', 'forged')",
            "42501",
        ),
        (
            &format!("CREATE TABLE {}.planted (id int)", b.pg_name()),
            "3F000",
        ),
    ] {
        let reach = migrations::apply_migration(
            &h.svc,
            &h.routers,
            "default",
            &migration("002", sql),
            TIMEOUT,
        )
        .await
        .unwrap_err();
        match &reach {
            ServiceError::Statement { sqlstate, .. } => {
                assert_eq!(sqlstate.as_deref(), Some(state), "{sql}: {reach}")
            }
            other => panic!("{sql}: expected a statement error, got {other}"),
        }
    }
    for pg in &h.shards {
        for t in [&a, &b] {
            let db = t.pg_name();
            assert_eq!(table_owner_in(pg, &db, "public", "planted").await, None);
            assert_eq!(table_owner_in(pg, &db, &b.pg_name(), "planted").await, None);
            assert_eq!(
                tenant_records(pg, t).await,
                ["001"],
                "no 002, no forged 009"
            );
            assert_eq!(shard_count(pg, &t.id).await, Some(1));
        }
    }
    let names: Vec<String> = h.svc.current().catalog.keyspaces["default"]
        .migrations
        .iter()
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(names, ["001"]);

    migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration("003", "ALTER TABLE items ADD COLUMN n int"),
        TIMEOUT,
    )
    .await
    .unwrap();
    // A tenant created now gets 001 and 003 on every shard.
    h.shared_tenant("c", "default").await;
    let c = h.tenant("c");
    for pg in &h.shards {
        assert_provisioned(pg, &c).await;
        assert_eq!(tenant_records(pg, &c).await, ["001", "003"]);
        assert_eq!(shard_count(pg, "c").await, Some(2));
        assert_eq!(table_owner(pg, &c, "items").await, Some(c.pg_name()));
        tenant_db(pg, &c)
            .await
            .batch_execute(&format!(
                "INSERT INTO {}.items (id, v, n) VALUES (1, 'x', 2)",
                c.pg_name()
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_without_tenants_records_and_joining_shards_catch_up() {
    let h = Harness::start(1).await;
    h.keyspace("later", &[]).await;
    let res = migrations::apply_migration(
        &h.svc,
        &h.routers,
        "later",
        &migration("001", "CREATE TABLE late_t (id int)"),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(res.shards.is_empty());
    assert_eq!(
        h.svc.current().catalog.keyspaces["later"].migrations.len(),
        1
    );
    // A tenant in a keyspace without shards yet, then the shards arrive.
    h.shared_tenant("acme", "later").await;
    ops::set_initial_map(&h.svc, "later", &["s0".into()], TIMEOUT)
        .await
        .unwrap();
    let acme = h.tenant("acme");
    assert_provisioned(&h.shards[0], &acme).await;
    assert_eq!(
        table_owner(&h.shards[0], &acme, "late_t").await,
        Some(acme.pg_name())
    );
    assert_eq!(tenant_records(&h.shards[0], &acme).await, ["001"]);
    assert_eq!(shard_count(&h.shards[0], "acme").await, Some(1));
    // Unknown keyspace: 404; empty SQL: 400.
    let e = migrations::apply_migration(
        &h.svc,
        &h.routers,
        "nope",
        &migration("001", "SELECT 1"),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    let e = migrations::apply_migration(
        &h.svc,
        &h.routers,
        "later",
        &migration("002", "  "),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_restores_a_tenant_a_shard_lost() {
    let h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    tenants::create_tenant(
        &h.svc,
        &CreateTenantRequest {
            id: "acme".into(),
            ..Default::default()
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration("001", "CREATE TABLE items (id int)"),
        TIMEOUT,
    )
    .await
    .unwrap();
    // s1 loses the tenant altogether (as if restored from a backup older
    // than it): database, role and its row in the shard's tenants table.
    let acme = h.tenant("acme");
    let name = acme.pg_name();
    let c = h.shards[1].connect().await.unwrap();
    // DROP DATABASE must run alone (not in a multi-statement batch).
    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("DROP ROLE {name}"),
        "DELETE FROM shardline.tenants WHERE tenant = 'acme'".into(),
    ] {
        c.batch_execute(&sql).await.unwrap();
    }
    common::assert_absent(&h.shards[1], &acme).await;
    // s0 loses only the database: its role and a row saying it is up to
    // date remain, so only the database's absence gives it away.
    let c = h.shards[0].connect().await.unwrap();
    c.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    assert!(!common::database_exists(&h.shards[0], &name).await);
    assert_eq!(shard_count(&h.shards[0], "acme").await, Some(1));

    let reconciling = h.start_reconciling();
    let restored = eventually(Duration::from_secs(20), || async {
        for pg in &h.shards {
            if table_owner(pg, &acme, "items").await.is_none()
                || shard_count(pg, "acme").await != Some(1)
            {
                return false;
            }
        }
        true
    })
    .await;
    reconciling.stop().await;
    assert!(
        restored,
        "the reconciler re-provisions and re-migrates the tenant"
    );
    for pg in &h.shards {
        assert_provisioned(pg, &acme).await;
        assert_eq!(tenant_records(pg, &acme).await, ["001"]);
        assert_eq!(table_owner(pg, &acme, "items").await, Some(name.clone()));
    }
}

/// Whether keyspace `ks` is marked as possibly holding code.
fn tenant_code(h: &Harness, ks: &str) -> bool {
    h.svc.current().catalog.keyspaces[ks].tenant_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_is_marked_before_a_migration_brings_code_and_cleared_when_none_did() {
    let h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    h.shared_tenant("a", "default").await;
    assert!(!tenant_code(&h, "default"), "a new keyspace holds no code");

    // A router that heartbeats but never applies the marked catalog holds
    // the migration back for one lease (2 s here): it may skip resets.
    let behind = h.svc.current().catalog.version;
    h.routers
        .heartbeat(&shardline_api::manager::RouterHeartbeat {
            id: "r1".into(),
            address: "127.0.0.1:1".into(),
            applied_version: behind,
        });
    let started = std::time::Instant::now();
    migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration("001", "CREATE TABLE items (id int PRIMARY KEY)"),
        TIMEOUT,
    )
    .await
    .unwrap();
    let waited = started.elapsed();
    println!("migration waited {waited:?} for a router behind");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    // No code came: the mark is cleared, every tenant database guarded.
    assert!(!tenant_code(&h, "default"));
    for pg in &h.shards {
        let db = tenant_db(pg, &h.tenant("a")).await;
        let free: i64 = db
            .query_one("SELECT count(*) FROM shardline.code_free", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(free, 1, "marked code-free");
    }

    // A routers that has the marked catalog does not hold it back.
    h.routers
        .heartbeat(&shardline_api::manager::RouterHeartbeat {
            id: "r1".into(),
            address: "127.0.0.1:1".into(),
            applied_version: u64::MAX,
        });
    let started = std::time::Instant::now();
    migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration(
            "002",
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NEW; END $$",
        ),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // Code came: the mark stays, and the databases are no longer guarded.
    assert!(tenant_code(&h, "default"));
    for pg in &h.shards {
        let db = tenant_db(pg, &h.tenant("a")).await;
        let free: i64 = db
            .query_one("SELECT count(*) FROM shardline.code_free", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(free, 0);
    }
    // A tenant created later gets the code with the migrations, in a
    // keyspace already marked.
    h.shared_tenant("b", "default").await;
    assert!(tenant_code(&h, "default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_a_database_with_code_never_refuses_the_tenants_ddl() {
    // The reconciler settles tenant databases now and then; a tenant's
    // ordinary DDL in a database that holds code (so is not guarded)
    // must pass whenever it runs, also while a settle is under way.
    let h = Harness::start(1).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("a", "default").await;
    migrations::apply_migration(
        &h.svc,
        &h.routers,
        "default",
        &migration(
            "001",
            "CREATE FUNCTION touch() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ),
        TIMEOUT,
    )
    .await
    .unwrap();
    let tenant = h.tenant("a");
    let pg = &h.shards[0];
    let settler = tenant_db(pg, &tenant).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let settled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let settling = {
        let (stop, settled) = (Arc::clone(&stop), Arc::clone(&settled));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000 {
                let holds = shardline_manager::tenant_code::settle(&settler)
                    .await
                    .unwrap();
                assert!(holds, "the function is code");
                n += 1;
                settled.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    let name = tenant.pg_name();
    let as_tenant = common::connect_as(pg, &name, &tenant.role_password, &name)
        .await
        .unwrap();
    as_tenant
        .batch_execute(&format!("SET search_path = {name}"))
        .await
        .unwrap();
    let mut refused = Vec::new();
    // At least 300 statements, and on until the settles have overlapped
    // them (a loaded machine may start the settling task late); bounded.
    let mut ran = 0;
    for i in 0..3_000 {
        if i >= 300 && settled.load(std::sync::atomic::Ordering::Relaxed) > 20 {
            break;
        }
        ran += 1;
        if let Err(e) = as_tenant
            .batch_execute(&format!("CREATE SEQUENCE s{i}; DROP SEQUENCE s{i}"))
            .await
        {
            refused.push(format!("{i}: {}", common::sqlstate(&e).unwrap_or("?")));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let settles = settling.await.unwrap();
    println!("{ran} DDL statements while {settles} settles ran");
    assert!(settles > 10, "the settles ran meanwhile");
    assert!(refused.is_empty(), "refused: {refused:?}");
}
