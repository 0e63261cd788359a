//! The wire suite's later parts: notifications across tenants, resource
//! attacks, one tenant holding its pools busy on both front ends, and
//! the controls showing the wire verdict can fail.

use std::time::{Duration, Instant};

use shardline_core::catalog::{quote_ident, quote_literal};

use super::attacks::{self, Send};
use super::phases::superuser_control;
use super::probes;
use super::rawwire::{self, RawWire};
use super::suite::{start_victim, Suite, REQUEST_TIMEOUT, SECRET, SHARD_BUDGET, TENANT_POOL};
use super::verdict::{self, judge, Expect, Got, Verdict};
use super::wire::{self, Login, WireClient};
use super::wire_attacks::{self, on_wire, router_refusals_on_wire};
use super::wire_phases::{conclude, effects, WireRun};
use super::{rows, send};

/// alpha listens on beta's channel over the wire while beta notifies it
/// with its secret (over HTTP and over the wire): channels are per
/// database, so alpha hears nothing; beta's own listener hears both.
pub async fn notify_across_tenants(s: &mut Suite, w: &mut WireRun) {
    let mut alpha = match WireClient::keyed(&s.logins.alpha, &s.key).await {
        Ok(c) => c,
        Err(g) => {
            s.tally.record(
                "wire: LISTEN on beta's channel",
                &Verdict::Unexpected(vec![g.describe()]),
            );
            return;
        }
    };
    // In a transaction, so the listening server session stays alpha's
    // while beta notifies (outside one, the router resets it).
    let listen = alpha
        .steps(&["BEGIN".into(), "LISTEN beta_events".into()])
        .await;
    let payload = format!("{SECRET}-notify");
    let notify = format!("NOTIFY beta_events, {}", quote_literal(&payload));
    let by_http = rows(&s.beta, &s.key, &notify).await;
    let by_wire = match WireClient::keyed(&s.logins.beta, &s.key).await {
        Ok(c) => c.steps(std::slice::from_ref(&notify)).await,
        Err(g) => g,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = alpha
        .steps(&["SELECT 1".into(), "COMMIT".into(), "SELECT 1".into()])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = wire::with_heard(got, alpha.heard());
    let mut heard = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.len() < 2 && Instant::now() < deadline {
        if let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(100), s.listener.recv()).await
        {
            heard.push(p);
        }
    }
    s.controls.check(
        "beta's NOTIFY over HTTP and over the wire reach beta's listener",
        "control held",
        (by_http.is_err()
            || !matches!(by_wire, Got::Answered { .. })
            || heard != [payload.clone(), payload])
        .then(|| {
            format!(
                "http {by_http:?}, wire {}, heard {heard:?}",
                by_wire.describe()
            )
        }),
    );
    let mut fx = Vec::new();
    if !matches!(listen, Got::Answered { .. }) {
        fx.push(format!("alpha's LISTEN did not run: {}", listen.describe()));
    }
    fx.extend(effects(s, w).await);
    let verdict = judge(
        &Expect::Rows(wire_attacks::texts(&[&["1"]])),
        &got,
        &s.secrets,
        &fx,
    );
    conclude(
        s,
        "wire: LISTEN on beta's channel while beta notifies",
        verdict,
    )
    .await;
}

