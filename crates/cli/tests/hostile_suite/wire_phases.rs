//! The hostile suite over the PostgreSQL protocol: the attack list as a
//! wire client of alpha's sends it, the wire-only attacks, attacks on
//! beta's running session, and what one client leaves on the pooled
//! server session for the next (settings, prepared statements). After
//! every attack the next client of alpha's pooled server session — a
//! connection of alpha's other app — must see a clean session, besides
//! every probe of the HTTP suite.

use serde_json::Value;
use sha2::{Digest, Sha256};
use shardline_core::catalog::{quote_ident, quote_literal};

use super::attacks::{self, Send};
use super::leftovers::{self, Leftover};
use super::phases::plain_session_control;
use super::rawwire;
use super::suite::{restore_role_settings, role_settings, start_victim, Suite};
use super::verdict::{judge, judge_session, Clean, Expect, Got, SessionCheck, Verdict};
use super::wire::{self, wire_rows, Login, WireClient};
use super::wire_attacks::{self, on_wire, router_refusals_on_wire, WireSend};
use super::Victim;

/// The wire run's own state: the next client's connection and what it
/// saw on a clean session.
pub struct WireRun {
    /// A connection of alpha's other app: the next client of alpha's
    /// pooled server session.
    next: WireClient,
    probe: String,
    clean: Vec<Vec<Value>>,
    /// A connection of beta's, and what it saw before the attacks.
    beta: WireClient,
    beta_clean: Vec<Vec<Value>>,
}

/// What beta's wire connection looks at after every attack.
const BETA_PROBE: &str = "SELECT current_user::text, current_setting('role'), \
     current_setting('search_path'), (SELECT count(*) FROM items)::text";

impl WireRun {
    pub async fn new(s: &mut Suite) -> WireRun {
        let next = WireClient::keyed(&s.logins.alpha_other, &s.key)
            .await
            .unwrap_or_else(|g| panic!("alpha's other app over the wire: {}", g.describe()));
        let bl = quote_literal(&s.target.beta);
        let probe = format!(
            "SELECT current_user::text, session_user::text, current_database()::text, \
             has_database_privilege({bl}, 'CONNECT')::text, pg_has_role({bl}, 'USAGE')::text, \
             current_setting('is_superuser'), current_setting('role'), \
             current_setting('search_path'), current_setting('statement_timeout'), \
             current_setting('default_transaction_read_only'), \
             (SELECT count(*) FROM pg_listening_channels())::text, \
             (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text, \
             (SELECT count(*) FROM pg_cursors)::text, \
             (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text, \
             (SELECT v FROM items WHERE k = {})",
            quote_literal(&s.key)
        );
        fresh_session(&s.logins.alpha, &s.key).await;
        let clean = wire_rows(&next, &probe)
            .await
            .unwrap_or_else(|e| panic!("the next client's probe: {e}"));
        let a = Value::String(s.target.alpha.clone());
        let first = clean.first().cloned().unwrap_or_default();
        s.controls.check(
            "the next client's probe sees alpha, its row and no rights on beta",
            "control held",
            (first.first() != Some(&a)
                || first.get(14) != Some(&Value::String("alpha-own".into()))
                || first.get(3) != Some(&Value::String("false".into())))
            .then(|| format!("{first:?}")),
        );
        // alpha's wire clients share one server session per shard (its
        // pool holds one), so state one leaves is probed by the next.
        let (p1, p2) = (
            wire_pid(&s.logins.alpha, &s.key).await,
            wire_pid(&s.logins.alpha_other, &s.key).await,
        );
        s.controls.check(
            "alpha's two apps share one pooled server session over the wire",
            "control held",
            (p1 != p2).then(|| format!("pids {p1} and {p2}")),
        );
        let beta = WireClient::keyed(&s.logins.beta, &s.key)
            .await
            .unwrap_or_else(|g| panic!("beta over the wire: {}", g.describe()));
        let beta_clean = wire_rows(&beta, BETA_PROBE)
            .await
            .unwrap_or_else(|e| panic!("beta's probe: {e}"));
        let b = Value::String(s.target.beta.clone());
        s.controls.check(
            "beta's wire connection sees beta and its rows",
            "control held",
            (beta_clean.first().and_then(|r| r.first()) != Some(&b)
                || beta_clean.first().and_then(|r| r.get(3)) == Some(&Value::from("0")))
            .then(|| format!("{beta_clean:?}")),
        );
        WireRun {
            next,
            probe,
            clean,
            beta,
            beta_clean,
        }
    }

