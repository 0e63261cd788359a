//! The PostgreSQL wire protocol front end with real clients: psql,
//! pgbench, psycopg and tokio-postgres log in with SCRAM-SHA-256 as an
//! app and reach two real shards through the router, which routes each
//! statement by the shard key it names (a comment, the key column, `SET
//! shardline.shard_key`) and pools server sessions per transaction.
//! Every routing claim is checked on the shards themselves: a row the
//! router wrote is looked up directly on the cluster that must hold it,
//! and the other must not.

mod common;

use std::process::Command;
use std::time::Duration;

use common::wire_stack::{catalog, count_on, keys_on_both, Stack, APP, TOKEN};
use shardline_core::scram::Verifier;
use shardline_router::state::{RouterContext, Routing};
use shardline_router::RouterConfig;

#[tokio::test]
async fn keyed_statements_reach_their_shard_over_tokio_postgres() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let c = stack.client().await?;
    // Extended protocol with named statements (tokio-postgres prepares
    // each): parameters give the key.
    for k in [a, b] {
        let n = c
            .execute("INSERT INTO items (id, v) VALUES ($1, $2)", &[&k, &"x"])
            .await?;
        assert_eq!(n, 1);
    }
    for k in [a, b] {
        let mine = stack.shard_of(k);
        assert_eq!(count_on(&stack, mine, k).await?, 1, "key {k} on its shard");
        assert_eq!(
            count_on(&stack, 1 - mine, k).await?,
            0,
            "key {k} not on the other"
        );
        let row = c
            .query_one("SELECT v FROM items WHERE id = $1", &[&k])
            .await?;
        assert_eq!(row.get::<_, String>(0), "x");
    }
    // The same prepared statement, run many times: it is prepared again
    // on whichever pooled server session serves each transaction.
    let stmt = c.prepare("SELECT v FROM items WHERE id = $1").await?;
    for _ in 0..20 {
        for k in [a, b] {
            let rows = c.query(&stmt, &[&k]).await?;
            assert_eq!(rows.len(), 1);
        }
    }
    // Simple protocol: literals give the key.
    c.batch_execute(&format!("UPDATE items SET v = 'y' WHERE id = {b}"))
        .await?;
    // Counted with the protocol label, by the shard that ran them.
    let text = stack.ctx.metrics.registry.render();
    let b_shard = format!("s{}", stack.shard_of(b) + 1);
    assert!(
        text.lines().any(|l| l.starts_with("router_requests_total{")
            && l.contains(r#"app="web""#)
            && l.contains(&format!(r#"shard="{b_shard}""#))
            && l.contains(r#"outcome="ok",protocol="postgres""#)),
        "{text}"
    );
    let d = stack.direct(stack.shard_of(b)).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&b])
        .await?
        .get(0);
    assert_eq!(v, "y");
    Ok(())
}

/// Simple-protocol texts that differ only in their key and values share
/// one cached analysis (by shape); each must still reach its own key's
/// shard and write its own values.
#[tokio::test]
async fn texts_differing_only_in_their_key_reach_each_keys_shard() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = stack.client().await?;
    let keys: Vec<i64> = (1..=24).collect();
    assert!(keys.iter().any(|k| stack.shard_of(*k) == 0));
    assert!(keys.iter().any(|k| stack.shard_of(*k) == 1));
    for k in &keys {
        c.batch_execute(&format!(
            "INSERT INTO items (id, v) VALUES ({k}, 'new {k}')"
        ))
        .await?;
        c.batch_execute(&format!(
            "UPDATE items SET v = 'shaped {k}' WHERE id = '{k}'"
        ))
        .await?;
    }
    for k in &keys {
        let mine = stack.shard_of(*k);
        assert_eq!(count_on(&stack, mine, *k).await?, 1, "key {k} on its shard");
        assert_eq!(
            count_on(&stack, 1 - mine, *k).await?,
            0,
            "key {k} not on the other"
        );
        let rows = c
            .simple_query(&format!("SELECT v FROM items WHERE id = {k}"))
            .await?;
        let values: Vec<&str> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                _ => None,
            })
            .collect();
        assert_eq!(values, [format!("shaped {k}")], "key {k}");
    }
    Ok(())
}

