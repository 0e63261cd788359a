//! The PostgreSQL layer against real clusters: value round trips checked
//! against PostgreSQL's own text output, errors, timeouts, the pool's
//! bound, broken and cancelled connections, transactions.

use std::time::Duration;

use serde_json::{json, Value};
use shardline_api::ErrorCode;
use shardline_router::pg::{
    execute, execute_with, from_pool_error, transaction, Pool, PoolConfig, PoolError, ResultLimits,
};
use shardline_testkit::PgCluster;

#[path = "pg_layer/cases.rs"]
mod cases;
use cases::cases;

/// A DSN whose sessions print values the way the test expects them.
fn dsn(pg: &PgCluster) -> String {
    format!(
        "{} options='-c TimeZone=UTC -c IntervalStyle=iso_8601 -c DateStyle=ISO'",
        pg.dsn()
    )
}

fn pool(pg: &PgCluster, cfg: PoolConfig) -> Pool {
    Pool::new(&dsn(pg), cfg).unwrap()
}

#[tokio::test]
async fn every_supported_type_round_trips() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    conn.batch_execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad'); \
         CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);",
    )
    .await?;
    for (i, (ty, input, expected, text)) in cases().into_iter().enumerate() {
        let table = format!("rt_{i}");
        execute(&mut conn, &format!("CREATE TABLE {table} (v {ty})"), &[]).await?;
        // Insert through the parameter, read back through RETURNING and a
        // SELECT, and compare with PostgreSQL's own text rendering.
        let inserted = execute(
            &mut conn,
            &format!("INSERT INTO {table} (v) VALUES ($1) RETURNING v, v::text"),
            std::slice::from_ref(&input),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{ty} {input}: {e}"))?;
        assert_eq!(inserted.rows_affected, 1);
        let selected = execute(
            &mut conn,
            &format!("SELECT v, v::text AS t FROM {table}"),
            &[],
        )
        .await?;
        for result in [&inserted, &selected] {
            assert_eq!(result.rows.len(), 1, "{ty}");
            assert_eq!(result.rows[0][0], expected, "{ty} from {input}");
            assert_eq!(
                result.rows[0][1],
                text.map_or(Value::Null, |t| json!(t)),
                "{ty} from {input}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn columns_values_and_counts() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    let r = execute(
        &mut conn,
        "SELECT 1::int8 AS a, 'x'::text AS b, ARRAY[1,2]::int4[] AS c, NULL::uuid AS d, \
         '{{1,2},{3,4}}'::int[] AS e, '[0:1]={5,6}'::int[] AS f, \
         (-(2::numeric ^ 64))::numeric(30,2) AS g, '1 day 2 hours'::interval AS h",
        &[],
    )
    .await?;
    let names: Vec<_> = r
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("a", "int8"),
            ("b", "text"),
            ("c", "int4[]"),
            ("d", "uuid"),
            ("e", "int4[]"),
            ("f", "int4[]"),
            ("g", "numeric"),
            ("h", "interval")
        ]
    );
    assert_eq!(
        r.rows,
        vec![vec![
            json!(1),
            json!("x"),
            json!([1, 2]),
            Value::Null,
            json!([[1, 2], [3, 4]]),
            json!([5, 6]),
            json!("-18446744073709551616.00"),
            json!("P1DT2H")
        ]]
    );
    assert_eq!(r.rows_affected, 1);

    execute(
        &mut conn,
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        &[],
    )
    .await?;
    let r = execute(
        &mut conn,
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 5) g",
        &[],
    )
    .await?;
    assert_eq!((r.rows_affected, r.columns.len(), r.rows.len()), (5, 0, 0));
    let r = execute(
        &mut conn,
        "UPDATE t SET v = $1 WHERE id > $2",
        &[json!("w"), json!(2)],
    )
    .await?;
    assert_eq!(r.rows_affected, 3);
    let r = execute(
        &mut conn,
        "SELECT id FROM t WHERE v = $1 ORDER BY id",
        &[json!("w")],
    )
    .await?;
    assert_eq!(
        (r.rows_affected, r.rows),
        (3, vec![vec![json!(3)], vec![json!(4)], vec![json!(5)]])
    );
    let r = execute(
        &mut conn,
        "DELETE FROM t WHERE id = ANY($1)",
        &[json!([1, 2, 99])],
    )
    .await?;
    assert_eq!(r.rows_affected, 2);

    // A cached statement whose result type changes under DDL is
    // re-prepared instead of failing.
    let before = execute(&mut conn, "SELECT * FROM t ORDER BY id LIMIT 1", &[]).await?;
    assert_eq!(before.columns.len(), 2);
    execute(
        &mut conn,
        "ALTER TABLE t ADD COLUMN extra int DEFAULT 7",
        &[],
    )
    .await?;
    let after = execute(&mut conn, "SELECT * FROM t ORDER BY id LIMIT 1", &[]).await?;
    assert_eq!(after.rows, vec![vec![json!(3), json!("w"), json!(7)]]);

    // A result over the limits is refused; the connection stays usable.
    let limits = ResultLimits {
        max_rows: 10,
        ..ResultLimits::default()
    };
    let e = execute_with(
        &mut conn,
        "SELECT generate_series(1, 1000)",
        &[],
        true,
        &limits,
        true,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    let r = execute(&mut conn, "SELECT 41 + 1", &[]).await?;
    assert_eq!(r.rows, vec![vec![json!(42)]]);
    Ok(())
}