/// Resource attacks over the wire: a statement past the router's
/// deadline is cancelled within it (57014, as HTTP answers 504); rows
/// without end stream to the client, and the statement ends when it
/// leaves; nothing keeps running, and the router stays healthy.
pub async fn resources(s: &mut Suite, w: &mut WireRun) {
    let rss_before = probes::vm_rss();
    let cte = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)";
    let deadline_cases = [
        (
            "SET LOCAL statement_timeout = 0, then a long sleep",
            vec![
                "BEGIN".to_string(),
                "SET LOCAL statement_timeout = 0".into(),
                "SELECT 1 FROM pg_sleep(600) /* hostile:wire-sleep */".into(),
            ],
            "hostile:wire-sleep",
        ),
        (
            "SET statement_timeout = 0 for the session, then a long sleep",
            vec![
                "SET statement_timeout = 0".to_string(),
                "SELECT 1 FROM pg_sleep(600) /* hostile:wire-session-sleep */".into(),
            ],
            "hostile:wire-session-sleep",
        ),
        (
            "recursive CTE without end, counted",
            vec![format!(
                "{cte} SELECT count(*) FROM r /* hostile:wire-count */"
            )],
            "hostile:wire-count",
        ),
    ];
    for (name, sqls, tag) in deadline_cases {
        let started = Instant::now();
        // Waits past the router's deadline and slack, then leaves (drops
        // the connection).
        let wait = REQUEST_TIMEOUT + Duration::from_secs(5);
        let got = match raw_keyed(s).await {
            Ok(mut c) => {
                let mut got = Got::NoAnswer("nothing sent".into());
                for sql in &sqls {
                    got = match tokio::time::timeout(wait, c.exchange(&rawwire::query(sql))).await {
                        Ok(g) => g,
                        Err(_) => Got::NoAnswer(format!(
                            "no answer within {wait:?} to {}; the client left",
                            verdict::clip(sql, 80)
                        )),
                    };
                    if !matches!(got, Got::Answered { .. }) {
                        break;
                    }
                }
                got
            }
            Err(g) => g,
        };
        let elapsed = started.elapsed();
        let mut fx = Vec::new();
        if elapsed > REQUEST_TIMEOUT + Duration::from_secs(3) {
            fx.push(format!(
                "answered after {elapsed:?}, past the request deadline ({REQUEST_TIMEOUT:?}) and slack"
            ));
        }
        fx.extend(still_running(s, tag).await);
        end_statements(s, tag).await;
        fx.extend(s.health_effects().await);
        println!(
            "wire resource attack {name:?}: {} after {:.1}s",
            verdict::clip(&got.describe(), 200),
            elapsed.as_secs_f64()
        );
        let fx_all = [fx, effects(s, w).await].concat();
        let v = judge(&Expect::wire("57"), &got, &s.secrets, &fx_all);
        conclude(s, &format!("wire: {name}"), v).await;
    }
    let streams = [
        (
            "a million rows of 10 kB, the client leaving after 64 MB",
            "SELECT g, repeat('x', 10000) FROM generate_series(1, 1000000) g /* hostile:wire-rows */",
            "hostile:wire-rows",
            64 << 20,
            false,
        ),
        (
            "recursive CTE without end, the client leaving after 64 MB",
            &*format!("{cte} SELECT n, repeat('x', 10000) FROM r /* hostile:wire-cte */"),
            "hostile:wire-cte",
            64 << 20,
            false,
        ),
        (
            "array_agg over a big series (70 MB in one value)",
            "SELECT array_agg(repeat('x', 1000)) FROM generate_series(1, 70000) g /* hostile:wire-agg */",
            "hostile:wire-agg",
            256 << 20,
            true,
        ),
    ];
    for (name, sql, tag, cap, whole) in streams {
        let started = Instant::now();
        let mut fx = Vec::new();
        let (read, finished) = match raw_keyed(s).await {
            Ok(c) => c.read_then_leave(&rawwire::query(sql), cap).await,
            Err(g) => {
                fx.push(format!("login: {}", g.describe()));
                (0, false)
            }
        };
        if whole != finished {
            fx.push(format!(
                "{} after {read} bytes",
                if finished {
                    "the answer ended"
                } else {
                    "the answer did not end"
                }
            ));
        }
        fx.extend(still_running(s, tag).await);
        end_statements(s, tag).await;
        fx.extend(s.health_effects().await);
        fx.extend(effects(s, w).await);
        println!(
            "wire resource attack {name:?}: read {read} bytes in {:.1}s, then left",
            started.elapsed().as_secs_f64()
        );
        let v = if fx.is_empty() {
            Verdict::AsDeclared("streamed, and nothing ran on once the client left".into())
        } else {
            Verdict::Unexpected(fx)
        };
        conclude(s, &format!("wire: {name}"), v).await;
    }
    println!(
        "router (in this test process) VmRSS: {rss_before} before the wire resource attacks, {} after",
        probes::vm_rss()
    );
}

