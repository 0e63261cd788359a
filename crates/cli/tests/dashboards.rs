//! The Grafana dashboard and the Prometheus alert rules of `deploy/`
//! against the real thing.
//!
//! - `promtool check rules` and `promtool test rules` pass; and a copy of
//!   the rule tests with one alert's firing expectation turned into "no
//!   alert" fails, for every alert in turn, so the tests can fail.
//! - Every metric name a panel, a template variable or a rule uses is in
//!   the live `/metrics` of a router or a manager, after traffic, a
//!   refused request, a tenant limit, a resharding job and a switchover
//!   (which is what makes their labelled series exist); a made-up name,
//!   and a histogram's bare name (no series has it), are reported
//!   missing by the same check.
//!
//! promtool must be installed (Debian: `apt-get install prometheus`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, exec_body, raw, Stack, StackOptions};
use serde_json::{json, Value};
use shardline_api::manager::{
    FailoverRequest, Limits, ReshardKind, ReshardPhase, ReshardRequest, TableSpec, TenantConfig,
    UpdateTenantRequest,
};

const RULES: &str = "shardline-rules.yml";
const RULE_TESTS: &str = "shardline-rules.test.yml";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Runs promtool in `dir`; whether it succeeded, and what it printed.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_and_a_flipped_expectation_fails() {
    let dir = deploy().join("prometheus");
    let (ok, out) = promtool(&dir, &["check", "rules", RULES]);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&dir, &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules:\n{out}");

    // Controls: each alert expected to fire, expected not to instead.
    let tests = std::fs::read_to_string(dir.join(RULE_TESTS)).unwrap();
    let rules = std::fs::read_to_string(dir.join(RULES)).unwrap();
    let flips = firing_expectations(&tests);
    let alerts: BTreeSet<&str> = flips.iter().map(|(alert, _)| alert.as_str()).collect();
    let defined: BTreeSet<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts, defined, "every alert has a test where it fires");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(RULES), &rules).unwrap();
    for (alert, flipped) in &flips {
        std::fs::write(tmp.path().join(RULE_TESTS), flipped).unwrap();
        let (ok, out) = promtool(tmp.path(), &["test", "rules", RULE_TESTS]);
        assert!(!ok, "expecting no {alert} still passed:\n{out}");
        assert!(
            out.contains(alert.as_str()),
            "failed, but not on {alert}:\n{out}"
        );
    }
}

/// For each `exp_alerts:` with alerts in the rule tests: the alert's name
/// and a copy of the tests with only that list replaced by `[]`.
fn firing_expectations(tests: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = tests.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "exp_alerts:" {
            continue;
        }
        let end = lines[i + 1..]
            .iter()
            .position(|l| !l.trim().is_empty() && indent(l) <= indent(line))
            .map_or(lines.len(), |n| i + 1 + n);
        let alert = lines[..i]
            .iter()
            .rev()
            .find_map(|l| l.trim().strip_prefix("alertname: "))
            .expect("an alertname before exp_alerts");
        let mut flipped: Vec<String> = lines[..i].iter().map(|l| l.to_string()).collect();
        flipped.push(format!("{}exp_alerts: []", &line[..indent(line)]));
        flipped.extend(lines[end..].iter().map(|l| l.to_string()));
        out.push((alert.to_string(), flipped.join("\n") + "\n"));
    }
    out
}

/// Every PromQL expression of the rule file: each `expr:`, inline or a
/// block scalar (`|`, `>`) of the lines indented below it.
fn rule_exprs(rules: &str) -> Vec<String> {
    let lines: Vec<&str> = rules.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with(['|', '>']) {
            out.push(value.trim_matches(['"', '\'']).to_string());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        out.push(block.join("\n"));
    }
    out
}

/// Every PromQL expression of the dashboard: its panels' targets (rows'
/// nested panels too), and the metrics of its `label_values(...)`
/// template queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if let Some(inner) = query.and_then(|q| q.trim().strip_prefix("label_values(")) {
            // `label_values(metric, label)`; the label is no metric.
            let metric = inner.split([',', ')']).next().unwrap_or_default();
            out.push(metric.trim().to_string());
        }
    }
    out
}

