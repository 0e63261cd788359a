//! `/metrics` of the router and the manager are valid Prometheus text
//! (checked by promtool) and carry the names operators alert on.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, exec_body, raw, Stack, StackOptions};
use serde_json::json;

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let stack = Stack::start(StackOptions {
        shards: 2,
        ..Default::default()
    })
    .await;
    let tok = Some(stack.app_token.as_str());
    let before = ok_count(
        &raw(&stack.router_url, "GET", "/metrics", None, b"", &[])
            .await
            .text,
    );
    for i in 0..20 {
        let r = raw(
            &stack.router_url,
            "POST",
            "/v1/execute",
            tok,
            &exec_body(&format!("k{i}"), "SELECT 1", json!([])),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let r = raw(
        &stack.router_url,
        "POST",
        "/v1/execute",
        tok,
        &exec_body("k", "SELEC", json!([])),
        &[],
    )
    .await;
    assert_eq!(r.status, 400);

    let router = raw(&stack.router_url, "GET", "/metrics", None, b"", &[]).await;
    assert_eq!(router.status, 200);
    assert!(router
        .content_type
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    promtool_check(&router.text);
    for name in [
        "# TYPE router_requests_total counter",
        "# TYPE router_request_duration_seconds histogram",
        "# TYPE router_active_connections gauge",
        "router_request_duration_seconds_bucket{",
    ] {
        assert!(
            router.text.contains(name),
            "router metrics lack {name}:\n{}",
            router.text
        );
    }
    assert!(router.text.contains("outcome=\"ok\""), "{}", router.text);
    assert!(
        router.text.contains("outcome=\"statement_failed\""),
        "{}",
        router.text
    );
    assert_eq!(ok_count(&router.text) - before, 20.0);
    for label in ["tenant=\"default\"", "app=\"test-app\""] {
        assert!(router.text.contains(label), "{}", router.text);
    }

    // The manager's health checker reports every shard up.
    let ok = eventually(Duration::from_secs(10), || async {
        let m = raw(&stack.manager_url, "GET", "/metrics", None, b"", &[]).await;
        m.text
            .lines()
            .filter(|l| l.starts_with("shard_health_status{") && l.ends_with(" 1"))
            .count()
            == 2
    })
    .await;
    assert!(ok, "shard_health_status shows both shards up");
    let manager = raw(&stack.manager_url, "GET", "/metrics", None, b"", &[]).await;
    promtool_check(&manager.text);
    assert!(manager.text.contains("# TYPE shard_health_status gauge"));
    stack.stop().await;
}

/// Successful `/v1/execute` requests counted in a scrape.
fn ok_count(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("router_requests_total{")
                && l.contains("endpoint=\"execute\"")
                && l.contains("outcome=\"ok\"")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}
