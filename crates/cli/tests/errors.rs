//! Every error class of the router and manager APIs answers the right
//! status and a JSON error body, never 500; the shard stays usable.

mod common;
#[path = "errors/fuzz.rs"]
mod fuzz;

use std::time::Duration;

use common::{exec_body, raw, Stack, StackOptions, ADMIN_TOKEN};
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_errors_are_classified() {
    let mut stack = Stack::start(StackOptions {
        shards: 2,
        statement_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    stack
        .migrate(
            "001_items",
            "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL)",
        )
        .await;
    let url = &stack.router_url.clone();
    let app_token = stack.app_token.clone();
    let tok = Some(app_token.as_str());

    let mut checked = 0;
    let mut expect = |name: &str, r: &common::Raw, status: u16, want_code: &str| {
        assert_eq!(r.status, status, "{name}: status; body {}", r.text);
        assert_eq!(code(&r.body), want_code, "{name}: code; body {}", r.text);
        assert!(
            r.content_type
                .as_deref()
                .unwrap_or("")
                .starts_with("application/json"),
            "{name}: JSON content type"
        );
        assert!(
            r.body["error"]["retryable"].is_boolean(),
            "{name}: retryable"
        );
        checked += 1;
    };

    let r = raw(url, "POST", "/v1/execute", tok, b"{\"shard_key\": ", &[]).await;
    expect("malformed JSON", &r, 400, "invalid_request");
    assert!(message(&r.body).contains("malformed JSON"), "{}", r.text);

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        br#"{"shard_key": "k", "sql": 42}"#,
        &[],
    )
    .await;
    expect("wrong type", &r, 400, "invalid_request");
    assert!(message(&r.body).contains("invalid type"), "{}", r.text);

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        br#"{"shard_key": "k"}"#,
        &[],
    )
    .await;
    expect("missing field", &r, 400, "invalid_request");
    assert!(message(&r.body).contains("`sql`"), "{}", r.text);

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        br#"{"shard_kye": "k", "shard_key": "k", "sql": "SELECT 1"}"#,
        &[],
    )
    .await;
    expect("unknown field", &r, 400, "invalid_request");
    assert!(message(&r.body).contains("shard_kye"), "{}", r.text);

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("", "SELECT 1", json!([])),
        &[],
    )
    .await;
    expect("empty key", &r, 400, "invalid_shard_key");

    let long = "k".repeat(4096);
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body(&long, "SELECT 1", json!([])),
        &[],
    )
    .await;
    expect("4 KiB key", &r, 400, "invalid_shard_key");

    let body =
        serde_json::to_vec(&json!({"keyspace": "nope", "shard_key": "k", "sql": "SELECT 1"}))
            .unwrap();
    let r = raw(url, "POST", "/v1/execute", tok, &body, &[]).await;
    // Any keyspace but its tenant's is refused alike, so an app cannot
    // probe which keyspaces exist.
    expect("other keyspace", &r, 403, "forbidden");

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", "SELEC 1", json!([])),
        &[],
    )
    .await;
    expect("invalid SQL", &r, 400, "statement_failed");
    assert_eq!(r.body["error"]["sqlstate"], "42601", "{}", r.text);
    assert_eq!(r.body["error"]["position"], 1, "{}", r.text);

    let insert = "INSERT INTO items (id, name) VALUES ($1, $2)";
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", insert, json!([1, "a"])),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", insert, json!([1, "b"])),
        &[],
    )
    .await;
    expect("constraint violation", &r, 409, "constraint_violation");
    assert_eq!(r.body["error"]["sqlstate"], "23505", "{}", r.text);
    assert!(
        r.body["error"]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("(id)=(1)"),
        "{}",
        r.text
    );

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", "INSERT INTO items VALUES ($1, $2)", json!(["x", "a"])),
        &[],
    )
    .await;
    expect("bad parameter", &r, 400, "invalid_parameter");

    let big = vec![b' '; 2 * 1024 * 1024];
    let r = raw(url, "POST", "/v1/execute", tok, &big, &[]).await;
    expect("body over limit", &r, 413, "payload_too_large");

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        None,
        &exec_body("k", "SELECT 1", json!([])),
        &[],
    )
    .await;
    expect("missing token", &r, 401, "unauthorized");
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        Some("sl_wrong"),
        &exec_body("k", "SELECT 1", json!([])),
        &[],
    )
    .await;
    expect("wrong token", &r, 401, "unauthorized");

    let r = raw(url, "GET", "/v1/execute", tok, b"", &[]).await;
    expect("wrong method", &r, 405, "method_not_allowed");
    let r = raw(url, "POST", "/v1/nope", tok, b"", &[]).await;
    expect("unknown path", &r, 404, "not_found");

    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", "SELECT pg_sleep(3)", json!([])),
        &[],
    )
    .await;
    expect("statement timeout", &r, 504, "timeout");
    assert_eq!(r.body["error"]["sqlstate"], "57014", "{}", r.text);

    let r = raw(
        url,
        "POST",
        "/v1/transaction",
        tok,
        br#"{"shard_key": "k", "statements": []}"#,
        &[],
    )
    .await;
    expect("empty transaction", &r, 400, "invalid_request");

    let r = raw(url, "GET", "/v1/route?keyspace=default", tok, b"", &[]).await;
    expect("route without key", &r, 400, "invalid_request");

    // The shard still works after all that.
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", "SELECT name FROM items WHERE id = $1", json!([1])),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["rows"], json!([["a"]]));

    // A shard whose PostgreSQL is down: 503 with Retry-After.
    let down_shard = "s1";
    let key = (0..1000)
        .map(|i| format!("key-{i}"))
        .find(|k| {
            let h = shardline_core::hash::routing_hash(shardline_core::ShardKey::Text(k));
            shardline_core::ShardMap::even(&["s0".into(), "s1".into()])
                .unwrap()
                .lookup(h)
                .shard
                == down_shard
        })
        .unwrap();
    stack.shards[1].stop().await.unwrap();
    let r = raw(
        url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body(&key, "SELECT 1", json!([])),
        &[],
    )
    .await;
    expect("shard down", &r, 503, "shard_unavailable");
    assert_eq!(r.retry_after.as_deref(), Some("1"), "Retry-After");
    assert_eq!(r.body["error"]["retryable"], true);
    println!("router error cases checked: {checked}");
    stack.stop().await;
}

