use proptest::prelude::*;

use super::*;

/// The tables these tests declare sharded, and their key columns.
pub(super) fn keys_of(table: &str) -> Option<String> {
    let key = match table {
        "pgbench_accounts" | "pgbench_history" => "aid",
        "orders" | "items" => "customer_id",
        "users" => "id",
        _ => return None,
    };
    Some(key.to_string())
}

pub(super) fn an(sql: &str) -> Analysis {
    analyze(sql, &keys_of)
}

fn lit(s: &str) -> KeyRef {
    KeyRef::Literal(s.to_string())
}

fn param(n: usize) -> KeyRef {
    KeyRef::Param(n)
}

/// Asserts a text names exactly `keys` and leaves no sharded read or
/// write unkeyed.
#[track_caller]
fn assert_keyed(sql: &str, keys: &[KeyRef]) {
    let a = an(sql);
    assert_eq!(a.keys, keys, "{sql}");
    assert!(!a.unkeyed, "{sql}: {a:?}");
    assert!(a.touches_sharded, "{sql}");
    assert_eq!(a.parse_error, None, "{sql}");
}

/// Asserts a text leaves some sharded read or write unkeyed.
#[track_caller]
fn assert_unkeyed(sql: &str, keys: &[KeyRef]) {
    let a = an(sql);
    assert_eq!(a.keys, keys, "{sql}");
    assert!(a.unkeyed, "{sql}: {a:?}");
    assert!(a.touches_sharded, "{sql}");
}

#[test]
fn pgbench_statements_name_their_keys() {
    let a = an("SELECT abalance FROM pgbench_accounts WHERE aid = $1;");
    assert_eq!((a.kind, a.keys), (Kind::Read, vec![param(1)]));
    let a = an("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;");
    assert_eq!((a.kind, a.keys), (Kind::Write, vec![param(2)]));
    assert!(!a.updates_shard_key);
    let a = an("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);");
    assert_eq!(a.kind, Kind::Write);
    assert_eq!(a.keys, [param(3)]);
    assert_eq!(a.insert_row_keys, [param(3)]);
    assert!(!a.unkeyed);

    // `pgbench -M simple` substitutes the values.
    assert_keyed(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        &[lit("48213")],
    );
    assert_keyed(
        "UPDATE pgbench_accounts SET abalance = abalance + -2411 WHERE aid = 48213;",
        &[lit("48213")],
    );
    let a = an("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                VALUES (7, 1, 48213, -2411, CURRENT_TIMESTAMP);");
    assert_eq!(a.insert_row_keys, [lit("48213")]);
    assert_eq!(a.keys, [lit("48213")]);

    // Tellers and branches are not sharded here.
    let a = an("UPDATE pgbench_tellers SET tbalance = tbalance + -2411 WHERE tid = 7;");
    assert_eq!(a.kind, Kind::Write);
    assert!(!a.touches_sharded && !a.unkeyed && a.keys.is_empty());
}

#[test]
fn literal_forms_give_the_value_as_text() {
    let cases = [
        ("'42'", lit("42")),
        ("42", lit("42")),
        ("-5", lit("-5")),
        ("+5", lit("5")),
        ("'ab''c'", lit("ab'c")),
        (r"E'a\'b\n'", lit("a'b\n")),
        ("$$x'y$$", lit("x'y")),
        ("$tag$z$tag$", lit("z")),
        ("'5'::bigint", lit("5")),
        ("('5')::int8::text", lit("5")),
        ("CAST($1 AS text)", param(1)),
        ("bigint '9'", lit("9")),
        ("TRUE", lit("true")),
        ("$12", param(12)),
    ];
    for (value, key) in cases {
        assert_keyed(&format!("SELECT * FROM users WHERE id = {value}"), &[key]);
    }
    for value in ["NULL", "$0", "1 + 1", "now()", "other_col", "X'1F'"] {
        assert_unkeyed(&format!("SELECT * FROM users WHERE id = {value}"), &[]);
    }
}

