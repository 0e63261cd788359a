//! The hostile-tenant suite: holding valid credentials of tenant
//! `alpha`, try every way we know to read or change tenant beta's rows,
//! sessions and files, the server's files and settings, to reach the
//! dedicated tenant `gamma`, to gain rights, to leave state on the
//! pooled connection for later requests, or to starve others — through
//! the router, as a client can.
//!
//! Every attack declares its outcome: refused (HTTP status and SQLSTATE
//! class) or answered with a stated harmless result. The suite asserts
//! the declaration, that no answer holds beta's secret in any encoding,
//! and that no effect landed where it would (beta's and alpha's
//! databases, the server's roles and settings, `postgresql.auto.conf`, a
//! directory every file and program attack aims at, beta's running
//! session). It prints the count by declared outcome; one attack not as
//! declared fails the test, with its name, what it declared and what it
//! got. Controls show the checks can fail: the same attacks sent with
//! superuser rights succeed without echoing any secret, and the verdict
//! calls them unexpected.
//!
//! Isolation is PostgreSQL's: each tenant's statements run in its own
//! database, as its own login role, in its own schema (see
//! docs/architecture.md, "Tenants"). PostgreSQL names come from the
//! manager's API (`pg_name`), never spelled here.

mod common;
mod hostile_suite;

use hostile_suite::attacks;
use hostile_suite::phases;
use hostile_suite::suite::{set_up, Who, BETA_ID, BETA_NAME, SECRET};
use hostile_suite::verdict::{
    self, judge, judge_session, Clean, Expect, Got, Secrets, SessionCheck, Verdict,
};
use serde_json::json;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenant_reaches_nothing_of_another() {
    let mut suite = set_up().await;
    let started = Instant::now();

    let mut phases = Vec::new();
    let mut phase = |name: &str, since: &mut Instant| {
        phases.push(format!("{name} {:.1}s", since.elapsed().as_secs_f64()));
        *since = Instant::now();
    };
    let mut since = Instant::now();
    for a in &attacks::attacks(&suite.target) {
        suite.attempt(Who::Alpha, a, None).await;
    }
    phase("attacks", &mut since);
    phases::victim_attacks(&mut suite).await;
    phase("on beta's session", &mut since);
    phases::session_state(&mut suite).await;
    phase("session state", &mut since);
    phases::resources(&mut suite).await;
    phase("resources", &mut since);
    phases::busy_connections(&mut suite).await;
    phase("busy connections", &mut since);
    phases::notify_control(&mut suite).await;
    phases::gamma_elsewhere(&mut suite).await;
    phases::superuser_controls(&mut suite).await;
    phase("controls", &mut since);

    suite.finish("hostile-tenant suite", started, &phases).await;
}