/// Mutated requests to both servers (see [`fuzz`]): never a 500 or no
/// answer, every error the JSON body, and no failure that recurs answered
/// as the server's (5xx) or as worth retrying. Replay a failure with the
/// printed `SHARDLINE_FUZZ_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_get_a_fair_answer() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    stack
        .migrate("001_fz", "CREATE TABLE fz (id int PRIMARY KEY, v text)")
        .await;
    let mut fuzzer = fuzz::Fuzzer::from_env();
    let router = [
        (
            "POST",
            "/v1/execute",
            r#"{"shard_key": "k", "sql": "SELECT $1::int + 1, $2::text, $3::jsonb, $4::numeric, $5::timestamptz, $6::bytea, $7::int8[], $8::uuid", "params": [1, "a", {"x": [1]}, "1.5", "2024-01-01T00:00:00Z", "AAE=", [1, 2], "8c1f5c1e-9a54-4a2e-8a8e-5e0c5b6b2b10"]}"#,
        ),
        (
            "POST",
            "/v1/execute",
            r#"{"shard_key": "k", "sql": "INSERT INTO fz (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = $2", "params": [1, "v"], "consistency": "strong"}"#,
        ),
        (
            "POST",
            "/v1/transaction",
            r#"{"shard_key": "k", "statements": [{"sql": "SELECT $1::int", "params": [1]}, {"sql": "UPDATE fz SET v = $1 WHERE id = $2", "params": ["w", 1]}], "consistency": "eventual"}"#,
        ),
    ];
    let tally = fuzzer
        .run(&stack.router_url, &stack.app_token, &router, 800)
        .await;
    println!("router: {tally:?}");
    let manager = [
        (
            "POST",
            "/v1/tenants",
            r#"{"id": "fz", "config": {"limits": {"requests_per_second": 5, "burst": 2}}}"#,
        ),
        (
            "PATCH",
            "/v1/tenants/default",
            r#"{"name": "D", "config": {"limits": {"max_concurrent": 3}, "max_connections_per_shard": 2}}"#,
        ),
        (
            "POST",
            "/v1/apps",
            r#"{"name": "fz-app", "tenant": "default", "key_prefix": "u:", "limits": {"burst": 1}}"#,
        ),
        (
            "PATCH",
            "/v1/apps/test-app",
            r#"{"description": "d", "key_prefix": "", "limits": {"requests_per_second": 9}}"#,
        ),
        (
            "POST",
            "/v1/apps/test-app/rotate",
            r#"{"grace_seconds": 60}"#,
        ),
        (
            "POST",
            "/v1/keyspaces/default/migrations",
            r#"{"name": "fz_002", "sql": "CREATE TABLE fz2 (id int PRIMARY KEY, v text DEFAULT 'x')"}"#,
        ),
        (
            "PUT",
            "/v1/keyspaces/default/tables/fz",
            r#"{"shard_key": "id"}"#,
        ),
        (
            "POST",
            "/v1/keyspaces",
            r#"{"name": "fzks", "key_type": "bigint", "shards": []}"#,
        ),
        (
            "POST",
            "/v1/reshard",
            r#"{"keyspace": "default", "kind": "split", "source": "s0", "targets": ["nope"], "at": ["80"]}"#,
        ),
    ];
    let tally = fuzzer
        .run(&stack.manager_url, ADMIN_TOKEN, &manager, 500)
        .await;
    println!("manager: {tally:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_errors_are_classified() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let url = &stack.manager_url;
    let tok = Some(ADMIN_TOKEN);
    let expect = |name: &str, r: &common::Raw, status: u16, want: &str| {
        assert_eq!(r.status, status, "{name}: {}", r.text);
        assert_eq!(code(&r.body), want, "{name}: {}", r.text);
    };
    let r = raw(url, "POST", "/v1/keyspaces", tok, b"{", &[]).await;
    expect("malformed", &r, 400, "invalid_request");
    let r = raw(
        url,
        "POST",
        "/v1/keyspaces",
        tok,
        br#"{"name": "x", "key_typ": "text"}"#,
        &[],
    )
    .await;
    expect("unknown field", &r, 400, "invalid_request");
    assert!(message(&r.body).contains("key_typ"));
    let r = raw(
        url,
        "POST",
        "/v1/keyspaces",
        tok,
        br#"{"name": "x", "key_type": "float"}"#,
        &[],
    )
    .await;
    expect("bad enum", &r, 400, "invalid_request");
    let r = raw(
        url,
        "POST",
        "/v1/keyspaces",
        tok,
        br#"{"name": "Bad Name"}"#,
        &[],
    )
    .await;
    expect("bad name", &r, 400, "invalid_request");
    let r = raw(url, "POST", "/v1/keyspaces", None, br#"{"name": "x"}"#, &[]).await;
    expect("no token", &r, 401, "unauthorized");
    let r = raw(
        url,
        "POST",
        "/v1/keyspaces",
        Some(common::ROUTER_TOKEN),
        br#"{"name": "x"}"#,
        &[],
    )
    .await;
    expect("router token is not admin", &r, 401, "unauthorized");
    let r = raw(url, "DELETE", "/v1/keyspaces", tok, b"", &[]).await;
    expect("wrong method", &r, 405, "method_not_allowed");
    let r = raw(url, "GET", "/v1/keyspaces/nope", tok, b"", &[]).await;
    expect("unknown keyspace", &r, 404, "not_found");
    let r = raw(
        url,
        "POST",
        "/v1/keyspaces",
        tok,
        br#"{"name": "default"}"#,
        &[],
    )
    .await;
    expect("duplicate keyspace", &r, 409, "conflict");
    let body = serde_json::to_vec(&json!({"id": "s0", "primary": "host=127.0.0.1"})).unwrap();
    let r = raw(url, "POST", "/v1/shards", tok, &body, &[]).await;
    expect("duplicate shard", &r, 409, "conflict");
    let r = raw(url, "DELETE", "/v1/shards/s0", tok, b"", &[]).await;
    expect("remove assigned shard", &r, 409, "conflict");
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = raw(url, "POST", "/v1/shards", tok, &big, &[]).await;
    expect("too large", &r, 413, "payload_too_large");
    let r = raw(
        url,
        "GET",
        "/v1/catalog?after_version=abc",
        Some(common::ROUTER_TOKEN),
        b"",
        &[],
    )
    .await;
    expect("bad query", &r, 400, "invalid_request");
    stack.stop().await;
}

/// The answer to input PostgreSQL cannot take: 400 with the error body,
/// not retryable, no `Retry-After`.
fn clients_error(name: &str, r: &common::Raw, want_code: &str) {
    assert_eq!(r.status, 400, "{name}: status; body {}", r.text);
    assert_eq!(code(&r.body), want_code, "{name}: code; body {}", r.text);
    assert!(
        r.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "{name}: JSON content type"
    );
    assert_eq!(r.body["error"]["retryable"], false, "{name}: {}", r.text);
    assert_eq!(r.retry_after, None, "{name}: Retry-After");
}

/// `SELECT cardinality(ARRAY[$1, ..., $n]::int[])`: a statement of `n`
/// typed parameters.
fn n_params_sql(n: usize) -> String {
    let refs: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!("SELECT cardinality(ARRAY[{}]::int[])", refs.join(","))
}

/// Input PostgreSQL cannot take fails the same way every time, so it is
/// the client's error — 400, not retryable — and it costs nothing: the
/// tenant's one pooled connection (pool size 1) is the same backend
/// before and after each case. Before this, a NUL in a statement and a
/// statement of more than 65,535 parameters were answered `503
/// shard_unavailable`, retryable, and dropped the connection; a statement
/// exhausting the lock table was a retryable 503; a json value serde
/// cannot hold was a 500. A control shows the backend check sees a
/// dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_postgres_cannot_take_is_the_clients_error_and_keeps_the_connection() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let solo = stack
        .tenant(shardline_api::manager::CreateTenantRequest {
            id: "solo".into(),
            config: shardline_api::manager::TenantConfig {
                max_connections_per_shard: Some(1),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
    let url = stack.router_url.clone();
    let tok = Some(solo.token.as_str());
    let pid = || async {
        let r = raw(
            &url,
            "POST",
            "/v1/execute",
            tok,
            &exec_body("k", "SELECT pg_backend_pid()", json!([])),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["rows"][0][0].as_i64().expect("a pid")
    };
    let execute = |sql: String, params: Value| {
        let body = exec_body("k", &sql, params);
        let url = url.clone();
        async move { raw(&url, "POST", "/v1/execute", tok, &body, &[]).await }
    };
    let transaction = |statements: Value| {
        let body =
            serde_json::to_vec(&json!({"shard_key": "k", "statements": statements})).expect("JSON");
        let url = url.clone();
        async move { raw(&url, "POST", "/v1/transaction", tok, &body, &[]).await }
    };

    // Control: the backend check sees a connection that was dropped.
    let before = pid().await;
    let r = execute(
        "SELECT pg_terminate_backend(pg_backend_pid())".into(),
        json!([]),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text);
    let backend = pid().await;
    assert_ne!(backend, before, "a terminated connection is replaced");

    let mut cases = 0;
    let mut kept = |name: &str, now: i64| {
        assert_eq!(now, backend, "{name}: the pooled connection was dropped");
        cases += 1;
    };

    let r = execute("SELECT 1 /* \u{0} */".into(), json!([])).await;
    clients_error("NUL in a statement", &r, "invalid_request");
    assert!(
        message(&r.body).starts_with("sql contains a NUL character"),
        "{}",
        r.text
    );
    assert_eq!(r.body["error"]["position"], 13, "{}", r.text);
    kept("NUL in a statement", pid().await);

    let r = transaction(json!([
        {"sql": "SELECT 1"},
        {"sql": "SELECT $1::int\u{0}", "params": [1]},
    ]))
    .await;
    clients_error("NUL in a transaction's statement", &r, "invalid_request");
    assert_eq!(r.body["error"]["statement_index"], 1, "{}", r.text);
    assert!(
        message(&r.body).starts_with("statements[1].sql contains a NUL"),
        "{}",
        r.text
    );
    kept("NUL in a transaction's statement", pid().await);

    // The protocol's limit is 65,535 parameters: exactly that works ...
    let r = execute(n_params_sql(65_535), json!(vec![1; 65_535])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["rows"][0][0], 65_535);
    // ... one more is refused, with or without the values.
    let r = execute(n_params_sql(65_536), json!(vec![1; 65_536])).await;
    clients_error("65,536 parameter values", &r, "invalid_request");
    assert!(
        message(&r.body).contains("at most 65535 parameters"),
        "{}",
        r.text
    );
    let r = execute(n_params_sql(65_536), json!([])).await;
    clients_error("a reference to $65536", &r, "invalid_request");
    assert!(message(&r.body).contains("parameter $65536"), "{}", r.text);
    let r = transaction(json!([{"sql": n_params_sql(65_536)}])).await;
    clients_error("$65536 in a transaction", &r, "invalid_request");
    assert_eq!(r.body["error"]["statement_index"], 0, "{}", r.text);
    kept("65,536 parameters", pid().await);

    // PostgreSQL refuses NUL in a text value itself, without harm.
    let r = execute("SELECT $1::text".into(), json!(["a\u{0}b"])).await;
    clients_error("NUL in a text parameter", &r, "statement_failed");
    assert_eq!(r.body["error"]["sqlstate"], "22021", "{}", r.text);
    kept("NUL in a text parameter", pid().await);

    // Values JSON cannot carry here (was: 500 internal): a json number
    // beyond a double, json nested deeper than serde's 128 levels.
    for (name, sql) in [
        ("a huge json number", r#"SELECT '{"a": 1e400}'::jsonb"#),
        (
            "deep json",
            "SELECT (repeat('[', 200) || repeat(']', 200))::json",
        ),
    ] {
        let r = execute(sql.into(), json!([])).await;
        clients_error(name, &r, "invalid_request");
        assert!(
            message(&r.body).contains("cannot be returned as JSON"),
            "{}",
            r.text
        );
        kept(name, pid().await);
    }

    // More locks than the shard's lock table holds: "out of shared
    // memory" (53200), and again every time.
    let locks = "SELECT count(pg_advisory_xact_lock(g)) FROM generate_series(1, 200000) g";
    let r = execute(locks.into(), json!([])).await;
    clients_error("lock table exhausted", &r, "statement_failed");
    assert_eq!(r.body["error"]["sqlstate"], "53200", "{}", r.text);
    let r = transaction(json!([{"sql": "SELECT 1"}, {"sql": locks}])).await;
    clients_error(
        "lock table exhausted in a transaction",
        &r,
        "statement_failed",
    );
    assert_eq!(r.body["error"]["statement_index"], 1, "{}", r.text);
    kept("lock table exhausted", pid().await);
    // A shard's real trouble stays the server's, retryable: see
    // `router_errors_are_classified` (a shard down is a retryable 503).
    println!("inputs PostgreSQL cannot take, answered 400 with the connection kept: {cases}");
    stack.stop().await;
}

/// The manager refuses input that could never reach PostgreSQL — a NUL
/// in a migration's SQL (was: 503 retryable, for every tenant), a NUL in
/// any setting of a shard's or replica's DSN (was: registered, then
/// unreachable for ever) — as the client's error. Controls: the same
/// migration without the NUL applies, the same DSN without it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_refuses_input_postgres_cannot_take() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let url = &stack.manager_url;
    let tok = Some(ADMIN_TOKEN);
    let migrate = |sql: &str| {
        let body = serde_json::to_vec(&json!({"name": "002_nul", "sql": sql})).expect("JSON");
        async move {
            raw(
                url,
                "POST",
                "/v1/keyspaces/default/migrations",
                tok,
                &body,
                &[],
            )
            .await
        }
    };
    let r = migrate("CREATE TABLE t (id int);\u{0}").await;
    clients_error("NUL in a migration", &r, "invalid_request");
    assert!(
        message(&r.body).starts_with("sql contains a NUL"),
        "{}",
        r.text
    );
    assert_eq!(r.body["error"]["position"], 25, "{}", r.text);
    let r = migrate("CREATE TABLE t (id int);").await;
    assert_eq!(r.status, 200, "control: {}", r.text);

    let dsn = stack.shards[0].dsn();
    let register = |primary: String| {
        let body = serde_json::to_vec(&json!({"id": "s-nul", "primary": primary})).expect("JSON");
        async move { raw(url, "POST", "/v1/shards", tok, &body, &[]).await }
    };
    for (name, bad) in [
        ("key/value", format!("{dsn} application_name=a\u{0}b")),
        ("URL", "postgresql://postgres@127.0.0.1:1/d%00b".to_string()),
    ] {
        let r = register(bad).await;
        clients_error(name, &r, "invalid_request");
        assert!(message(&r.body).contains("NUL"), "{name}: {}", r.text);
    }
    let body = serde_json::to_vec(&json!({"dsn": format!("{dsn} user=a\u{0}")})).expect("JSON");
    let r = raw(url, "POST", "/v1/shards/s0/replicas", tok, &body, &[]).await;
    clients_error("replica DSN", &r, "invalid_request");
    let r = register(format!("{dsn} application_name=ab")).await;
    assert_eq!(r.status, 201, "control: {}", r.text);
    stack.stop().await;
}