#[tokio::test]
async fn keyless_writes_and_cross_shard_transactions_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let mut c = stack.client().await?;
    let err = c
        .batch_execute("UPDATE items SET v = 'z'")
        .await
        .expect_err("a write with no key");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.hint()
            .unwrap_or_default()
            .contains("shardline.shard_key"),
        "{db:?}"
    );
    // A transaction pinned to a's shard refuses b's and is failed.
    let tx = c.transaction().await?;
    tx.execute("INSERT INTO items (id, v) VALUES ($1, 't')", &[&a])
        .await?;
    let err = tx
        .execute("INSERT INTO items (id, v) VALUES ($1, 't')", &[&b])
        .await
        .expect_err("another shard in the transaction");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000");
    // The router's own words, not the shard's report of how it raised
    // them (a PL/pgSQL block and a source line).
    assert!(db.where_().is_none() && db.line().is_none(), "{db:?}");
    // As PostgreSQL does, COMMIT of a failed transaction rolls it back.
    tx.commit().await?;
    assert_eq!(
        count_on(&stack, stack.shard_of(a), a).await?,
        0,
        "nothing committed"
    );
    // Pinned to a's shard, a write naming no key would change that
    // shard's rows only: refused, and the transaction failed.
    c.batch_execute(&format!(
        "INSERT INTO items (id, v) VALUES ({a}, 'a'), ({b}, 'b')"
    ))
    .await?;
    let tx = c.transaction().await?;
    tx.execute("UPDATE items SET v = 'a2' WHERE id = $1", &[&a])
        .await?;
    let err = tx
        .batch_execute("UPDATE items SET v = 'all'")
        .await
        .expect_err("a keyless write in a pinned transaction");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(
        db.hint()
            .unwrap_or_default()
            .contains("shardline.shard_key"),
        "{db:?}"
    );
    let err = tx
        .query_one("SELECT 1::int", &[])
        .await
        .expect_err("statements of a failed transaction");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err:?}");
    tx.commit().await?;
    for (k, v) in [(a, "a"), (b, "b")] {
        let d = stack.direct(stack.shard_of(k)).await?;
        let now: String = d
            .query_one("SELECT v FROM items WHERE id = $1", &[&k])
            .await?
            .get(0);
        assert_eq!(now, v, "key {k} changed");
    }
    // The session goes on.
    let row = c.query_one("SELECT 1::int", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    Ok(())
}

#[tokio::test]
async fn session_key_comment_and_settings_follow_the_client() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let c = stack.client().await?;
    // SET shardline.shard_key routes statements that name no key.
    c.batch_execute(&format!("SET shardline.shard_key = '{b}'"))
        .await?;
    c.batch_execute(&format!("INSERT INTO items SELECT {b} + 0, 'session'"))
        .await?;
    assert_eq!(count_on(&stack, stack.shard_of(b), b).await?, 1);
    // A comment outranks it.
    c.batch_execute(&format!(
        "/* shardline.shard_key='{a}' */ INSERT INTO items SELECT {a} + 0, 'comment'"
    ))
    .await?;
    assert_eq!(count_on(&stack, stack.shard_of(a), a).await?, 1);
    // A session setting is kept across pooled server sessions, and
    // stays this client's.
    c.batch_execute("SET statement_timeout = '4321ms'").await?;
    for _ in 0..5 {
        let t: String = c
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await?
            .get(0);
        assert_eq!(t, "4321ms");
    }
    let other = stack.client().await?;
    other
        .batch_execute(&format!("SET shardline.shard_key = '{b}'"))
        .await?;
    for _ in 0..5 {
        let t: String = other
            .query_one("SELECT current_setting('statement_timeout')", &[])
            .await?
            .get(0);
        assert_ne!(t, "4321ms", "another client's setting leaked");
    }
    Ok(())
}

#[tokio::test]
async fn wrong_token_and_wrong_database_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let err = tokio_postgres::connect(&stack.url("not-the-token"), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong token");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{err}"
    );
    let url = format!(
        "postgresql://nobody:{TOKEN}@127.0.0.1:{}/shared",
        stack.addr.port()
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("an unknown app");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"));
    let url = format!(
        "postgresql://{APP}:{TOKEN}@127.0.0.1:{}/other",
        stack.addr.port()
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("another keyspace");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("3D000"));
    // Control: the right login works.
    stack.client().await?.simple_query("SELECT 1").await?;
    Ok(())
}