#[test]
fn keys_in_where_either_side_and_in_lists() {
    assert_keyed("SELECT * FROM users WHERE 7 = id", &[lit("7")]);
    assert_keyed("SELECT * FROM users WHERE (id) = (7)", &[lit("7")]);
    assert_keyed("SELECT * FROM users WHERE id IN ('a')", &[lit("a")]);
    assert_keyed(
        "SELECT * FROM users WHERE id IN (1, 2, $1)",
        &[lit("1"), lit("2"), param(1)],
    );
    assert_keyed(
        "SELECT * FROM users WHERE id = ANY(ARRAY[3, 4])",
        &[lit("3"), lit("4")],
    );
    assert_keyed(
        "SELECT * FROM users WHERE (id, name) = (3, 'x')",
        &[lit("3")],
    );
    assert_keyed(
        "SELECT * FROM users WHERE name = 'x' AND (id = 3 AND age > 2)",
        &[lit("3")],
    );
    // A key under OR or NOT does not pin the statement.
    assert_unkeyed("SELECT * FROM users WHERE id = 1 OR id = 2", &[]);
    assert_unkeyed("SELECT * FROM users WHERE NOT id = 1", &[]);
    assert_unkeyed("SELECT * FROM users WHERE id IN (1, other)", &[]);
    assert_unkeyed("SELECT * FROM users WHERE id NOT IN (1)", &[]);
    assert_unkeyed("SELECT * FROM users WHERE id > 1", &[]);
    assert_unkeyed("SELECT * FROM users", &[]);
}

#[test]
fn two_different_keys_are_both_reported() {
    assert_keyed(
        "SELECT * FROM users WHERE id = 1 AND id = 2",
        &[lit("1"), lit("2")],
    );
    assert_keyed(
        "SELECT * FROM users u WHERE u.id = 1 AND u.id IN \
         (SELECT user_id FROM orders WHERE customer_id = 2)",
        &[lit("1"), lit("2")],
    );
    // The same key twice is one key.
    assert_keyed(
        "SELECT * FROM users u WHERE id = 1 AND u.id = '1'",
        &[lit("1")],
    );
}

#[test]
fn qualified_columns_resolve_to_their_table() {
    assert_keyed("SELECT * FROM users u WHERE u.id = 5", &[lit("5")]);
    assert_keyed("SELECT * FROM users WHERE users.id = 5", &[lit("5")]);
    assert_keyed(
        "SELECT * FROM public.users WHERE public.users.id = 5",
        &[lit("5")],
    );
    assert_keyed("SELECT * FROM users WHERE \"id\" = 5", &[lit("5")]);
    assert_keyed("SELECT * FROM USERS WHERE ID = 5", &[lit("5")]);
    // A qualifier naming another relation, or a quoted name PostgreSQL does
    // not fold, is not the key.
    assert_unkeyed("SELECT * FROM users u, things t WHERE t.id = 5", &[]);
    assert_unkeyed("SELECT * FROM users WHERE \"ID\" = 5", &[]);
    let a = an("SELECT * FROM \"Users\" WHERE id = 5");
    assert!(!a.touches_sharded && !a.catalog_only);
}

#[test]
fn keys_inside_subqueries_and_ctes() {
    assert_keyed(
        "WITH x AS (SELECT * FROM users WHERE id = 1) SELECT * FROM x",
        &[lit("1")],
    );
    assert_keyed(
        "SELECT * FROM things WHERE owner IN (SELECT name FROM users WHERE id = $1)",
        &[param(1)],
    );
    assert_keyed(
        "SELECT * FROM things t WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = 4)",
        &[lit("4")],
    );
    assert_keyed(
        "SELECT (SELECT count(*) FROM orders o WHERE o.customer_id = u.id) \
         FROM users u WHERE u.id = 9",
        &[lit("9")],
    );
    assert_keyed(
        "SELECT * FROM users, LATERAL (SELECT * FROM orders \
         WHERE orders.customer_id = users.id) o WHERE users.id = 3",
        &[lit("3")],
    );
    // A key outside a derived table does not reach inside it.
    assert_unkeyed("SELECT * FROM (SELECT * FROM users) x WHERE x.id = 5", &[]);
    // One part keyed, another not.
    assert_unkeyed(
        "SELECT * FROM users WHERE id = 1 UNION ALL SELECT * FROM users WHERE age > 9",
        &[lit("1")],
    );
    assert_unkeyed(
        "SELECT * FROM users WHERE id IN (SELECT customer_id FROM orders WHERE customer_id = 9)",
        &[lit("9")],
    );
    // A CTE shadows a table of the same name.
    let a = an("WITH users AS (SELECT 1 AS id) SELECT * FROM users WHERE id = 5");
    assert!(!a.touches_sharded && a.keys.is_empty());
}

