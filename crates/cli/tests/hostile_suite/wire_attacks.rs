//! The attack list over the PostgreSQL protocol: each HTTP attack's
//! declaration translated to the wire ([`Expect::on_wire`]), the wire
//! outcomes of the attacks the HTTP router refuses by itself (the wire
//! has no keyword guard: those statements reach PostgreSQL, which must
//! refuse them or answer harmlessly), and attacks only the wire can
//! express — several statements in one simple query, session settings
//! kept for later transactions, `DISCARD ALL`, startup packets asking
//! for other databases or roles, protocol messages named like the
//! router's own, the function-call message.

use std::net::SocketAddr;

use serde_json::{json, Value};
use shardline_core::catalog::{quote_ident, quote_literal};

use super::attacks::{Attack, Target};
use super::rawwire::{self, RawWire};
use super::verdict::{Expect, Got};

/// How a wire-only attack is sent (as alpha's app unless it says).
#[derive(Debug, Clone)]
pub enum WireSend {
    /// Texts sent as simple queries on one connection with the session's
    /// shard key set, each its own `Query`; the rows are the last one's.
    Steps(Vec<String>),
    /// Protocol messages, as bytes, on a connection whose shard key is
    /// set.
    Raw(Vec<u8>),
    /// A startup packet with these parameters (`user` included), logged
    /// in with `password`, then the shard key set and `then` sent.
    Startup {
        params: Vec<(String, String)>,
        password: String,
        then: String,
    },
}

/// A wire-only attack and the outcome it must get.
#[derive(Debug, Clone)]
pub struct WireAttack {
    pub name: String,
    pub send: WireSend,
    pub expect: Expect,
}

/// Who is who on the wire.
#[derive(Debug, Clone)]
pub struct WireNames {
    pub addr: SocketAddr,
    pub alpha_app: String,
    pub alpha_token: String,
    pub beta_app: String,
    pub beta_tenant: String,
    /// The keyspace alpha shares with beta.
    pub keyspace: String,
    /// A key on the other shared shard.
    pub other_key: String,
}

/// The wire outcomes of the attacks whose HTTP declaration is a refusal
/// by the router alone (no SQLSTATE): its keyword guard, a keyspace it
/// will not serve. Without the guard the statement reaches PostgreSQL
/// as alpha's role, in alpha's database.
pub fn router_refusals_on_wire() -> Vec<(&'static str, Expect)> {
    let denied = || Expect::wire("42501");
    vec![
        // beta's schema is not in alpha's database.
        ("COPY beta's table", Expect::wire("3F000")),
        // A login naming another keyspace.
        ("dedicated tenant's keyspace", Expect::wire("3D000")),
        ("unknown keyspace", Expect::wire("3D000")),
        ("SET ROLE", denied()),
        ("SET SESSION AUTHORIZATION", denied()),
        // alpha has no other role to return to (the identity probes
        // after every attack show it is still alpha).
        ("RESET ROLE", Expect::no_rows()),
        // Accepted: a setting naming a schema that does not exist in
        // alpha's database; reading through it is refused (the
        // wire-only attacks), and it never reaches the next client.
        ("SET search_path", Expect::no_rows()),
        ("COPY TO PROGRAM", denied()),
        ("COPY own table to a file", denied()),
        ("LOAD library", denied()),
        // Channels are per database: beta's listener hears nothing.
        ("LISTEN", Expect::no_rows()),
    ]
}

