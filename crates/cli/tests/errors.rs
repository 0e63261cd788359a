//! Every error class of the router and manager APIs answers the right
//! status and a JSON error body, never 500; the shard stays usable.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_answers_500() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let router = [
        (
            "POST",
            "/v1/execute",
            r#"{"shard_key": "k", "sql": "SELECT $1::int", "params": [1]}"#,
        ),
        (
            "POST",
            "/v1/transaction",
            r#"{"shard_key": "k", "statements": [{"sql": "SELECT 1"}]}"#,
        ),
    ];
    let sent = fuzz(&stack.router_url, &stack.app_token, &router, 300).await;
    println!("mutated router bodies sent: {sent}");
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
    ];
    let sent = fuzz(&stack.manager_url, common::ADMIN_TOKEN, &manager, 200).await;
    println!("mutated manager bodies sent: {sent}");
    stack.stop().await;
}

/// Sends `rounds` randomly mutated copies of the seed requests; none may
/// get a 500 or no answer, and every error is the JSON error body.
async fn fuzz(base: &str, token: &str, seeds: &[(&str, &str, &str)], rounds: usize) -> usize {
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sent = 0;
    for round in 0..rounds {
        let (method, path, seed) = seeds[round % seeds.len()];
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..(1 + next() % 4) {
            let pos = (next() as usize) % body.len().max(1);
            match next() % 3 {
                0 => body[pos] = (next() % 256) as u8,
                1 => {
                    body.remove(pos);
                }
                _ => body.insert(pos, b"{}[],:\"\\0x"[(next() % 10) as usize]),
            }
        }
        let r = raw(base, method, path, Some(token), &body, &[]).await;
        assert!(
            r.status != 500 && r.status != 0,
            "status {} for {method} {path} {:?}",
            r.status,
            String::from_utf8_lossy(&body)
        );
        if !(200..300).contains(&r.status) {
            assert!(
                r.body["error"]["code"].is_string(),
                "JSON error for {method} {path} {:?}: {}",
                String::from_utf8_lossy(&body),
                r.text
            );
        }
        sent += 1;
    }
    sent
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
