//! What a tenant sees of the other tenants of its shard, against real
//! PostgreSQL: as tenant A's role in A's database, everything A can list
//! (catalogs, statistics views, role lookups by oid) while tenant
//! `acme-secret-customer` is running a query shows nothing of who that
//! tenant is; the same listing as a superuser does (the control). Older
//! tenant databases, and tenants from before opaque names, are brought up
//! to date by the reconciler. Ordinary clients (psql, psycopg, pgjdbc,
//! node-postgres) still work in a tenant database.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{connect_as, eventually, sqlstate, tenant_db, Harness, TIMEOUT};
use shardline_api::manager::CreateTenantRequest;
use shardline_core::catalog::{keys, quote_ident, Tenant};
use shardline_manager::service::put;
use shardline_manager::tenants;
use shardline_testkit::PgCluster;
use tokio_postgres::{Client, NoTls};

/// The id of the tenant whose identity must not leak; its display name,
/// a comment on its role and database, a setting of its database and the
/// `application_name` of its session all carry it too.
const SECRET: &str = "acme-secret-customer";

/// What a tenant can try to read about others, as `(label, query)`; each
/// query's rows are read as text.
const LISTING: &[(&str, &str)] = &[
    ("pg_database", "SELECT * FROM pg_database"),
    ("pg_roles", "SELECT * FROM pg_roles"),
    ("pg_user", "SELECT * FROM pg_user"),
    ("pg_group", "SELECT * FROM pg_group"),
    ("pg_auth_members", "SELECT * FROM pg_auth_members"),
    (
        "role names by oid",
        "SELECT pg_get_userbyid(o::oid) FROM generate_series(1, 1000000) o \
         WHERE pg_get_userbyid(o::oid) NOT LIKE 'unknown (OID=%'",
    ),
    (
        "regrole casts",
        "SELECT o::oid::regrole::text FROM generate_series(1, 1000000) o \
         WHERE o::oid::regrole::text !~ '^[0-9]+$'",
    ),
    ("pg_stat_activity", "SELECT * FROM pg_stat_activity"),
    (
        "pg_stat_get_activity",
        "SELECT * FROM pg_stat_get_activity(NULL)",
    ),
    (
        "backend functions",
        "SELECT pg_stat_get_backend_userid(b), pg_stat_get_backend_dbid(b) \
         FROM pg_stat_get_backend_idset() b",
    ),
    ("pg_stat_ssl", "SELECT * FROM pg_stat_ssl"),
    ("pg_stat_gssapi", "SELECT * FROM pg_stat_gssapi"),
    (
        "pg_stat_progress_vacuum",
        "SELECT * FROM pg_stat_progress_vacuum",
    ),
    ("pg_locks", "SELECT * FROM pg_locks"),
    ("pg_prepared_xacts", "SELECT * FROM pg_prepared_xacts"),
    ("pg_stat_database", "SELECT * FROM pg_stat_database"),
    (
        "pg_stat_database_conflicts",
        "SELECT * FROM pg_stat_database_conflicts",
    ),
    (
        "per-database counters",
        "SELECT pg_stat_get_db_xact_commit(oid) FROM pg_database",
    ),
    (
        "database sizes",
        "SELECT pg_database_size(oid) FROM pg_database",
    ),
    ("tablespace size", "SELECT pg_tablespace_size('pg_default')"),
    ("pg_db_role_setting", "SELECT * FROM pg_db_role_setting"),
    ("pg_shdescription", "SELECT * FROM pg_shdescription"),
    (
        "database comments",
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database",
    ),
    ("pg_shdepend", "SELECT * FROM pg_shdepend"),
    ("pg_shseclabel", "SELECT * FROM pg_shseclabel"),
    ("pg_tablespace", "SELECT * FROM pg_tablespace"),
    (
        "pg_replication_origin",
        "SELECT * FROM pg_replication_origin",
    ),
    ("pg_replication_slots", "SELECT * FROM pg_replication_slots"),
    ("pg_stat_replication", "SELECT * FROM pg_stat_replication"),
    ("pg_namespace", "SELECT * FROM pg_namespace"),
    (
        "information_schema roles",
        "SELECT * FROM information_schema.applicable_roles",
    ),
];