/// Runs a command to completion; its stdout.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn psql_meta_commands_and_keyed_queries() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, _) = keys_on_both(&stack);
    let url = stack.url(TOKEN);
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new("psql").args([
            &url,
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\dt",
            "-c",
            "\\d items",
            "-c",
            "\\conninfo",
            "-c",
            &format!("INSERT INTO items (id, v) VALUES ({a}, 'psql')"),
            "-c",
            &format!("SELECT v FROM items WHERE id = {a}"),
        ]))
    })
    .await??;
    assert!(out.contains("pgbench_accounts"), "\\dt lists tables: {out}");
    assert!(
        out.contains("character varying") || out.contains("text"),
        "\\d items: {out}"
    );
    assert!(
        out.contains(&format!("port \"{}\"", stack.addr.port())),
        "{out}"
    );
    assert!(out.contains("psql"), "{out}");
    assert_eq!(count_on(&stack, stack.shard_of(a), a).await?, 1);
    Ok(())
}

#[tokio::test]
async fn pgbench_select_only_in_every_protocol_mode() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    pgbench_in_every_mode(&stack).await?;
    // Control for the lanes' test below: without lanes each shard has
    // one pool for the tenant.
    assert_eq!(pools_per_shard(&stack), vec![1, 1]);
    Ok(())
}

/// The same pgbench runs with wire sessions on two lanes: each lane's
/// sessions borrow from the lane's own pools, so each shard holds one
/// pool of the tenant per lane.
#[tokio::test]
async fn pgbench_in_every_protocol_mode_on_two_lanes() -> anyhow::Result<()> {
    let stack = Stack::start_with(|c| c.lanes = 2).await?;
    pgbench_in_every_mode(&stack).await?;
    assert_eq!(pools_per_shard(&stack), vec![2, 2]);
    Ok(())
}

/// The tenant's pools on each shard's primary, s1 then s2.
fn pools_per_shard(stack: &Stack) -> Vec<usize> {
    let r = stack.routing.get();
    ["s1", "s2"]
        .iter()
        .map(|s| r.shards[*s].primary.stats().pools)
        .collect()
}

/// pgbench `-S` and a keyed read-write script in each protocol mode,
/// 4 clients; every update found its row on the shard it was sent to.
async fn pgbench_in_every_mode(stack: &Stack) -> anyhow::Result<()> {
    // Accounts 1..=1000 on the shard each belongs to.
    for i in 0..2 {
        let d = stack.direct(i).await?;
        for aid in 1..=1000i32 {
            if stack.shard_of(i64::from(aid)) == i {
                d.execute(
                    "INSERT INTO pgbench_accounts VALUES ($1, 1, 0, '')",
                    &[&aid],
                )
                .await?;
            }
        }
        d.execute("INSERT INTO pgbench_branches VALUES (1, 0, '')", &[])
            .await?;
    }
    // A keyed read-write script: each update must find its account on
    // the shard the router sends it to (a misrouted one updates nothing).
    let script = std::env::temp_dir().join(format!("shardline-wire-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set aid random(1, 1000)\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n",
    )?;
    for mode in ["simple", "extended", "prepared"] {
        for custom in [false, true] {
            let url = stack.url(TOKEN);
            let file = script.display().to_string();
            let out = tokio::task::spawn_blocking(move || {
                let mut cmd = Command::new("pgbench");
                cmd.args(["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "200"]);
                if custom {
                    cmd.args(["-f", &file]);
                } else {
                    cmd.arg("-S");
                }
                run(cmd.arg(&url))
            })
            .await??;
            assert!(
                out.contains("number of transactions actually processed: 800/800"),
                "pgbench -M {mode} (custom {custom}): {out}"
            );
            assert!(out.contains("number of failed transactions: 0"), "{out}");
        }
    }
    let _ = std::fs::remove_file(&script);
    let mut sums = Vec::new();
    for i in 0..2 {
        let d = stack.direct(i).await?;
        let n: i64 = d
            .query_one(
                "SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts",
                &[],
            )
            .await?
            .get(0);
        sums.push(n);
    }
    assert_eq!(
        sums.iter().sum::<i64>(),
        3 * 800,
        "every update found its row: {sums:?}"
    );
    assert!(
        sums.iter().all(|n| *n > 0),
        "both shards took updates: {sums:?}"
    );
    Ok(())
}

#[tokio::test]
async fn psycopg_types_transactions_errors_and_prepared() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // b is on the second shard: a router sending everything to the
    // first would not find its row.
    let (b, a) = keys_on_both(&stack);
    let script = format!(
        r#"
import psycopg, datetime, decimal, json
url = {url:?}
with psycopg.connect(url) as c:
    # (Not in autocommit: each shard's row in a transaction of its own.)
    c.execute("INSERT INTO items (id, v) VALUES (%s, %s)", ({a}, "py"), prepare=True)
    c.commit()
    c.execute("INSERT INTO items (id, v) VALUES (%s, %s)", ({b}, "py-b"), prepare=True)
    c.commit()
    # Parameters of common types, server-side prepared after a few runs,
    # each value back as it went.
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    for i in range(8):
        row = c.execute("SELECT %s::int, %s::text, %s::numeric, %s::timestamptz, %s::jsonb, v FROM items WHERE id = %s",
            (7, "é", decimal.Decimal("1.50"), when, json.dumps({{"a": 1}}), {a})).fetchone()
        assert row == (7, "é", decimal.Decimal("1.50"), when, {{"a": 1}}, "py"), row
    c.commit()
    with c.transaction():
        c.execute("UPDATE items SET v = 'py2' WHERE id = %s", ({a},))
    try:
        c.execute("SELECT * FROM items WHERE id = %s AND nope = 1", ({b},))
        raise SystemExit("no error")
    except psycopg.errors.UndefinedColumn as e:
        assert e.sqlstate == "42703", e.sqlstate
    c.rollback()
    v = c.execute("SELECT v FROM items WHERE id = %s", ({a},)).fetchone()[0]
    print("value", v)
    # That read pinned the transaction to a's shard: a keyless read
    # there would see that shard's rows only, so it is refused.
    try:
        c.execute("SELECT count(*) FROM items")
        raise SystemExit("a keyless read in a pinned transaction answered")
    except psycopg.errors.FeatureNotSupported as e:
        assert e.sqlstate == "0A000", e.sqlstate
    c.rollback()
    # A keyless aggregate, merged across the shards (extended protocol).
    n, top = c.execute("SELECT count(*), max(id) FROM items WHERE v LIKE %s", ("py%",)).fetchone()
    print("aggregate", n, top)
"#,
        url = stack.url(TOKEN),
    );
    let out = tokio::task::spawn_blocking(move || {
        // `assert` statements are the checks: not optimised away.
        run(Command::new("python3")
            .env_remove("PYTHONOPTIMIZE")
            .args(["-c", &script]))
    })
    .await??;
    assert!(out.contains("value py2"), "{out}");
    // Both shards' rows, merged: a router asking one shard counts 1.
    assert!(out.contains(&format!("aggregate 2 {}", a.max(b))), "{out}");
    let d = stack.direct(stack.shard_of(a)).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&a])
        .await?
        .get(0);
    assert_eq!(v, "py2");
    Ok(())
}

