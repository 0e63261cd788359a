//! The hostile-tenant suite over the PostgreSQL protocol (issue 13):
//! holding valid credentials of tenant `alpha`'s app, a client of the
//! router's wire listener sends the HTTP suite's attack list — each
//! attack on its own connection, its shard key set by `SET
//! shardline.shard_key`, its text as a simple query — and the attacks
//! only the wire can express: several statements in one query
//! (`RESET ROLE`, `SET SESSION AUTHORIZATION`, `SET ROLE` to beta's
//! role), `DISCARD ALL` and `RESET ALL`, session settings the router
//! keeps and sends before later transactions, startup packets asking for
//! beta's database or role, protocol messages named like the router's
//! own prepared statements, the function-call message, cancel requests
//! with guessed keys, and changes to another client's prepared
//! statements on the server session they share.
//!
//! Each attack's HTTP declaration is translated to the wire
//! ([`Expect::on_wire`]): a refusal keeps its SQLSTATE class (the wire
//! has no HTTP status), rows are compared as text; an attack the HTTP
//! router refuses by itself (its keyword guard, a keyspace it will not
//! serve) declares its wire outcome in `wire_attacks.rs`, since on the
//! wire the statement reaches PostgreSQL. The same secret search and
//! effect probes run after each attack, and one more: the next client of
//! alpha's pooled server session (a connection of alpha's other app)
//! must see a clean session. The count by declared outcome is printed;
//! an attack not as declared fails the test, named with what it declared
//! and what it got. Controls show the wire verdict can fail: attacks
//! sent over the wire by a tenant given superuser-like rights, and sent
//! as a superuser straight to PostgreSQL, are called unexpected.

mod common;
mod hostile_suite;

use std::time::Instant;

use hostile_suite::suite::set_up;
use hostile_suite::verdict::{judge, Expect, Got, Secrets};
use hostile_suite::wire_attacks::{on_wire, router_refusals_on_wire};
use hostile_suite::{attacks, suite::SECRET, verdict, wire_more, wire_phases};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tenant_reaches_nothing_of_another_over_the_wire() {
    let mut suite = set_up().await;
    let started = Instant::now();
    let mut run = wire_phases::WireRun::new(&mut suite).await;
    let mut phases = Vec::new();
    let mut since = Instant::now();
    let mut phase = |name: &str, since: &mut Instant| {
        let took = format!("{name} {:.1}s", since.elapsed().as_secs_f64());
        println!("phase done: {took}");
        phases.push(took);
        *since = Instant::now();
    };
    wire_phases::list_attacks(&mut suite, &mut run).await;
    phase("attack list", &mut since);
    wire_phases::wire_only(&mut suite, &mut run).await;
    phase("wire-only attacks", &mut since);
    wire_phases::victim_attacks(&mut suite, &mut run).await;
    phase("on beta's session", &mut since);
    wire_phases::next_client_statements(&mut suite, &mut run).await;
    phase("another client's statements", &mut since);
    wire_phases::session_state(&mut suite, &mut run).await;
    phase("session state", &mut since);
    wire_more::notify_across_tenants(&mut suite, &mut run).await;
    wire_more::resources(&mut suite, &mut run).await;
    phase("resources", &mut since);
    wire_more::busy_connections(&mut suite, &mut run).await;
    phase("busy connections", &mut since);
    wire_more::controls(&mut suite).await;
    phase("controls", &mut since);

    suite
        .finish("hostile-tenant suite over the wire", started, &phases)
        .await;
}

