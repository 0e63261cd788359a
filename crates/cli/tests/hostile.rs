//! The hostile-tenant suite: holding valid credentials of tenant `alpha`,
//! try every way we know to read or change tenant `beta`'s rows, to reach
//! the dedicated tenant `gamma`, or to gain rights — through the router,
//! as a client can. Every attack must fail: refused with a 4xx, or
//! answered without a byte of beta's data and without any change to beta
//! or to alpha's rights, which the suite checks after each attack.
//!
//! Isolation is PostgreSQL's: each tenant's statements run in its own
//! database, as its own login role, in its own schema (see
//! docs/architecture.md, "Tenants"). Attacks come in plain form (which the
//! router's session guard may refuse first) and wrapped in `DO` blocks,
//! `set_config` or transactions that the guard lets through, so the suite
//! shows that PostgreSQL itself refuses them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Stack, StackOptions, Tenant};
use serde_json::json;
use shardline_api::manager::{ApplyMigrationRequest, CreateTenantRequest, TenantConfig};
use shardline_api::router::{ExecuteRequest, ShardKeyValue, Statement, TransactionRequest};
use shardline_client::ClientError;
use tokio_postgres::{AsyncMessage, NoTls};

const SECRET: &str = "BETA-SECRET";

/// One attack: a statement (sent to `/v1/execute`) or several (sent as
/// one `/v1/transaction`), optionally in another keyspace.
struct Attack {
    name: String,
    statements: Vec<String>,
    keyspace: Option<&'static str>,
}

fn attack(name: &str, sql: &str) -> Attack {
    Attack {
        name: name.into(),
        statements: vec![sql.into()],
        keyspace: None,
    }
}

fn tx(name: &str, sqls: &[&str]) -> Attack {
    Attack {
        name: name.into(),
        statements: sqls.iter().map(|s| s.to_string()).collect(),
        keyspace: None,
    }
}

/// `sql` run by PL/pgSQL's EXECUTE, past the router's keyword guard.
fn wrapped(name: &str, sql: &str) -> Attack {
    let body = format!(
        "DO $x$ BEGIN EXECUTE {}; END $x$",
        shardline_core::catalog::quote_literal(sql)
    );
    attack(&format!("{name} (in DO)"), &body)
}

