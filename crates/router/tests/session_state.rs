//! No session state outlives a request: through the router's HTTP API, a
//! tenant's request changes its pooled session (settings, role,
//! temporary tables, advisory locks, `LISTEN`, cursors, prepared
//! statements, the routing-version claim) by every route the keyword
//! guard cannot see — `set_config`, `DO` blocks, functions of its own —
//! and the next request, on the same connection (the tenant's pool holds
//! one), must find the session as it was at connection, or a new
//! connection. Controls show each probe does see the state when the
//! router does not reset (`session_reset = false`), and when a keyspace
//! with code is wrongly marked as holding none.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{app, http, instance, migrate, provision, shard_catalog, tenant, Served};
use serde_json::{json, Value};
use shardline_core::catalog::{Limits, TenantConfig};
use shardline_core::Catalog;
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::RouterConfig;
use shardline_testkit::PgCluster;

/// The tenant's schema: a table the temporary one would shadow, a
/// sequence, and a function that changes its session (code: only a
/// keyspace marked as holding code may have it).
const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, v text); \
     INSERT INTO items VALUES (1, 'real'); \
     CREATE SEQUENCE seq;";

const CODE: &str = "CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM set_config('statement_timeout', '0', false); RETURN 1; END $$";

/// One kind of session state: what request 1 sends (`/v1/execute`, or
/// `/v1/transaction` when several), what request 2 reads, and what it
/// must read when the session is as at connection.
struct Item {
    name: &'static str,
    set: &'static [&'static str],
    probe: &'static str,
    clean: Value,
    /// What the probe sees on a session the setting was left on (the
    /// control, without the reset).
    dirty: Value,
}

fn items() -> Vec<Item> {
    vec![
        Item {
            name: "statement_timeout by set_config",
            set: &["SELECT set_config('statement_timeout', '0', false)"],
            probe: "SELECT current_setting('statement_timeout')",
            clean: json!("10s"),
            dirty: json!("0"),
        },
        Item {
            name: "search_path by set_config",
            set: &["SELECT set_config('search_path', 'pg_catalog', false)"],
            probe: "SELECT current_setting('search_path')",
            clean: json!("t_acme"),
            dirty: json!("pg_catalog"),
        },
        Item {
            name: "a setting in a transaction",
            set: &["SELECT set_config('work_mem', '77kB', false)", "SELECT 1"],
            probe: "SELECT current_setting('work_mem')",
            clean: json!("4MB"),
            dirty: json!("77kB"),
        },
        Item {
            name: "SET in a DO block",
            set: &["DO $$ BEGIN SET lock_timeout = '7s'; END $$"],
            probe: "SELECT current_setting('lock_timeout')",
            clean: json!("0"),
            dirty: json!("7s"),
        },
        Item {
            name: "role by set_config",
            set: &["SELECT set_config('role', 't_acme', false)"],
            probe: "SELECT current_setting('role')",
            clean: json!("none"),
            dirty: json!("t_acme"),
        },
        Item {
            name: "temporary table shadowing a real one",
            set: &["CREATE TEMP TABLE items AS SELECT 1 AS id, 'shadow'::text AS v"],
            probe: "SELECT v FROM items WHERE id = 1",
            clean: json!("real"),
            dirty: json!("shadow"),
        },
        Item {
            name: "session advisory lock",
            set: &["SELECT pg_advisory_lock(4242)"],
            // True only for a session that holds it (tenants may not read
            // pg_locks).
            probe: "SELECT pg_advisory_unlock(4242)",
            clean: json!(false),
            dirty: json!(true),
        },
        Item {
            name: "LISTEN in a DO block",
            set: &["DO $$ BEGIN EXECUTE 'LISTEN somewhere'; END $$"],
            probe: "SELECT count(*)::int FROM pg_listening_channels()",
            clean: json!(0),
            dirty: json!(1),
        },
        Item {
            name: "cursor WITH HOLD in a DO block",
            set: &["DO $$ BEGIN EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT 1'; END $$"],
            probe: "SELECT count(*)::int FROM pg_cursors WHERE is_holdable",
            clean: json!(0),
            dirty: json!(1),
        },
        Item {
            name: "PREPARE in a DO block",
            set: &["DO $$ BEGIN EXECUTE 'PREPARE mine AS SELECT 1'; END $$"],
            probe: "SELECT count(*)::int FROM pg_prepared_statements WHERE from_sql",
            clean: json!(0),
            dirty: json!(1),
        },
        Item {
            name: "the routing-version claim",
            set: &["SELECT set_config('shardline.map_version', '999999', false)"],
            probe: "SELECT split_part(current_setting('shardline.map_version'), ':', 1)",
            clean: json!("1"),
            dirty: json!("999999"),
        },
        Item {
            name: "a sequence's session value",
            set: &["SELECT nextval('seq')"],
            probe: "SELECT currval('seq')",
            clean: json!("error 55000"),
            dirty: json!(1),
        },
    ]
}