/// The translation of declarations to the wire, without a stack: a
/// refusal keeps its class and no HTTP status; rows become text; a
/// refusal by the router's HTTP layer has no counterpart unless the
/// attack declares one.
#[test]
fn hostile_wire_declarations_translate() {
    assert_eq!(Expect::no_right().on_wire(), Some(Expect::wire("42")));
    assert_eq!(Expect::failed("3F").on_wire(), Some(Expect::wire("3F")));
    assert_eq!(Expect::router(400).on_wire(), None);
    assert_eq!(
        Expect::one(json!(true)).on_wire(),
        Some(Expect::one(json!("t")))
    );
    assert_eq!(
        Expect::Rows(vec![vec![json!(0), json!("x"), json!(null)]]).on_wire(),
        Some(Expect::Rows(vec![vec![
            json!("0"),
            json!("x"),
            json!(null)
        ]]))
    );
    assert_eq!(Expect::wire("42").bucket(), "refused 42xxx");

    // Every attack of the list has a wire declaration, and every wire
    // declaration of a router refusal names one.
    let t = attacks::Target {
        alpha: "a".into(),
        beta: "b".into(),
        beta_words: vec!["b".into()],
        beta_lo: 1,
        beta_file: "f".into(),
        beta_file_abs: "/f".into(),
        data_dir: "/d".into(),
        config_file: "/c".into(),
        marker: "/m".into(),
        key: "k".into(),
    };
    let table = router_refusals_on_wire();
    let list: Vec<_> = attacks::attacks(&t)
        .into_iter()
        .chain(attacks::on_victim(&t, 1))
        .collect();
    for a in &list {
        assert!(
            on_wire(a, &table).is_ok(),
            "{}: {:?}",
            a.name,
            on_wire(a, &table)
        );
    }
    for (name, _) in &table {
        assert!(
            list.iter()
                .any(|a| a.name == *name && a.expect.on_wire().is_none()),
            "{name}"
        );
    }
}

/// The wire verdict fails what it must: another SQLSTATE class, an
/// answer where a refusal was declared (a superuser's), rows that differ
/// as text, the secret in an error's detail or a notice, an effect.
#[test]
fn hostile_wire_verdict_fails_attacks_that_succeed() {
    let secrets = Secrets::new(&[SECRET]);
    let refused = |code: &str, text: &str| Got::WireRefused {
        sqlstate: code.into(),
        text: text.into(),
    };
    let denied = Expect::no_right().on_wire().expect("a class");
    assert!(!judge(&denied, &refused("42501", "E"), &secrets, &[]).is_unexpected());
    assert!(!judge(&denied, &refused("42P01", "E"), &secrets, &[]).is_unexpected());
    assert!(judge(&denied, &refused("0A000", "E"), &secrets, &[]).is_unexpected());
    assert!(judge(
        &Expect::wire("42501"),
        &refused("42P01", "E"),
        &secrets,
        &[]
    )
    .is_unexpected());
    // An HTTP refusal is no wire refusal, and the reverse.
    let http = Got::Refused {
        status: 403,
        code: "forbidden".into(),
        sqlstate: Some("42501".into()),
        text: "{}".into(),
    };
    assert!(judge(&denied, &http, &secrets, &[]).is_unexpected());
    assert!(judge(&Expect::no_right(), &refused("42501", "E"), &secrets, &[]).is_unexpected());
    // Succeeded quietly: `t`.
    let answered = Got::Answered {
        rows: vec![vec![json!("t")]],
        text: r#"[[["t"]]]"#.into(),
    };
    let v = judge(&denied, &answered, &secrets, &[]);
    assert!(v.is_unexpected(), "{v:?}");
    assert!(
        v.reasons()[0].contains("expected refused with sqlstate 42*"),
        "{v:?}"
    );
    // Rows as text.
    let zero = Expect::one(json!(0)).on_wire().expect("rows");
    let got_zero = Got::Answered {
        rows: vec![vec![json!("0")]],
        text: "[]".into(),
    };
    assert!(!judge(&zero, &got_zero, &secrets, &[]).is_unexpected());
    assert!(judge(&Expect::one(json!(0)), &got_zero, &secrets, &[]).is_unexpected());
    // The secret in an error's detail, or in a notice heard.
    let leak = refused(
        "42501",
        &format!("ERROR 42501: no (detail Some(\"{SECRET}\"))"),
    );
    assert!(judge(&denied, &leak, &secrets, &[]).is_unexpected());
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let notice = hostile_suite::wire::with_heard(
        got_zero.clone(),
        vec![format!("notice WARNING 01000: \\x{hex}")],
    );
    assert!(judge(&zero, &notice, &secrets, &[]).is_unexpected());
    // As declared, but an effect landed.
    let landed = vec!["the next client of alpha's server session sees ...".to_string()];
    assert!(judge(&zero, &got_zero, &secrets, &landed).is_unexpected());
    assert_eq!(
        verdict::judge(&denied, &refused("42501", "E"), &secrets, &[]),
        verdict::Verdict::AsDeclared("refused 42xxx".into())
    );
}
