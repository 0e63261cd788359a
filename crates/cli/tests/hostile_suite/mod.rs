//! The hostile-tenant suite's parts (the test itself is `hostile.rs`).
//!
//! # Layout
//! - `verdict`: declared outcomes, answers, the verdict and the count.
//! - `attacks`: the attacks, with their declared outcomes.
//! - `leftovers`: the session-state checks.
//! - `probes`: where effects would land, seen as a superuser.
//! - `suite`: the stack, tenants and set-up; judging and counting.
//! - `phases`: the parts after the plain attacks, and the controls.
//! - `wire`, `rawwire`: sending attacks over the PostgreSQL protocol, as
//!   a driver does and as a hostile client can.
//! - `wire_attacks`: the attack list's wire declarations, and attacks
//!   only the wire can express.
//! - `wire_phases`, `wire_more`: the suite over the wire
//!   (`hostile_wire.rs`).
//! - this file: sending requests, alpha's connection, beta's victim
//!   session.
//!
//! Two tests use these modules (`hostile.rs` over HTTP, `hostile_wire.rs`
//! over the PostgreSQL protocol), each only a part of them.

#![allow(dead_code)]

pub mod attacks;
pub mod leftovers;
pub mod phases;
pub mod probes;
pub mod rawwire;
pub mod suite;
pub mod verdict;
pub mod wire;
pub mod wire_attacks;
pub mod wire_more;
pub mod wire_phases;

use std::time::Duration;

use serde_json::Value;
use shardline_api::router::{ExecuteRequest, ShardKeyValue, Statement, TransactionRequest};
use shardline_client::{RetryPolicy, RouterClient};
use tokio_postgres::Client;

use attacks::Send;
use verdict::Got;

/// A client of the router with `token` that never retries, so every
/// answer is seen as the router gave it.
pub fn client(router_url: &str, token: &str) -> RouterClient {
    RouterClient::new(router_url, Some(token.to_string()))
        .unwrap_or_else(|e| panic!("router client: {e}"))
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(60))
}

fn execute_request(keyspace: Option<&str>, key: &str, sql: &str) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: keyspace.map(str::to_string),
        shard_key: ShardKeyValue::Text(key.into()),
        sql: sql.into(),
        params: vec![],
        consistency: Default::default(),
    }
}

/// Sends `s` with shard key `key`; the rows are the last statement's.
pub async fn send(client: &RouterClient, key: &str, s: &Send) -> Got {
    match s {
        Send::Execute(sql) => Got::from_result(
            client.execute(&execute_request(None, key, sql)).await,
            |r| r.result.rows.clone(),
        ),
        Send::Keyspace(keyspace) => Got::from_result(
            client
                .execute(&execute_request(Some(keyspace), key, "SELECT * FROM items"))
                .await,
            |r| r.result.rows.clone(),
        ),
        Send::Transaction(sqls) => Got::from_result(
            client
                .transaction(&TransactionRequest {
                    keyspace: None,
                    shard_key: ShardKeyValue::Text(key.into()),
                    statements: sqls
                        .iter()
                        .map(|sql| Statement {
                            sql: sql.clone(),
                            params: vec![],
                        })
                        .collect(),
                    consistency: Default::default(),
                })
                .await,
            |r| r.results.last().map(|x| x.rows.clone()).unwrap_or_default(),
        ),
    }
}

/// Runs `sql` and returns its rows, or the failure as text.
pub async fn rows(client: &RouterClient, key: &str, sql: &str) -> Result<Vec<Vec<Value>>, String> {
    match send(client, key, &Send::Execute(sql.into())).await {
        Got::Answered { rows, .. } => Ok(rows),
        other => Err(other.describe()),
    }
}

/// The backend pid of the connection that serves the next request.
pub async fn backend_pid(client: &RouterClient, key: &str) -> i64 {
    let rows = rows(client, key, "SELECT pg_backend_pid()::int8")
        .await
        .unwrap_or_else(|e| panic!("alpha's pid: {e}"));
    rows.first()
        .and_then(|r| r.first())
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("alpha's pid: {rows:?}"))
}