#[test]
fn joins_pin_by_literal_and_carry_pins_along_key_equalities() {
    assert_keyed(
        "SELECT * FROM pgbench_accounts a JOIN pgbench_history h ON h.aid = a.aid WHERE a.aid = 5",
        &[lit("5")],
    );
    assert_keyed(
        "SELECT * FROM pgbench_accounts a JOIN pgbench_history h USING (aid) WHERE aid = 5",
        &[lit("5")],
    );
    assert_keyed(
        "SELECT * FROM orders o JOIN items i ON i.customer_id = o.customer_id \
         AND i.order_id = o.id WHERE o.customer_id = 'c1'",
        &[lit("c1")],
    );
    assert_keyed(
        "SELECT * FROM users u JOIN orders o ON o.customer_id = 7 AND u.id = 8",
        &[lit("8"), lit("7")],
    );
    // ON naming another column does not pin.
    assert_unkeyed(
        "SELECT * FROM pgbench_accounts a JOIN pgbench_history h ON h.aid = 5",
        &[lit("5")],
    );
    // The preserved side of an outer join takes no pin from its ON.
    assert_unkeyed(
        "SELECT * FROM pgbench_accounts a LEFT JOIN pgbench_history h \
         ON h.aid = a.aid AND h.aid = 5",
        &[lit("5")],
    );
    assert_keyed(
        "SELECT * FROM pgbench_accounts a LEFT JOIN pgbench_history h ON h.aid = a.aid \
         WHERE a.aid = 5",
        &[lit("5")],
    );
    assert_keyed(
        "SELECT * FROM pgbench_accounts a WHERE a.aid = 3 AND EXISTS \
         (SELECT 1 FROM pgbench_history h WHERE h.aid = a.aid)",
        &[lit("3")],
    );
}

