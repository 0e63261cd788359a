//! The OpenAPI documents of the router's and the manager's HTTP APIs.
//!
//! - The checked-in `docs/openapi/router.json` and `manager.json` are
//!   what the code generates (regenerate with
//!   `SHARDLINE_UPDATE_OPENAPI=1 cargo nextest run -p shardline --test openapi documents_match_the_code`),
//!   and each server serves the same at `/openapi.json`.
//! - Every route of the servers' route tables (read from their source)
//!   is in its document, with its methods, and nothing else is.
//! - Both pass `openapi-spec-validator` as OpenAPI 3.1; a copy with an
//!   response that has no description does not (the control).
//! - schemathesis runs against a live router and manager with a fixed
//!   example budget and seed: no 5xx, and every answer's status, content
//!   type, headers and body are as the document says. It prints how many
//!   cases it ran. A control runs it against a copy of the router's
//!   document whose `RouteResponse` is altered and must report the
//!   violation.
//!
//! The Python tools live in a virtualenv of their own (schemathesis
//! brings pytest and a newer `packaging` than checkov accepts):
//! `$SHARDLINE_OPENAPI_VENV`, default `/opt/shardline-openapi-venv`, which
//! `.ci/run` makes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Stack, StackOptions, ADMIN_TOKEN, ROUTER_TOKEN};
use serde_json::Value;

/// schemathesis's cases per operation and seed: fixed, so a run is
/// repeatable and bounded (`SHARDLINE_SCHEMATHESIS_EXAMPLES` and
/// `SHARDLINE_SCHEMATHESIS_SEED` override them for a longer run by hand).
const MAX_EXAMPLES: u32 = 100;
const SEED: u32 = 14;

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi")
}

fn generated() -> [(&'static str, String); 2] {
    [
        ("router", shardline_router::http::openapi_document()),
        ("manager", shardline_manager::http::openapi_document()),
    ]
}

fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("SHARDLINE_OPENAPI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shardline-openapi-venv"));
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: make the venv as .ci/run does (python3 -m venv {}; pip install \
         schemathesis==4.32.5 openapi-spec-validator==0.9.0)",
        tool.display(),
        venv.display()
    );
    tool
}

/// Runs a command; whether it succeeded and what it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn documents_match_the_code() {
    let update = std::env::var_os("SHARDLINE_UPDATE_OPENAPI").is_some();
    for (name, text) in generated() {
        let path = docs_dir().join(format!("{name}.json"));
        if update {
            std::fs::create_dir_all(docs_dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        if checked_in != text {
            let first = checked_in
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| checked_in.lines().count().min(text.lines().count()));
            panic!(
                "{} differs from what the code generates (first at line {}: checked in {:?}, \
                 generated {:?}); regenerate with SHARDLINE_UPDATE_OPENAPI=1 cargo nextest run \
                 -p shardline --test openapi documents_match_the_code",
                path.display(),
                first + 1,
                checked_in.lines().nth(first).unwrap_or("<end>"),
                text.lines().nth(first).unwrap_or("<end>"),
            );
        }
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["openapi"], "3.1.0", "{name}");
    }
}

/// The (path, method) pairs of the `.route("path", get(..).post(..))`
/// calls in a server's route table source.
fn routes_in_source(file: &str) -> std::collections::BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let table = &text[text.find(".route(").unwrap()..];
    let table = &table[..table.find(".with_state(").unwrap()];
    let mut routes = std::collections::BTreeSet::new();
    for call in table.split(".route(").skip(1) {
        let path = call.split('"').nth(1).unwrap().to_string();
        let handlers = &call[call.find(',').unwrap()..];
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = format!("{method}(");
            let found = handlers
                .match_indices(&called)
                .any(|(i, _)| !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if found {
                routes.insert((path.clone(), method.to_string()));
            }
        }
    }
    routes
}

#[test]
fn every_route_is_in_its_document() {
    for (name, source, text) in [
        (
            "router",
            "../router/src/http.rs",
            shardline_router::http::openapi_document(),
        ),
        (
            "manager",
            "../manager/src/http.rs",
            shardline_manager::http::openapi_document(),
        ),
    ] {
        let doc: Value = serde_json::from_str(&text).unwrap();
        let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        let served = routes_in_source(source);
        assert!(served.len() > 5, "{name}: read no routes from {source}");
        assert_eq!(served, documented, "{name}: served routes vs. the document");
    }
}