#[tokio::test]
async fn client_errors_carry_postgres_fields() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    execute(&mut conn, "CREATE TABLE u (id int PRIMARY KEY)", &[]).await?;

    let e = execute(&mut conn, "SELECT $1::int4", &[json!(1), json!(2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
    assert!(
        e.message().contains("expected 1 parameter(s), got 2"),
        "{}",
        e.message()
    );

    let e = execute(&mut conn, "SELECT $1::int4", &[json!("abc")])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.http_status()),
        (ErrorCode::InvalidParameter, 400)
    );
    assert!(
        e.message().contains("$1") && e.message().contains("int4"),
        "{}",
        e.message()
    );

    let e = execute(&mut conn, "SELECT $1::int2", &[json!(70000)])
        .await
        .unwrap_err();
    assert!(e.message().contains("out of range"), "{}", e.message());

    let e = execute(&mut conn, "SELECT $1::point", &[json!("(1,2)")])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
    assert!(
        e.hint()
            .as_deref()
            .unwrap_or("")
            .contains("$1::text::point"),
        "{e:?}"
    );
    // The cast the hint suggests works.
    let r = execute(
        &mut conn,
        "SELECT ($1::text::point)::text",
        &[json!("(1,2)")],
    )
    .await?;
    assert_eq!(r.rows, vec![vec![json!("(1,2)")]]);

    let e = execute(&mut conn, "SELECT point(1, 2) AS pt", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(
        e.hint().as_deref().unwrap_or("").contains("pt::text"),
        "{e:?}"
    );

    execute(&mut conn, "INSERT INTO u VALUES ($1)", &[json!(1)]).await?;
    let e = execute(&mut conn, "INSERT INTO u VALUES ($1)", &[json!(1)])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.http_status()),
        (ErrorCode::ConstraintViolation, 409)
    );
    assert_eq!(e.sqlstate(), Some("23505"));
    assert_eq!(e.detail(), Some("Key (id)=(1) already exists."));

    let e = execute(&mut conn, "SELECT * FROM WHERE", &[])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.sqlstate()),
        (ErrorCode::StatementFailed, Some("42601"))
    );
    assert_eq!(e.position(), Some(15));

    let e = execute(&mut conn, "SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.sqlstate()),
        (ErrorCode::StatementFailed, Some("22012"))
    );

    let e = execute(&mut conn, "SELECT 1; SELECT 2", &[])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.http_status()),
        (ErrorCode::StatementFailed, 400)
    );
    assert!(e.hint().is_some());

    for sql in [
        "BEGIN",
        "SET search_path = nowhere",
        "COMMIT",
        "SET ROLE postgres",
        "DISCARD ALL",
    ] {
        let e = execute(&mut conn, sql, &[]).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{sql}");
    }

    // A role without privileges is refused by PostgreSQL: 403.
    execute(&mut conn, "CREATE ROLE weak LOGIN", &[]).await?;
    let weak = Pool::new(
        &pg.dsn().replace("user=postgres", "user=weak"),
        PoolConfig::default(),
    )?;
    let mut wc = weak.get().await?;
    let e = execute(&mut wc, "SELECT * FROM u", &[]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.sqlstate()),
        (ErrorCode::Forbidden, Some("42501"))
    );

    // The connection is still fine after all these errors.
    let r = execute(&mut conn, "SELECT count(*) FROM u", &[]).await?;
    assert_eq!(r.rows, vec![vec![json!(1)]]);
    Ok(())
}