/// Ends the session behind the client's next request, so the router
/// opens a new one: after an attack whose verdict was unexpected (it
/// may have left state), and after each session-state check. A `DO`
/// block, so the router does not take it for a read and retry it.
/// Returns the new connection's pid.
pub async fn fresh_session(client: &RouterClient, key: &str) -> i64 {
    let before = backend_pid(client, key).await;
    let _ = send(
        client,
        key,
        &Send::Execute(
            "DO $x$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); END $x$".into(),
        ),
    )
    .await;
    let after = backend_pid(client, key).await;
    assert_ne!(before, after, "the router kept a terminated connection");
    after
}

/// Advisory lock key of the victim's gate.
const GATE: i64 = 424_242;

/// A session of beta's running a query while attacks are sent: a
/// transaction through the router, waiting on an advisory lock a
/// superuser session in beta's database holds (so it runs exactly as
/// long as the suite needs), its text holding a secret of beta's.
pub struct Victim {
    pub pid: i32,
    gate: Client,
    task: tokio::task::JoinHandle<Got>,
}

impl Victim {
    /// Starts beta's transaction on the shard of `key` and waits until
    /// it is blocked; `admin` is a superuser session on that shard.
    pub async fn start(
        beta: &RouterClient,
        key: &str,
        beta_dsn: &str,
        beta_db: &str,
        admin: &Client,
        secret: &str,
    ) -> Victim {
        let gate = probes::connect(beta_dsn).await;
        gate.query_one("SELECT pg_advisory_lock($1)::text", &[&GATE])
            .await
            .unwrap_or_else(|e| panic!("take the victim's gate: {e}"));
        let statements = Send::Transaction(vec![
            format!(
                "SELECT '{secret}-victim' AS tag FROM (SELECT pg_advisory_xact_lock({GATE})) gate"
            ),
            format!(
                "UPDATE items SET v = v WHERE k = {}",
                shardline_core::catalog::quote_literal(key)
            ),
        ]);
        let (beta, key_owned) = (beta.clone(), key.to_string());
        let task = tokio::spawn(async move { send(&beta, &key_owned, &statements).await });
        let mut pid = None;
        for _ in 0..250 {
            let row = admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                     AND wait_event_type = 'Lock' AND query LIKE '%-victim%'",
                    &[&beta_db],
                )
                .await
                .unwrap_or_else(|e| panic!("find the victim: {e}"));
            if let Some(row) = row {
                pid = Some(row.get(0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = pid.unwrap_or_else(|| panic!("beta's victim query did not start"));
        Victim { pid, gate, task }
    }

    /// What an attack did to the victim: its session gone, its query
    /// ended, its request answered early. A signal takes a moment to
    /// land: looks for up to 300 ms (at once when something is seen).
    /// Every attack on the victim waits this long when it has no effect,
    /// and the victim's request must outlive them all.
    pub async fn effects(&self, admin: &Client) -> Vec<String> {
        self.effects_within(admin, 15).await
    }

    /// [`effects`](Self::effects) for a signal that is expected to land
    /// (a control): up to 3 s, as on a loaded machine (a clean-clone CI
    /// run sharing its two cores with a build) a superuser's terminate
    /// took longer than 300 ms to show.
    pub async fn expected_effects(&self, admin: &Client) -> Vec<String> {
        self.effects_within(admin, 150).await
    }

    async fn effects_within(&self, admin: &Client, tries: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..tries {
            out = self.effects_now(admin).await;
            if !out.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out
    }

    async fn effects_now(&self, admin: &Client) -> Vec<String> {
        let mut out = Vec::new();
        let row = admin
            .query_opt(
                "SELECT state, coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = $1",
                &[&self.pid],
            )
            .await
            .unwrap_or_else(|e| panic!("look at the victim: {e}"));
        match row {
            None => out.push(format!("beta's session {} is gone", self.pid)),
            Some(row) => {
                let (state, wait): (Option<String>, String) = (row.get(0), row.get(1));
                if state.as_deref() != Some("active") || wait != "Lock" {
                    out.push(format!(
                        "beta's query in session {} stopped (state {state:?}, waiting on {wait:?})",
                        self.pid
                    ));
                }
            }
        }
        if self.task.is_finished() {
            out.push("beta's request was answered before the suite let it finish".into());
        }
        out
    }

    /// Lets the victim's transaction finish and returns its answer.
    pub async fn finish(self) -> Got {
        let _ = self
            .gate
            .query_one("SELECT pg_advisory_unlock($1)", &[&GATE])
            .await;
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => Got::NoAnswer(format!("victim task: {e}")),
            Err(_) => Got::NoAnswer("the victim's request did not end".into()),
        }
    }
}
