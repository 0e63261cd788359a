//! sqlx through the router's PostgreSQL port: a pool and a single
//! connection log in with SCRAM-SHA-256 (the app token is the password)
//! and run statements through sqlx's query builder, which prepares every
//! statement by name (`Parse` and `Describe` with no `Bind`, then `Bind`,
//! `Execute`, `Close` of the portal, `Sync`), caches it per connection,
//! and pings an idle pooled connection with a lone `Sync`. Each routing
//! claim is checked on the shards themselves, bypassing the router.
//! A statement's first use inside a transaction, for a key of the second
//! shard, works: the describe before it does not pin the transaction.

mod common;

use common::wire_stack::{count_on, keys_on_both, Stack, TOKEN};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

/// The SQLSTATE of a failed statement, if the server sent one.
fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

const INSERT: &str = "INSERT INTO items (id, v) VALUES ($1, $2)";
const UPDATE: &str = "UPDATE items SET v = $2 WHERE id = $1";
const COUNT: &str = "SELECT count(*) FROM items WHERE id = $1";

/// A pool of up to `max` connections to the router as the app.
async fn pool(stack: &Stack, max: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .connect(&stack.url(TOKEN))
        .await?)
}

/// Column `v` of the row with key `id` on shard `shard`, read directly.
async fn value_on(stack: &Stack, shard: usize, id: i64) -> anyhow::Result<Option<String>> {
    let d = stack.direct(shard).await?;
    let row = d
        .query_opt("SELECT v FROM items WHERE id = $1", &[&id])
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Rows of `items` on both shards, counted directly.
async fn rows_on_shards(stack: &Stack) -> anyhow::Result<i64> {
    let mut n = 0;
    for shard in 0..2 {
        let d = stack.direct(shard).await?;
        n += d
            .query_one("SELECT count(*) FROM items", &[])
            .await?
            .get::<_, i64>(0);
    }
    Ok(n)
}

#[tokio::test]
async fn sqlx_keyed_writes_typed_parameters_and_keyless_aggregates() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);

    // The token is checked by SCRAM: a wrong one is refused at login.
    let err = PgConnection::connect(&stack.url("not-the-token"))
        .await
        .expect_err("a wrong token");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    let pool = pool(&stack, 2).await?;

    // Keyed inserts with i64 and String parameters: each row lands on
    // the shard its key names, and only there.
    for k in [a, b] {
        let done = sqlx::query(INSERT)
            .bind(k)
            .bind(format!("sqlx-{k}"))
            .execute(&pool)
            .await?;
        assert_eq!(done.rows_affected(), 1);
    }
    for k in [a, b] {
        let mine = stack.shard_of(k);
        assert_eq!(count_on(&stack, mine, k).await?, 1, "key {k} on its shard");
        assert_eq!(
            count_on(&stack, 1 - mine, k).await?,
            0,
            "key {k} not on the other"
        );
        assert_eq!(value_on(&stack, mine, k).await?, Some(format!("sqlx-{k}")));
    }

    // Parameters of the common types round-trip in binary format, beside
    // the row of the shard the key names.
    let blob: Vec<u8> = vec![0, 1, 0xfe, 0xff, b'\\', b'\''];
    for k in [a, b] {
        let row = sqlx::query(
            "SELECT $2::int2, $3::int4, $4::int8, $5::float4, $6::float8, $7::bool, \
             $8::text, $9::bytea, $10::int4, $11::int8[], v FROM items WHERE id = $1",
        )
        .bind(k)
        .bind(-7_i16)
        .bind(2_147_483_647_i32)
        .bind(-9_007_199_254_740_993_i64)
        .bind(1.5_f32)
        .bind(-0.1_f64)
        .bind(true)
        .bind("é ☃ 'quoted' $1")
        .bind(&blob)
        .bind(None::<i32>)
        .bind(vec![k, -1, i64::MAX])
        .fetch_one(&pool)
        .await?;
        assert_eq!(row.try_get::<i16, _>(0)?, -7);
        assert_eq!(row.try_get::<i32, _>(1)?, 2_147_483_647);
        assert_eq!(row.try_get::<i64, _>(2)?, -9_007_199_254_740_993);
        assert_eq!(row.try_get::<f32, _>(3)?, 1.5);
        assert_eq!(row.try_get::<f64, _>(4)?, -0.1);
        assert!(row.try_get::<bool, _>(5)?);
        assert_eq!(row.try_get::<String, _>(6)?, "é ☃ 'quoted' $1");
        assert_eq!(row.try_get::<Vec<u8>, _>(7)?, blob);
        assert_eq!(row.try_get::<Option<i32>, _>(8)?, None);
        assert_eq!(row.try_get::<Vec<i64>, _>(9)?, vec![k, -1, i64::MAX]);
        assert_eq!(row.try_get::<String, _>("v")?, format!("sqlx-{k}"));
    }
    // A key with no row gives none.
    let none = sqlx::query("SELECT v FROM items WHERE id = $1")
        .bind(-1_i64)
        .fetch_optional(&pool)
        .await?;
    assert!(none.is_none());

    // Keyless aggregates are answered from both shards: the count equals
    // the rows counted on the shards directly, in the extended protocol
    // (sqlx's query builder) and the simple one (`raw_sql`).
    let on_shards = rows_on_shards(&stack).await?;
    assert_eq!(on_shards, 2);
    let n: i64 = sqlx::query("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    assert_eq!(n, on_shards, "extended protocol");
    let n: i64 = sqlx::raw_sql("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    assert_eq!(n, on_shards, "simple protocol");
    let row = sqlx::query("SELECT count(*), max(id), min(id) FROM items WHERE v LIKE $1")
        .bind("sqlx-%")
        .fetch_one(&pool)
        .await?;
    assert_eq!(row.try_get::<i64, _>(0)?, 2);
    assert_eq!(row.try_get::<i64, _>(1)?, a.max(b));
    assert_eq!(row.try_get::<i64, _>(2)?, a.min(b));
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlx_transactions_errors_and_cross_shard_refusal() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    // A second key on b's shard, for the transactions that leave nothing.
    let d = (b + 1..b + 10_000)
        .find(|k| stack.shard_of(*k) == stack.shard_of(b))
        .expect("another key on b's shard");
    // One connection, so that the statements below are prepared before
    // the transactions use them (a statement's first use inside a
    // transaction is the test below).
    let pool = pool(&stack, 1).await?;
    sqlx::query(INSERT)
        .bind(a)
        .bind("t0")
        .execute(&pool)
        .await?;
    sqlx::query(UPDATE)
        .bind(a)
        .bind("t1")
        .execute(&pool)
        .await?;
    let n: i64 = sqlx::query(COUNT)
        .bind(b)
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    assert_eq!(n, 0);

    // Two statements in one transaction on b's shard (the second one:
    // the transaction is not simply left on the first), committed.
    let mut tx = pool.begin().await?;
    sqlx::query(INSERT)
        .bind(b)
        .bind("t1")
        .execute(&mut *tx)
        .await?;
    sqlx::query(UPDATE)
        .bind(b)
        .bind("t2")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let b_shard = stack.shard_of(b);
    assert_eq!(value_on(&stack, b_shard, b).await?, Some("t2".into()));
    assert_eq!(count_on(&stack, 1 - b_shard, b).await?, 0);

    // Rolled back: nothing of it on either shard.
    let mut tx = pool.begin().await?;
    sqlx::query(INSERT)
        .bind(d)
        .bind("gone")
        .execute(&mut *tx)
        .await?;
    sqlx::query(UPDATE)
        .bind(d)
        .bind("gone2")
        .execute(&mut *tx)
        .await?;
    tx.rollback().await?;
    for shard in 0..2 {
        assert_eq!(
            count_on(&stack, shard, d).await?,
            0,
            "rolled back on {shard}"
        );
    }

    // A duplicate key fails with PostgreSQL's SQLSTATE, as does an
    // unknown column (refused at `Parse`), and the session goes on.
    let err = sqlx::query(INSERT)
        .bind(a)
        .bind("dup")
        .execute(&pool)
        .await
        .expect_err("a duplicate key");
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"), "{err}");
    let err = sqlx::query("SELECT nope FROM items WHERE id = $1")
        .bind(b)
        .fetch_all(&pool)
        .await
        .expect_err("an unknown column");
    assert_eq!(sqlstate(&err).as_deref(), Some("42703"), "{err}");

    // A transaction pinned to a's shard refuses a key of b's shard with
    // 0A000; the transaction is failed and commits nothing.
    let mut tx = pool.begin().await?;
    sqlx::query(UPDATE)
        .bind(a)
        .bind("cross")
        .execute(&mut *tx)
        .await?;
    let err = sqlx::query(INSERT)
        .bind(d)
        .bind("cross")
        .execute(&mut *tx)
        .await
        .expect_err("another shard in the transaction");
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err}");
    // As in PostgreSQL, COMMIT of a failed transaction rolls it back.
    tx.commit().await?;
    assert_eq!(
        value_on(&stack, stack.shard_of(a), a).await?,
        Some("t1".into())
    );
    assert_eq!(count_on(&stack, b_shard, d).await?, 0);

    // The session goes on; a transaction dropped unfinished rolls back
    // (sqlx sends its ROLLBACK before the connection's next statement).
    let mut tx = pool.begin().await?;
    sqlx::query(INSERT)
        .bind(d)
        .bind("dropped")
        .execute(&mut *tx)
        .await?;
    drop(tx);
    let n: i64 = sqlx::query(COUNT)
        .bind(d)
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    assert_eq!(n, 0);
    for shard in 0..2 {
        assert_eq!(count_on(&stack, shard, d).await?, 0, "dropped on {shard}");
    }
    pool.close().await;
    Ok(())
}

