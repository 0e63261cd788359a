//! Writes over the wire that span shards: an `INSERT` whose rows go to
//! several shards is split, each shard getting only its own rows, all
//! or nothing (checked on the shards themselves); `COPY ... FROM STDIN`
//! rows are split by their shard-key column.

mod common;

use common::wire_stack::{catalog, count_on, keys_on_both, Stack, APP};
use shardline_router::state::{RouterContext, Routing};
use shardline_router::RouterConfig;
use tokio_postgres::SimpleQueryMessage;

/// `n` keys on shard `shard`, from `from` on.
fn keys_on(stack: &Stack, shard: usize, from: i64, n: usize) -> Vec<i64> {
    (from..from + 10_000)
        .filter(|k| stack.shard_of(*k) == shard)
        .take(n)
        .collect()
}

fn rows_and_count(messages: &[SimpleQueryMessage]) -> (Vec<String>, Option<u64>) {
    let mut rows = Vec::new();
    let mut count = None;
    for m in messages {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(r.get(0).unwrap_or("NULL").to_string()),
            SimpleQueryMessage::CommandComplete(n) => count = Some(*n),
            _ => {}
        }
    }
    (rows, count)
}

#[tokio::test]
async fn an_insert_of_rows_for_several_shards_is_split() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let on0 = keys_on(&stack, 0, 100, 2);
    let on1 = keys_on(&stack, 1, 100, 2);
    let mut c = stack.client().await?;
    let sql = format!(
        "INSERT INTO items (id, v) VALUES ({}, 'a'), ({}, 'b, (c)'), ({}, $$d)$$), ({}, 'e') \
         RETURNING id",
        on0[0], on1[0], on0[1], on1[1]
    );
    let (mut ids, count) = rows_and_count(&c.simple_query(&sql).await?);
    assert_eq!(count, Some(4), "the command tag counts every shard's rows");
    ids.sort();
    let mut want: Vec<String> = on0.iter().chain(&on1).map(i64::to_string).collect();
    want.sort();
    assert_eq!(ids, want, "RETURNING rows of both shards");
    for (shard, keys) in [(0, &on0), (1, &on1)] {
        for k in keys {
            assert_eq!(count_on(&stack, shard, *k).await?, 1, "{k} on its shard");
            assert_eq!(count_on(&stack, 1 - shard, *k).await?, 0, "{k} only there");
        }
    }
    let d = stack.direct(stack.shard_of(on1[0])).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&on1[0]])
        .await?
        .get(0);
    assert_eq!(v, "b, (c)", "a row's text is sent as written");

    // One shard refusing a row inserts nothing anywhere.
    let taken = on1[0];
    let fresh0 = keys_on(&stack, 0, 5_000, 1)[0];
    let sql = format!("INSERT INTO items (id, v) VALUES ({fresh0}, 'f'), ({taken}, 'dup')");
    let err = c
        .simple_query(&sql)
        .await
        .expect_err("a duplicate key fails it");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("23505"),
        "{err:?}"
    );
    assert_eq!(
        count_on(&stack, 0, fresh0).await?,
        0,
        "the other shard's row was rolled back"
    );
    // The session goes on.
    let (_, count) = rows_and_count(
        &c.simple_query(&format!(
            "INSERT INTO items (id, v) VALUES ({fresh0}, 'g'), ({}, 'h')",
            keys_on(&stack, 1, 5_000, 1)[0]
        ))
        .await?,
    );
    assert_eq!(count, Some(2));
    assert_eq!(count_on(&stack, 0, fresh0).await?, 1);

    // In a transaction, rows of several shards stay refused (one shard
    // per transaction), and the transaction is failed.
    let (a, b) = keys_on_both(&stack);
    let err = c
        .batch_execute(&format!(
            "BEGIN; INSERT INTO items (id, v) VALUES ({}, 'i'), ({}, 'j')",
            a + 20_000,
            b + 20_000
        ))
        .await
        .expect_err("refused in a transaction");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("0A000"));
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("statements of the failed transaction");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("25P02"),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await?;
    for k in [a + 20_000, b + 20_000] {
        assert_eq!(
            count_on(&stack, stack.shard_of(k), k).await?,
            0,
            "{k} written"
        );
    }
    // Extended protocol: the rows and their parameters split too
    // (tokio-postgres prepares the statement by name, then binds).
    let k0 = keys_on(&stack, 0, 30_000, 2);
    let k1 = keys_on(&stack, 1, 30_000, 1)[0];
    let n = c
        .execute(
            "INSERT INTO items (id, v) VALUES ($1, $4), ($2, 'l'), ($3, $4)",
            &[&k0[0], &k1, &k0[1], &"k"],
        )
        .await?;
    assert_eq!(n, 3);
    for k in &k0 {
        assert_eq!(count_on(&stack, 0, *k).await?, 1, "{k} on shard 0");
        assert_eq!(count_on(&stack, 1, *k).await?, 0);
    }
    assert_eq!(count_on(&stack, 1, k1).await?, 1, "{k1} on shard 1");
    let d1 = stack.direct(1).await?;
    let v: String = d1
        .query_one("SELECT v FROM items WHERE id = $1", &[&k1])
        .await?
        .get(0);
    assert_eq!(v, "l");
    // RETURNING rows of both shards; a duplicate inserts nothing.
    let k2 = keys_on(&stack, 0, 40_000, 1)[0];
    let k3 = keys_on(&stack, 1, 40_000, 1)[0];
    let rows = c
        .query(
            "INSERT INTO items (id, v) VALUES ($1, 'r'), ($2, 'r') RETURNING id",
            &[&k2, &k3],
        )
        .await?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    let mut want = vec![k2, k3];
    want.sort_unstable();
    assert_eq!(ids, want);
    let k4 = keys_on(&stack, 0, 50_000, 1)[0];
    let err = c
        .execute(
            "INSERT INTO items (id, v) VALUES ($1, 'x'), ($2, 'dup')",
            &[&k4, &k1],
        )
        .await
        .expect_err("a duplicate key fails it");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("23505"));
    assert_eq!(count_on(&stack, 0, k4).await?, 0, "rolled back");
    // In a transaction (pinned by a row of its own first): refused with
    // a hint, and the transaction failed, so its commit keeps nothing.
    let tx = c.transaction().await?;
    tx.execute("INSERT INTO items (id, v) VALUES ($1, 'k0')", &[&k4])
        .await?;
    let err = tx
        .execute(
            "INSERT INTO items (id, v) VALUES ($1, 'k'), ($2, 'l')",
            &[&k4, &keys_on(&stack, 1, 50_000, 1)[0]],
        )
        .await
        .expect_err("rows of two shards in a transaction");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000");
    assert!(db.hint().is_some(), "{db:?}");
    tx.commit().await?;
    assert_eq!(
        count_on(&stack, 0, k4).await?,
        0,
        "the failed transaction committed"
    );
    Ok(())
}