/// Refused to the tenant (`42501`): docs/architecture.md, "What a tenant
/// sees of others".
const REFUSED: &[&str] = &[
    "pg_stat_activity",
    "pg_stat_get_activity",
    "backend functions",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_stat_progress_vacuum",
    "pg_locks",
    "pg_prepared_xacts",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "per-database counters",
    "database sizes",
    "tablespace size",
    "pg_db_role_setting",
    "pg_shdescription",
    "database comments",
    "pg_shdepend",
];

/// Each listing's rows as text, or its refusal as `ERROR <sqlstate>:
/// <message>`.
async fn list(c: &Client) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (label, sql) in LISTING {
        let wrapped = format!("SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM ({sql}) t");
        let text = match c.query_one(&wrapped, &[]).await {
            Ok(row) => row.get(0),
            Err(e) => match e.as_db_error() {
                Some(db) => format!("ERROR {}: {}", db.code().code(), db.message()),
                None => panic!("{label}: {e}"),
            },
        };
        out.push((*label, text));
    }
    out
}

/// Whether `text` tells who the secret tenant is.
fn reveals(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("acme") || t.contains("secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_learns_nothing_of_who_the_others_are() {
    let h = Harness::start(1).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("alpha", "default").await;
    tenants::create_tenant(
        &h.svc,
        &CreateTenantRequest {
            id: SECRET.into(),
            name: Some("Acme Secret Customer Inc.".into()),
            ..Default::default()
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    let (a, b) = (h.tenant("alpha"), h.tenant(SECRET));
    let (name_a, name_b) = (a.pg_name(), b.pg_name());
    assert!(!reveals(&name_b), "{name_b}");
    let pg = &h.shards[0];

    // What an operator or the tenant may attach to its role, database and
    // sessions: all of it carries the secret.
    let admin = pg.connect().await.unwrap();
    let ident_b = quote_ident(&name_b);
    admin
        .batch_execute(&format!(
            "COMMENT ON DATABASE {ident_b} IS '{SECRET}'; \
             COMMENT ON ROLE {ident_b} IS '{SECRET}'; \
             ALTER DATABASE {ident_b} SET application_name = '{SECRET}'"
        ))
        .await
        .unwrap();
    // B's session names itself, holds an advisory lock and runs a query.
    let busy = connect_as(pg, &name_b, &b.role_password, &name_b)
        .await
        .unwrap();
    busy.batch_execute(&format!(
        "SET application_name = '{SECRET}'; SELECT pg_advisory_lock(4242)"
    ))
    .await
    .unwrap();
    let cancel = busy.cancel_token();
    let query = tokio::spawn(async move { busy.batch_execute("SELECT pg_sleep(60)").await });
    let running = eventually(Duration::from_secs(10), || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
                &[&name_b],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(running, "B's query is running");

    // Everything A can list, as A in A's database.
    let as_a = connect_as(pg, &name_a, &a.role_password, &name_a)
        .await
        .unwrap();
    let seen = list(&as_a).await;
    for (label, text) in &seen {
        println!("{label}: {}", text.replace('\n', " | "));
        assert!(!reveals(text), "{label} tells A who B is: {text}");
    }
    let of = |label: &str| -> &str {
        seen.iter()
            .find(|(l, _)| *l == label)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default()
    };
    for label in REFUSED {
        assert!(
            of(label).starts_with("ERROR 42501"),
            "{label} is refused to the tenant: {}",
            of(label)
        );
    }
    // Role and database names stay listable (by oid whatever the grants):
    // B's is there, opaque. Were it `tenant_<id>`, the listing above
    // would have failed.
    for label in [
        "pg_roles",
        "pg_database",
        "role names by oid",
        "regrole casts",
    ] {
        assert!(of(label).contains(&name_b), "{label}: {}", of(label));
    }

    // The control: the same listing by a superuser in A's database shows
    // who B is, in the session list, the settings and the comments.
    let root = common::connect_db(pg, &name_a).await;
    let root_seen = list(&root).await;
    for label in [
        "pg_stat_activity",
        "pg_db_role_setting",
        "pg_shdescription",
        "database comments",
    ] {
        let text = root_seen
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default();
        assert!(reveals(text), "superuser's {label}: {text}");
    }
    assert!(root_seen.iter().any(|(_, t)| t.contains(&name_b)));

    cancel.cancel_query(NoTls).await.unwrap();
    let ended = query.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&ended), Some("57014"), "{ended}");
}

/// Undoes the hiding in a tenant database, as in one provisioned before
/// it existed.
const UNHIDE: &str = "GRANT SELECT ON pg_stat_activity, pg_locks, pg_db_role_setting TO PUBLIC; \
     GRANT EXECUTE ON FUNCTION pg_stat_get_activity(integer) TO PUBLIC";

/// Whether the role `name` may read `pg_stat_activity` in its database.
async fn sees_sessions(pg: &PgCluster, name: &str, password: &str) -> bool {
    let c = connect_as(pg, name, password, name).await.unwrap();
    match c
        .query_one("SELECT count(*) FROM pg_stat_activity", &[])
        .await
    {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(sqlstate(&e), Some("42501"), "{e}");
            false
        }
    }
}

/// The set-up version noted per tenant in the shard's tenants table;
/// `None` while it has no such column.
async fn setups(pg: &PgCluster) -> Option<Vec<(String, i32)>> {
    let rows = pg
        .connect()
        .await
        .unwrap()
        .query(
            "SELECT tenant, setup FROM shardline.tenants ORDER BY 1",
            &[],
        )
        .await
        .ok()?;
    Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_hides_others_in_older_tenant_databases() {
    let h = Harness::start(1).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("fresh", "default").await;
    let fresh = h.tenant("fresh");
    let pg = &h.shards[0];
    assert!(!sees_sessions(pg, &fresh.pg_name(), &fresh.role_password).await);

    // A shard from before: its tenants table without the setup column,
    // and fresh's database without the hiding.
    tenant_db(pg, &fresh)
        .await
        .batch_execute(UNHIDE)
        .await
        .unwrap();
    pg.connect()
        .await
        .unwrap()
        .batch_execute("ALTER TABLE shardline.tenants DROP COLUMN setup")
        .await
        .unwrap();
    assert!(sees_sessions(pg, &fresh.pg_name(), &fresh.role_password).await);
    // And a tenant recorded before opaque names (no pg_name): it keeps
    // `tenant_<id>`.
    let old = Tenant {
        id: "old".into(),
        name: "old".into(),
        pg_name: None,
        ..fresh.clone()
    };
    let key = keys::tenant("old");
    h.svc
        .update(std::slice::from_ref(&key), |_| {
            Ok(vec![put(key.clone(), &old)])
        })
        .await
        .unwrap();
    assert_eq!(h.tenant("old").pg_name(), "tenant_old");

    let reconciling = h.start_reconciling();
    // Done when the shard's tenants table notes the current set-up for
    // both (the last step of provisioning).
    let current = shardline_manager::tenant_pg::TENANT_SETUP;
    let want = [("fresh".to_string(), current), ("old".to_string(), current)];
    let hidden = eventually(Duration::from_secs(20), || async {
        setups(pg).await.as_deref() == Some(&want[..])
    })
    .await;
    reconciling.stop().await;
    assert!(hidden, "set-up noted: {:?}", setups(pg).await);
    assert!(!sees_sessions(pg, &fresh.pg_name(), &fresh.role_password).await);
    common::assert_provisioned(pg, &old).await;
    assert!(!sees_sessions(pg, "tenant_old", &old.role_password).await);
}

/// The client checks' scripts (`check.py`, `Check.java`, `check.js` and
/// node-postgres under `node_modules`).
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a client program as the tenant (PG* environment variables),
/// bounded in time; its output, or why it failed, with `install` as the
/// remedy when the program is missing.
async fn run_client(
    program: &str,
    args: &[&str],
    pg: &PgCluster,
    tenant: &Tenant,
    extra_env: &[(&str, String)],
    install: &str,
) -> Result<String, String> {
    let name = tenant.pg_name();
    let mut cmd = tokio::process::Command::new(program);
    // The Python client checks with `assert`: never optimised away.
    cmd.args(args)
        .current_dir(clients_dir())
        .env_remove("PYTHONOPTIMIZE")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", &name)
        .env("PGPASSWORD", &tenant.role_password)
        .env("PGDATABASE", &name)
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("{program} not found ({e}); install it: {install}"))?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| format!("{program} {args:?} ran past 120 s"))?
        .map_err(|e| format!("{program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {text}",
            out.status
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_clients_work_in_a_tenant_database() {
    let h = Harness::start(1).await;
    h.keyspace("default", &["s0"]).await;
    h.shared_tenant("alpha", "default").await;
    h.shared_tenant("beta", "default").await;
    let a = h.tenant("alpha");
    let pg = &h.shards[0];
    // As a migration would: its objects, a function among them, and then
    // the database marked as holding code (so the tenant may add more).
    let inside = tenant_db(pg, &a).await;
    inside
        .batch_execute(&format!(
            "SET ROLE {0}; SET search_path = {0}; \
             CREATE TABLE items (id int PRIMARY KEY, v text); \
             CREATE VIEW items_v AS SELECT * FROM items; \
             CREATE TYPE mood AS ENUM ('calm', 'busy'); \
             CREATE FUNCTION twice(int) RETURNS int LANGUAGE sql AS 'SELECT $1 * 2'; \
             RESET ROLE",
            a.pg_name()
        ))
        .await
        .unwrap();
    assert!(shardline_manager::tenant_code::settle(&inside)
        .await
        .unwrap());

    // psql's catalogue commands: these work ...
    let psql = shardline_localpg::PgBinaries::detect()
        .map(|b| b.program("psql"))
        .unwrap_or_else(|e| panic!("{e}"));
    let psql = psql.to_string_lossy();
    let install_psql = "apt-get install postgresql-client-15";
    for meta in [
        "\\conninfo",
        "\\d",
        "\\d items",
        "\\dt",
        "\\dt+",
        "\\dn",
        "\\dn+",
        "\\dv",
        "\\di",
        "\\df",
        "\\dT",
        "\\dx",
        "\\dp",
        "\\db",
        "\\l",
        "\\du",
        "\\dg",
    ] {
        let out = run_client(
            &psql,
            &["-X", "-v", "ON_ERROR_STOP=1", "-c", meta],
            pg,
            &a,
            &[],
            install_psql,
        )
        .await
        .unwrap_or_else(|e| panic!("psql {meta}: {e}"));
        assert!(!out.contains("ERROR"), "psql {meta}: {out}");
    }
    // ... and these, which read comments, sizes or settings of every role
    // and database, are refused (docs/architecture.md).
    for meta in ["\\l+", "\\du+", "\\db+", "\\drds"] {
        let e = run_client(
            &psql,
            &["-X", "-v", "ON_ERROR_STOP=1", "-c", meta],
            pg,
            &a,
            &[],
            install_psql,
        )
        .await
        .expect_err(meta);
        assert!(e.contains("permission denied"), "psql {meta}: {e}");
    }

    let python = run_client(
        "python3",
        &["check.py"],
        pg,
        &a,
        &[],
        "apt-get install python3-psycopg (or pip install 'psycopg[binary]')",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(python.contains("psycopg ok"), "{python}");

    let jar = std::env::var("SHARDLINE_PGJDBC_JAR")
        .unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    assert!(
        Path::new(&jar).exists(),
        "pgjdbc not found at {jar}: apt-get install libpostgresql-jdbc-java (or set \
         SHARDLINE_PGJDBC_JAR)"
    );
    let java = run_client(
        "java",
        &["-cp", &jar, "Check.java"],
        pg,
        &a,
        &[],
        "apt-get install default-jdk-headless",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(java.contains("pgjdbc ok"), "{java}");

    let modules = clients_dir().join("node_modules");
    assert!(
        modules.join("pg").exists(),
        "node-postgres not installed: npm install --prefix {}",
        clients_dir().display()
    );
    let node = run_client(
        "node",
        &["check.js"],
        pg,
        &a,
        &[("NODE_PATH", modules.display().to_string())],
        "apt-get install nodejs npm",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(node.contains("node-postgres ok"), "{node}");
}