/// An attack's declaration on the wire, or why it has none.
pub fn on_wire(a: &Attack, table: &[(&'static str, Expect)]) -> Result<Expect, String> {
    if let Some(e) = a.expect.on_wire() {
        return Ok(e);
    }
    table
        .iter()
        .find(|(name, _)| *name == a.name)
        .map(|(_, e)| e.clone())
        .ok_or_else(|| {
            format!(
                "declares {} with no wire counterpart, and no wire outcome is declared for it",
                a.expect.bucket()
            )
        })
}

fn steps(name: &str, sqls: &[String], expect: Expect) -> WireAttack {
    WireAttack {
        name: name.into(),
        send: WireSend::Steps(sqls.to_vec()),
        expect,
    }
}

fn one(name: &str, sql: String, expect: Expect) -> WireAttack {
    steps(name, &[sql], expect)
}

fn raw(name: &str, parts: &[Vec<u8>], expect: Expect) -> WireAttack {
    WireAttack {
        name: name.into(),
        send: WireSend::Raw(parts.concat()),
        expect,
    }
}

fn text_row(values: &[&str]) -> Expect {
    Expect::Rows(vec![values.iter().map(|v| json!(v)).collect()])
}

/// Attacks only the wire can express.
pub fn wire_attacks(t: &Target, n: &WireNames) -> Vec<WireAttack> {
    let mut list = several_statements(t, n);
    list.extend(settings(t));
    list.extend(startup(t, n));
    list.extend(protocol(t));
    list
}

/// Several statements in one simple query (one `Query` message): the
/// HTTP API takes one statement per request; the wire takes any number.
fn several_statements(t: &Target, n: &WireNames) -> Vec<WireAttack> {
    let (a, b, bl) = (
        t.alpha.as_str(),
        quote_ident(&t.beta),
        quote_literal(&t.beta),
    );
    let key = quote_literal(&t.key);
    let denied = || Expect::wire("42501");
    vec![
        one(
            "RESET ROLE, then who am I, in one query",
            "RESET ROLE; SELECT current_user::text, session_user::text".into(),
            text_row(&[a, a]),
        ),
        one(
            "SET SESSION AUTHORIZATION beta, then read, in one query",
            format!("SET SESSION AUTHORIZATION {b}; SELECT * FROM items"),
            denied(),
        ),
        one(
            "SET ROLE beta, then read, in one query",
            format!("SET ROLE {b}; SELECT * FROM items"),
            denied(),
        ),
        one(
            "RESET ROLE, then SET ROLE beta, in one query",
            format!("RESET ROLE; SET ROLE {b}; SELECT current_user::text"),
            denied(),
        ),
        one(
            "SET ROLE superuser after a statement, in one query",
            "SELECT 1; SET ROLE postgres; SELECT current_user::text".into(),
            denied(),
        ),
        one(
            "SET SESSION AUTHORIZATION DEFAULT, then who am I",
            "SET SESSION AUTHORIZATION DEFAULT; SELECT current_user::text, session_user::text"
                .into(),
            text_row(&[a, a]),
        ),
        one(
            "BEGIN, SET LOCAL ROLE beta, read, COMMIT, in one query",
            format!("BEGIN; SET LOCAL ROLE {b}; SELECT * FROM items; COMMIT"),
            denied(),
        ),
        one(
            "set_config role beta, then read, in one query",
            format!("SELECT set_config('role', {bl}, false); SELECT * FROM items"),
            denied(),
        ),
        one(
            "shard key and SET ROLE beta in one query",
            format!("SET shardline.shard_key = {key}; SET ROLE {b}"),
            denied(),
        ),
        one(
            "comment key on SET ROLE beta",
            format!("/* shardline.shard_key={key} */ SET ROLE {b}"),
            denied(),
        ),
        one(
            "read beta's rows after a statement, in one query",
            format!("SELECT 1; SELECT v FROM {b}.items"),
            Expect::wire("42P01"),
        ),
        one(
            "COPY TO PROGRAM after a statement, in one query",
            format!(
                "SELECT 1; COPY (SELECT 1) TO PROGRAM {}",
                quote_literal(&format!("touch {}/wire-program", t.marker))
            ),
            denied(),
        ),
        one(
            "COPY FROM PROGRAM",
            format!(
                "COPY items FROM PROGRAM {}",
                quote_literal(&format!("touch {}/wire-from-program", t.marker))
            ),
            denied(),
        ),
        one(
            "NOTIFY beta's channel with LISTEN, in one query",
            "LISTEN beta_events; NOTIFY beta_events, 'from alpha on the wire'; SELECT 1".into(),
            text_row(&["1"]),
        ),
        one(
            "the other shard by a comment key",
            format!(
                "/* shardline.shard_key={} */ SELECT current_database()::text, current_user::text, \
                 (SELECT count(*) FROM items)::text",
                quote_literal(&n.other_key)
            ),
            text_row(&[a, a, "0"]),
        ),
    ]
}

/// Session settings the router keeps for a client and sends before each
/// of its transactions, and statements that reset a session.
fn settings(t: &Target) -> Vec<WireAttack> {
    let a = t.alpha.as_str();
    let b = quote_ident(&t.beta);
    let own = format!(
        "SELECT current_user::text, v FROM items WHERE k = {}",
        quote_literal(&t.key)
    );
    vec![
        steps(
            "SET search_path to beta's schema, then a new transaction",
            &[
                format!("SET search_path = {b}"),
                "BEGIN".into(),
                "SELECT v FROM items".into(),
                "COMMIT".into(),
            ],
            Expect::wire("42P01"),
        ),
        steps(
            "SET search_path to beta's schema and public, then read",
            &[
                format!("SET search_path = {b}, public"),
                "SELECT v FROM items".into(),
            ],
            Expect::wire("42P01"),
        ),
        steps(
            "SET search_path in a committed transaction, then read",
            &[
                "BEGIN".into(),
                format!("SET search_path = {b}"),
                "COMMIT".into(),
                own.clone(),
            ],
            text_row(&[a, "alpha-own"]),
        ),
        // `DISCARD ALL` and `RESET ALL` reset `shardline.shard_key` like
        // any setting (as PostgreSQL would): the next statement has no
        // key, so it is refused rather than sent to the old key's shard.
        steps(
            "DISCARD ALL, then who am I and my row",
            &["DISCARD ALL".into(), own.clone()],
            Expect::wire("0A000"),
        ),
        steps(
            "RESET ALL, then a keyless read over every shard",
            &[
                "RESET ALL".into(),
                "SELECT current_database()::text, v FROM items".into(),
            ],
            Expect::wire("0A000"),
        ),
        steps(
            "RESET ALL, then a keyless write",
            &[
                "RESET ALL".into(),
                "DELETE FROM items WHERE v = 'no such row'".into(),
            ],
            Expect::wire("0A000"),
        ),
        steps(
            "SET ROLE to alpha itself, then SET ROLE beta",
            &[
                format!("SET ROLE {}", quote_ident(a)),
                format!("SET ROLE {b}"),
            ],
            Expect::wire("42501"),
        ),
    ]
}

/// Startup packets: the database and role a client asks for at login.
fn startup(t: &Target, n: &WireNames) -> Vec<WireAttack> {
    let a = t.alpha.as_str();
    let b = quote_ident(&t.beta);
    let login = |name: &str, extra: &[(&str, &str)], user: &str, then: &str, expect: Expect| {
        let mut params = vec![("user".to_string(), user.to_string())];
        if !extra.iter().any(|(k, _)| *k == "database") {
            params.push(("database".into(), n.keyspace.clone()));
        }
        params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        WireAttack {
            name: name.into(),
            send: WireSend::Startup {
                params,
                password: n.alpha_token.clone(),
                then: then.into(),
            },
            expect,
        }
    };
    let me = &n.alpha_app;
    let who = "SELECT current_user::text, session_user::text";
    let own = format!(
        "SELECT current_user::text, v FROM items WHERE k = {}",
        quote_literal(&t.key)
    );
    vec![
        login(
            "login to beta's PostgreSQL database",
            &[("database", &t.beta)],
            me,
            who,
            Expect::wire("3D000"),
        ),
        login(
            "login to beta's tenant id as database",
            &[("database", &n.beta_tenant)],
            me,
            who,
            Expect::wire("3D000"),
        ),
        login(
            "login to beta's app id as database",
            &[("database", &n.beta_app)],
            me,
            who,
            Expect::wire("3D000"),
        ),
        login(
            "login to the dedicated tenant's keyspace",
            &[("database", "gamma")],
            me,
            who,
            Expect::wire("3D000"),
        ),
        login(
            "login as beta's app with alpha's token",
            &[],
            &n.beta_app,
            who,
            Expect::wire("28P01"),
        ),
        login(
            "login to the keyspace alpha shares with beta",
            &[("database", &n.keyspace)],
            me,
            "SELECT current_database()::text, current_user::text",
            text_row(&[a, a]),
        ),
        login(
            "startup options -c role=beta",
            &[("options", &format!("-c role={}", t.beta))],
            me,
            who,
            text_row(&[a, a]),
        ),
        login(
            "startup options -c session_authorization=beta",
            &[("options", &format!("-c session_authorization={}", t.beta))],
            me,
            who,
            text_row(&[a, a]),
        ),
        login(
            "startup options -c search_path=beta",
            &[("options", &format!("-c search_path={b}"))],
            me,
            &own,
            text_row(&[a, "alpha-own"]),
        ),
        login(
            "startup parameter search_path=beta",
            &[("search_path", &t.beta)],
            me,
            &own,
            text_row(&[a, "alpha-own"]),
        ),
        login(
            "startup TimeZone that closes its quote and sets the role",
            &[("TimeZone", &format!("UTC'; SET ROLE {b}; SELECT '"))],
            me,
            who,
            text_row(&[a, a]),
        ),
        login(
            "startup for replication",
            &[("replication", "database")],
            me,
            who,
            Expect::wire("0A000"),
        ),
    ]
}

/// Protocol messages a driver would not send.
fn protocol(t: &Target) -> Vec<WireAttack> {
    let a = t.alpha.as_str();
    let internal = "sl00000000000000000000000000000000";
    vec![
        raw(
            "Parse named like the router's statements",
            &[
                rawwire::parse(internal, "SELECT current_user::text"),
                rawwire::bind("", internal, &[]),
                rawwire::execute(""),
                rawwire::sync(),
            ],
            text_row(&[a]),
        ),
        raw(
            "Parse of SET ROLE beta",
            &[
                rawwire::parse("", &format!("SET ROLE {}", quote_ident(&t.beta))),
                rawwire::bind("", "", &[]),
                rawwire::execute(""),
                rawwire::sync(),
            ],
            Expect::wire("42501"),
        ),
        raw(
            "Parse of several statements",
            &[
                rawwire::parse(
                    "",
                    &format!("SELECT 1; SELECT v FROM {}.items", quote_ident(&t.beta)),
                ),
                rawwire::bind("", "", &[]),
                rawwire::execute(""),
                rawwire::sync(),
            ],
            Expect::wire("42601"),
        ),
        raw(
            // pg_read_file(text)'s function: the router does not speak
            // the function-call protocol at all.
            "function call message",
            &[rawwire::function_call(2624, &["/etc/passwd"])],
            Expect::wire("0A000"),
        ),
        raw(
            "COPY a query of beta's table TO STDOUT",
            &[rawwire::query(&format!(
                "COPY (SELECT v FROM {}.items) TO STDOUT",
                quote_ident(&t.beta)
            ))],
            Expect::wire("42P01"),
        ),
    ]
}

/// Sends a wire-only attack as alpha (`key` set as the session's key).
pub async fn send(n: &WireNames, key: &str, s: &WireSend) -> Got {
    let set_key = rawwire::query(&format!("SET shardline.shard_key = {}", quote_literal(key)));
    let (params, password, then): (Vec<(String, String)>, &str, Vec<u8>) = match s {
        WireSend::Steps(sqls) => {
            let login =
                super::wire::Login::router(n.addr, &n.alpha_app, &n.alpha_token, &n.keyspace);
            let mut c = match super::wire::WireClient::keyed(&login, key).await {
                Ok(c) => c,
                Err(got) => return got,
            };
            let got = c.steps(sqls).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            return super::wire::with_heard(got, c.heard());
        }
        WireSend::Raw(bytes) => (
            vec![
                ("user".into(), n.alpha_app.clone()),
                ("database".into(), n.keyspace.clone()),
            ],
            &n.alpha_token,
            bytes.clone(),
        ),
        WireSend::Startup {
            params,
            password,
            then,
        } => (params.clone(), password, rawwire::query(then)),
    };
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut c = match RawWire::connect(n.addr, &pairs, password).await {
        Ok(c) => c,
        Err(got) => return got,
    };
    match c.exchange(&set_key).await {
        Got::Answered { .. } => {}
        other => return Got::NoAnswer(format!("setting the shard key: {}", other.describe())),
    }
    c.exchange(&then).await
}

/// `rows` as JSON text values.
pub fn texts(rows: &[&[&str]]) -> Vec<Vec<Value>> {
    rows.iter()
        .map(|r| r.iter().map(|v| json!(v)).collect())
        .collect()
}