    /// What the next client of alpha's pooled server session sees that a
    /// clean session does not.
    pub async fn next_client_effects(&mut self) -> Vec<String> {
        let heard = self.next.heard();
        let mut out: Vec<String> = heard
            .into_iter()
            .map(|h| format!("the next client heard {h}"))
            .collect();
        match wire_rows(&self.next, &self.probe).await {
            Ok(rows) if rows == self.clean => {}
            Ok(rows) => out.push(format!(
                "the next client of alpha's server session sees {} (clean: {})",
                Value::from(rows),
                Value::from(self.clean.clone())
            )),
            Err(e) => out.push(format!("the next client's probe failed: {e}")),
        }
        out.extend(
            self.beta
                .heard()
                .into_iter()
                .map(|h| format!("beta's connection heard {h}")),
        );
        match wire_rows(&self.beta, BETA_PROBE).await {
            Ok(rows) if rows == self.beta_clean => {}
            Ok(rows) => out.push(format!(
                "beta's wire connection sees {} (before: {})",
                Value::from(rows),
                Value::from(self.beta_clean.clone())
            )),
            Err(e) => out.push(format!("beta's wire probe failed: {e}")),
        }
        out
    }
}

/// The backend pid serving `login`'s next statement on `key`'s shard
/// (asked again for up to 5 s: a server session that just went away
/// fails the statement that finds it gone).
pub async fn wire_pid(login: &Login, key: &str) -> i64 {
    let mut last = String::new();
    for _ in 0..25 {
        match WireClient::keyed(login, key).await {
            Ok(c) => match wire_rows(&c, "SELECT pg_backend_pid()::text").await {
                Ok(rows) => {
                    let pid = rows
                        .first()
                        .and_then(|r| r.first())
                        .and_then(Value::as_str)
                        .and_then(|p| p.parse().ok());
                    match pid {
                        Some(p) => return p,
                        None => last = format!("{rows:?}"),
                    }
                }
                Err(e) => last = e,
            },
            Err(g) => last = g.describe(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("wire pid: {last}")
}

/// Ends the server session serving `login` on `key`'s shard, so the
/// router opens a new one: after an unexpected verdict and after each
/// session-state check. Returns the new session's pid.
pub async fn fresh_session(login: &Login, key: &str) -> i64 {
    let before = wire_pid(login, key).await;
    if let Ok(c) = WireClient::keyed(login, key).await {
        let _ = c
            .steps(&["DO $x$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); END $x$".into()])
            .await;
    }
    let mut after = wire_pid(login, key).await;
    for _ in 0..50 {
        if after != before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = wire_pid(login, key).await;
    }
    assert_ne!(before, after, "the router kept a terminated server session");
    after
}

/// Everything that changed where an attack's effect would land, and
/// what the next client sees.
pub async fn effects(s: &mut Suite, w: &mut WireRun) -> Vec<String> {
    let mut out = s.effects().await;
    out.extend(w.next_client_effects().await);
    out
}

/// Judges and counts; after an unexpected verdict the suite starts
/// afresh (HTTP and wire sessions, marker directory, fingerprint).
pub async fn conclude(s: &mut Suite, name: &str, verdict: Verdict) -> Verdict {
    let unexpected = verdict.is_unexpected();
    if unexpected {
        println!("not as declared: {name}: {}", verdict.reasons().join("; "));
        // alpha's own row, which the probes read, as it was (an attack
        // that went through may have changed it).
        let own = format!(
            "INSERT INTO items VALUES ({}, 'alpha-own') ON CONFLICT (k) DO UPDATE SET v = 'alpha-own'",
            quote_literal(&s.key)
        );
        if let Err(e) = super::rows(&s.alpha, &s.key, &own).await {
            println!("restoring alpha's row failed: {e}");
        }
    }
    let v = s.conclude(name, verdict).await;
    if unexpected {
        fresh_session(&s.logins.alpha, &s.key).await;
    }
    v
}

/// Judges `got` against `expect` with every probe (and the victim's,
/// if any).
pub async fn judge_wire(
    s: &mut Suite,
    w: &mut WireRun,
    name: &str,
    expect: &Expect,
    got: &Got,
    victim: Option<&Victim>,
) -> Verdict {
    let mut fx = Vec::new();
    if let Some(v) = victim {
        fx.extend(v.effects(&s.view().admin).await);
    }
    fx.extend(effects(s, w).await);
    let verdict = judge(expect, got, &s.secrets, &fx);
    conclude(s, name, verdict).await
}

/// The attack list, each attack on its own connection of alpha's, its
/// declaration translated to the wire.
pub async fn list_attacks(s: &mut Suite, w: &mut WireRun) {
    let table = router_refusals_on_wire();
    let list = attacks::attacks(&s.target);
    for (name, _) in &table {
        let used = list
            .iter()
            .chain(&attacks::on_victim(&s.target, 0))
            .any(|a| a.name == *name && a.expect.on_wire().is_none());
        if !used {
            s.tally.record(
                &format!("wire declaration of {name:?}"),
                &Verdict::Unexpected(vec!["names no attack refused by the router alone".into()]),
            );
        }
    }
    for a in &list {
        let expect = match on_wire(a, &table) {
            Ok(e) => e,
            Err(why) => {
                s.tally.record(&a.name, &Verdict::Unexpected(vec![why]));
                continue;
            }
        };
        let got = wire::attempt(&s.logins.alpha, &s.key, &a.send).await;
        judge_wire(s, w, &a.name, &expect, &got, None).await;
    }
}

/// The attacks only the wire can express.
pub async fn wire_only(s: &mut Suite, w: &mut WireRun) {
    for a in wire_attacks::wire_attacks(&s.target, &s.wire) {
        let got = wire_attacks::send(&s.wire, &s.key, &a.send).await;
        judge_wire(s, w, &format!("wire: {}", a.name), &a.expect, &got, None).await;
    }
}

/// Attacks on beta's session while it runs a transaction, over the
/// wire; and cancel requests with guessed keys sent to the router.
pub async fn victim_attacks(s: &mut Suite, w: &mut WireRun) {
    let victim = start_victim(s).await;
    let table = router_refusals_on_wire();
    for a in attacks::on_victim(&s.target, victim.pid) {
        let Ok(expect) = on_wire(&a, &table) else {
            s.tally.record(
                &a.name,
                &Verdict::Unexpected(vec!["no wire declaration".into()]),
            );
            continue;
        };
        let got = wire::attempt(&s.logins.alpha, &s.key, &a.send).await;
        judge_wire(s, w, &a.name, &expect, &got, Some(&victim)).await;
    }
    // The router's cancel keys are its own, random; a request with a
    // guessed key (beta's server pid and likely secrets, or random)
    // must reach nothing.
    let pid = victim.pid;
    let mut guesses: Vec<(i32, i32)> = [0, 1, -1, pid, i32::MAX]
        .iter()
        .map(|secret| (pid, *secret))
        .collect();
    guesses.extend((0..40).map(|_| (rand::random::<i32>() & i32::MAX, rand::random::<i32>())));
    for (p, secret) in guesses {
        let _ = rawwire::cancel(s.wire.addr, p, secret).await;
    }
    let mut fx = victim.effects(&s.view().admin).await;
    fx.extend(effects(s, w).await);
    let verdict = if fx.is_empty() {
        Verdict::AsDeclared("cancel requests with guessed keys reach nothing".into())
    } else {
        Verdict::Unexpected(fx)
    };
    conclude(s, "wire: cancel requests with guessed keys", verdict).await;
    let got = victim.finish().await;
    s.controls.check(
        "beta's transaction attacked over the wire committed",
        "control held",
        (!matches!(got, Got::Answered { .. })).then(|| got.describe()),
    );
}

/// The router's name on the server for a prepared statement of `text`
/// with no parameter types given (as tokio-postgres prepares).
pub fn server_name(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sl{hex}")
}

/// The next client's prepared statement, while alpha tries to change,
/// drop, run or read it on the server session they share: the next
/// client must get its own answer, and alpha only what PostgreSQL gives
/// a session for statements it did not prepare.
pub async fn next_client_statements(s: &mut Suite, w: &mut WireRun) {
    let text = "SELECT v FROM items WHERE k = $1";
    let sl = server_name(text);
    let key = quote_literal(&s.key);
    let poison = format!("PREPARE {sl}(text) AS SELECT 'poisoned by alpha: ' || $1");
    let unknown = || Expect::wire("26000");
    let cases: Vec<(&str, WireSend, Expect)> = vec![
        (
            "DEALLOCATE another client's statement and PREPARE it anew",
            WireSend::Steps(vec![format!("DEALLOCATE {sl}; {poison}")]),
            unknown(),
        ),
        (
            "DISCARD ALL under another client's statement",
            WireSend::Steps(vec!["DISCARD ALL".into()]),
            Expect::no_rows(),
        ),
        (
            "DEALLOCATE ALL under another client's statement",
            WireSend::Steps(vec!["DEALLOCATE ALL".into()]),
            Expect::no_rows(),
        ),
        (
            "EXECUTE another client's statement",
            WireSend::Steps(vec![format!("EXECUTE {sl}({key})")]),
            unknown(),
        ),
        (
            "Bind to another client's statement",
            WireSend::Raw(
                [
                    rawwire::bind("", &sl, &[&s.key]),
                    rawwire::execute(""),
                    rawwire::sync(),
                ]
                .concat(),
            ),
            unknown(),
        ),
        (
            "Describe another client's statement",
            WireSend::Raw([rawwire::describe(b'S', &sl), rawwire::sync()].concat()),
            unknown(),
        ),
        (
            "Parse named as another client's statement",
            WireSend::Raw(
                [
                    rawwire::parse(&sl, "SELECT 'poisoned by alpha: ' || $1::text"),
                    rawwire::bind("", &sl, &[&s.key]),
                    rawwire::execute(""),
                    rawwire::sync(),
                ]
                .concat(),
            ),
            Expect::Rows(wire_attacks::texts(&[&[&format!(
                "poisoned by alpha: {}",
                s.key
            )]])),
        ),
    ];
    for (name, send, expect) in cases {
        let name = format!("wire: {name}");
        let victim = match WireClient::keyed(&s.logins.alpha_other, &s.key).await {
            Ok(c) => c,
            Err(g) => {
                s.tally
                    .record(&name, &Verdict::Unexpected(vec![g.describe()]));
                continue;
            }
        };
        let own = async |c: &WireClient| -> Result<Vec<Vec<Value>>, String> {
            let stmt = c.client.prepare(text).await.map_err(|e| failure(&e))?;
            let rows = c
                .client
                .query(&stmt, &[&s.key])
                .await
                .map_err(|e| failure(&e))?;
            Ok(rows
                .iter()
                .map(|r| vec![Value::from(r.get::<_, Option<String>>(0))])
                .collect())
        };
        let want = wire_attacks::texts(&[&["alpha-own"]]);
        let before = own(&victim).await;
        let got = wire_attacks::send(&s.wire, &s.key, &send).await;
        let after = own(&victim).await;
        let mut fx = Vec::new();
        if before.as_ref() != Ok(&want) {
            fx.push(format!(
                "the next client's statement did not answer before the attack: {before:?}"
            ));
        }
        if after.as_ref() != Ok(&want) {
            fx.push(format!(
                "the next client's prepared statement then answered {after:?}, not its own row"
            ));
        }
        fx.extend(effects(s, w).await);
        let verdict = judge(&expect, &got, &s.secrets, &fx);
        drop(victim);
        conclude(s, &name, verdict).await;
        fresh_session(&s.logins.alpha, &s.key).await;
    }
}

/// A driver's error as text: its SQLSTATE and message when it has them.
fn failure(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Session state that only a wire client can leave (the HTTP API's
/// guard refuses these statements), in the shape of the HTTP suite's.
fn wire_leftovers(t: &attacks::Target) -> Vec<Leftover> {
    let a = quote_ident(&t.alpha);
    let b = quote_ident(&t.beta);
    let exec = |sql: String| Send::Execute(sql);
    let l = |name: &str, action: Send, probe: &str| Leftover {
        name: format!("wire: {name}"),
        action,
        probe: probe.into(),
        other_app: true,
        not: None,
        new_session: false,
    };
    vec![
        l(
            "SET search_path to beta's schema",
            exec(format!("SET search_path = {b}")),
            "current_setting('search_path')",
        ),
        l(
            "SET search_path in a committed transaction",
            Send::Transaction(vec!["SET search_path = pg_catalog".into()]),
            "current_setting('search_path')",
        ),
        l(
            "SET statement_timeout = 0",
            exec("SET statement_timeout = 0".into()),
            "current_setting('statement_timeout')",
        ),
        l(
            "SET SESSION CHARACTERISTICS read only",
            exec("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY".into()),
            "current_setting('default_transaction_read_only')",
        ),
        l(
            "SET ROLE to alpha itself",
            exec(format!("SET ROLE {a}")),
            "current_setting('role')",
        ),
        l(
            "SQL PREPARE",
            exec("PREPARE leftover_wire AS SELECT 1".into()),
            "(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover_wire')::text",
        ),
        l(
            "LISTEN",
            exec("LISTEN leftover_wire".into()),
            "(SELECT count(*) FROM pg_listening_channels())::text",
        ),
        l(
            "DECLARE WITH HOLD",
            exec("DECLARE leftover_wire CURSOR WITH HOLD FOR SELECT 1".into()),
            "(SELECT count(*) FROM pg_cursors WHERE name = 'leftover_wire')::text",
        ),
        l(
            "session advisory lock",
            exec("SELECT 1 FROM pg_advisory_lock(4712)".into()),
            "pg_advisory_unlock(4712)::text",
        ),
    ]
}

/// The pid (as a number, as the verdict reads it) and the value.
fn pid_as_number(got: Got) -> Got {
    match got {
        Got::Answered { mut rows, text } => {
            if let Some(first) = rows.first_mut().and_then(|r| r.first_mut()) {
                if let Some(n) = first.as_str().and_then(|p| p.parse::<i64>().ok()) {
                    *first = Value::from(n);
                }
            }
            Got::Answered { rows, text }
        }
        other => other,
    }
}

/// Session state over the wire: request 1 as alpha leaves state on the
/// pooled server session, request 2 from another connection (alpha's
/// other app where the HTTP check says so, else a new one of alpha's)
/// must not see it.
pub async fn session_state(s: &mut Suite, w: &mut WireRun) {
    let mut checks = leftovers::leftovers(&s.target);
    checks.extend(wire_leftovers(&s.target));
    fresh_session(&s.logins.alpha, &s.key).await;
    let mut clean = std::collections::BTreeMap::new();
    for l in checks.iter().filter(|l| l.not.is_none()) {
        let reader = if l.other_app {
            &s.logins.alpha_other
        } else {
            &s.logins.alpha
        };
        let sql = format!("SELECT ({})::text", l.probe);
        let got = wire::attempt(reader, &s.key, &Send::Execute(sql)).await;
        let value = match &got {
            Got::Answered { rows, .. } => rows
                .first()
                .and_then(|r| r.first())
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let value = value.unwrap_or_else(|| {
            panic!(
                "clean value of {} over the wire: {}",
                l.name,
                got.describe()
            )
        });
        clean.insert(l.name.clone(), value);
    }
    for l in &checks {
        let started = std::time::Instant::now();
        let name = if l.name.starts_with("wire: ") {
            format!("session state: {}", l.name)
        } else {
            format!("session state over the wire: {}", l.name)
        };
        if !l.new_session && l.name.starts_with("wire: ") {
            plain_session_control(s, l).await;
        }
        let pid_before = wire_pid(&s.logins.alpha, &s.key).await;
        let set = wire::attempt(&s.logins.alpha, &s.key, &l.action).await;
        if l.new_session {
            let now = role_settings(&s.probes.shards, &s.target.alpha).await;
            s.controls.check(
                &format!("{name}: PostgreSQL took alpha's new role default"),
                "control held",
                (now == s.alpha_role_settings).then(|| "alpha's role settings unchanged".into()),
            );
            fresh_session(&s.logins.alpha, &s.key).await;
        }
        let reader = if l.other_app {
            &s.logins.alpha_other
        } else {
            &s.logins.alpha
        };
        let probe = format!("SELECT pg_backend_pid()::int8, ({})::text", l.probe);
        let seen = pid_as_number(wire::attempt(reader, &s.key, &Send::Execute(probe)).await);
        if l.new_session {
            restore_role_settings(s).await;
        }
        fresh_session(&s.logins.alpha, &s.key).await;
        let fx = effects(s, w).await;
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
            &fx,
        );
        if started.elapsed() > std::time::Duration::from_secs(5) {
            println!("{name}: {:.1}s", started.elapsed().as_secs_f64());
        }
        if verdict.is_unexpected() {
            println!("not as declared: {name}: {}", verdict.reasons().join("; "));
        }
        s.tally.record(&name, &verdict);
        if verdict.is_unexpected() {
            s.probes.clear_marker();
            s.before = s.probes.fingerprint().await;
            let _ = s.notifications();
        }
    }
}