async fn raw_keyed(s: &Suite) -> Result<RawWire, Got> {
    let n = &s.wire;
    let mut c = RawWire::connect(
        n.addr,
        &[("user", &n.alpha_app), ("database", &n.keyspace)],
        &n.alpha_token,
    )
    .await?;
    let set = format!("SET shardline.shard_key = {}", quote_literal(&s.key));
    match c.exchange(&rawwire::query(&set)).await {
        Got::Answered { .. } => Ok(c),
        other => Err(other),
    }
}

/// Statements tagged `tag` still running 3 s after their client left.
async fn still_running(s: &Suite, tag: &str) -> Vec<String> {
    let n = s.running(tag, 0, Duration::from_secs(3)).await;
    // -1: the count could not be read, which proves nothing.
    if n != 0 {
        vec![format!(
            "{n} backend(s) still run the statement 3 s after the answer or the client left"
        )]
    } else {
        Vec::new()
    }
}

/// Ends statements tagged `tag` that still run (as a superuser), so the
/// suite goes on after an attack whose statement outlived its client.
async fn end_statements(s: &Suite, tag: &str) {
    let ended = s
        .view()
        .admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE $1 AND pid <> pg_backend_pid()",
            &[&format!("%{tag}%")],
        )
        .await
        .map(|r| r.len())
        .unwrap_or(0);
    if ended > 0 {
        // The router finds its server session gone at its next use.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One tenant holds every connection its pool allows busy on a shard,
/// over HTTP and over the wire at once; another tenant's requests, over
/// both, still succeed.
pub async fn busy_connections(s: &mut Suite, w: &mut WireRun) {
    let tag = "hostile:wire-hog";
    // Long enough for beta's requests to run (and wait out the router's
    // acquire timeout if they must) while the hog's still do.
    let sql = format!("SELECT 1 FROM pg_sleep(6) /* {tag} */");
    let mut http = Vec::new();
    let mut over_wire = Vec::new();
    for _ in 0..2 * TENANT_POOL {
        let (hog, key, text) = (s.hog.clone(), s.key.clone(), sql.clone());
        http.push(tokio::spawn(async move {
            send(&hog, &key, &Send::Execute(text)).await
        }));
        let (login, key, text) = (s.logins.hog.clone(), s.key.clone(), sql.clone());
        over_wire.push(tokio::spawn(async move {
            wire::attempt(&login, &key, &Send::Execute(text)).await
        }));
    }
    // As many as the hog gets running: its pool's worth (one pool serves
    // both front ends), or the shard's budget, whichever is less.
    let most = TENANT_POOL.min(SHARD_BUDGET) as i64;
    let busy = s.running(tag, most, Duration::from_secs(3)).await;
    // Otherwise beta's requests succeeding would show nothing.
    s.controls.check(
        "the hog holds its pools busy on both front ends",
        "control held",
        (busy != most).then(|| format!("{busy} of {most} busy")),
    );
    let mut fx = Vec::new();
    for i in 0..5 {
        if let Err(e) = rows(&s.beta, &s.key, "SELECT count(*) FROM items").await {
            fx.push(format!("beta's HTTP request {i} failed: {e}"));
        }
        let got = wire::attempt(
            &s.logins.beta,
            &s.key,
            &Send::Execute("SELECT count(*) FROM items".into()),
        )
        .await;
        if !matches!(got, Got::Answered { .. }) {
            fx.push(format!("beta's wire request {i}: {}", got.describe()));
        }
    }
    let connections: i64 = s
        .view()
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shardline-router'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    let (mut answered, mut refused) = (0, Vec::new());
    for t in http.into_iter().chain(over_wire) {
        match t.await {
            Ok(Got::Answered { .. }) => answered += 1,
            Ok(other) => refused.push(verdict::clip(&other.describe(), 120)),
            Err(e) => fx.push(format!("a request of the hog's: {e}")),
        }
    }
    println!(
        "busy connections over both front ends: the hog had {busy} statements running at once \
         (a pool of {TENANT_POOL} for both front ends), {connections} router connections on the shard \
         (budget {SHARD_BUDGET}); hog answered {answered}, refused {} ({:?}); beta's requests \
         meanwhile: {}",
        refused.len(),
        refused.first(),
        if fx.is_empty() {
            "all answered"
        } else {
            "some failed"
        }
    );
    fx.extend(effects(s, w).await);
    let v = if fx.is_empty() {
        Verdict::AsDeclared("another tenant served while one holds its pools busy".into())
    } else {
        Verdict::Unexpected(fx)
    };
    conclude(
        s,
        "wire: one tenant's connections all busy on both front ends",
        v,
    )
    .await;
}

/// The wire verdict can fail. Through the router, two attacks sent over
/// the wire by the tenant given superuser-like rights succeed without
/// echoing a secret (a program's file, beta's session terminated), and
/// the verdict calls them unexpected. Sent as a superuser straight to
/// PostgreSQL (alpha's database), attacks of the list and of the wire's
/// own succeed and are each called unexpected: only attacks that read,
/// or write into the marker directory, so the stack stays usable.
pub async fn controls(s: &mut Suite) {
    let table = router_refusals_on_wire();
    s.probes.clear_marker();
    s.before = s.probes.fingerprint().await;
    let _ = s.notifications();
    let copy = attacks::attacks(&s.target)
        .into_iter()
        .find(|a| a.name == "COPY TO PROGRAM")
        .expect("the COPY TO PROGRAM attack");
    let expect = on_wire(&copy, &table).expect("a wire declaration");
    let got = wire::attempt(&s.logins.superuser, &s.key, &copy.send).await;
    let fx = s.effects().await;
    let v = judge(&expect, &got, &s.secrets, &fx);
    superuser_control(
        s,
        "COPY TO PROGRAM sent over the wire with superuser rights",
        &got,
        &v,
        "marker file",
    );
    s.probes.clear_marker();

    let victim = start_victim(s).await;
    s.before = s.probes.fingerprint().await;
    let terminate = attacks::on_victim(&s.target, victim.pid)
        .into_iter()
        .find(|a| a.name == "terminate beta's session")
        .expect("the terminate attack");
    let expect = on_wire(&terminate, &table).expect("a wire declaration");
    let got = wire::attempt(&s.logins.superuser, &s.key, &terminate.send).await;
    let mut fx = victim.expected_effects(&s.view().admin).await;
    fx.extend(s.effects().await);
    let v = judge(&expect, &got, &s.secrets, &fx);
    superuser_control(
        s,
        "pg_terminate_backend of beta's session sent over the wire with superuser rights",
        &got,
        &v,
        "beta's session",
    );
    let _ = victim.finish().await;

    direct_controls(s).await;
}

/// Attacks sent as a superuser straight to PostgreSQL, judged by the
/// same wire verdict: each must be unexpected.
async fn direct_controls(s: &mut Suite) {
    let table = router_refusals_on_wire();
    let dsn = s.view().dsn.clone();
    let direct = Login::direct(&dsn, &s.target.alpha);
    let names = [
        "pg_read_file",
        "pg_read_binary_file of beta's table",
        "pg_ls_dir",
        "pg_authid",
        "list sessions",
        "pg_stat_statements of others",
        "SHOW data_directory",
        "COPY TO PROGRAM",
        "COPY a query to a file (in DO)",
        "COPY own table to a file",
        "SET ROLE",
    ];
    let list = attacks::attacks(&s.target);
    for name in names {
        let a = list
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("attack {name:?}"));
        let expect = on_wire(a, &table).expect("a wire declaration");
        s.probes.clear_marker();
        s.before = s.probes.fingerprint().await;
        let got = wire::attempt(&direct, &s.key, &a.send).await;
        let fx = s.effects().await;
        let v = judge(&expect, &got, &s.secrets, &fx);
        direct_control(
            s,
            &format!("{name} sent as a superuser to PostgreSQL"),
            &got,
            &v,
        );
    }
    // The wire's own: several statements taking beta's role, and a
    // login to beta's database.
    let who = format!(
        "RESET ROLE; SET ROLE {}; SELECT current_user::text",
        quote_ident(&s.target.beta)
    );
    let got = wire::attempt(&direct, &s.key, &Send::Execute(who)).await;
    let v = judge(&Expect::wire("42501"), &got, &s.secrets, &[]);
    direct_control(
        s,
        "SET ROLE beta in one query sent as a superuser to PostgreSQL",
        &got,
        &v,
    );
    let got = match WireClient::connect(&direct.with_db(&s.target.beta)).await {
        Ok(c) => {
            c.steps(&[format!(
                "SELECT current_database()::text, string_agg(v, ',') FROM {}.items",
                quote_ident(&s.target.beta)
            )])
            .await
        }
        Err(g) => g,
    };
    let v = judge(&Expect::wire("3D000"), &got, &s.secrets, &[]);
    direct_control(
        s,
        "login to beta's database sent as a superuser to PostgreSQL",
        &got,
        &v,
    );
    // A prepared statement re-pointed under its name on one plain
    // session (what the router's shared server sessions must not let
    // one client do to another's): the check sees it.
    let sl = super::wire_phases::server_name("SELECT v FROM items WHERE k = $1");
    let got = match raw_direct(&dsn, &s.target.alpha).await {
        Ok(mut c) => {
            let _ = c
                .exchange(
                    &[
                        rawwire::parse(&sl, "SELECT v FROM items WHERE k = $1"),
                        rawwire::sync(),
                    ]
                    .concat(),
                )
                .await;
            let _ = c
                .exchange(&rawwire::query(&format!(
                    "DEALLOCATE {sl}; PREPARE {sl}(text) AS SELECT 'poisoned: ' || $1"
                )))
                .await;
            c.exchange(
                &[
                    rawwire::bind("", &sl, &[&s.key]),
                    rawwire::execute(""),
                    rawwire::sync(),
                ]
                .concat(),
            )
            .await
        }
        Err(g) => g,
    };
    let v = judge(
        &Expect::Rows(wire_attacks::texts(&[&["alpha-own"]])),
        &got,
        &s.secrets,
        &[],
    );
    // Held for the right reason: the re-pointed statement answered, not
    // some failure of the steps before it.
    let poisoned = format!("poisoned: {}", s.key);
    let took = matches!(&got, Got::Answered { rows, .. }
        if *rows == wire_attacks::texts(&[&[poisoned.as_str()]]));
    s.controls.check(
        "the re-pointed statement answered on a plain session",
        "control held",
        (!took).then(|| verdict::clip(&got.describe(), 200)),
    );
    direct_control(
        s,
        "a prepared statement re-pointed under its name on a plain session",
        &got,
        &v,
    );
    s.probes.clear_marker();
    s.before = s.probes.fingerprint().await;
    let _ = s.notifications();
}

/// A raw connection to PostgreSQL itself from a key=value `dsn`, in
/// database `db`.
async fn raw_direct(dsn: &str, db: &str) -> Result<RawWire, Got> {
    let field = |k: &str| {
        dsn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let addr: std::net::SocketAddr = format!("{}:{}", field("host"), field("port"))
        .parse()
        .map_err(|e| Got::NoAnswer(format!("the shard's address: {e}")))?;
    let (user, options) = (field("user"), format!("-c search_path={db}"));
    RawWire::connect(
        addr,
        &[("user", &user), ("database", db), ("options", &options)],
        &field("password"),
    )
    .await
}

fn direct_control(s: &mut Suite, name: &str, got: &Got, v: &Verdict) {
    println!(
        "control {name}: {} → {}",
        verdict::clip(&got.describe(), 160),
        if v.is_unexpected() {
            format!(
                "unexpected ({})",
                verdict::clip(&v.reasons().join("; "), 300)
            )
        } else {
            "as declared".into()
        }
    );
    s.controls.check(
        name,
        "control held",
        (!v.is_unexpected()).then(|| "the wire verdict passed it".to_string()),
    );
}