#[tokio::test]
async fn statement_timeout_is_a_timeout() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let cfg = PoolConfig {
        statement_timeout: Some(Duration::from_millis(200)),
        ..PoolConfig::default()
    };
    let pool = pool(&pg, cfg);
    let mut conn = pool.get().await?;
    let e = execute(&mut conn, "SELECT pg_sleep(10)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.http_status(), e.retryable()),
        (ErrorCode::Timeout, 504, true)
    );
    assert_eq!(e.sqlstate(), Some("57014"));
    // The options from the DSN survive next to the timeout.
    let r = execute(
        &mut conn,
        "SELECT current_setting('TimeZone'), current_setting('statement_timeout')",
        &[],
    )
    .await?;
    assert_eq!(r.rows, vec![vec![json!("UTC"), json!("200ms")]]);
    Ok(())
}

#[tokio::test]
async fn pool_is_bounded_and_reuses_connections() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let cfg = PoolConfig {
        max_size: 2,
        acquire_timeout: Duration::from_millis(300),
        statement_cache_capacity: 2,
        ..PoolConfig::default()
    };
    let pool = pool(&pg, cfg);
    assert_eq!(pool.stats().size, 0, "no connection before the first get");

    let mut a = pool.get().await?;
    let b = pool.get().await?;
    let stats = pool.stats();
    assert_eq!((stats.size, stats.in_use, stats.idle), (2, 2, 0));
    let err = pool.get().await.err().unwrap();
    assert!(matches!(err, PoolError::Timeout(_)), "{err:?}");
    let api = from_pool_error(&err);
    assert_eq!(
        (api.code(), api.http_status(), api.retry_after()),
        (ErrorCode::ShardUnavailable, 503, Some(1))
    );

    // The prepared-statement cache is per connection and bounded.
    for sql in ["SELECT 1", "SELECT 2", "SELECT 1", "SELECT 3"] {
        execute(&mut a, sql, &[]).await?;
    }
    assert_eq!(a.cached_statements(), 2);
    drop(b);
    drop(a);
    let stats = pool.stats();
    assert_eq!((stats.size, stats.in_use, stats.idle), (2, 0, 2));

    // A waiter gets the connection another caller returns: the same
    // backend, since an idle connection is reused before a new one opens.
    let pool = Pool::new(
        &dsn(&pg),
        PoolConfig {
            max_size: 1,
            acquire_timeout: Duration::from_secs(30),
            ..PoolConfig::default()
        },
    )?;
    let mut holder = pool.get().await?;
    let pid = execute(&mut holder, "SELECT pg_backend_pid()", &[])
        .await?
        .rows[0][0]
        .clone();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut c = pool.get().await?;
            let r = execute(&mut c, "SELECT pg_backend_pid()", &[]).await?;
            anyhow::Ok(r.rows[0][0].clone())
        })
    };
    for _ in 0..1000 {
        if pool.stats().waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.stats().waiting, 1);
    drop(holder);
    assert_eq!(waiter.await??, pid);
    assert_eq!(
        pool.stats(),
        shardline_router::pg::PoolStats {
            size: 1,
            idle: 1,
            in_use: 0,
            waiting: 0
        }
    );

    // Idle connections past the idle timeout are reaped; a closed pool
    // refuses gets.
    let pool = Pool::new(
        &dsn(&pg),
        PoolConfig {
            idle_timeout: Duration::ZERO,
            ..PoolConfig::default()
        },
    )?;
    drop(pool.get().await?);
    assert_eq!(pool.stats().idle, 1);
    pool.reap_idle();
    assert_eq!((pool.stats().idle, pool.stats().size), (0, 0));
    drop(pool.get().await?);
    pool.close();
    assert_eq!(pool.stats().size, 0);
    assert!(matches!(pool.get().await, Err(PoolError::Closed)));
    Ok(())
}