#[test]
fn kinds() {
    let kind = |sql: &str| an(sql).kind;
    assert_eq!(kind("SELECT 1"), Kind::Read);
    assert_eq!(kind("VALUES (1, 2)"), Kind::Read);
    assert_eq!(kind("SHOW search_path"), Kind::Read);
    assert_eq!(kind("EXPLAIN SELECT * FROM users WHERE id = 1"), Kind::Read);
    assert_eq!(
        kind("EXPLAIN ANALYZE DELETE FROM users WHERE id = 1"),
        Kind::Write
    );
    assert_eq!(kind("WITH x AS (SELECT 1) SELECT * FROM x"), Kind::Read);
    assert_eq!(
        kind("WITH x AS (DELETE FROM users WHERE id = 1 RETURNING *) SELECT * FROM x"),
        Kind::Write
    );
    assert_eq!(
        kind("SELECT * FROM users WHERE id = 1 FOR UPDATE"),
        Kind::Write
    );
    assert_eq!(
        kind("SELECT * FROM users WHERE id = 1 FOR SHARE"),
        Kind::Write
    );
    assert_eq!(kind("SELECT * INTO copy FROM users"), Kind::Write);
    assert_eq!(kind("INSERT INTO t VALUES (1)"), Kind::Write);
    assert_eq!(kind("UPDATE t SET a = 1"), Kind::Write);
    assert_eq!(kind("DELETE FROM t"), Kind::Write);
    assert_eq!(
        kind("MERGE INTO users u USING src s ON u.id = s.id WHEN MATCHED THEN DELETE"),
        Kind::Write
    );
    assert_eq!(kind("BEGIN"), Kind::Begin);
    assert_eq!(
        kind("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        Kind::Begin
    );
    assert_eq!(kind("BEGIN READ ONLY"), Kind::Begin);
    assert_eq!(kind("COMMIT"), Kind::Commit);
    assert_eq!(kind("END"), Kind::Commit);
    assert_eq!(kind("ROLLBACK"), Kind::Rollback);
    assert_eq!(kind("ABORT"), Kind::Rollback);
    for other in [
        "COMMIT AND CHAIN",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "ROLLBACK TO SAVEPOINT a",
        "CREATE TABLE t (a int)",
        "DROP TABLE t",
        "NOTIFY chan",
        "CALL proc()",
        "EXECUTE p (1)",
        "COPY users FROM STDIN",
        "LOCK TABLE users",
        "TRUNCATE users",
        "VACUUM",
    ] {
        assert_eq!(kind(other), Kind::Other, "{other}");
        assert!(!an(other).catalog_only, "{other}");
    }
    for session in [
        "SET search_path TO public",
        "SET TIME ZONE 'UTC'",
        "SET SESSION AUTHORIZATION bob",
        "RESET search_path",
        "DISCARD PLANS",
        "LISTEN chan",
        "UNLISTEN *",
        "DEALLOCATE p",
        "DEALLOCATE ALL",
        "PREPARE p (int) AS SELECT * FROM users WHERE id = $1",
        "DECLARE c CURSOR FOR SELECT 1",
        "FETCH 10 FROM c",
        "CLOSE c",
    ] {
        assert_eq!(kind(session), Kind::Session, "{session}");
    }
}

#[test]
fn other_statements_touch_sharded_tables_they_name() {
    assert!(an("ALTER TABLE users ADD COLUMN x int").touches_sharded);
    assert!(an("CREATE INDEX ON users (name)").touches_sharded);
    assert!(!an("CREATE TABLE t (a int)").touches_sharded);
    assert!(an("CALL proc()").touches_sharded);
    assert!(an("COPY users TO STDOUT").touches_sharded);
    assert!(!an("COPY things TO STDOUT").touches_sharded);
    let a = an("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 4");
    assert_eq!((a.kind, a.keys), (Kind::Session, vec![lit("4")]));
    // A PREPARE's parameters come later, with EXECUTE.
    let a = an("PREPARE p (int) AS SELECT * FROM users WHERE id = $1");
    assert!(a.keys.is_empty() && a.touches_sharded && !a.unkeyed);
}

#[test]
fn shard_key_setting() {
    let set = |value: Option<&str>, local: bool| Kind::SetShardKey {
        value: value.map(str::to_string),
        local,
    };
    let cases = [
        ("SET shardline.shard_key = '42'", set(Some("42"), false)),
        ("SET shardline.shard_key TO 42", set(Some("42"), false)),
        ("set Shardline.Shard_Key to 'AbC'", set(Some("AbC"), false)),
        ("SET shardline.shard_key = AbC", set(Some("abc"), false)),
        ("SET shardline.shard_key = \"AbC\"", set(Some("AbC"), false)),
        (
            "SET SESSION shardline.shard_key = -5",
            set(Some("-5"), false),
        ),
        ("SET LOCAL shardline.shard_key TO 'x'", set(Some("x"), true)),
        (
            "SET \"shardline\".\"shard_key\" = E'a\\'b'",
            set(Some("a'b"), false),
        ),
        ("SET \"shardline.shard_key\" = $$7$$", set(Some("7"), false)),
        (
            "/* c */ SET shardline.shard_key = 'a', 'b';",
            set(Some("a, b"), false),
        ),
        ("SET shardline.shard_key TO DEFAULT", set(None, false)),
        ("SET LOCAL shardline.shard_key = DEFAULT", set(None, true)),
        ("RESET shardline.shard_key", set(None, false)),
        ("reset  SHARDLINE . SHARD_KEY ;", set(None, false)),
    ];
    for (sql, kind) in cases {
        let a = an(sql);
        assert_eq!(a.kind, kind, "{sql}");
        assert!(a.catalog_only && !a.touches_sharded, "{sql}");
    }
    // Not the setting.
    assert_eq!(an("SET shardline.other = 1").kind, Kind::Session);
    assert_eq!(an("SET shardline_shard_key = 1").kind, Kind::Session);
    // RESET ALL and DISCARD ALL clear it too.
    for sql in ["RESET ALL", "DISCARD ALL"] {
        let a = an(sql);
        assert_eq!(a.kind, Kind::Session);
        assert!(a.clears_shard_key, "{sql}");
    }
    assert!(!an("RESET search_path").clears_shard_key);
}

#[test]
fn catalog_only_texts() {
    for sql in [
        "SELECT 1",
        "SELECT version()",
        "select current_setting('server_version_num')",
        "SHOW server_version",
        "SET application_name = 'x'",
        "BEGIN",
        "SELECT t.oid, typname FROM pg_type t WHERE typname = 'int4'",
        "SELECT * FROM information_schema.tables WHERE table_name = 'users'",
        "SELECT n.nspname = ANY(current_schemas(true)), n.nspname, t.typname \
         FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n \
         ON t.typnamespace = n.oid WHERE t.oid = $1",
        "WITH c AS (SELECT oid FROM pg_class) SELECT count(*) FROM c",
    ] {
        let a = an(sql);
        assert!(a.catalog_only, "{sql}: {a:?}");
        assert!(!a.touches_sharded && !a.unkeyed, "{sql}");
    }
    for sql in [
        "SELECT * FROM things",
        "SELECT * FROM pg_class, things",
        "SELECT * FROM pg_class WHERE oid IN (SELECT x FROM things)",
        "SELECT * FROM myschema.pg_class",
    ] {
        assert!(!an(sql).catalog_only, "{sql}");
    }
}

/// psql's `\d` family, as psql 15 sends it.
fn psql_queries() -> Vec<(&'static str, &'static str)> {
    include_str!("psql_catalog_queries.sql")
        .split("-- psql: ")
        .skip(1)
        .filter_map(|block| block.split_once('\n'))
        .collect()
}

#[test]
fn psql_meta_command_queries_are_catalog_only() {
    let queries = psql_queries();
    assert!(queries.len() >= 40, "{}", queries.len());
    for (command, sql) in queries {
        let a = an(sql);
        assert_eq!(a.kind, Kind::Read, "{command}");
        assert_eq!(a.parse_error, None, "{command}");
        assert!(a.catalog_only && !a.touches_sharded, "{command}: {a:?}");
        // The fallback for text the parser rejects agrees.
        let tokens = text::statement_tokens(sql, 0).expect("tokenizes");
        let fallback = text::fallback(&tokens);
        assert!(
            fallback.read && fallback.catalog_only,
            "{command}: {fallback:?}"
        );
    }
}

#[test]
fn unparsable_text() {
    let a = an("SELEC 1");
    assert_eq!(a.kind, Kind::Other);
    assert!(a.touches_sharded && a.unkeyed && !a.catalog_only && a.keys.is_empty());
    assert!(a
        .parse_error
        .as_deref()
        .is_some_and(|e| e.contains("SELEC")));
    let a = an("SELECT 'unterminated");
    assert!(a.parse_error.is_some() && a.touches_sharded);
    // A read of catalogs the parser rejects is still a catalog-only read.
    let a = an("SELECT relname FROM pg_catalog.pg_class c, pg_namespace n WHERE (c.oid = 1");
    assert_eq!(a.kind, Kind::Read);
    assert!(a.catalog_only && !a.touches_sharded && a.parse_error.is_some());
    for sql in [
        "SELECT relname FROM pg_class, users WHERE (x",
        "SELECT * FROM (pg_class JOIN users ON x) WHERE (x",
        "SELECT * FROM pg_class WHERE EXISTS (SELECT 1 FROM users) AND (x",
        "UPDATE pg_class SET relname = 'x' WHERE (x",
    ] {
        let a = an(sql);
        assert!(a.parse_error.is_some(), "{sql}");
        assert!(!a.catalog_only && a.touches_sharded, "{sql}");
    }
}

#[test]
fn several_statements() {
    let a = an("BEGIN; SELECT * FROM users WHERE id = 1; \
                UPDATE users SET name = 'x' WHERE id = 2; COMMIT;");
    assert_eq!(a.statements, 4);
    assert_eq!(
        a.parts,
        [Kind::Begin, Kind::Read, Kind::Write, Kind::Commit]
    );
    assert_eq!(a.kind, Kind::Write);
    assert_eq!(a.keys, [lit("1"), lit("2")]);
    assert!(!a.unkeyed && a.touches_sharded);
    let a = an("SELECT 1; SELECT 2");
    assert_eq!((a.kind, a.statements), (Kind::Read, 2));
    assert!(a.catalog_only && a.fanout.is_none());
    let a = an("SET shardline.shard_key = 1; SELECT * FROM users");
    assert_eq!(a.kind, Kind::Other);
    assert_eq!(
        a.parts[0],
        Kind::SetShardKey {
            value: Some("1".into()),
            local: false
        }
    );
    let a = an("SELECT 1; SELEC 2");
    assert_eq!(a.parts, [Kind::Read, Kind::Other]);
    assert!(a.parse_error.is_some() && a.touches_sharded);
    for empty in ["", ";", " ; ;", "-- nothing\n", "/* x */"] {
        let a = an(empty);
        assert_eq!(
            (a.kind.clone(), a.statements),
            (Kind::Other, 0),
            "{empty:?}"
        );
        assert!(a.catalog_only && !a.touches_sharded);
    }
}

#[test]
fn insert_rows() {
    let a = an("INSERT INTO users (name, id) VALUES ('a', 1), ('b', $2), ('c', '1')");
    assert_eq!(a.insert_row_keys, [lit("1"), param(2), lit("1")]);
    assert_eq!(a.keys, [lit("1"), param(2)]);
    assert!(!a.unkeyed);
    let a = an("INSERT INTO users AS u (id) VALUES (1) ON CONFLICT (id) \
                DO UPDATE SET name = excluded.name RETURNING u.id");
    assert_eq!(a.insert_row_keys, [lit("1")]);
    assert!(!a.unkeyed && !a.updates_shard_key);
    // Rows whose key the text does not give.
    for sql in [
        "INSERT INTO users VALUES (1, 'a')",
        "INSERT INTO users (id) VALUES (DEFAULT)",
        "INSERT INTO users (id) VALUES (1), (nextval('s'))",
        "INSERT INTO users (name) VALUES ('a')",
        "INSERT INTO users (id) SELECT customer_id FROM orders WHERE customer_id = 5",
    ] {
        let a = an(sql);
        assert!(a.insert_row_keys.is_empty() && a.unkeyed, "{sql}");
    }
    let a = an("INSERT INTO things (a) VALUES (1)");
    assert!(a.insert_row_keys.is_empty() && !a.touches_sharded && !a.unkeyed);
}

#[test]
fn updates_and_deletes() {
    assert_keyed("DELETE FROM users WHERE id = 5", &[lit("5")]);
    assert_keyed(
        "DELETE FROM pgbench_accounts USING pgbench_history h \
         WHERE pgbench_accounts.aid = h.aid AND h.aid = 4",
        &[lit("4")],
    );
    assert_keyed(
        "UPDATE orders o SET total = 1 FROM items i \
         WHERE i.customer_id = o.customer_id AND o.customer_id = 2",
        &[lit("2")],
    );
    assert_unkeyed("UPDATE users SET name = 'x'", &[]);
    assert!(an("UPDATE users SET id = 7 WHERE id = 5").updates_shard_key);
    assert!(an("UPDATE users SET (name, id) = ('a', 7) WHERE id = 5").updates_shard_key);
    assert!(
        an("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 2")
            .updates_shard_key
    );
    assert!(!an("UPDATE things SET id = 7").updates_shard_key);
    assert_unkeyed(
        "MERGE INTO users u USING (SELECT 1 AS id) s ON u.id = s.id \
         WHEN MATCHED THEN UPDATE SET name = 'x'",
        &[],
    );
}

/// Runs `f` on a thread with a 1 MiB stack, half a tokio worker's.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    let thread = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .expect("spawns");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn deep_and_long_statements_stay_within_bounds() {
    on_small_stack(deep_and_long_statements);
}