#[test]
fn documents_are_valid_openapi_3_1_and_a_broken_one_is_not() {
    let validator = venv_tool("openapi-spec-validator");
    let tmp = tempfile::tempdir().unwrap();
    for (name, text) in generated() {
        let path = tmp.path().join(format!("{name}.json"));
        std::fs::write(&path, &text).unwrap();
        let (ok, out) = run(Command::new(&validator).arg(&path));
        assert!(ok, "{name}: openapi-spec-validator:\n{out}");
        // Control: a response without its (required) description.
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let ok200 = doc["paths"]["/healthz"]["get"]["responses"]["200"]
            .as_object_mut()
            .unwrap();
        ok200.remove("description");
        let broken = tmp.path().join(format!("{name}-broken.json"));
        std::fs::write(&broken, serde_json::to_string(&doc).unwrap()).unwrap();
        let (ok, out) = run(Command::new(&validator).arg(&broken));
        assert!(
            !ok,
            "{name}: a response without a description passed:\n{out}"
        );
    }
}

/// A fixed figure, or the one in `var` for a longer run by hand.
fn budget(var: &str, fixed: u32) -> String {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(fixed)
        .to_string()
}

/// What one schemathesis run reported.
struct Report {
    ok: bool,
    output: String,
    /// The summary's count of test cases (`245 generated, 245 passed`).
    cases: String,
    /// Failures of the `not_a_server_error` check (5xx answers).
    server_errors: u32,
    /// Failures of the conformance checks: status code, content type,
    /// headers, response schema.
    violations: u32,
}