/// The verdict, without a stack: an attack that succeeds without the
/// secret in its answer fails; so does one answered as declared whose
/// effect landed, one refused otherwise than declared, and one whose
/// answer holds the secret in an encoding.
#[test]
fn hostile_tenant_verdict_fails_attacks_that_succeed_quietly() {
    let secrets = Secrets::new(&[SECRET]);
    // pg_terminate_backend of beta's session succeeded: `true`.
    let terminated = Got::Answered {
        rows: vec![vec![json!(true)]],
        text: r#"{"shard":"s0","columns":[{"name":"pg_terminate_backend","type":"bool"}],"rows":[[true]],"rows_affected":1}"#.into(),
    };
    assert!(
        secrets.found_in(terminated.text()).is_empty(),
        "no secret in it: a check for the secret alone passes it"
    );
    let v = judge(&Expect::no_right(), &terminated, &secrets, &[]);
    assert!(v.is_unexpected(), "{v:?}");
    assert!(v.reasons()[0].contains("expected refused 403"), "{v:?}");

    // Declared harmless and answered so, but a program's file landed.
    let quiet = Got::Answered {
        rows: vec![],
        text: r#"{"rows":[]}"#.into(),
    };
    assert_eq!(
        judge(&Expect::no_rows(), &quiet, &secrets, &[]),
        Verdict::AsDeclared("answered with the stated harmless rows".into())
    );
    let landed = vec!["marker file \"program\" appeared in /tmp/x".to_string()];
    assert!(judge(&Expect::no_rows(), &quiet, &secrets, &landed).is_unexpected());

    // Refused, but not as declared.
    let missing = Got::Refused {
        status: 400,
        code: "statement_failed".into(),
        sqlstate: Some("42P01".into()),
        text: "{}".into(),
    };
    assert!(judge(&Expect::no_right(), &missing, &secrets, &[]).is_unexpected());
    assert!(judge(&Expect::router(400), &missing, &secrets, &[]).is_unexpected());
    assert!(judge(&Expect::failed("0A"), &missing, &secrets, &[]).is_unexpected());
    assert_eq!(
        judge(&Expect::failed("42"), &missing, &secrets, &[]),
        Verdict::AsDeclared("refused 400 42xxx".into())
    );

    // The secret in an answer, in each encoding, at each alignment.
    for prefix in ["", "x", "xy", "xyz"] {
        let bytes = format!("{prefix}{SECRET}!");
        let b64 = verdict::base64(bytes.as_bytes());
        let hex: String = bytes.bytes().map(|b| format!("{b:02X}")).collect();
        let reversed: String = bytes.chars().rev().collect();
        for text in [b64, hex, reversed, bytes.to_lowercase()] {
            let got = Got::Answered {
                rows: vec![vec![json!(text)]],
                text: json!({ "rows": [[text]] }).to_string(),
            };
            let listing = Expect::Lacks {
                what: "the victim's names",
                words: vec![BETA_ID.into()],
            };
            assert!(
                judge(&listing, &got, &secrets, &[]).is_unexpected(),
                "{text} hides the secret"
            );
        }
    }
    // A listing naming the victim.
    let named = Got::Answered {
        rows: vec![vec![json!(format!("tenant_{BETA_ID}"))]],
        text: format!("[[\"tenant_{BETA_ID}\"]]"),
    };
    let listing = Expect::Lacks {
        what: "the victim's names",
        words: vec![BETA_ID.into(), BETA_NAME.into()],
    };
    assert!(judge(&listing, &named, &secrets, &[]).is_unexpected());
}

/// Session-state verdicts: a request 2 on the same connection that sees
/// the state fails; a clean one passes, in the bucket saying whether the
/// router reset or replaced the connection; a request 1 that did not run
/// shows nothing and fails.
#[test]
fn hostile_tenant_verdict_session_state() {
    let secrets = Secrets::new(&[SECRET]);
    let set = Got::Answered {
        rows: vec![vec![json!("0")]],
        text: "{}".into(),
    };
    let seen = |pid: i64, value: &str| Got::Answered {
        rows: vec![vec![json!(pid), json!(value)]],
        text: "{}".into(),
    };
    let check = |seen: &Got, clean: Clean<'static>| {
        let c = SessionCheck {
            pid_before: 7,
            set: &set,
            seen,
            clean,
            new_session: false,
        };
        judge_session(&c, &secrets, &[])
    };
    assert!(check(&seen(7, "0"), Clean::Equals("10s")).is_unexpected());
    assert_eq!(
        check(&seen(7, "10s"), Clean::Equals("10s")),
        Verdict::AsDeclared("session state gone on the same connection".into())
    );
    assert_eq!(
        check(&seen(8, "10s"), Clean::Equals("10s")),
        Verdict::AsDeclared("session state gone: the router replaced the connection".into())
    );
    assert!(check(&seen(7, "999999"), Clean::Not("999999")).is_unexpected());
    assert!(!check(&seen(7, "41"), Clean::Not("999999")).is_unexpected());
    let refused = Got::Refused {
        status: 400,
        code: "invalid_request".into(),
        sqlstate: None,
        text: "{}".into(),
    };
    let c = SessionCheck {
        pid_before: 7,
        set: &refused,
        seen: &seen(7, "10s"),
        clean: Clean::Equals("10s"),
        new_session: false,
    };
    assert!(judge_session(&c, &secrets, &[]).is_unexpected());
}

#[test]
fn hostile_tenant_base64_is_standard() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(verdict::base64(plain.as_bytes()), encoded);
    }
}