/// The clients' scripts: this test's, and node-postgres where the
/// manager's client tests install it.
fn clients_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire_clients")
}

fn client_env(stack: &Stack, cmd: &mut Command, a: i64, b: i64) {
    // The Python clients check with `assert`: never optimised away.
    cmd.current_dir(clients_dir())
        .env_remove("PYTHONOPTIMIZE")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", stack.addr.port().to_string())
        .env("PGUSER", APP)
        .env("PGPASSWORD", TOKEN)
        .env("PGDATABASE", "shared")
        .env("PGSSLMODE", "disable")
        .env("KEY_A", a.to_string())
        .env("KEY_B", b.to_string());
}

#[tokio::test]
async fn jdbc_through_the_router() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let jar = std::env::var("SHARDLINE_PGJDBC_JAR")
        .unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    anyhow::ensure!(
        std::path::Path::new(&jar).exists(),
        "pgjdbc not found at {jar}: apt-get install libpostgresql-jdbc-java"
    );
    let mut cmd = Command::new("java");
    cmd.args(["-cp", &jar, "WireCheck.java"]);
    client_env(&stack, &mut cmd, a, b);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd)).await??;
    assert!(out.contains("pgjdbc ok"), "{out}");
    for k in [a, b] {
        assert_eq!(
            count_on(&stack, stack.shard_of(k), k).await?,
            1,
            "{k} on its shard"
        );
        assert_eq!(count_on(&stack, 1 - stack.shard_of(k), k).await?, 0);
    }
    Ok(())
}

#[tokio::test]
async fn node_postgres_through_the_router() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // b first: its shard is the second.
    let (b, a) = keys_on_both(&stack);
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manager/tests/clients/node_modules");
    anyhow::ensure!(
        modules.join("pg").exists(),
        "node-postgres not installed: npm install --prefix crates/manager/tests/clients"
    );
    let mut cmd = Command::new("node");
    cmd.arg("wire_check.js").env("NODE_PATH", &modules);
    client_env(&stack, &mut cmd, a, b);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd)).await??;
    assert!(out.contains("node-postgres ok"), "{out}");
    let d = stack.direct(stack.shard_of(a)).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&a])
        .await?
        .get(0);
    assert_eq!(v, "node2");
    Ok(())
}