fn deep_and_long_statements() {
    // Long AND chains are walked in a loop: the key is found.
    let conjuncts = vec!["name = 'x'"; 3000].join(" AND ");
    assert_keyed(
        &format!("SELECT * FROM users WHERE {conjuncts} AND id = 1"),
        &[lit("1")],
    );
    let disjuncts = vec!["id = 1"; 4500].join(" OR ");
    assert_unkeyed(&format!("SELECT * FROM users WHERE {disjuncts}"), &[]);
    let unions = vec!["SELECT * FROM users WHERE id = 1"; 500].join(" UNION ALL ");
    assert_keyed(&unions, &[lit("1")]);
    // Past the chain bound, the text is not parsed.
    let huge = format!("SELECT 1{}", "+1".repeat(text::MAX_NESTING + 1));
    let a = an(&huge);
    assert!(a.parse_error.is_some() && a.touches_sharded);
    // Nesting past the parser's limit is a parse error.
    for (open, close) in [("(", ")"), ("(SELECT ", ")"), ("f(", ")"), ("ARRAY[", "]")] {
        for depth in [20, 40, 60, 500] {
            let sql = format!("SELECT {}1{}", open.repeat(depth), close.repeat(depth));
            // Names no relation, parsed or not.
            let a = an(&sql);
            assert!(
                a.catalog_only && !a.touches_sharded,
                "{open} x {depth}: {a:?}"
            );
        }
    }
    // Long cast chains stop the walk, which then errs towards "unkeyed".
    let casts = format!(
        "SELECT * FROM users WHERE id = 1 AND x = y{}",
        "::int".repeat(2000)
    );
    let a = an(&casts);
    assert!(a.unkeyed && a.touches_sharded);
    // Just within the chain bound, the tree is still dropped safely.
    let casts = format!("SELECT x{}", "::int".repeat(text::MAX_NESTING - 10));
    assert_eq!(an(&casts).parse_error, None);
}

