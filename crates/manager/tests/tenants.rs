//! Tenants against real PostgreSQL shards: a role and a database of its
//! own (holding its schema) provisioned on every shard of the keyspace,
//! tenants kept out of each other's databases, dedicated keyspaces from shards given to
//! one tenant alone, the shard-count quota, and delete with and without
//! `drop_data`.

mod common;

use common::{
    assert_absent, assert_provisioned, connect_as, database_exists, database_state, shard_count,
    sqlstate, table_owner, table_owner_in, tenant_db, tenant_leftovers, Harness, TIMEOUT,
};
use shardline_api::manager::{ApplyMigrationRequest, CreateTenantRequest, UpdateTenantRequest};
use shardline_api::ErrorCode;
use shardline_core::catalog::{Limits, Tenant, TenantConfig, TenantState};
use shardline_manager::error::ServiceError;
use shardline_manager::{migrations, tenants};

/// Creates a tenant as the manager's API does.
async fn create(h: &Harness, req: &CreateTenantRequest) -> Result<Tenant, ServiceError> {
    tenants::create_tenant(&h.svc, req, TIMEOUT).await
}

/// A shared tenant, in `keyspace` (the default one if `None`).
fn shared(id: &str, keyspace: Option<&str>) -> CreateTenantRequest {
    CreateTenantRequest {
        id: id.into(),
        keyspace: keyspace.map(str::to_string),
        ..Default::default()
    }
}

fn dedicated(id: &str, shards: u32) -> CreateTenantRequest {
    CreateTenantRequest {
        id: id.into(),
        dedicated: true,
        shards: Some(shards),
        ..Default::default()
    }
}