/// A statement sqlx has not prepared yet on its connection, first used
/// inside a transaction: sqlx sends `Parse`, `Describe`, `Sync` (no key
/// yet: the parameters come with the `Bind` after). The router answers
/// that describe on a server session of any shard, apart, keeping the
/// deferred `BEGIN` for the first statement with a key; the transaction
/// then runs on that key's shard, the second one here. (Before, the
/// describe pinned the transaction to the first shard and the `Bind`
/// was refused with 0A000.)
#[tokio::test]
async fn sqlx_first_use_of_a_statement_inside_a_transaction() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (_, b) = keys_on_both(&stack);
    let mut c = PgConnection::connect(&stack.url(TOKEN)).await?;
    let mut tx = c.begin().await?;
    sqlx::query(INSERT)
        .bind(b)
        .bind("first")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let b_shard = stack.shard_of(b);
    assert_eq!(value_on(&stack, b_shard, b).await?, Some("first".into()));
    assert_eq!(count_on(&stack, 1 - b_shard, b).await?, 0);
    c.close().await?;
    Ok(())
}

#[tokio::test]
async fn sqlx_statement_cache_across_pooled_server_sessions() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (a, b) = keys_on_both(&stack);
    let mut c = PgConnection::connect(&stack.url(TOKEN)).await?;
    for (k, v) in [(a, "ca"), (b, "cb")] {
        sqlx::query(INSERT).bind(k).bind(v).execute(&mut c).await?;
    }
    // One named statement, prepared once on this connection and run many
    // times for keys of both shards: the router must have it on whichever
    // pooled server session serves each statement.
    for i in 0..40 {
        let (k, want) = if i % 2 == 0 { (a, "ca") } else { (b, "cb") };
        let v: String = sqlx::query("SELECT v FROM items WHERE id = $1")
            .bind(k)
            .fetch_one(&mut c)
            .await?
            .try_get(0)?;
        assert_eq!(v, want, "run {i}");
    }
    // The insert and the select: two named statements, both cached.
    assert_eq!(c.cached_statements_size(), 2);
    c.close().await?;

    // A cache of one statement: sqlx closes the evicted statement by
    // name (`Close` and `Sync`) before each new one is used.
    let opts: PgConnectOptions = stack.url(TOKEN).parse()?;
    let mut c = PgConnection::connect_with(&opts.statement_cache_capacity(1)).await?;
    for i in 0..10 {
        let k = if i % 2 == 0 { a } else { b };
        let v: String = sqlx::query("SELECT v FROM items WHERE id = $1")
            .bind(k)
            .fetch_one(&mut c)
            .await?
            .try_get(0)?;
        assert_eq!(v, if k == a { "ca" } else { "cb" });
        let n: i64 = sqlx::query("SELECT count(*) FROM items WHERE v = $1")
            .bind(v)
            .fetch_one(&mut c)
            .await?
            .try_get(0)?;
        assert_eq!(n, 1, "run {i}");
    }
    assert_eq!(c.cached_statements_size(), 1);
    c.close().await?;
    Ok(())
}