#[test]
fn prefixes_of_real_texts_never_panic() {
    let mut texts: Vec<&str> = psql_queries().into_iter().map(|(_, sql)| sql).collect();
    texts.push("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP); /* shardline.shard_key = 'x''y' */ -- shardline.shard_key=1");
    texts.push("SET LOCAL shardline.shard_key TO E'a\\'b', $q$c$q$; RESET shardline.shard_key");
    for text in texts {
        for (end, _) in text.char_indices().step_by(5) {
            let prefix = &text[..end];
            let _ = an(prefix);
            let _ = comment_key(prefix);
        }
    }
}

/// Pieces of SQL, shuffled into token soups.
const SOUP: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "(",
    ")",
    ",",
    ";",
    "'x'",
    "$1",
    "$$y$$",
    "E'\\''",
    "aid",
    "users.id",
    "id",
    "users",
    "pgbench_accounts",
    "=",
    "AND",
    "OR",
    "NOT",
    "IN",
    "::int",
    "JOIN",
    "LEFT JOIN",
    "ON",
    "USING",
    "WITH",
    "AS",
    "INSERT INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "/*",
    "*/",
    "--",
    "\n",
    "\"",
    "'",
    "shardline.shard_key",
    "RESET",
    "BEGIN",
    "COMMIT",
    "count(*)",
    "GROUP BY",
    "ORDER BY",
    "LIMIT",
    "1",
    "-",
    "+",
    "[",
    "]",
    "ARRAY",
    "CASE",
    "WHEN",
    "THEN",
    "END",
    "EXISTS",
    "UNION",
    "LATERAL",
    "FOR UPDATE",
    "TO",
    "DEFAULT",
    "LOCAL",
    "ANY",
    "pg_catalog.pg_class",
    "OVER ()",
    "DISTINCT",
    "RETURNING *",
    "ON CONFLICT",
    "DO",
    "TABLE",
    "EXPLAIN",
    "PREPARE",
    "COPY",
    "*",
    ".",
    "$",
    "MERGE",
    "MATCHED",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = an(&text);
        let _ = comment_key(&text);
    }

    #[test]
    fn token_soup_never_panics(pieces in prop::collection::vec(prop::sample::select(SOUP), 0..60)) {
        let text = pieces.join(" ");
        let a = an(&text);
        // An analysis that found nothing errs towards "touches".
        prop_assert!(!(a.parse_error.is_some() && a.catalog_only && a.kind == Kind::Other));
        let _ = comment_key(&text);
        let _ = comment_key(&pieces.concat());
    }

    #[test]
    fn nested_brackets_never_panic(
        opens in prop::collection::vec(prop::sample::select(&["(", "ARRAY[", "f(", "(SELECT ", "CASE WHEN "][..]), 0..120),
    ) {
        let text = format!("SELECT * FROM users WHERE id = {}1", opens.concat());
        on_small_stack(move || {
            let _ = an(&text);
        });
    }
}