fn catalog(dsn: &str, tenant_code: bool) -> Catalog {
    let mut acme = tenant("acme", "pw-a");
    // One connection: request 2 runs on request 1's session if it is
    // reused at all.
    acme.config = TenantConfig {
        max_connections_per_shard: Some(1),
        ..TenantConfig::default()
    };
    let mut cat = shard_catalog(
        instance("s1-0", dsn),
        vec![],
        vec![acme],
        vec![app("a1", "acme", None, Limits::default())],
    );
    if let Some(ks) = cat.keyspaces.get_mut("shared") {
        ks.tenant_code = tenant_code;
    }
    cat
}

struct Stack {
    served: Served,
    _ctx: Arc<RouterContext>,
}

async fn serve(dsn: &str, tenant_code: bool, reset: bool) -> anyhow::Result<Stack> {
    let mut cfg = RouterConfig::new("http://127.0.0.1:1", "t");
    cfg.session_reset = reset;
    let ctx = Arc::new(RouterContext::new(&cfg));
    // The manager answered a moment ago: the router trusts its catalog's
    // word on code (a router cut off for longer than a lease resets
    // every session).
    ctx.contact.answered(600_000);
    let cell = Arc::new(RoutingCell::default());
    cell.set(Routing::build(
        &catalog(dsn, tenant_code),
        &Routing::default(),
        &ctx,
    ));
    let served = Served::start(&cell, &ctx, Duration::from_secs(20)).await?;
    Ok(Stack { served, _ctx: ctx })
}