/// Runs psql on `script` (stdin) against the router: its stdout and
/// stderr, whatever its exit status. (On a thread of its own: the
/// router runs on the test's runtime.)
async fn psql(stack: &Stack, script: &str) -> anyhow::Result<(String, String)> {
    let url = stack.url(common::wire_stack::TOKEN);
    let script = script.to_string();
    tokio::task::spawn_blocking(move || psql_blocking(&url, &script)).await?
}

fn psql_blocking(url: &str, script: &str) -> anyhow::Result<(String, String)> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=0",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("psql's stdin"))?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn copy_without_a_key_splits_rows_by_their_key_column() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let on0 = keys_on(&stack, 0, 100, 3);
    let on1 = keys_on(&stack, 1, 100, 3);
    // Text format with a column list; an escaped tab inside a value.
    let script = format!(
        "COPY items (id, v) FROM STDIN;\n{}\ta\\tb\n{}\tb\n{}\tc\n{}\td\n\\.\n\
         SELECT 'after', count(*) FROM items;\n",
        on0[0], on1[0], on0[1], on1[1]
    );
    let (out, err) = psql(&stack, &script).await?;
    assert!(err.is_empty(), "{err}");
    assert!(out.contains("after|4"), "{out}");
    for (shard, keys) in [(0, &on0[..2]), (1, &on1[..2])] {
        for k in keys {
            assert_eq!(count_on(&stack, shard, *k).await?, 1, "{k} on its shard");
            assert_eq!(count_on(&stack, 1 - shard, *k).await?, 0, "{k} only there");
        }
    }
    let d = stack.direct(0).await?;
    let v: String = d
        .query_one("SELECT v FROM items WHERE id = $1", &[&on0[0]])
        .await?
        .get(0);
    assert_eq!(v, "a\tb");

    // CSV with a header, no column list (the table's order), a quoted
    // newline; then COPY TO STDOUT: every shard's rows, one header.
    let script = format!(
        "COPY items FROM STDIN WITH (FORMAT csv, HEADER true);\nid,v\n{},\"x\ny\"\n{},z\n\\.\n\
         COPY items TO STDOUT WITH (FORMAT csv, HEADER true);\n",
        on0[2], on1[2]
    );
    let (out, err) = psql(&stack, &script).await?;
    assert!(err.is_empty(), "{err}");
    assert_eq!(count_on(&stack, 0, on0[2]).await?, 1);
    assert_eq!(count_on(&stack, 1, on1[2]).await?, 1);
    assert_eq!(out.matches("id,v").count(), 1, "one header: {out}");
    for k in on0.iter().chain(&on1) {
        assert!(out.contains(&format!("\n{k},")), "{k} in {out}");
    }
    assert!(out.contains("\"x\ny\""), "{out}");

    // One shard refusing a row (a duplicate key) copies nothing; a row
    // without a key fails the COPY; the session goes on.
    let fresh0 = keys_on(&stack, 0, 5_000, 1)[0];
    let fresh1 = keys_on(&stack, 1, 5_000, 1)[0];
    let script = format!(
        "COPY items (id, v) FROM STDIN;\n{fresh0}\tnew\n{}\tdup\n\\.\n\
         COPY items (id, v) FROM STDIN;\n{fresh1}\tnew\n\\N\tnull key\n\\.\n\
         SELECT 'still', 1;\n\
         COPY items (v) FROM STDIN;\n",
        on1[0]
    );
    let (out, err) = psql(&stack, &script).await?;
    assert!(err.contains("duplicate key"), "{err}");
    assert!(err.contains("has no shard key"), "{err}");
    assert!(err.contains("leave out the shard-key column"), "{err}");
    assert!(out.contains("still"), "{out}");
    assert_eq!(count_on(&stack, 0, fresh0).await?, 0, "rolled back");
    assert_eq!(count_on(&stack, 1, fresh1).await?, 0, "rolled back");

    // In a transaction pinned to shard 0, a COPY without a key would put
    // every row there, another shard's keys too: refused, and the
    // transaction failed.
    let pinned = keys_on(&stack, 0, 60_000, 1)[0];
    let stray = keys_on(&stack, 1, 60_000, 1)[0];
    let script = format!(
        "BEGIN;\nINSERT INTO items (id, v) VALUES ({pinned}, 'pin');\n\
         COPY items (id, v) FROM STDIN;\n{stray}\tstray\n\\.\n\
         COMMIT;\n"
    );
    let (_, err) = psql(&stack, &script).await?;
    assert!(err.contains("would see only that shard's rows"), "{err}");
    for shard in [0, 1] {
        assert_eq!(
            count_on(&stack, shard, stray).await?,
            0,
            "{stray} on {shard}"
        );
    }
    assert_eq!(
        count_on(&stack, 0, pinned).await?,
        0,
        "the failed transaction committed"
    );
    Ok(())
}