/// PromQL words that are not metric names; those that take a list of
/// label names after them are `LABEL_LISTS`.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "offset", "bool", "inf", "nan", "atan2",
];
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: every identifier that is
/// not a function or aggregation (followed by `(`, `by` or `without`), a
/// keyword, or a label name (in `{...}` or a `by (...)`-style list).
/// Strings, ranges (`[5m]`), numbers, durations and Grafana variables
/// (`$tenant`, `${x}`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let is_ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let skip_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let word_at = |i: usize| -> String { c[i..].iter().take_while(|ch| is_ident(**ch)).collect() };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '{' {
            i = skip_group(&c, i, '}');
        } else if ch == '[' {
            i = skip_group(&c, i, ']');
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '$' {
            i += 1;
            if c.get(i) == Some(&'{') {
                i = skip_group(&c, i, '}');
            } else {
                i += word_at(i).len();
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers (0.99, 1e3, 0x1f) and durations (5m, 1h30m).
            while i < c.len() && (is_ident(c[i]) || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let word = word_at(i);
            i += word.len();
            let next = skip_space(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if c.get(next) == Some(&'(') {
                    i = skip_group(&c, next, ')');
                }
            } else if KEYWORDS.contains(&word.as_str())
                || c.get(next) == Some(&'(')
                || ["by", "without"].contains(&word_at(next).as_str())
            {
                // A keyword, a function or an aggregation.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string starting at `start` (its quote), minding
/// backslash escapes (none in raw `` ` `` strings).
fn skip_string(c: &[char], start: usize) -> usize {
    let quote = c[start];
    let mut i = start + 1;
    while i < c.len() {
        if c[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if c[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    c.len()
}

/// The index after the `close` that ends the group opened at `start`,
/// strings inside skipped whole (a `}` in a label value does not close).
fn skip_group(c: &[char], start: usize, close: char) -> usize {
    let open = c[start];
    let mut depth = 0;
    let mut i = start;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                i = skip_string(c, i);
                continue;
            }
            ch if ch == open => depth += 1,
            ch if ch == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    c.len()
}

/// The names among `used` that no scrape in `scrapes` can answer: a name
/// is there if a family of that name (not a histogram, whose bare name
/// has no series) was scraped, or it is a histogram family's `_bucket`,
/// `_sum` or `_count`.
fn missing(used: &BTreeSet<String>, scrapes: &[&str]) -> Vec<String> {
    let mut families: BTreeMap<&str, &str> = BTreeMap::new();
    for text in scrapes {
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                families.insert(name, kind);
            }
        }
    }
    let found = |name: &str| {
        if families.get(name).is_some_and(|k| *k != "histogram") {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| families.get(base) == Some(&"histogram"))
        })
    };
    used.iter().filter(|n| !found(n)).cloned().collect()
}

#[test]
fn metric_names_leave_out_functions_labels_and_variables() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (job, le) (rate(router_request_duration_seconds_bucket{tenant=~"$tenant",x="}a{"}[$__rate_interval])))"#
        ),
        ["router_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("(sum(manager_is_leader) or vector(0)) < 1"),
        ["manager_is_leader"]
    );
    assert_eq!(
        names(
            "sum without (instance) (a_total offset 5m) / ignoring (le) group_left (x) b:rate5m\n\
             and on (instance) (time() - c > 1e3) unless count by (shard) (d) > bool 0.5"
        ),
        ["a_total", "b:rate5m", "c", "d"]
    );
    assert_eq!(names("sum(rate(e[${__range}])) by (tenant)"), ["e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_rules_is_in_a_live_scrape() {
    let dir = deploy();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana/shardline.json")).unwrap())
            .expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(dir.join("prometheus").join(RULES)).unwrap();
    let rule_exprs = rule_exprs(&rules);
    let alerts = rules.matches("- alert: ").count();
    assert_eq!(
        rule_exprs.len(),
        alerts,
        "one expr per alert: {rule_exprs:?}"
    );
    let mut used = BTreeSet::new();
    for e in dashboard_exprs(&dashboard).iter().chain(&rule_exprs) {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric in {e:?}");
        used.extend(names);
    }

    // One shard with two replicas (one stays a replica after the
    // switchover) and a spare to split onto.
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 1,
        replicas: 2,
        ..StackOptions::default()
    })
    .await;
    let tok = Some(stack.app_token.as_str());
    stack
        .migrate(
            "001_items",
            "CREATE TABLE items (id text PRIMARY KEY, v int NOT NULL)",
        )
        .await;
    let spec = TableSpec {
        shard_key: "id".into(),
    };
    stack
        .admin
        .set_table("default", "items", &spec)
        .await
        .unwrap();
    stack
        .admin
        .update_tenant(
            "default",
            &UpdateTenantRequest {
                name: None,
                config: Some(TenantConfig {
                    limits: Limits {
                        max_concurrent: Some(50),
                        ..Limits::default()
                    },
                    ..TenantConfig::default()
                }),
            },
        )
        .await
        .unwrap();
    // Rows for the job to copy, a client error, and a refused request.
    for i in 0..40 {
        let key = format!("k{i}");
        let body = exec_body(&key, "INSERT INTO items VALUES ($1, 1)", json!([key]));
        let r = raw(&stack.router_url, "POST", "/v1/execute", tok, &body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let bad = exec_body("k", "SELEC", json!([]));
    let r = raw(&stack.router_url, "POST", "/v1/execute", tok, &bad, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = raw(&stack.router_url, "POST", "/v1/execute", None, &bad, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text);

    let job = stack
        .admin
        .reshard(&ReshardRequest {
            keyspace: "default".into(),
            kind: ReshardKind::Split,
            source: "s0".into(),
            targets: vec!["spare0".into()],
            at: vec![],
            tenant: None,
            to_keyspace: None,
        })
        .await
        .expect("start the split");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let j = stack.admin.get_job(&job.id).await.unwrap();
        if matches!(
            j.phase,
            ReshardPhase::Done | ReshardPhase::Failed | ReshardPhase::Cancelled
        ) || Instant::now() > deadline
        {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.phase, ReshardPhase::Done, "{:?}", done.error);

    // A planned switchover, once every instance of s0 answers its checks.
    let healthy = eventually(Duration::from_secs(30), || async {
        let h = stack.admin.health().await.unwrap();
        h.instances
            .iter()
            .filter(|i| i.shard == "s0" && i.health.up)
            .count()
            == 3
    })
    .await;
    assert!(healthy, "s0's three instances up");
    stack
        .admin
        .failover("s0", &FailoverRequest::default())
        .await
        .expect("switchover");

    // Gauges of the health checks are set afresh every round: scrape
    // until every name is there (or give up and show what is not).
    let mut scrapes = (String::new(), String::new());
    let mut absent = Vec::new();
    for _ in 0..150 {
        let router = raw(&stack.router_url, "GET", "/metrics", None, b"", &[]).await;
        let manager = raw(&stack.manager_url, "GET", "/metrics", None, b"", &[]).await;
        scrapes = (router.text, manager.text);
        absent = missing(&used, &[&scrapes.0, &scrapes.1]);
        if absent.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        absent.is_empty(),
        "used by the dashboard or the rules but not in /metrics: {absent:?}\n\
         --- router\n{}\n--- manager\n{}",
        scrapes.0,
        scrapes.1
    );
    println!(
        "{} metric names of the dashboard and the rules all found in live /metrics: {used:?}",
        used.len()
    );

    // Control: the same check reports a made-up name, and a histogram's
    // bare name, which no series has.
    let bogus: BTreeSet<String> = [
        "shardline_made_up_total",
        "router_request_duration_seconds",
        "router_request_duration_seconds_bucket",
        "router_requests_total",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        missing(&bogus, &[&scrapes.0, &scrapes.1]),
        ["router_request_duration_seconds", "shardline_made_up_total"]
    );
    stack.stop().await;
}