fn max_shards(n: u32) -> TenantConfig {
    TenantConfig {
        limits: Limits {
            max_shards: Some(n),
            ..Limits::default()
        },
        ..TenantConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_tenant_owns_role_and_database_on_every_shard() {
    let h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    // No keyspace given: `default`.
    let t = create(
        &h,
        &CreateTenantRequest {
            id: "acme".into(),
            name: Some("Acme Corp".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(t.keyspace, "default");
    assert!(!t.dedicated);
    assert!(t.role_password.len() >= 32, "high-entropy password");
    // Its PostgreSQL name is random and says nothing of the tenant.
    let name = t.pg_name();
    assert!(
        name.len() == 26
            && name.starts_with("t_")
            && name[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    let cat = h.svc.current();
    assert_eq!(cat.catalog.tenants["acme"].name, "Acme Corp");
    assert_eq!(cat.catalog.tenants["acme"].pg_name(), name);
    for pg in &h.shards {
        assert_provisioned(pg, &t).await;
        // No migrations yet, and the shard's own database says so.
        assert!(common::tenant_records(pg, &t).await.is_empty());
        assert_eq!(shard_count(pg, "acme").await, Some(0));
    }
    // The tenant's role logs in to its database and creates only in its
    // own schema (its search_path).
    let pg = &h.shards[0];
    let c = connect_as(pg, &name, &t.role_password, &name)
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE mine (id int)").await.unwrap();
    assert_eq!(
        table_owner(pg, &t, "mine").await.as_deref(),
        Some(name.as_str())
    );
    for (sql, state) in [
        // `public` and the bookkeeping schema are closed to it ...
        ("CREATE TABLE public.theirs (id int)", "42501"),
        ("SELECT * FROM shardline.tenant_migrations", "42501"),
        (
            "INSERT INTO shardline.tenant_migrations (tenant, name, checksum) \
             VALUES ('acme', '999', 'forged')",
            "42501",
        ),
        // ... and it may not add schemas to the database.
        ("CREATE SCHEMA extra", "42501"),
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), Some(state), "{sql}: {e}");
    }
    assert_eq!(table_owner_in(pg, &name, "public", "theirs").await, None);
    // The shard's own database is closed to it.
    let e = connect_as(pg, &name, &t.role_password, "postgres")
        .await
        .expect_err("the tenant must not connect to the shard's database");
    assert_eq!(sqlstate(&e), Some("42501"), "{e}");

    // Same id again: 409; a missing keyspace: 404; bad ids: 400.
    let again = create(&h, &shared("acme", None)).await.unwrap_err();
    assert!(matches!(again, ServiceError::Conflict(_)), "{again}");
    let missing = create(&h, &shared("beta", Some("nope"))).await.unwrap_err();
    assert!(matches!(missing, ServiceError::NotFound(_)), "{missing}");
    for bad in ["Acme", &"a".repeat(49), "-x", ""] {
        let e = create(&h, &shared(bad, None)).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{bad}: {e}");
    }
    // `shards` without `dedicated` is an error, not ignored.
    let e = create(
        &h,
        &CreateTenantRequest {
            id: "gamma".into(),
            shards: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_tenants_get_shards_of_their_own() {
    let mut h = Harness::start(1).await; // s0: unreserved
    let s1 = h.add_shard(Some("acme")).await;
    let s2 = h.add_shard(Some("other")).await;
    // Shards reserved for acme come first.
    let t = create(&h, &dedicated("acme", 1)).await.unwrap();
    assert!(t.dedicated);
    assert_eq!(t.keyspace, "acme");
    let cat = h.svc.current();
    let ks = &cat.catalog.keyspaces["acme"];
    let owners: Vec<&str> = ks
        .map
        .as_ref()
        .unwrap()
        .ranges()
        .iter()
        .map(|r| r.shard.as_str())
        .collect();
    assert_eq!(owners, [s1.as_str()]);
    assert_eq!(cat.catalog.shards[&s1].keyspace.as_deref(), Some("acme"));
    assert_provisioned(h.pg(&s1), &t).await;
    // Not provisioned on shards outside its keyspace.
    assert_absent(h.pg("s0"), &t).await;

    // One free unreserved shard (s0) is left: beta takes it; then gamma
    // finds none, since s1 is acme's and s2 is reserved for another.
    create(&h, &dedicated("beta", 1)).await.unwrap();
    let e = create(&h, &dedicated("gamma", 1)).await.unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    assert!(tenant_leftovers(h.pg(&s2)).await.is_empty());
    assert!(!h.svc.current().catalog.tenants.contains_key("gamma"));
    // The shard reserved for `other` is used by `other` only.
    create(&h, &dedicated("other", 1)).await.unwrap();
    assert_eq!(
        h.svc.current().catalog.shards[&s2].keyspace.as_deref(),
        Some("other")
    );

    // A shared tenant cannot move into a dedicated keyspace.
    let e = create(&h, &shared("intruder", Some("acme")))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_is_never_given_to_two_dedicated_tenants() {
    let mut h = Harness::start(0).await;
    let s0 = h.add_shard(None).await;
    create(&h, &dedicated("first", 1)).await.unwrap();
    let e = create(&h, &dedicated("second", 1)).await.unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    let cat = h.svc.current();
    assert_eq!(cat.catalog.shards[&s0].keyspace.as_deref(), Some("first"));
    assert!(!cat.catalog.keyspaces.contains_key("second"));
    // A shard reserved for a tenant cannot join another keyspace either.
    let reserved = h.add_shard(Some("first")).await;
    let e = shardline_manager::ops::create_keyspace(
        &h.svc,
        &shardline_api::manager::CreateKeyspaceRequest {
            name: "shared".into(),
            key_type: Default::default(),
            shards: vec![reserved.clone()],
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    // Registering for a tenant needs a valid tenant id (not an existing
    // tenant).
    let e = shardline_manager::ops::register_shard(
        &h.svc,
        &shardline_api::manager::RegisterShardRequest {
            id: "s9".into(),
            primary: h.shards[0].dsn(),
            replicas: vec![],
            tenant: Some("Not Valid".into()),
            synchronous: false,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_count_quota() {
    let h = Harness::start(2).await;
    let mut req = dedicated("acme", 2);
    req.config = max_shards(1);
    let e = create(&h, &req).await.unwrap_err();
    assert!(matches!(e, ServiceError::QuotaExceeded(_)), "{e}");
    let api = e.to_api();
    assert_eq!(api.code, ErrorCode::QuotaExceeded);
    assert_eq!(api.http_status(), 429);
    assert!(api.message.contains("max_shards"), "{}", api.message);
    // Nothing was provisioned or written.
    for pg in &h.shards {
        assert!(tenant_leftovers(pg).await.is_empty());
    }
    assert!(h.svc.current().catalog.tenants.is_empty());

    // Zero or no shards for a dedicated tenant: 400.
    for shards in [Some(0), None] {
        let mut r = dedicated("acme", 1);
        r.shards = shards;
        let e = create(&h, &r).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    }

    req.config = max_shards(2);
    create(&h, &req).await.unwrap();
    // Lowering the quota below the shards it has: 409; to exactly: fine.
    let lower = |n| UpdateTenantRequest {
        name: None,
        config: Some(max_shards(n)),
    };
    let e = tenants::update_tenant(&h.svc, "acme", &lower(1))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    let t = tenants::update_tenant(&h.svc, "acme", &lower(2))
        .await
        .unwrap();
    assert_eq!(t.config.limits.max_shards, Some(2));
    let e = tenants::update_tenant(
        &h.svc,
        "acme",
        &UpdateTenantRequest {
            name: None,
            config: Some(TenantConfig {
                limits: Limits {
                    requests_per_second: Some(0),
                    ..Limits::default()
                },
                ..TenantConfig::default()
            }),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let e = tenants::update_tenant(&h.svc, "nobody", &lower(3))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_at_creation_writes_nothing() {
    let mut h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    h.shards[1].stop().await.unwrap();
    let e = create(&h, &shared("acme", None)).await.unwrap_err();
    assert!(matches!(e, ServiceError::ShardUnavailable(_)), "{e}");
    assert_eq!(e.to_api().http_status(), 503);
    assert!(h.svc.current().catalog.tenants.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_needs_drop_data_when_rows_exist() {
    let h = Harness::start(3).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("keep", "default").await;
    create(&h, &dedicated("acme", 2)).await.unwrap();
    // Both keyspaces get a table; acme writes one row on one shard.
    for ks in ["default", "acme"] {
        migrations::apply_migration(
            &h.svc,
            &h.routers,
            ks,
            &ApplyMigrationRequest {
                name: "001".into(),
                sql: "CREATE TABLE items (id int PRIMARY KEY)".into(),
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    let cat = h.svc.current();
    let acme_shards = shardline_manager::checks::keyspace_shards(&cat.catalog, "acme");
    assert_eq!(acme_shards.len(), 2);
    let acme = h.tenant("acme");
    let keep = h.tenant("keep");
    let c = tenant_db(h.pg(&acme_shards[1]), &acme).await;
    c.batch_execute(&format!("INSERT INTO {}.items VALUES (1)", acme.pg_name()))
        .await
        .unwrap();

    let e = tenants::delete_tenant(&h.svc, "acme", false, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("drop_data"), "{e}");
    let cat = h.svc.current();
    assert_eq!(cat.catalog.tenants["acme"].state, TenantState::Active);
    for id in &acme_shards {
        assert_provisioned(h.pg(id), &acme).await;
        assert_eq!(common::tenant_records(h.pg(id), &acme).await, ["001"]);
        assert_eq!(shard_count(h.pg(id), "acme").await, Some(1));
    }
    drop(c);

    // A session of the tenant's role in its database does not hold the
    // drop up (WITH (FORCE) ends it).
    let name = acme.pg_name();
    let held = connect_as(h.pg(&acme_shards[0]), &name, &acme.role_password, &name)
        .await
        .unwrap();
    held.batch_execute("SELECT 1").await.unwrap();
    tenants::delete_tenant(&h.svc, "acme", true, TIMEOUT)
        .await
        .unwrap();
    assert!(
        held.batch_execute("SELECT 1").await.is_err(),
        "session ended"
    );
    for id in &acme_shards {
        assert_absent(h.pg(id), &acme).await;
    }
    let cat = h.svc.current();
    assert!(!cat.catalog.tenants.contains_key("acme"));
    assert!(!cat.catalog.keyspaces.contains_key("acme"));
    for id in &acme_shards {
        let s = &cat.catalog.shards[id];
        assert_eq!((s.keyspace.as_ref(), s.reserved_for.as_ref()), (None, None));
    }
    // The other tenant is untouched.
    assert_provisioned(&h.shards[0], &keep).await;
    assert_eq!(
        table_owner(&h.shards[0], &keep, "items").await,
        Some(keep.pg_name())
    );

    // An empty tenant goes without drop_data; unknown ones are 404.
    tenants::delete_tenant(&h.svc, "keep", false, TIMEOUT)
        .await
        .unwrap();
    assert_absent(&h.shards[0], &keep).await;
    let e = tenants::delete_tenant(&h.svc, "keep", false, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    // Its shards are free again: a new dedicated tenant can take them.
    create(&h, &dedicated("again", 2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_a_shard_down_stays_deleting_and_can_be_retried() {
    let mut h = Harness::start(2).await;
    h.keyspace("default", &["s0", "s1"]).await;
    h.shared_tenant("acme", "default").await;
    let acme = h.tenant("acme");
    h.shards[1].stop().await.unwrap();
    let e = tenants::delete_tenant(&h.svc, "acme", true, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::ShardUnavailable(_)), "{e}");
    assert_eq!(
        h.svc.current().catalog.tenants["acme"].state,
        TenantState::Deleting
    );
    // Being deleted: no new apps, no changes.
    let e = shardline_manager::apps::create_app(
        &h.svc,
        &shardline_api::manager::CreateAppRequest {
            name: "late".into(),
            tenant: Some("acme".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
    h.shards[1].restart().await.unwrap();
    tenants::delete_tenant(&h.svc, "acme", true, TIMEOUT)
        .await
        .unwrap();
    assert!(!h.svc.current().catalog.tenants.contains_key("acme"));
    for pg in &h.shards {
        assert_absent(pg, &acme).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_role_cannot_enter_another_tenants_database() {
    let h = Harness::start(1).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("a", "default").await;
    h.shared_tenant("b", "default").await;
    let pg = &h.shards[0];
    let (a, b) = (h.tenant("a"), h.tenant("b"));
    let (name_a, name_b) = (a.pg_name(), b.pg_name());
    // The testkit clusters trust loopback, so the password is not checked
    // here; the CONNECT privilege is checked after authentication whatever
    // the method, and that is what keeps a out of b's database.
    let own = connect_as(pg, &name_a, &a.role_password, &name_a)
        .await
        .unwrap();
    let who: String = own
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, name_a);
    let e = connect_as(pg, &name_a, &a.role_password, &name_b)
        .await
        .expect_err("a's role must not connect to b's database");
    assert_eq!(sqlstate(&e), Some("42501"), "{e}");
    let admin = pg.connect().await.unwrap();
    for (role, db, allowed) in [
        (&name_a, &name_a, true),
        (&name_a, &name_b, false),
        (&name_b, &name_a, false),
        (&name_b, &name_b, true),
    ] {
        let can: bool = admin
            .query_one(
                "SELECT has_database_privilege($1, $2, 'CONNECT')",
                &[&role, &db],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(can, allowed, "{role} CONNECT on {db}");
    }
    // Nor can it take b's role.
    let e = own
        .batch_execute(&format!("SET ROLE {name_b}"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("42501"), "{e}");
    // Each database holds its own tenant's schema only.
    for (t, other) in [(&a, &b), (&b, &a)] {
        let db = database_state(pg, t).await.unwrap();
        assert_eq!(db.schema_owner, Some(t.pg_name()));
        assert!(database_exists(pg, &other.pg_name()).await);
        let c = tenant_db(pg, t).await;
        let foreign: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&other.pg_name()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            !foreign,
            "schema of {} inside {}'s database",
            other.id, t.id
        );
    }
}