/// The backend pids of sessions running `query`-like text.
async fn backends_running(admin: &tokio_postgres::Client, like: &str) -> anyhow::Result<i64> {
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()",
            &[&like],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn broken_connections_are_replaced() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let admin = pg.connect().await?;

    // Killed while in use: the statement fails as retryable and the
    // connection is not returned.
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    let pid = execute(&mut conn, "SELECT pg_backend_pid()", &[])
        .await?
        .rows[0][0]
        .as_i64()
        .unwrap();
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&(pid as i32)])
        .await?
        .get(0);
    assert!(killed);
    let e = execute(&mut conn, "SELECT 1", &[]).await.unwrap_err();
    assert_eq!(
        (e.code(), e.retryable()),
        (ErrorCode::ShardUnavailable, true),
        "{e:?}"
    );
    assert!(conn.is_broken());
    drop(conn);
    assert_eq!(pool.stats().size, 0);
    let mut conn = pool.get().await?;
    assert_eq!(
        execute(&mut conn, "SELECT 1", &[]).await?.rows,
        vec![vec![json!(1)]]
    );
    drop(conn);

    // Killed while idle, with no health check due: the pool sees the
    // closed socket without a round trip and opens another.
    let pool = Pool::new(&dsn(&pg), PoolConfig::default())?;
    let mut conn = pool.get().await?;
    let pid = execute(&mut conn, "SELECT pg_backend_pid()", &[])
        .await?
        .rows[0][0]
        .as_i64()
        .unwrap();
    drop(conn);
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&(pid as i32)])
        .await?
        .get(0);
    assert!(killed);
    // The backend is gone; its socket's end reaches the router's
    // reactor within moments.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = pool.get().await?;
    let r = execute(&mut conn, "SELECT pg_backend_pid()", &[]).await?;
    assert_ne!(r.rows[0][0].as_i64(), Some(pid));
    drop(conn);

    // Killed while idle: the health check on get replaces it.
    let pool = pool_with_check(&pg);
    let mut conn = pool.get().await?;
    let pid = execute(&mut conn, "SELECT pg_backend_pid()", &[])
        .await?
        .rows[0][0]
        .as_i64()
        .unwrap();
    drop(conn);
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&(pid as i32)])
        .await?
        .get(0);
    assert!(killed);
    let mut conn = pool.get().await?;
    let new_pid = execute(&mut conn, "SELECT pg_backend_pid()", &[])
        .await?
        .rows[0][0]
        .as_i64()
        .unwrap();
    assert_ne!(pid, new_pid);
    assert_eq!(pool.stats().size, 1);
    Ok(())
}

fn pool_with_check(pg: &PgCluster) -> Pool {
    pool(
        pg,
        PoolConfig {
            health_check_after: Duration::ZERO,
            ..PoolConfig::default()
        },
    )
}