#[tokio::test]
async fn a_cancel_request_reaches_the_running_statement() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, _) = keys_on_both(&stack);
    let c = stack.client().await?;
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = c
        .query(
            &format!("/* shardline.shard_key='{a}' */ SELECT pg_sleep(20)"),
            &[],
        )
        .await
        .expect_err("cancelled");
    canceller.await??;
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancelled at once"
    );
    // The session goes on.
    c.query_one("SELECT 1::int", &[]).await?;
    Ok(())
}

#[tokio::test]
async fn both_tokens_log_in_during_a_rotation() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // The app's token rotated as the manager does it: the new verifier
    // with the current one's salt, the old kept until its expiry.
    let mut cat = catalog(&stack.shards);
    let new_token = "tok-web-rotated-fedcba9876543210";
    let old = Verifier::new(TOKEN, b"0123456789abcdef", 4096).to_string();
    let app = cat.apps.get_mut(APP).expect("app");
    app.token_hash = shardline_core::auth::token_hash(new_token);
    app.token_scram = Some(Verifier::new(new_token, b"0123456789abcdef", 4096).to_string());
    app.previous_token = Some(shardline_core::catalog::PreviousToken {
        token_hash: shardline_core::auth::token_hash(TOKEN),
        token_scram: Some(old),
        expires_at_ms: u64::MAX,
    });
    cat.version = 2;
    let ctx = RouterContext::new(&RouterConfig::new("http://127.0.0.1:1", "t"));
    stack
        .routing
        .set(Routing::build(&cat, &stack.routing.get(), &ctx));
    for t in [TOKEN, new_token] {
        let (c, conn) = tokio_postgres::connect(&stack.url(t), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.simple_query("SELECT 1").await?;
    }
    // Once the old token expires, only the new one logs in.
    cat.apps.get_mut(APP).expect("app").previous_token = None;
    cat.version = 3;
    stack
        .routing
        .set(Routing::build(&cat, &stack.routing.get(), &ctx));
    let err = tokio_postgres::connect(&stack.url(TOKEN), tokio_postgres::NoTls)
        .await
        .err()
        .expect("the old token after its expiry");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("28P01"));
    Ok(())
}

#[tokio::test]
async fn malformed_openings_get_an_error_and_the_router_goes_on() -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A panic in a connection's task would only drop that connection:
    // counted here (nextest runs each test in a process of its own).
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let stack = Stack::start().await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0, 0],
        vec![0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        // A startup packet claiming 1 GiB.
        vec![0x40, 0, 0, 0, 0, 3, 0, 0],
        // Protocol 9.9.
        vec![0, 0, 0, 8, 0, 9, 0, 9],
        // A startup packet whose parameters do not end.
        [&[0u8, 0, 0, 16, 0, 3, 0, 0][..], b"user\0ab"].concat(),
        // SSLRequest, then garbage.
        [
            &[0u8, 0, 0, 8, 4, 0xd2, 0x16, 0x2f][..],
            b"\x16\x03\x01garbage",
        ]
        .concat(),
        // A short cancel request.
        vec![0, 0, 0, 12, 4, 0xd2, 0x16, 0x2e, 0, 0, 0, 1],
    ];
    for _ in 0..100 {
        let n = rng.random_range(1..64);
        cases.push((0..n).map(|_| rng.random()).collect());
    }
    for bytes in &cases {
        let mut s = tokio::net::TcpStream::connect(stack.addr).await?;
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        // Bounded: the router answers or closes; it never hangs on us.
        let read = tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "the router neither answered nor closed for {bytes:?}"
        );
        if let Some(&tag) = buf.first() {
            assert!(
                matches!(tag, b'E' | b'N' | b'R'),
                "{bytes:?} got {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
    // Openings a server can read far enough to answer get PostgreSQL's
    // answer, not a silent close: an error for an impossible length, a
    // protocol it does not speak and parameters that do not end; `N` to
    // an `SSLRequest` (no certificate here) before the garbage after it.
    for (bytes, first) in [
        (&cases[3], b'E'),
        (&cases[4], b'E'),
        (&cases[5], b'E'),
        (&cases[6], b'N'),
    ] {
        let mut s = tokio::net::TcpStream::connect(stack.addr).await?;
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut buf)).await??;
        assert_eq!(
            buf.first(),
            Some(&first),
            "{bytes:?} got {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    // A real client still gets in.
    stack.client().await?.simple_query("SELECT 1").await?;
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a connection's task panicked"
    );
    Ok(())
}