#[tokio::test]
async fn every_key_a_statement_names_is_held_to_the_apps_prefix() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Two keys on one shard, one inside the prefix "1", one outside.
    let shard = 0;
    let inside = (10..10_000)
        .find(|k: &i64| stack.shard_of(*k) == shard && k.to_string().starts_with('1'))
        .expect("a key starting with 1");
    let outside = (20..10_000)
        .find(|k: &i64| stack.shard_of(*k) == shard && k.to_string().starts_with('2'))
        .expect("a key starting with 2");
    let mut cat = catalog(&stack.shards);
    cat.apps.get_mut(APP).expect("app").key_prefix = Some("1".into());
    cat.version = 2;
    let ctx = RouterContext::new(&RouterConfig::new("http://127.0.0.1:1", "t"));
    stack
        .routing
        .set(Routing::build(&cat, &stack.routing.get(), &ctx));
    let c = stack.client().await?;
    c.batch_execute(&format!(
        "INSERT INTO items (id, v) VALUES ({inside}, 'ok')"
    ))
    .await?;
    for sql in [
        format!("INSERT INTO items (id, v) VALUES ({inside}, 'a'), ({outside}, 'b')"),
        format!("SELECT v FROM items WHERE id IN ({inside}, {outside})"),
        format!("DELETE FROM items WHERE id = {outside}"),
    ] {
        let err = c.simple_query(&sql).await.expect_err("outside the prefix");
        assert_eq!(
            err.as_db_error().map(|e| e.code().code()),
            Some("42501"),
            "{sql}: {err:?}"
        );
    }
    assert_eq!(count_on(&stack, shard, outside).await?, 0);
    Ok(())
}