#[tokio::test]
async fn cancelled_work_never_returns_a_dirty_connection() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let admin = pg.connect().await?;
    admin.batch_execute("CREATE TABLE c (id int)").await?;
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    let stmts = vec![
        ("INSERT INTO c VALUES (1)".to_string(), vec![]),
        ("SELECT pg_sleep(60) /* cancelled-tx */".to_string(), vec![]),
    ];
    // The caller gives up mid-transaction (as when an HTTP client
    // disconnects): its future is dropped.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), transaction(&mut conn, &stmts)).await;
    assert!(gave_up.is_err());
    drop(conn);
    assert_eq!(pool.stats(), shardline_router::pg::PoolStats::default());
    // The cancel request stops the statement; closing the session rolls
    // the transaction back.
    let mut remaining = 1;
    for _ in 0..500 {
        remaining = backends_running(&admin, "%cancelled-tx%").await?;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 0);
    let n: i64 = admin.query_one("SELECT count(*) FROM c", &[]).await?.get(0);
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test]
async fn transactions_commit_or_leave_nothing() -> anyhow::Result<()> {
    let pg = PgCluster::start().await?;
    let admin = pg.connect().await?;
    admin
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text);              CREATE TABLE d (id int UNIQUE DEFERRABLE INITIALLY DEFERRED);",
        )
        .await?;
    let pool = pool(
        &pg,
        PoolConfig {
            max_size: 1,
            ..PoolConfig::default()
        },
    );
    let mut conn = pool.get().await?;
    let st = |sql: &str, params: Vec<Value>| (sql.to_string(), params);

    let results = transaction(
        &mut conn,
        &[
            st("INSERT INTO a VALUES ($1, $2)", vec![json!(1), json!("x")]),
            st("SAVEPOINT s", vec![]),
            st("INSERT INTO a VALUES ($1, $2)", vec![json!(2), json!("y")]),
            st("ROLLBACK TO SAVEPOINT s", vec![]),
            st("SELECT id, v FROM a ORDER BY id", vec![]),
        ],
    )
    .await
    .map_err(|(i, e)| anyhow::anyhow!("statement {i}: {e}"))?;
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].rows_affected, 1);
    assert_eq!(results[4].rows, vec![vec![json!(1), json!("x")]]);

    // A failing statement rolls back everything before it.
    let (i, e) = transaction(
        &mut conn,
        &[
            st("INSERT INTO a VALUES (10, 'p')", vec![]),
            st("INSERT INTO a VALUES (11, 'q')", vec![]),
            st("INSERT INTO a VALUES ($1, 'dup')", vec![json!(1)]),
            st("INSERT INTO a VALUES (12, 'never')", vec![]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (i, e.code(), e.statement_index()),
        (2, ErrorCode::ConstraintViolation, Some(2))
    );
    // A parameter error does the same.
    let (i, e) = transaction(
        &mut conn,
        &[
            st("INSERT INTO a VALUES (20, 'p')", vec![]),
            st("SELECT $1::int", vec![json!("x")]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!((i, e.code()), (1, ErrorCode::InvalidParameter));
    let n: i64 = admin.query_one("SELECT count(*) FROM a", &[]).await?.get(0);
    assert_eq!(n, 1);

    // A deferred constraint fails at COMMIT: the index is one past the
    // last statement.
    let (i, e) = transaction(
        &mut conn,
        &[
            st("INSERT INTO d VALUES (1)", vec![]),
            st("INSERT INTO d VALUES (1)", vec![]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(
        (i, e.code(), e.sqlstate()),
        (2, ErrorCode::ConstraintViolation, Some("23505"))
    );

    // Transaction control inside is refused before anything runs.
    let (i, e) = transaction(
        &mut conn,
        &[
            st("INSERT INTO a VALUES (30, 'z')", vec![]),
            st("COMMIT", vec![]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!((i, e.code()), (1, ErrorCode::InvalidRequest));

    // The connection (the only one) is left outside any transaction: a
    // write through it is visible to another session at once.
    execute(&mut conn, "INSERT INTO a VALUES (40, 'after')", &[]).await?;
    let n: i64 = admin.query_one("SELECT count(*) FROM a", &[]).await?.get(0);
    assert_eq!(n, 2);
    let n: i64 = admin.query_one("SELECT count(*) FROM d", &[]).await?.get(0);
    assert_eq!(n, 0);
    Ok(())
}

#[tokio::test]
async fn unreachable_servers_are_shard_unavailable() -> anyhow::Result<()> {
    let mut pg = PgCluster::start().await?;
    let admin = pg.connect().await?;
    admin.batch_execute("SELECT 1").await?;

    // An unknown role is our misconfiguration: 503 without the name.
    let bad = Pool::new(
        &pg.dsn().replace("user=postgres", "user=nobody_here"),
        PoolConfig::default(),
    )?;
    let e = from_pool_error(&bad.get().await.err().unwrap());
    assert_eq!((e.code(), e.http_status()), (ErrorCode::Unavailable, 503));
    assert!(!e.message().contains("nobody_here"), "{}", e.message());

    let pool = pool(&pg, PoolConfig::default());
    pg.stop().await?;
    let err = pool.get().await.err().unwrap();
    assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
    let e = from_pool_error(&err);
    assert_eq!(
        (e.code(), e.http_status(), e.retryable(), e.retry_after()),
        (ErrorCode::ShardUnavailable, 503, true, Some(1))
    );
    assert!(
        !e.message().contains("127.0.0.1") && !e.message().contains("port"),
        "{}",
        e.message()
    );

    assert!(matches!(
        Pool::new("host=x port=notaport", PoolConfig::default()),
        Err(PoolError::InvalidDsn(_))
    ));
    Ok(())
}

/// Random values encoded by us and by PostgreSQL (from text) must agree
/// both ways: PostgreSQL's text of our binary equals our text of its
/// binary.
#[tokio::test]
async fn random_values_agree_with_postgres() -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    use shardline_router::pg::datetime;

    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pg = PgCluster::start().await?;
    let pool = pool(&pg, PoolConfig::default());
    let mut conn = pool.get().await?;
    let digits = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect()
    };
    for _ in 0..300 {
        let mut n = String::new();
        if rng.random_bool(0.5) {
            n.push('-');
        }
        let int_len = rng.random_range(0..25);
        n.push_str(&if int_len == 0 {
            "0".to_string()
        } else {
            digits(&mut rng, int_len)
        });
        let frac_len = rng.random_range(0..25);
        if frac_len > 0 {
            n.push('.');
            n.push_str(&digits(&mut rng, frac_len));
        }
        let r = execute(
            &mut conn,
            "SELECT $1::numeric::text, $2::text::numeric",
            &[json!(n), json!(n)],
        )
        .await?;
        assert_eq!(r.rows[0][0], r.rows[0][1], "numeric {n} (seed {seed})");

        let x = f64::from_bits(rng.random::<u64>());
        if x.is_finite() {
            let r = execute(
                &mut conn,
                "SELECT $1::float8 = $2::text::float8, $2::text::float8",
                &[json!(x), json!(x.to_string())],
            )
            .await?;
            assert_eq!(
                r.rows[0],
                vec![json!(true), json!(x)],
                "float8 {x} (seed {seed})"
            );
        }

        // Years 1..=9999, where PostgreSQL's ISO text is ours with a space.
        let day = rng.random_range(-730_119..2_921_939);
        let date = datetime::format_date(day);
        let r = execute(
            &mut conn,
            "SELECT $1::date::text, $2::text::date",
            &[json!(date), json!(date)],
        )
        .await?;
        assert_eq!(
            r.rows[0],
            vec![json!(date), json!(date)],
            "date (seed {seed})"
        );

        let usecs = rng.random_range(-63_082_281_600_000_000i64..252_455_615_999_999_999);
        let ts = datetime::format_timestamp(usecs, true);
        let r = execute(
            &mut conn,
            "SELECT $1::timestamptz = $2::text::timestamptz, $2::text::timestamptz",
            &[json!(ts), json!(ts)],
        )
        .await?;
        assert_eq!(
            r.rows[0],
            vec![json!(true), json!(ts)],
            "timestamptz (seed {seed})"
        );

        let iv = datetime::format_interval(
            rng.random_range(-2000..2000),
            rng.random_range(-2000..2000),
            rng.random_range(-10_000_000_000_000i64..10_000_000_000_000),
        );
        let r = execute(
            &mut conn,
            "SELECT $1::interval::text, $2::text::interval",
            &[json!(iv), json!(iv)],
        )
        .await?;
        assert_eq!(
            r.rows[0],
            vec![json!(iv), json!(iv)],
            "interval (seed {seed})"
        );
    }
    Ok(())
}

/// Compile-time: the pool and the futures of the layer are `Send`, as an
/// HTTP handler needs.
#[allow(dead_code)]
fn layer_is_send(pool: &Pool, conn: &mut shardline_router::pg::PooledConn) {
    fn send<T: Send + Sync>(_: &T) {}
    fn send_future<T: Send>(_: &T) {}
    send(pool);
    send_future(&pool.get());
    send_future(&execute(conn, "", &[]));
    send_future(&transaction(conn, &[]));
}
