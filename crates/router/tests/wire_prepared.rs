//! Session state over the wire. SQL-level `PREPARE`/`EXECUTE`/
//! `DEALLOCATE`: a client's prepared statements follow it onto whichever
//! pooled server session (and shard) each `EXECUTE` needs, routed by the
//! `EXECUTE`'s arguments; another client's names are its own, and the
//! router's names for statements cannot be bound or replaced by a client.
//! `RESET ALL` forgets the shard key; a lifted `statement_timeout` does
//! not let a statement outlive the tenant's.

mod common;

use common::wire_stack::{count_on, keys_on_both, Stack};
use shardline_router::wire::messages::hashed_name;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The first column of each row `sql` returns.
async fn values(c: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect())
}

async fn code_of(c: &Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(_) => "ok".into(),
        Err(e) => e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.code().code().to_string()),
    }
}

#[tokio::test]
async fn prepared_statements_follow_the_client_across_server_sessions() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let c = stack.client().await?;
    // A write prepared once, run for keys of both shards.
    c.batch_execute("PREPARE ins (bigint, text) AS INSERT INTO items (id, v) VALUES ($1, $2)")
        .await?;
    c.batch_execute(&format!("EXECUTE ins({a}, 'on a')"))
        .await?;
    c.batch_execute(&format!("EXECUTE ins('{b}'::bigint, 'on b')"))
        .await?;
    for k in [a, b] {
        let mine = stack.shard_of(k);
        assert_eq!(count_on(&stack, mine, k).await?, 1, "{k} on its shard");
        assert_eq!(count_on(&stack, 1 - mine, k).await?, 0, "{k} only there");
    }
    // A read, many times, on both shards' server sessions.
    c.batch_execute("PREPARE get (bigint) AS SELECT v FROM items WHERE id = $1")
        .await?;
    for _ in 0..10 {
        assert_eq!(values(&c, &format!("EXECUTE get({a})")).await?, ["on a"]);
        assert_eq!(values(&c, &format!("EXECUTE get({b})")).await?, ["on b"]);
    }
    // Another client: its own names, none of the first's.
    let other = stack.client().await?;
    assert_eq!(code_of(&other, &format!("EXECUTE get({a})")).await, "26000");
    other
        .batch_execute("PREPARE get (bigint) AS SELECT 'mine' FROM items WHERE id = $1")
        .await?;
    assert_eq!(
        values(&other, &format!("EXECUTE get({a})")).await?,
        ["mine"]
    );
    assert_eq!(values(&c, &format!("EXECUTE get({a})")).await?, ["on a"]);
    // PostgreSQL's errors for names.
    assert_eq!(
        code_of(&c, "PREPARE get AS SELECT 1").await,
        "42P05",
        "a name in use"
    );
    assert_eq!(code_of(&c, "DEALLOCATE get").await, "ok");
    assert_eq!(code_of(&c, &format!("EXECUTE get({a})")).await, "26000");
    assert_eq!(code_of(&c, "DEALLOCATE get").await, "26000");
    // A statement PostgreSQL rejects fails where it runs; the session
    // goes on, and the name can be prepared again.
    c.batch_execute("PREPARE bad (bigint) AS SELECT nope FROM items WHERE id = $1")
        .await?;
    assert_eq!(code_of(&c, &format!("EXECUTE bad({a})")).await, "42703");
    assert_eq!(values(&c, "SELECT 'alive'").await?, ["alive"]);
    c.batch_execute("DEALLOCATE ALL").await?;
    assert_eq!(
        code_of(&c, &format!("EXECUTE ins({a}, 'x')")).await,
        "26000"
    );
    // Inside a transaction: pinned to the first shard as any statement.
    c.batch_execute("PREPARE get (bigint) AS SELECT v FROM items WHERE id = $1")
        .await?;
    c.batch_execute("BEGIN").await?;
    assert_eq!(values(&c, &format!("EXECUTE get({a})")).await?, ["on a"]);
    assert_eq!(code_of(&c, &format!("EXECUTE get({b})")).await, "0A000");
    c.batch_execute("ROLLBACK").await?;
    assert_eq!(values(&c, &format!("EXECUTE get({b})")).await?, ["on b"]);
    Ok(())
}

