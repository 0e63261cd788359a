//! Checks the rendered output with Prometheus' own linter. promtool must
//! be installed (Debian: `apt-get install prometheus`); the test fails if
//! it is not, so a missing tool cannot pass unnoticed.

use std::io::Write;
use std::process::{Command, Stdio};

use shardline_metrics::{Registry, LATENCY_BUCKETS};

fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_string())
}

fn check(text: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

#[test]
fn promtool_accepts_rendered_registry() {
    let r = Registry::new();
    let req = r.counter(
        "router_requests_total",
        "Requests answered, by tenant and outcome.\nSecond line with a \\ backslash.",
        &["tenant", "outcome"],
    );
    req.with(&["acme \"quoted\"", "ok"]).inc_by(10);
    req.with(&["line\nbreak", "error"]).inc();
    req.with(&["back\\slash", "ok"]).inc();
    req.with(&["", "ok"]).inc();
    let active = r.gauge(
        "router_active_connections",
        "Connections open now.",
        &["shard"],
    );
    active.with(&["s1"]).set(3.0);
    active.with(&["s2"]).set(-1.5);
    r.gauge("catalog_version", "Catalog version served.", &[])
        .with(&[])
        .set(42.0);
    let lat = r.histogram(
        "router_request_duration_seconds",
        "Request latency.",
        &["keyspace"],
        LATENCY_BUCKETS,
    );
    for (i, v) in [0.00005, 0.0003, 0.002, 0.02, 0.7, 30.0].iter().enumerate() {
        lat.with(&[if i % 2 == 0 { "a\"b" } else { "c\nd\\" }])
            .observe(*v);
    }
    r.counter("router_failovers_total", "Failovers seen.", &[]);
    r.float_counter("process_cpu_seconds_total", "CPU time used.", &[])
        .with(&[])
        .advance_to(0.37);

    let text = r.render();
    assert!(text.contains("le=\"+Inf\""), "{text}");
    assert!(text.contains("tenant=\"acme \\\"quoted\\\"\""), "{text}");
    let (ok, msg) = check(&text);
    assert!(ok, "promtool rejected the output: {msg}\n---\n{text}");
}

#[test]
fn promtool_rejects_broken_text() {
    // Shows the check above can fail: an unescaped quote in a label value.
    let (ok, _) = check("# TYPE x_total counter\nx_total{a=\"b\"c\"} 1\n");
    assert!(!ok);
}