/// Sends `sqls` (one: `/v1/execute`; several: `/v1/transaction`) and
/// returns the answer's status and body.
async fn send(stack: &Stack, sqls: &[&str]) -> anyhow::Result<(u16, Value)> {
    let (path, body) = match sqls {
        [one] => ("/v1/execute", json!({"shard_key": "k", "sql": one})),
        many => (
            "/v1/transaction",
            json!({"shard_key": "k", "statements":
                many.iter().map(|s| json!({"sql": s})).collect::<Vec<_>>()}),
        ),
    };
    let (status, _, text) =
        http(stack.served.addr, "POST", path, Some("tok-a1"), Some(&body)).await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Request 1 sets the item's state; request 2 reads it back with the
/// backend's pid. Returns (what request 2 read, whether it ran on request
/// 1's backend).
async fn leftover(stack: &Stack, item: &Item) -> anyhow::Result<(Value, bool)> {
    let (status, body) = send(stack, &["SELECT pg_backend_pid()"]).await?;
    anyhow::ensure!(status == 200, "{}: pid: {body}", item.name);
    let pid = body["rows"][0][0].clone();
    let (status, body) = send(stack, item.set).await?;
    anyhow::ensure!(status == 200, "{}: set: {body}", item.name);
    let probe = format!("SELECT ({}) AS v, pg_backend_pid() AS pid", item.probe);
    let (status, body) = send(stack, &[probe.as_str()]).await?;
    if status != 200 {
        // The probe's own error (e.g. `currval` of a sequence the session
        // never used): said as `error SQLSTATE`; the backend is read apart.
        let seen = json!(format!(
            "error {}",
            body["error"]["sqlstate"].as_str().unwrap_or("?")
        ));
        let (_, again) = send(stack, &["SELECT pg_backend_pid()"]).await?;
        return Ok((seen, again["rows"][0][0] == pid));
    }
    Ok((body["rows"][0][0].clone(), body["rows"][0][1] == pid))
}

async fn setup(with_code: bool) -> anyhow::Result<PgCluster> {
    let pg = PgCluster::start().await?;
    provision(&pg, &[("acme", "pw-a")]).await?;
    migrate(&pg, "acme", "pw-a", SCHEMA).await?;
    if with_code {
        common::migrate_named(&pg, "acme", "pw-a", "002", CODE).await?;
    }
    Ok(pg)
}

#[tokio::test]
async fn no_session_state_outlives_a_request() -> anyhow::Result<()> {
    let pg = setup(false).await?;
    let stack = serve(&pg.dsn(), false, true).await?;
    let mut report = Vec::new();
    for item in items() {
        let (seen, same_backend) = leftover(&stack, &item).await?;
        assert_eq!(seen, item.clean, "{}: the next request saw it", item.name);
        report.push(format!(
            "{}: {}",
            item.name,
            if same_backend {
                "reset"
            } else {
                "connection replaced"
            }
        ));
    }
    println!("{}", report.join("\n"));
    // The prepared statement is the one state the reset does not undo:
    // that session was closed, not reused.
    assert!(report
        .iter()
        .any(|r| r == "PREPARE in a DO block: connection replaced"));
    assert_eq!(
        report.iter().filter(|r| r.ends_with(": reset")).count(),
        items().len() - 1,
        "every other item on the same session, reset"
    );
    stack.served.stop().await
}

#[tokio::test]
async fn without_the_reset_the_probes_see_the_state() -> anyhow::Result<()> {
    // The control: the same requests with the reset off. Every probe but
    // the claim's sees what request 1 left (the claim is set again
    // before each request whose version changed, and here none did).
    let pg = setup(false).await?;
    for item in items() {
        // A router (and so a connection) per item: here nothing undoes
        // what one item leaves for the next.
        let stack = serve(&pg.dsn(), false, false).await?;
        let (seen, same_backend) = leftover(&stack, &item).await?;
        assert!(same_backend, "{}: one connection", item.name);
        // The state itself, not merely something other than clean (a
        // failing request would be that too).
        assert_eq!(seen, item.dirty, "{}: the probe cannot see it", item.name);
        stack.served.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_keyspace_with_code_resets_after_every_request() -> anyhow::Result<()> {
    // The function changes its session; the statement calling it names
    // nothing the router looks for.
    let pg = setup(true).await?;
    let call = Item {
        name: "a function of the tenant's",
        set: &["SELECT sneaky()"],
        probe: "SELECT current_setting('statement_timeout')",
        clean: json!("10s"),
        dirty: json!("0"),
    };
    let stack = serve(&pg.dsn(), true, true).await?;
    let (seen, same) = leftover(&stack, &call).await?;
    assert_eq!(
        (seen, same),
        (call.clean.clone(), true),
        "reset, same session"
    );
    stack.served.stop().await?;
    // The control: a catalog wrongly saying the keyspace holds no code
    // lets the state through — the mark is what keeps it out.
    let stack = serve(&pg.dsn(), false, true).await?;
    let (seen, _) = leftover(&stack, &call).await?;
    assert_eq!(
        seen, call.dirty,
        "without the mark, the function's setting stays"
    );
    stack.served.stop().await
}

#[tokio::test]
async fn tenants_cannot_add_code_where_there_is_none() -> anyhow::Result<()> {
    let pg = setup(false).await?;
    let stack = serve(&pg.dsn(), false, true).await?;
    for sql in [
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE VIEW v AS SELECT set_config('statement_timeout', '0', false)",
        "CREATE TABLE t (x text DEFAULT set_config('search_path', 'pg_catalog', false))",
        "ALTER TABLE items ADD COLUMN w text DEFAULT pg_advisory_lock(1)::text",
        "CREATE AGGREGATE agg(float8) (SFUNC = float8pl, STYPE = float8)",
        "CREATE EXTENSION pgcrypto",
        "DO $$ BEGIN EXECUTE 'CREATE FUNCTION g() RETURNS int LANGUAGE sql AS ''SELECT 1'''; END $$",
    ] {
        let (status, body) = send(&stack, &[sql]).await?;
        assert_eq!(status, 403, "{sql}: {body}");
        assert_eq!(body["error"]["sqlstate"], json!("42501"), "{sql}: {body}");
    }
    // Ordinary DDL still works.
    let (status, body) = send(
        &stack,
        &["CREATE TABLE plain (id serial PRIMARY KEY, at timestamptz DEFAULT now())"],
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    stack.served.stop().await?;

    // Where a migration brought code, the database is not guarded (its
    // keyspace resets every session anyway): the control that the guard,
    // not a lack of rights, refused the above.
    let pg = setup(true).await?;
    let stack = serve(&pg.dsn(), true, true).await?;
    let (status, body) = send(
        &stack,
        &["CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"],
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    stack.served.stop().await
}

#[tokio::test]
async fn a_read_past_the_limits_is_cancelled_once_and_not_sent_again() -> anyhow::Result<()> {
    // 100 kB rows without end: past 64 MiB after some 700 rows. The
    // router cancels the statement and closes its connection; that is
    // the client's error (400), not a broken connection, so the read is
    // not held for a new primary and sent again.
    let pg = setup(false).await?;
    let stack = serve(&pg.dsn(), false, true).await?;
    let (_, before) = send(&stack, &["SELECT pg_backend_pid()"]).await?;
    let huge = "SELECT g, repeat('x', 100000) FROM generate_series(1, 1000000) g";
    let (status, body) = send(&stack, &[huge]).await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], json!("invalid_request"), "{body}");
    let metrics = http(stack.served.addr, "GET", "/metrics", None, None)
        .await?
        .2;
    let held: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("router_held_requests_total{"))
        .collect();
    assert!(
        held.is_empty(),
        "the read was held to be sent again: {held:?}"
    );
    // The connection it ran on is gone; the next request has a new one.
    let (status, after) = send(&stack, &["SELECT pg_backend_pid()"]).await?;
    assert_eq!(status, 200, "{after}");
    assert_ne!(before["rows"][0][0], after["rows"][0][0], "a new session");
    stack.served.stop().await
}