#[tokio::test]
async fn a_client_cannot_reach_or_replace_the_routers_statements() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, _) = keys_on_both(&stack);
    let victim = stack.client().await?;
    // The victim's statement is prepared on the server as sl<hash>.
    let stmt = victim.prepare("SELECT v FROM items WHERE id = $1").await?;
    victim
        .execute("INSERT INTO items (id, v) VALUES ($1, 'mine')", &[&a])
        .await?;
    assert_eq!(victim.query(&stmt, &[&a]).await?.len(), 1);
    let name = hashed_name("sl", "SELECT v FROM items WHERE id = $1", &[]);
    let attacker = stack.client().await?;
    // Replacing it under its server name, in one query, on the same
    // pool's sessions: the session is reset before anyone else gets it.
    // (`DEALLOCATE ALL` first: a server session that never ran the
    // victim's statement has no such name to deallocate.) Each attempt
    // must take effect on the attacker's own server session, or the
    // victim's check below proves nothing.
    for _ in 0..4 {
        let answered = attacker
            .simple_query(&format!(
                "/* shardline.shard_key='{a}' */ DEALLOCATE ALL; \
                 PREPARE {name} (bigint) AS SELECT 'poisoned'::text FROM items WHERE id = $1; \
                 EXECUTE {name}({a})"
            ))
            .await?;
        let poisoned: Vec<_> = answered
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(poisoned, ["poisoned"], "the attack did not run");
    }
    for _ in 0..8 {
        let rows = victim.query(&stmt, &[&a]).await?;
        assert_eq!(rows[0].get::<_, String>(0), "mine");
    }
    Ok(())
}

#[tokio::test]
async fn reset_all_forgets_the_shard_key() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, _) = keys_on_both(&stack);
    let c = stack.client().await?;
    c.batch_execute(&format!("SET shardline.shard_key = '{a}'"))
        .await?;
    assert_eq!(code_of(&c, "UPDATE items SET v = 'k'").await, "ok");
    c.batch_execute("RESET ALL").await?;
    assert_eq!(code_of(&c, "UPDATE items SET v = 'k'").await, "0A000");
    Ok(())
}

#[tokio::test]
async fn a_statement_cannot_outlive_the_tenants_time_limit() -> anyhow::Result<()> {
    let stack =
        Stack::start_with(|cfg| cfg.statement_timeout = std::time::Duration::from_secs(1)).await?;
    let (a, _) = keys_on_both(&stack);
    let c = stack.client().await?;
    c.batch_execute(&format!("SET shardline.shard_key = '{a}'"))
        .await?;
    c.batch_execute("SET statement_timeout = 0").await?;
    // A quick exchange first: the session's timer is armed at its
    // deadline, fires while the long statement runs, and must be armed
    // again for the long statement's own deadline.
    assert_eq!(values(&c, "SELECT 'quick'").await?, ["quick"]);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        code_of(&c, "SELECT pg_sleep(30)"),
    )
    .await?;
    assert_eq!(code, "57014", "cancelled by the router");
    // At the long statement's own deadline: its start + the tenant's 1 s
    // + the router's grace (1 s) + 1 s more. The quick exchange's
    // deadline, had the timer kept it, fell 1.8 s after the start.
    let took = started.elapsed();
    println!("cancelled after {took:?}");
    assert!(
        took >= std::time::Duration::from_millis(2_500)
            && took < std::time::Duration::from_secs(10),
        "cancelled after {took:?}, expected about 3 s"
    );
    assert_eq!(values(&c, "SELECT 'alive'").await?, ["alive"]);
    Ok(())
}
