//! The suite's parts after the plain attacks: attacks on beta's
//! running session, session state left for the next request, resource
//! attacks, one tenant's busy connections, the listener's control, the
//! dedicated tenant's placement, and the controls with superuser rights.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardline_core::catalog::quote_ident;

use super::attacks::{self, Attack, Send};
use super::leftovers::{self, Leftover};
use super::probes;
use super::suite::{
    probe_value, restore_role_settings, role_settings, start_victim, Suite, Who, REQUEST_TIMEOUT,
    SECRET, SHARD_BUDGET, TENANT_POOL,
};
use super::verdict::{self, judge, judge_session, Clean, Expect, Got, SessionCheck, Verdict};
use super::{backend_pid, fresh_session, rows, send};

/// Attacks on beta's session while it runs a transaction.
pub async fn victim_attacks(s: &mut Suite) {
    let victim = start_victim(s).await;
    let text: Option<String> = s
        .view()
        .admin
        .query_opt(
            "SELECT query FROM pg_stat_activity WHERE pid = $1",
            &[&victim.pid],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
    s.controls.check(
        "beta's running query holds the secret (a superuser sees it)",
        "control held",
        (!text.as_deref().unwrap_or("").contains(SECRET)).then(|| format!("{text:?}")),
    );
    for a in attacks::on_victim(&s.target, victim.pid) {
        s.attempt(Who::Alpha, &a, Some(&victim)).await;
    }
    let got = victim.finish().await;
    s.controls.check(
        "beta's attacked transaction committed",
        "control held",
        (!matches!(got, Got::Answered { .. })).then(|| got.describe()),
    );
}

/// Issue 10, point 2: request 1 leaves state on alpha's pooled
/// connection; request 2 (the next on that connection) must not see it.
pub async fn session_state(s: &mut Suite) {
    let checks = leftovers::leftovers(&s.target);
    fresh_session(&s.alpha, &s.key).await;
    let mut clean = BTreeMap::new();
    for l in checks.iter().filter(|l| l.not.is_none()) {
        let reader = if l.other_app {
            &s.alpha_other
        } else {
            &s.alpha
        };
        let value = probe_value(reader, &s.key, &l.probe)
            .await
            .unwrap_or_else(|e| panic!("clean value of {}: {e}", l.name));
        clean.insert(l.name.clone(), value);
    }
    for l in &checks {
        let name = format!("session state: {}", l.name);
        // Controls: the state is real. For role defaults, PostgreSQL
        // taking the default (checked after request 1); else a plain
        // session keeping it.
        if !l.new_session {
            plain_session_control(s, l).await;
        }
        let pid_before = backend_pid(&s.alpha, &s.key).await;
        let set = send(&s.alpha, &s.key, &l.action).await;
        if l.new_session {
            let now = role_settings(&s.probes.shards, &s.target.alpha).await;
            s.controls.check(
                &format!("{name}: PostgreSQL took alpha's new role default"),
                "control held",
                (now == s.alpha_role_settings).then(|| "alpha's role settings unchanged".into()),
            );
            fresh_session(&s.alpha, &s.key).await;
        }
        let reader = if l.other_app {
            s.alpha_other.clone()
        } else {
            s.alpha.clone()
        };
        let probe = format!("SELECT pg_backend_pid()::int8, ({})::text", l.probe);
        let seen = send(&reader, &s.key, &Send::Execute(probe)).await;
        if l.new_session {
            restore_role_settings(s).await;
        }
        fresh_session(&s.alpha, &s.key).await;
        let effects = s.effects().await;
        let clean_value = match l.not {
            Some(bad) => Clean::Not(bad),
            None => Clean::Equals(&clean[&l.name]),
        };
        let verdict = judge_session(
            &SessionCheck {
                pid_before,
                set: &set,
                seen: &seen,
                clean: clean_value,
                new_session: l.new_session,
            },
            &s.secrets,
            &effects,
        );
        s.conclude(&name, verdict).await;
    }
}

/// The check is not vacuous: on a plain PostgreSQL session (a
/// superuser's in alpha's database, with alpha's search_path and the
/// router's statement_timeout) the state outlives the statement.
pub async fn plain_session_control(s: &mut Suite, l: &Leftover) {
    let view = s.view();
    let c = probes::connect(&probes::db_dsn(&view.dsn, &s.target.alpha)).await;
    let setup = format!(
        "SET search_path = {}; SET statement_timeout = '10s'",
        quote_ident(&s.target.alpha)
    );
    let probe = format!("SELECT ({})::text", l.probe);
    let mut failure = None;
    let one = |sql: String| {
        let c = &c;
        async move {
            c.query_one(&sql, &[])
                .await
                .map(|r| r.get::<_, Option<String>>(0))
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = c.batch_execute(&setup).await {
        failure = Some(format!("set-up failed: {e}"));
    }
    let before = one(probe.clone()).await;
    let ran = match &l.action {
        Send::Execute(sql) => c.batch_execute(sql).await,
        Send::Transaction(sqls) => {
            c.batch_execute(&format!("BEGIN; {}; COMMIT", sqls.join("; ")))
                .await
        }
        Send::Keyspace(_) => Ok(()),
    };
    let after = one(probe).await;
    let _ = c.batch_execute("SELECT pg_advisory_unlock_all()").await;
    if let Err(e) = ran {
        failure = Some(format!("request 1 failed on a plain session: {e}"));
    } else if before == after {
        failure = Some(format!(
            "the state did not outlive the statement (probe {before:?})"
        ));
    }
    s.controls.check(
        &format!(
            "session state: {}: on a plain session it outlives the statement",
            l.name
        ),
        "control held",
        failure,
    );
}

/// Resource attacks: each answered with a clear error, bounded by the
/// router's limits, leaving nothing running, and the router healthy.
pub async fn resources(s: &mut Suite) {
    let rss_before = probes::vm_rss();
    let cte = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)";
    let cases = [
        (
            Attack {
                name: "SET LOCAL statement_timeout = 0, then a long sleep".into(),
                send: Send::Transaction(vec![
                    "SET LOCAL statement_timeout = 0".into(),
                    "SELECT 1 FROM pg_sleep(600) /* hostile:sleep */".into(),
                ]),
                expect: Expect::router(504),
            },
            Some("hostile:sleep"),
            true,
        ),
        (
            attacks::attack(
                "a million rows of 10 kB",
                "SELECT g, repeat('x', 10000) FROM generate_series(1, 1000000) g",
                Expect::router(400),
            ),
            None,
            false,
        ),
        (
            attacks::attack(
                "array_agg over a big series (70 MB in one value)",
                "SELECT array_agg(repeat('x', 1000)) FROM generate_series(1, 70000) g",
                Expect::router(400),
            ),
            None,
            false,
        ),
        (
            attacks::attack(
                "recursive CTE without end",
                format!("{cte} SELECT n, repeat('x', 10000) FROM r /* hostile:cte */"),
                Expect::router(400),
            ),
            Some("hostile:cte"),
            false,
        ),
        (
            attacks::attack(
                "recursive CTE without end, counted",
                format!("{cte} SELECT count(*) FROM r /* hostile:count */"),
                Expect::router(504),
            ),
            Some("hostile:count"),
            true,
        ),
    ];
    for (a, tag, deadline) in cases {
        let started = Instant::now();
        let got = send(&s.alpha, &s.key, &a.send).await;
        let elapsed = started.elapsed();
        let mut effects = Vec::new();
        let bound = REQUEST_TIMEOUT + Duration::from_secs(3);
        if deadline && elapsed > bound {
            effects.push(format!(
                "answered after {elapsed:?}, past the request deadline ({REQUEST_TIMEOUT:?}) and slack"
            ));
        }
        if let Some(tag) = tag {
            let n = s.running(tag, 0, Duration::from_secs(3)).await;
            // -1: the count could not be read, which proves nothing.
            if n != 0 {
                effects.push(format!(
                    "{n} backend(s) still run the statement 3 s after the answer"
                ));
            }
        }
        effects.extend(s.health_effects().await);
        effects.extend(s.effects().await);
        println!(
            "resource attack {:?}: {} after {:.1}s",
            a.name,
            verdict::clip(&got.describe(), 200),
            elapsed.as_secs_f64()
        );
        let v = judge(&a.expect, &got, &s.secrets, &effects);
        s.conclude(&a.name, v).await;
    }
    println!(
        "router (in this test process) VmRSS: {rss_before} before the resource attacks, {} after",
        probes::vm_rss()
    );
}

/// One tenant holds every connection its pool allows busy on a shard,
/// with more requests waiting; another tenant's requests still succeed.
pub async fn busy_connections(s: &mut Suite) {
    let hog = s.hog.clone();
    let tag = "hostile:hog";
    let mut tasks = Vec::new();
    for _ in 0..2 * TENANT_POOL {
        let (hog, key) = (hog.clone(), s.key.clone());
        let sql = format!("SELECT 1 FROM pg_sleep(2) /* {tag} */");
        tasks.push(tokio::spawn(async move {
            send(&hog, &key, &Send::Execute(sql)).await
        }));
    }
    let busy = s
        .running(tag, TENANT_POOL as i64, Duration::from_secs(3))
        .await;
    s.controls.check(
        "the hog holds its whole pool busy on the shard",
        "control held",
        (busy != TENANT_POOL as i64).then(|| format!("{busy} busy")),
    );
    let mut effects = Vec::new();
    for i in 0..5 {
        if let Err(e) = rows(&s.beta, &s.key, "SELECT count(*) FROM items").await {
            effects.push(format!("beta's request {i} failed: {e}"));
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
    let (mut answered, mut busy_503) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(Got::Answered { .. }) => answered += 1,
            Ok(Got::Refused {
                status: 503, code, ..
            }) if code == "shard_unavailable" => busy_503 += 1,
            Ok(other) => effects.push(format!("a request of the hog's: {}", other.describe())),
            Err(e) => effects.push(format!("a request of the hog's: {e}")),
        }
    }
    println!(
        "busy connections: the hog had {busy} statements running at once (its pool), \
         {connections} router connections on the shard (budget {SHARD_BUDGET}); \
         hog answered {answered}, refused 503 {busy_503}; beta's 5 requests meanwhile: {}",
        if effects.is_empty() {
            "all answered"
        } else {
            "some failed"
        }
    );
    effects.extend(s.effects().await);
    let verdict = if effects.is_empty() {
        Verdict::AsDeclared("another tenant served while one holds its pool busy".into())
    } else {
        Verdict::Unexpected(effects)
    };
    s.conclude("one tenant's connections all busy", verdict)
        .await;
}

/// The listener works: beta's own NOTIFY reaches it, and it heard
/// nothing else (alpha's NOTIFYs went to alpha's database).
pub async fn notify_control(s: &mut Suite) {
    let sent = rows(&s.beta, &s.key, "NOTIFY beta_events, 'from beta'").await;
    let mut heard = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.is_empty() && Instant::now() < deadline {
        if let Ok(Some(p)) =
            tokio::time::timeout(Duration::from_millis(100), s.listener.recv()).await
        {
            heard.push(p);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(p) = s.listener.try_recv() {
        heard.push(p);
    }
    s.controls.check(
        "beta's own NOTIFY reaches beta's listener, and only it",
        "control held",
        (sent.is_err() || heard != ["from beta"])
            .then(|| format!("sent {sent:?}, heard {heard:?}")),
    );
}

/// The dedicated tenant has no database on the shared shards.
pub async fn gamma_elsewhere(s: &mut Suite) {
    let gamma = s
        .stack
        .admin
        .get_tenant("gamma")
        .await
        .expect("gamma")
        .pg_name;
    for view in &s.probes.shards {
        let found: i64 = view
            .admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&gamma],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        s.controls.check(
            &format!("gamma has no database on shared shard {}", view.name),
            "control held",
            (found != 0).then(|| format!("{found} found")),
        );
    }
}

/// The verdict fails an attack that succeeds without echoing a secret:
/// two attacks of the list, sent by a tenant whose role a superuser made
/// the rights of pg_execute_server_program and pg_signal_backend, succeed — a file written by a program, beta's session
/// terminated — and answer nothing secret; each must be unexpected, for
/// its answer and for the effect the probes saw.
pub async fn superuser_controls(s: &mut Suite) {
    s.probes.clear_marker();
    s.before = s.probes.fingerprint().await;
    let _ = s.notifications();
    let copy = attacks::attacks(&s.target)
        .into_iter()
        .find(|a| a.name == "COPY TO PROGRAM (in DO)")
        .expect("the COPY TO PROGRAM attack");
    let got = send(&s.client(Who::Superuser), &s.key, &copy.send).await;
    let effects = s.effects().await;
    let v = judge(&copy.expect, &got, &s.secrets, &effects);
    superuser_control(
        s,
        "COPY TO PROGRAM sent with superuser rights",
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
    let got = send(&s.client(Who::Superuser), &s.key, &terminate.send).await;
    let mut effects = victim.expected_effects(&s.view().admin).await;
    effects.extend(s.effects().await);
    let v = judge(&terminate.expect, &got, &s.secrets, &effects);
    superuser_control(
        s,
        "pg_terminate_backend of beta's session sent with superuser rights",
        &got,
        &v,
        "beta's session",
    );
    let _ = victim.finish().await;
}

pub fn superuser_control(s: &mut Suite, name: &str, got: &Got, v: &Verdict, effect: &str) {
    println!(
        "control {name}: {} → {}",
        got.describe(),
        if v.is_unexpected() {
            format!("unexpected ({})", v.reasons().join("; "))
        } else {
            "as declared".into()
        }
    );
    let failure = if !matches!(got, Got::Answered { .. }) {
        Some("it did not succeed, so it shows nothing".to_string())
    } else if !s.secrets.found_in(got.text()).is_empty() {
        Some("its answer held a secret (the old check would have caught it)".into())
    } else if !v.is_unexpected() {
        Some("the verdict passed it".into())
    } else if !v.reasons().iter().any(|r| r.contains(effect)) {
        Some(format!("the probes missed its effect ({effect})"))
    } else {
        None
    };
    s.controls.check(name, "control held", failure);
}