fn attacks(beta_lo: i64) -> Vec<Attack> {
    let mut list =
        vec![
        // Reading and changing beta's rows by name.
        attack("schema-qualified read", "SELECT * FROM tenant_beta.items"),
        attack(
            "quoted schema-qualified read",
            "SELECT k, v FROM \"tenant_beta\".\"items\"",
        ),
        attack(
            "cross-database reference",
            "SELECT * FROM tenant_beta.tenant_beta.items",
        ),
        attack(
            "read via CTE",
            "WITH x AS (SELECT * FROM tenant_beta.items) SELECT * FROM x",
        ),
        attack(
            "read via subquery",
            "SELECT (SELECT string_agg(v, ',') FROM tenant_beta.items)",
        ),
        attack(
            "update",
            "UPDATE tenant_beta.items SET v = 'pwned' RETURNING *",
        ),
        attack("delete", "DELETE FROM tenant_beta.items RETURNING *"),
        attack(
            "insert",
            "INSERT INTO tenant_beta.items VALUES ('evil', 'evil')",
        ),
        attack("truncate", "TRUNCATE tenant_beta.items"),
        attack("drop table", "DROP TABLE tenant_beta.items"),
        attack("drop schema", "DROP SCHEMA tenant_beta CASCADE"),
        attack(
            "take ownership",
            "ALTER TABLE tenant_beta.items OWNER TO tenant_alpha",
        ),
        attack(
            "create in beta's schema",
            "CREATE TABLE tenant_beta.trojan (x int)",
        ),
        attack(
            "view over beta's table",
            "CREATE VIEW steal AS SELECT * FROM tenant_beta.items",
        ),
        attack(
            "trigger on beta's table",
            "CREATE TRIGGER t BEFORE INSERT ON tenant_beta.items \
             FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        ),
        attack("lock beta's table", "LOCK TABLE tenant_beta.items"),
        attack(
            "multiple statements in one",
            "SELECT 1; SELECT * FROM tenant_beta.items",
        ),
        // Changing identity.
        attack("SET ROLE", "SET ROLE tenant_beta"),
        wrapped("SET ROLE", "SET ROLE tenant_beta"),
        attack(
            "SET SESSION AUTHORIZATION",
            "SET SESSION AUTHORIZATION tenant_beta",
        ),
        wrapped(
            "SET SESSION AUTHORIZATION",
            "SET SESSION AUTHORIZATION tenant_beta",
        ),
        attack(
            "set_config role",
            "SELECT set_config('role', 'tenant_beta', false)",
        ),
        attack(
            "set_config role superuser",
            "SELECT set_config('role', 'postgres', false)",
        ),
        attack(
            "set_config session_authorization",
            "SELECT set_config('session_authorization', 'tenant_beta', false)",
        ),
        tx(
            "SET LOCAL ROLE then read",
            &["SET LOCAL ROLE tenant_beta", "SELECT * FROM items"],
        ),
        tx(
            "SET LOCAL ROLE superuser then read",
            &["SET LOCAL ROLE postgres", "SELECT * FROM tenant_beta.items"],
        ),
        attack("RESET ROLE", "RESET ROLE"),
        wrapped("RESET ROLE", "RESET ROLE"),
        wrapped("RESET SESSION AUTHORIZATION", "RESET SESSION AUTHORIZATION"),
        // search_path tricks.
        attack("SET search_path", "SET search_path = tenant_beta"),
        tx(
            "set_config search_path then unqualified read",
            &[
                "SELECT set_config('search_path', 'tenant_beta', true)",
                "SELECT * FROM items",
            ],
        ),
        tx(
            "SET LOCAL search_path then read",
            &["SET LOCAL search_path = tenant_beta, public", "SELECT * FROM items"],
        ),
        attack(
            "trojan function in public",
            "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'",
        ),
        attack("table in public", "CREATE TABLE public.trap (x int)"),
        attack("new schema", "CREATE SCHEMA evil"),
        // Server files and programs.
        attack("pg_read_file", "SELECT pg_read_file('/etc/passwd')"),
        attack(
            "pg_read_binary_file",
            "SELECT pg_read_binary_file('global/pg_control')",
        ),
        attack("pg_ls_dir", "SELECT pg_ls_dir('.')"),
        attack("COPY TO PROGRAM", "COPY (SELECT 1) TO PROGRAM 'id'"),
        wrapped("COPY TO PROGRAM", "COPY (SELECT 1) TO PROGRAM 'id'"),
        wrapped(
            "COPY FROM PROGRAM",
            "COPY items FROM PROGRAM 'cat /etc/passwd'",
        ),
        wrapped("COPY FROM file", "COPY items FROM '/etc/passwd'"),
        wrapped(
            "COPY beta's table to file",
            "COPY tenant_beta.items TO '/tmp/shardline-stolen'",
        ),
        attack("COPY beta's table", "COPY tenant_beta.items TO STDOUT"),
        // Functions that run with other rights.
        tx(
            "SECURITY DEFINER function",
            &[
                "CREATE FUNCTION steal() RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER \
                 AS $f$ BEGIN RETURN QUERY SELECT v FROM tenant_beta.items; END $f$",
                "SELECT * FROM steal()",
            ],
        ),
        attack(
            "untrusted language",
            "CREATE FUNCTION sh() RETURNS text LANGUAGE c AS '/bin/sh', 'main'",
        ),
        attack(
            "internal language",
            "CREATE FUNCTION f() RETURNS text LANGUAGE internal AS 'textin'",
        ),
        // Roles and grants.
        attack("ALTER ROLE other", "ALTER ROLE tenant_beta PASSWORD 'owned'"),
        attack("ALTER ROLE self SUPERUSER", "ALTER ROLE tenant_alpha SUPERUSER"),
        attack(
            "ALTER ROLE self CREATEROLE",
            "ALTER ROLE tenant_alpha CREATEROLE",
        ),
        attack(
            "ALTER ROLE self BYPASSRLS",
            "ALTER ROLE tenant_alpha BYPASSRLS",
        ),
        attack("CREATE ROLE", "CREATE ROLE evil SUPERUSER LOGIN"),
        attack("GRANT role", "GRANT tenant_beta TO tenant_alpha"),
        attack("GRANT superuser role", "GRANT postgres TO tenant_alpha"),
        attack(
            "GRANT pg_read_server_files",
            "GRANT pg_read_server_files TO tenant_alpha",
        ),
        attack(
            "GRANT on beta's table",
            "GRANT ALL ON tenant_beta.items TO tenant_alpha",
        ),
        attack(
            "GRANT on beta's schema",
            "GRANT USAGE ON SCHEMA tenant_beta TO tenant_alpha",
        ),
        attack(
            "REASSIGN OWNED",
            "REASSIGN OWNED BY tenant_beta TO tenant_alpha",
        ),
        attack("DROP OWNED", "DROP OWNED BY tenant_beta"),
        attack("ALTER SYSTEM", "ALTER SYSTEM SET log_statement = 'all'"),
        attack("CREATE DATABASE", "CREATE DATABASE evil"),
        attack("ALTER DATABASE other", "ALTER DATABASE tenant_beta OWNER TO tenant_alpha"),
        attack("DROP DATABASE other", "DROP DATABASE tenant_beta"),
        attack(
            "event trigger",
            "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()",
        ),
        // Other servers and databases.
        attack("CREATE EXTENSION dblink", "CREATE EXTENSION dblink"),
        attack("CREATE EXTENSION postgres_fdw", "CREATE EXTENSION postgres_fdw"),
        attack(
            "dblink call",
            "SELECT * FROM dblink('dbname=tenant_beta user=postgres', \
             'SELECT v FROM tenant_beta.items') AS t(v text)",
        ),
        attack(
            "foreign server",
            "CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'tenant_beta')",
        ),
        // Large objects.
        attack(
            "read beta's large object",
            &format!("SELECT convert_from(lo_get({beta_lo}), 'UTF8')"),
        ),
        attack(
            "open beta's large object",
            &format!("SELECT loread(lo_open({beta_lo}, 262144), 100)"),
        ),
        attack(
            "overwrite beta's large object",
            &format!("SELECT lo_put({beta_lo}, 0, 'pwned')"),
        ),
        attack("unlink beta's large object", &format!("SELECT lo_unlink({beta_lo})")),
        attack("lo_import", "SELECT lo_import('/etc/passwd')"),
        attack(
            "lo_export",
            &format!("SELECT lo_export({beta_lo}, '/tmp/shardline-lo')"),
        ),
        attack("pg_largeobject", "SELECT data FROM pg_largeobject"),
        // LISTEN/NOTIFY on beta's channel.
        attack("LISTEN", "LISTEN beta_events"),
        attack("NOTIFY", "NOTIFY beta_events, 'from alpha'"),
        attack(
            "pg_notify",
            "SELECT pg_notify('beta_events', 'from alpha')",
        ),
        wrapped("NOTIFY", "NOTIFY beta_events, 'from alpha'"),
        // Catalog reads of beta's contents and secrets.
        attack(
            "pg_stats",
            "SELECT most_common_vals::text, histogram_bounds::text FROM pg_stats \
             WHERE tablename = 'items'",
        ),
        attack("pg_statistic", "SELECT * FROM pg_statistic"),
        attack("pg_authid", "SELECT rolname, rolpassword FROM pg_authid"),
        attack("pg_shadow", "SELECT usename, passwd FROM pg_shadow"),
        attack(
            "pg_stat_activity queries",
            "SELECT query FROM pg_stat_activity WHERE usename = 'tenant_beta'",
        ),
        attack(
            "beta's relations",
            "SELECT relname FROM pg_class WHERE relnamespace = 'tenant_beta'::regnamespace",
        ),
        attack(
            "pg_stat_user_tables",
            "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname = 'tenant_beta'",
        ),
        // Beta's sessions.
        attack(
            "terminate beta's backends",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tenant_beta'",
        ),
        attack(
            "cancel beta's backends",
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = 'tenant_beta'",
        ),
        attack("LOAD library", "LOAD '/tmp/evil.so'"),
    ];
    // The router's own boundaries: another tenant's keyspace.
    for (name, keyspace) in [
        ("dedicated tenant's keyspace", "gamma"),
        ("unknown keyspace", "nope"),
    ] {
        list.push(Attack {
            name: name.into(),
            statements: vec!["SELECT * FROM items".into()],
            keyspace: Some(keyspace),
        });
    }
    list
}

/// What an attack got back.
enum Outcome {
    Refused { status: u16, text: String },
    Answered(String),
}

async fn run(alpha: &Tenant, key: &str, a: &Attack) -> Outcome {
    let shard_key = ShardKeyValue::Text(key.into());
    let keyspace = a.keyspace.map(str::to_string);
    let res = if a.statements.len() == 1 {
        alpha
            .router
            .execute(&ExecuteRequest {
                keyspace,
                shard_key,
                sql: a.statements[0].clone(),
                params: vec![],
                consistency: Default::default(),
            })
            .await
            .map(|r| serde_json::to_string(&r).unwrap())
    } else {
        alpha
            .router
            .transaction(&TransactionRequest {
                keyspace,
                shard_key,
                statements: a
                    .statements
                    .iter()
                    .map(|s| Statement {
                        sql: s.clone(),
                        params: vec![],
                    })
                    .collect(),
                consistency: Default::default(),
            })
            .await
            .map(|r| serde_json::to_string(&r).unwrap())
    };
    match res {
        Ok(text) => Outcome::Answered(text),
        Err(ClientError::Api { status, error }) => Outcome::Refused {
            status,
            text: serde_json::to_string(&error).unwrap(),
        },
        Err(e) => panic!("attack {:?}: transport failure {e}", a.name),
    }
}

/// In beta's database: what an attack must not change.
const BETA_VIEW: &[(&str, &str)] = &[
    (
        "beta rows",
        "SELECT k || '=' || v FROM tenant_beta.items ORDER BY k",
    ),
    (
        "beta objects",
        "SELECT count(*)::text FROM pg_class WHERE relnamespace = 'tenant_beta'::regnamespace",
    ),
    (
        "beta acl",
        "SELECT coalesce((SELECT nspacl::text FROM pg_namespace WHERE nspname = 'tenant_beta') \
         || ' ' || coalesce((SELECT relacl::text FROM pg_class \
         WHERE oid = 'tenant_beta.items'::regclass), '-'), '')",
    ),
    (
        "beta large objects",
        "SELECT oid::text || ':' || convert_from(lo_get(oid), 'UTF8') \
         FROM pg_largeobject_metadata ORDER BY oid",
    ),
];

/// In the server's main database: what an attack must not change.
const SERVER_VIEW: &[(&str, &str)] = &[
    (
        "roles",
        "SELECT rolname || ' super=' || rolsuper || ' createrole=' || rolcreaterole \
         || ' createdb=' || rolcreatedb || ' bypassrls=' || rolbypassrls \
         || ' password=' || coalesce(md5(rolpassword), '-') \
         FROM pg_authid WHERE rolname LIKE 'tenant_%' OR rolname = 'evil' ORDER BY rolname",
    ),
    (
        "tenant role memberships",
        "SELECT count(*)::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
         WHERE r.rolname LIKE 'tenant_%'",
    ),
    (
        "databases",
        "SELECT datname || ' owner=' || pg_get_userbyid(datdba) FROM pg_database ORDER BY 1",
    ),
];

/// A superuser's view of everything an attack must not change, per shard.
async fn fingerprint(stack: &Stack, shards: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, pg) in stack.shards.iter().take(shards).enumerate() {
        let beta = connect(&format!("{} dbname=tenant_beta", pg.dsn())).await;
        let admin = pg.connect().await.unwrap();
        for (client, view) in [(&beta, BETA_VIEW), (&admin, SERVER_VIEW)] {
            for (label, sql) in view {
                let rows: Vec<String> = client
                    .query(*sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                out.insert(format!("s{i} {label}"), rows.join(";"));
            }
        }
    }
    out
}

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A listener on beta's channel in beta's database (as a superuser, to
/// stand for any listener beta could have); counts what arrives.
async fn listen(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut conn) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    client.batch_execute("LISTEN beta_events").await.unwrap();
    (client, rx)
}

/// alpha's own view must stay alpha's: same user, no rights on beta.
async fn alpha_is_still_alpha(alpha: &Tenant, key: &str) {
    let r = alpha
        .exec(
            key,
            "SELECT current_user::text AS cu, session_user::text AS su, \
             current_database()::text AS db, \
             has_database_privilege('tenant_beta', 'CONNECT') AS beta_db, \
             pg_has_role('tenant_beta', 'USAGE') AS beta_role, \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser",
            vec![],
        )
        .await
        .expect("alpha's probe");
    let row = &r.result.rows[0];
    assert_eq!(
        row,
        &vec![
            json!("tenant_alpha"),
            json!("tenant_alpha"),
            json!("tenant_alpha"),
            json!(false),
            json!(false),
            json!(false)
        ],
        "alpha's identity or rights changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenant_reaches_nothing_of_another() {
    let stack = Stack::start(StackOptions {
        shards: 2,
        spare: 2,
        spare_for: Some("gamma".into()),
        ..StackOptions::default()
    })
    .await;
    stack
        .migrate(
            "001_items",
            "CREATE TABLE items (k text PRIMARY KEY, v text NOT NULL)",
        )
        .await;
    // One connection per shard, so every request of alpha's reuses the
    // same session and any state an attack leaves behind is probed.
    let alpha = stack
        .tenant(CreateTenantRequest {
            id: "alpha".into(),
            config: TenantConfig {
                max_connections_per_shard: Some(1),
                ..TenantConfig::default()
            },
            ..CreateTenantRequest::default()
        })
        .await;
    let beta = stack
        .tenant(CreateTenantRequest {
            id: "beta".into(),
            ..CreateTenantRequest::default()
        })
        .await;
    let gamma = stack
        .tenant(CreateTenantRequest {
            id: "gamma".into(),
            dedicated: true,
            shards: Some(2),
            ..CreateTenantRequest::default()
        })
        .await;
    stack
        .admin
        .apply_migration(
            "gamma",
            &ApplyMigrationRequest {
                name: "001_items".into(),
                sql: "CREATE TABLE items (k text PRIMARY KEY, v text NOT NULL)".into(),
            },
        )
        .await
        .unwrap();

    // beta's secrets on both shards, and a large object; gamma's too.
    let mut keys_by_shard: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let r = beta
            .exec(
                &key,
                "INSERT INTO items VALUES ($1, $2)",
                vec![json!(key), json!(format!("{SECRET}-{i}"))],
            )
            .await
            .unwrap();
        keys_by_shard.entry(r.shard).or_insert(key.clone());
        gamma
            .exec(
                &key,
                "INSERT INTO items VALUES ($1, 'GAMMA-SECRET')",
                vec![json!(key)],
            )
            .await
            .unwrap();
    }
    assert_eq!(keys_by_shard.len(), 2, "beta's keys cover both shards");
    let key = keys_by_shard.values().next().unwrap().clone();
    let lo = beta
        .exec(
            &key,
            "SELECT lo_from_bytea(0, convert_to($1, 'UTF8'))::int8 AS oid",
            vec![json!(format!("{SECRET}-lo"))],
        )
        .await
        .unwrap();
    let beta_lo = lo.result.rows[0][0].as_i64().unwrap();
    alpha
        .exec(
            &key,
            "INSERT INTO items VALUES ($1, 'alpha-own')",
            vec![json!(key)],
        )
        .await
        .unwrap();
    let beta_shard = lo.shard.clone();
    let shard_index: usize = beta_shard.trim_start_matches('s').parse().unwrap();
    let beta_dsn = format!("{} dbname=tenant_beta", stack.shards[shard_index].dsn());
    connect(&beta_dsn)
        .await
        .batch_execute("ANALYZE tenant_beta.items")
        .await
        .unwrap();
    let (_listener, mut notifications) = listen(&beta_dsn).await;

    let before = fingerprint(&stack, 2).await;
    let list = attacks(beta_lo);
    let (mut refused, mut answered) = (0, Vec::new());
    for a in &list {
        match run(&alpha, &key, a).await {
            Outcome::Refused { status, text } => {
                assert!(
                    (400..500).contains(&status),
                    "attack {:?}: status {status}, never a 5xx: {text}",
                    a.name
                );
                assert!(!text.contains(SECRET), "attack {:?} leaked: {text}", a.name);
                refused += 1;
            }
            Outcome::Answered(text) => {
                assert!(!text.contains(SECRET), "attack {:?} leaked: {text}", a.name);
                answered.push(a.name.clone());
            }
        }
        alpha_is_still_alpha(&alpha, &key).await;
        assert_eq!(
            fingerprint(&stack, 2).await,
            before,
            "attack {:?} changed beta or alpha's rights",
            a.name
        );
    }
    // No notification reached beta's channel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        notifications.try_recv().is_err(),
        "a notification from alpha reached beta's channel"
    );
    // gamma's rows are on gamma's own shards only.
    for pg in &stack.shards[..2] {
        let found: i64 = pg
            .connect()
            .await
            .unwrap()
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = 'tenant_gamma'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(found, 0, "gamma has a database on a shared shard");
    }
    // Controls: the checks above can fail. beta reading its own rows
    // shows the secret, and a change to beta's rows shows in the
    // fingerprint.
    let own = beta
        .exec(&key, "SELECT v FROM items WHERE k = $1", vec![json!(key)])
        .await
        .unwrap();
    assert!(serde_json::to_string(&own).unwrap().contains(SECRET));
    beta.exec(
        &key,
        "UPDATE items SET v = v || '!' WHERE k = $1",
        vec![json!(key)],
    )
    .await
    .unwrap();
    assert_ne!(
        fingerprint(&stack, 2).await,
        before,
        "the fingerprint sees changes"
    );
    let total = list.len();
    println!(
        "hostile-tenant suite: {total} attacks tried, {total} failed \
         ({refused} refused with an error, {} answered with nothing of beta's and no change: {})",
        answered.len(),
        answered.join("; ")
    );
    assert_eq!(refused + answered.len(), total);
    stack.stop().await;
}