/// Runs schemathesis against `base` with the document at `schema` (a URL
/// or a file), sending `token`, on the operations `filter` selects.
fn schemathesis(schema: &str, base: &str, token: &str, filter: &[&str], dir: &Path) -> Report {
    let mut cmd = Command::new(venv_tool("st"));
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .args(["run", schema, "--url", base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--mode", "all", "--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            &budget("SHARDLINE_SCHEMATHESIS_EXAMPLES", MAX_EXAMPLES),
        ])
        .args(["--seed", &budget("SHARDLINE_SCHEMATHESIS_SEED", SEED)])
        .args(["--workers", "1", "--request-timeout", "60"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--suppress-health-check", "all"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(filter);
    let (ok, output) = run(&mut cmd);
    // The summary (operations, phases, warnings, counts) goes to the
    // test's output, so CI's log shows what ran.
    let summary: Vec<&str> = output
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    println!("{}", summary.join("\n"));
    // The summary's "Test cases:" line, and the count on the next.
    let cases = output
        .lines()
        .skip_while(|l| l.trim() != "Test cases:")
        .nth(1)
        .unwrap_or("<no summary>")
        .trim()
        .to_string();
    // The summary's failure lines: `❌ ST108 Response violates schema: 1`.
    let failures = |names: &[&str]| -> u32 {
        summary
            .iter()
            .filter(|l| l.contains('❌') && names.iter().any(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u32>().ok())
            .sum()
    };
    let server_errors = failures(&["Server error"]);
    let violations = failures(&[
        "Response violates schema",
        "Undocumented HTTP status code",
        "Undocumented Content-Type",
        "Missing Content-Type",
        "Missing required header",
        "Response header does not match schema",
    ]);
    Report {
        ok,
        output,
        cases,
        server_errors,
        violations,
    }
}

impl Report {
    fn line(&self, name: &str) -> String {
        format!(
            "schemathesis, {name}: {}; {} server errors, {} conformance failures",
            self.cases, self.server_errors, self.violations
        )
    }
}

/// The run passed and printed its summary.
fn assert_clean(name: &str, r: &Report) {
    assert!(r.ok, "schemathesis against the {name}:\n{}", r.output);
    assert_eq!((r.server_errors, r.violations), (0, 0), "{name}");
    assert!(
        !r.cases.contains("no summary"),
        "{name}: no summary:\n{}",
        r.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let stack = Stack::start(StackOptions {
        shards: 2,
        // Long polls answer within 200 ms, so fuzzed `wait_ms` values do
        // not stretch the run; connecting to a shard may take long on a
        // busy CI machine, and a 503 for that would count as a failure.
        tune_manager: |cfg| {
            cfg.max_watch_wait = Duration::from_millis(200);
            cfg.connect_timeout = Duration::from_secs(20);
        },
        tune_router: |cfg| {
            cfg.connect_timeout = Duration::from_secs(20);
            cfg.acquire_timeout = Duration::from_secs(20);
        },
        ..StackOptions::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let router_doc = format!("{}/openapi.json", stack.router_url);
    let manager_doc = format!("{}/openapi.json", stack.manager_url);
    // Each server serves the document the code generates (which
    // documents_match_the_code holds equal to the checked-in one).
    for (url, generated) in [
        (
            &stack.router_url,
            shardline_router::http::openapi_document(),
        ),
        (
            &stack.manager_url,
            shardline_manager::http::openapi_document(),
        ),
    ] {
        let served = common::raw(url, "GET", "/openapi.json", None, b"", &[]).await;
        assert_eq!(served.status, 200, "{url}: {}", served.text);
        let generated: Value = serde_json::from_str(&generated).unwrap();
        assert_eq!(served.body, generated, "{url}/openapi.json");
    }

    // Runs go in this order: the manager's admin run deletes and
    // re-creates tenants and apps (schemathesis reuses ids it saw in
    // answers, `default` among them), which ends the app token the
    // router runs use.
    //
    // The router: every operation, with the default app's token.
    let router = schemathesis(
        &router_doc,
        &stack.router_url,
        &stack.app_token,
        &[],
        tmp.path(),
    );
    println!("{}", router.line("router"));
    assert_clean("router", &router);

    // Control: the router's document with `RouteResponse.catalog_version`
    // made a string; the live answers (an integer) must be reported.
    let mut doc: Value = serde_json::from_str(&shardline_router::http::openapi_document()).unwrap();
    doc["components"]["schemas"]["RouteResponse"]["properties"]["catalog_version"] =
        serde_json::json!({"type": "string"});
    let altered = tmp.path().join("router-altered.json");
    std::fs::write(&altered, serde_json::to_string(&doc).unwrap()).unwrap();
    let control = schemathesis(
        altered.to_str().unwrap(),
        &stack.router_url,
        &stack.app_token,
        &["--include-operation-id", "route", "--mode", "positive"],
        tmp.path(),
    );
    println!("{}", control.line("control (altered RouteResponse)"));
    assert!(
        !control.ok,
        "schemathesis passed a document that contradicts the answers:\n{}",
        control.output
    );
    assert!(
        control.violations >= 1 && control.output.contains("Response violates schema"),
        "the control failed, but not on the schema:\n{}",
        control.output
    );

    // The manager's routes that take the router token.
    let feeds = schemathesis(
        &manager_doc,
        &stack.manager_url,
        ROUTER_TOKEN,
        &[
            "--include-operation-id",
            "heartbeat",
            "--include-operation-id",
            "watch_catalog",
            "--include-operation-id",
            "health",
            "--include-operation-id",
            "leader",
        ],
        tmp.path(),
    );
    println!("{}", feeds.line("manager (router token)"));
    assert_clean("manager (router token)", &feeds);

    // The manager, with the admin token: every operation but these, and
    // why:
    // - POST /v1/shards and POST /v1/shards/{id}/replicas connect to the
    //   DSN in the body: fuzzed DSNs would send traffic to any host.
    // - POST /v1/routers/heartbeat takes the router token: run above.
    // Destructive ones stay in: deleting tenants, apps and shards,
    // failover (the shards have no replica: 409) and resharding (no free
    // shard to move to: 4xx) are safe on this throwaway stack, and they
    // must not answer 5xx either.
    let manager = schemathesis(
        &manager_doc,
        &stack.manager_url,
        ADMIN_TOKEN,
        &[
            "--exclude-operation-id",
            "register_shard",
            "--exclude-operation-id",
            "add_replica",
            "--exclude-operation-id",
            "heartbeat",
        ],
        tmp.path(),
    );
    println!("{}", manager.line("manager (admin token)"));
    assert_clean("manager (admin token)", &manager);
    stack.stop().await;
}
