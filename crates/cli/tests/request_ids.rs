//! Request ids through the real `shardline dev` (issue 14): every answer
//! of the router and the manager carries `x-request-id` (the client's,
//! or a fresh one), a malformed one is refused with a 400, the JSON log
//! lines of a request carry it in their `request` span, and, with
//! `--name-sessions`, PostgreSQL sees it as the session's
//! `application_name` while the request's statements run (a single
//! statement and a transaction alike); without, the session keeps the
//! router's name. An answer with a 5xx status is logged at `warn` with
//! its request id (a shard that is down: 503 `shard_unavailable`), a 2xx
//! one is not.

mod common;
mod devproc;

use std::time::{Duration, Instant};

use common::{eventually, exec_body, raw};
use devproc::{dev_log, start_dev_with_env, stop_dev, wait_dev_json};
use serde_json::{json, Value};

/// The value of the only cell of a one-row, one-column result.
fn cell(body: &Value) -> &str {
    body["rows"][0][0].as_str().unwrap_or_default()
}

const NAME_SQL: &str = "SELECT current_setting('application_name')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_answered_logged_and_name_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = start_dev_with_env(
        &dir,
        &["--log-json", "--name-sessions"],
        &[("SHARDLINE_LOG", "info,shardline_http=debug")],
    );
    let info = wait_dev_json(&dir, &mut child).await;
    let router = info["router_url"].as_str().unwrap().to_string();
    let manager = info["manager_url"].as_str().unwrap().to_string();
    let tok = info["app_token"].as_str();

    // The client's id: answered, and the session's name while it runs.
    let given = "3f2c9a4e-5b1d-4c2e-9f00-1a2b3c4d5e6f";
    let body = exec_body("k1", NAME_SQL, json!([]));
    let r = raw(
        &router,
        "POST",
        "/v1/execute",
        tok,
        &body,
        &[("x-request-id", given)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.request_id.as_deref(), Some(given));
    assert_eq!(cell(&r.body), given, "{}", r.text);

    // No id: one is made (32 hex digits), answered, and names the session.
    let r = raw(&router, "POST", "/v1/execute", tok, &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let made = r.request_id.clone().expect("an id is made");
    assert_eq!(made.len(), 32, "{made}");
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
    assert_eq!(cell(&r.body), made);
    let again = raw(&router, "POST", "/v1/execute", tok, &body, &[]).await;
    assert_ne!(again.request_id, Some(made), "each request gets its own id");

    // A transaction's statements run under its id.
    let tx = json!({
        "shard_key": "k1",
        "statements": [{"sql": NAME_SQL}, {"sql": NAME_SQL}],
    });
    let r = raw(
        &router,
        "POST",
        "/v1/transaction",
        tok,
        tx.to_string().as_bytes(),
        &[("x-request-id", "tx-7")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..2 {
        assert_eq!(
            r.body["results"][i]["rows"][0][0], "tx-7",
            "statement {i}: {}",
            r.text
        );
    }

    // A malformed id is the client's error, answered with an id of ours.
    for bad in ["has space", "quote'd", &"x".repeat(129)] {
        let r = raw(
            &router,
            "POST",
            "/v1/execute",
            tok,
            &body,
            &[("x-request-id", bad)],
        )
        .await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_request", "{}", r.text);
        let id = r.request_id.expect("a refused request has an id too");
        assert_ne!(id, bad);
    }

    // The manager, and answers that never reach a handler, carry one too.
    let r = raw(
        &manager,
        "GET",
        "/healthz",
        None,
        b"",
        &[("x-request-id", "m-1")],
    )
    .await;
    assert_eq!(r.request_id.as_deref(), Some("m-1"), "{}", r.text);
    let r = raw(&router, "GET", "/nowhere", None, b"", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.request_id.is_some());

    // The JSON log line of the first request names it in its span.
    let logged = dev_log(&dir).lines().any(|line| {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        v["span"]["name"] == "request"
            && v["span"]["id"] == given
            && v["span"]["path"] == "/v1/execute"
            && v["fields"]["status"] == 200
    });
    assert!(
        logged,
        "no JSON log line with span id {given}:\n{}",
        dev_log(&dir)
    );
    stop_dev(&mut child);

    // Without --name-sessions (the default) the id is still answered,
    // and the session keeps the router's own name.
    let mut child = start_dev_with_env(&dir, &[], &[]);
    let info = wait_dev_json(&dir, &mut child).await;
    let router = info["router_url"].as_str().unwrap().to_string();
    let r = raw(
        &router,
        "POST",
        "/v1/execute",
        info["app_token"].as_str(),
        &body,
        &[("x-request-id", given)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.request_id.as_deref(), Some(given));
    assert_eq!(cell(&r.body), "shardline-router", "{}", r.text);
    stop_dev(&mut child);
}

/// The JSON log lines of request `id` at `level` (`WARN`, `DEBUG`).
fn logged_at(log: &str, id: &str, level: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["span"]["name"] == "request" && v["span"]["id"] == id && v["level"] == level)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_logged_at_warn_with_the_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = start_dev_with_env(
        &dir,
        &["--log-json", "--shards", "1", "--spare-shards", "0"],
        &[("SHARDLINE_LOG", "info,shardline_http=debug")],
    );
    let info = wait_dev_json(&dir, &mut child).await;
    let router = info["router_url"].as_str().unwrap().to_string();
    let tok = info["app_token"].as_str();
    let body = exec_body("k1", "SELECT 1", json!([]));

    let execute = |id: &'static str| {
        let (router, body) = (router.clone(), body.clone());
        async move {
            raw(
                &router,
                "POST",
                "/v1/execute",
                tok,
                &body,
                &[("x-request-id", id)],
            )
            .await
        }
    };

    // A 2xx answer: logged (at debug, the access log), not at warn.
    let r = execute("ok-1").await;
    assert_eq!(r.status, 200, "{}", r.text);

    // The only shard's PostgreSQL stops (fast shutdown, as dev does).
    let data_dir = info["shards"][0]["data_dir"].as_str().unwrap();
    let pid_file = format!("{data_dir}/postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the postmaster this test's `dev` started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&pid_file).exists() {
        assert!(Instant::now() < deadline, "PostgreSQL did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = execute("down-1").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "shard_unavailable", "{}", r.text);
    assert_eq!(r.request_id.as_deref(), Some("down-1"));

    // Its warn line, with the status, in the request's span.
    assert!(
        eventually(Duration::from_secs(5), || async {
            logged_at(&dev_log(&dir), "down-1", "WARN")
                .iter()
                .any(|v| v["fields"]["status"] == 503 && v["span"]["path"] == "/v1/execute")
        })
        .await,
        "no WARN line with status 503 for request down-1:\n{}",
        dev_log(&dir)
    );
    // Control: the 2xx request has no warn line, though it is in the
    // log (its access line, at debug), so the check above can tell.
    let log = dev_log(&dir);
    assert_eq!(
        logged_at(&log, "ok-1", "WARN"),
        Vec::<Value>::new(),
        "a 2xx answer logged at warn"
    );
    assert!(
        logged_at(&log, "ok-1", "DEBUG")
            .iter()
            .any(|v| v["fields"]["status"] == 200),
        "the 2xx request's access line is missing:\n{log}"
    );
    stop_dev(&mut child);
}