#[tokio::test]
async fn sqlalchemy_orm_through_the_router() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let mut cmd = Command::new("python3");
    cmd.arg("wire_orm.py")
        .env("SHARDLINE_URL", stack.url(TOKEN));
    client_env(&stack, &mut cmd, a, b);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await?
        .map_err(|e| anyhow::anyhow!("{e}\n(pip install sqlalchemy)"))?;
    assert!(out.contains("sqlalchemy ok"), "{out}");
    let d = stack.direct(stack.shard_of(a)).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&a])
        .await?
        .get(0);
    assert_eq!(v, "orm2");
    Ok(())
}

/// At shutdown the listener closes at once, sessions go on serving for
/// the drain (1 s in this stack), and those still open when it ends are
/// cut: a client idle on its session sees the connection close.
#[tokio::test]
async fn at_shutdown_sessions_drain_then_the_rest_are_cut() -> anyhow::Result<()> {
    drain_then_cut(Stack::start().await?).await
}

/// The same with the sessions on lanes: the drain waits for sessions
/// on other threads too, and cuts them there.
#[tokio::test]
async fn at_shutdown_sessions_on_lanes_drain_then_the_rest_are_cut() -> anyhow::Result<()> {
    drain_then_cut(Stack::start_with(|c| c.lanes = 2).await?).await
}

async fn drain_then_cut(stack: Stack) -> anyhow::Result<()> {
    let idle = stack.client().await?;
    let busy = stack.client().await?;
    idle.simple_query("SELECT 1").await?;
    let in_flight = tokio::spawn(async move {
        busy.simple_query("/* shardline.shard_key='1' */ SELECT pg_sleep(0.4)")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = std::time::Instant::now();
    stack.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // New clients are refused; the sessions under way still answer.
    assert!(
        stack.client().await.is_err(),
        "a new client got in after shutdown"
    );
    idle.simple_query("SELECT 1").await?;
    in_flight.await??;
    assert!(!idle.is_closed(), "cut before the drain ended");

    // After the drain: cut, within a bound.
    let mut cut = false;
    for _ in 0..100 {
        if idle.is_closed() || idle.simple_query("SELECT 1").await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cut,
        "an idle session was still open {:?} after shutdown",
        stopped.elapsed()
    );
    assert!(
        stopped.elapsed() >= Duration::from_millis(900),
        "cut after {:?}, before the drain of 1 s",
        stopped.elapsed()
    );
    Ok(())
}

/// A lane's pools hold its share of the tenant's pool size (2 over 2
/// lanes: 1 each). A session waits for its own lane's connection while
/// the other lane's is free: the price of lanes, documented in
/// docs/architecture.md ("Lanes"); the other lane serves at once.
#[tokio::test]
async fn a_lane_borrows_only_from_its_own_share_of_the_pool() -> anyhow::Result<()> {
    let stack = Stack::start_with(|c| {
        c.lanes = 2;
        c.tenant_pool_size = 2;
        c.acquire_timeout = Duration::from_millis(300);
    })
    .await?;
    let (a, _) = keys_on_both(&stack);
    // Dealt as accepted to the lane with the fewest, in turn among
    // equals: lanes 0, 1, 0.
    let holder = stack.client().await?;
    let other_lane = stack.client().await?;
    let same_lane = stack.client().await?;
    let select = format!("SELECT count(*) FROM items WHERE id = {a}");
    holder.batch_execute("BEGIN").await?;
    holder.simple_query(&select).await?;

    // Lane 1's share is free.
    other_lane.simple_query(&select).await?;
    // Lane 0's one connection is in the holder's transaction.
    let err = same_lane
        .simple_query(&select)
        .await
        .expect_err("lane 0 had a second connection");
    // Its own pool's bound (the tenant's has room for one more): the
    // retryable "unavailable" a busy pool answers on the wire.
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57P03"),
        "not a wait for its pool: {err:?}"
    );
    holder.batch_execute("COMMIT").await?;
    same_lane.simple_query(&select).await?;
    assert_eq!(pools_per_shard(&stack)[stack.shard_of(a)], 2);
    Ok(())
}
