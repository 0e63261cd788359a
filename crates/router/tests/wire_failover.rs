//! Wire clients through a failover, as HTTP requests are held (see
//! `replicas.rs`): once the router has the catalog with the intent, no
//! statement a wire client runs on the primary being replaced is
//! answered as a success — a transaction open there, or a statement
//! running there, ends with the connection (FATAL 57P01, as PostgreSQL's
//! own failover would end it) and nothing of it commits; a new statement
//! is held, then refused as retryable (57P03) while the intent stays.
//! (The manager promotes a replica once every router holds; a write the
//! old primary took after that would be lost with asynchronous
//! replication.)

mod common;

use std::time::Duration;

use common::wire_stack::{catalog, count_on, Stack};
use shardline_core::catalog::{Failover, FailoverKind};
use shardline_router::state::Routing;

/// A key on shard `i`.
fn key_on(stack: &Stack, i: usize, from: i64) -> i64 {
    (from..from + 10_000)
        .find(|k| stack.shard_of(*k) == i)
        .expect("a key")
}

/// The stack's catalog with a failover of shard `s1` under way.
fn intent(stack: &Stack) -> shardline_core::Catalog {
    let mut cat = catalog(&stack.shards);
    cat.version = stack.routing.get().version + 1;
    cat.shards.get_mut("s1").expect("s1").failover = Some(Failover {
        kind: FailoverKind::Automatic,
        from: "s1-a".into(),
        to: "s1-b".into(),
        started_at_ms: 1,
    });
    cat
}

/// The SQLSTATE of a failed statement, or what it failed with.
fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Waits (bounded) until shard `i` runs a statement containing `tag`.
async fn until_running(stack: &Stack, i: usize, tag: &str) -> anyhow::Result<()> {
    let admin = stack.shards[i].connect().await?;
    for _ in 0..500 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' \
                 AND state = 'active' AND pid <> pg_backend_pid()",
                &[&tag],
            )
            .await?
            .get(0);
        if n > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("{tag} never ran on shard {i}")
}

#[tokio::test]
async fn nothing_run_on_a_primary_being_replaced_is_answered_as_done() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let k1 = key_on(&stack, 0, 1);
    let k2 = key_on(&stack, 0, k1 + 1);
    let k3 = key_on(&stack, 0, k2 + 1);
    let other = key_on(&stack, 1, 1);

    // A: a transaction that wrote on s1 and has not committed.
    let in_tx = stack.client().await?;
    in_tx.batch_execute("BEGIN").await?;
    in_tx
        .execute("INSERT INTO items (id, v) VALUES ($1, 'in-tx')", &[&k1])
        .await?;
    // B: a write still running on s1.
    let running = stack.client().await?;
    let slow = tokio::spawn(async move {
        running
            .simple_query(&format!(
                "/* shardline.shard_key='{k2}' */ INSERT INTO items (id, v) \
                 SELECT {k2}, 'slow' FROM pg_sleep(3) /* fenced-wire */"
            ))
            .await
            .map(|_| ())
    });
    until_running(&stack, 0, "fenced-wire").await?;

    // The failover of s1 begins.
    let cat = intent(&stack);
    stack
        .routing
        .set(Routing::build(&cat, &stack.routing.get(), &stack.ctx));

    // B is answered at once (well before its 3 s sleep ends) with the
    // end of its connection, and its statement is cancelled.
    let e = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .map_err(|_| anyhow::anyhow!("the running write was not ended by the fence"))??
        .expect_err("a write running on the fenced primary is not answered as done");
    assert_eq!(code(&e), "57P01", "{e}");
    // A's transaction ends with its connection: its COMMIT cannot succeed.
    let commit = in_tx.batch_execute("COMMIT").await;
    assert!(
        commit.is_err(),
        "a transaction on the fenced primary committed"
    );
    assert!(
        in_tx.is_closed(),
        "the fenced session's connection is closed"
    );
    for _ in 0..300 {
        if count_on(&stack, 0, k2).await? == 0 && !slow_running(&stack).await? {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!slow_running(&stack).await?, "the statement was cancelled");
    assert_eq!(count_on(&stack, 0, k1).await?, 0, "A's row did not commit");
    assert_eq!(count_on(&stack, 0, k2).await?, 0, "B's row did not commit");

    // A new write for s1 is held through the hold, then refused as
    // retryable, and never reaches the old primary.
    let c = stack.client().await?;
    let held = std::time::Instant::now();
    let e = c
        .execute("INSERT INTO items (id, v) VALUES ($1, 'during')", &[&k3])
        .await
        .expect_err("a write during the intent is refused");
    assert_eq!(code(&e), "57P03", "{e}");
    // Held for the stack's failover_hold (500 ms) first, not refused at
    // once.
    assert!(
        held.elapsed() >= Duration::from_millis(450),
        "refused after {:?}, before the hold ended",
        held.elapsed()
    );
    assert_eq!(count_on(&stack, 0, k3).await?, 0);
    // The other shard is not held, nor are logins and statement
    // descriptions (tokio-postgres prepares the statement first: a
    // describe-only exchange, which goes to a shard not failing over).
    c.execute("INSERT INTO items (id, v) VALUES ($1, 'other')", &[&other])
        .await?;
    assert_eq!(count_on(&stack, 1, other).await?, 1);
    Ok(())
}

/// Whether the slow write still runs on shard 1.
async fn slow_running(stack: &Stack) -> anyhow::Result<bool> {
    let admin = stack.shards[0].connect().await?;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%fenced-wire%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    Ok(n > 0)
}

#[tokio::test]
async fn a_router_past_its_lease_ends_wire_writes_in_progress() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let k = key_on(&stack, 0, 1);
    let c = stack.client().await?;
    // The manager's last answer gives a lease of 1 s (the router counts
    // itself cut off 0.5 s before its end) and then it answers no more:
    // the lease runs out under the open transaction.
    stack.ctx.contact.answered(1_000);
    c.batch_execute("BEGIN").await?;
    c.execute("INSERT INTO items (id, v) VALUES ($1, 'before')", &[&k])
        .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let commit = c.batch_execute("COMMIT").await;
    assert!(commit.is_err(), "a write committed past the lease");
    assert!(c.is_closed());
    assert_eq!(count_on(&stack, 0, k).await?, 0, "nothing committed");
    // Reads still run; writes are refused until the manager answers.
    let r = stack.client().await?;
    let n: i64 = r
        .query_one("SELECT count(*) FROM items WHERE id = $1", &[&k])
        .await?
        .get(0);
    assert_eq!(n, 0);
    let e = r
        .execute("INSERT INTO items (id, v) VALUES ($1, 'after')", &[&k])
        .await
        .expect_err("a write past the lease");
    assert_eq!(code(&e), "57P03", "{e}");
    stack.ctx.contact.answered(60_000);
    r.execute("INSERT INTO items (id, v) VALUES ($1, 'after')", &[&k])
        .await?;
    assert_eq!(count_on(&stack, 0, k).await?, 1);
    Ok(())
}
