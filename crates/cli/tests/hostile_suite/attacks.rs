//! The attacks: what tenant `alpha` sends with its own valid token to
//! reach tenant `beta`'s rows, sessions and files, the server's files
//! and settings, or rights it does not have — each with the outcome it
//! must get. Names of PostgreSQL objects come from the manager's API
//! (`pg_name`), never spelled here, so the suite holds whatever naming
//! the manager uses.
//!
//! Plain forms meet the router's session guard first; the same
//! statements wrapped in `DO` (PL/pgSQL's `EXECUTE`) reach PostgreSQL,
//! which must refuse them itself.

use serde_json::json;
use shardline_core::catalog::{quote_ident, quote_literal};

use super::verdict::Expect;

/// The schema of the monitoring extension (`pg_stat_statements`) an
/// operator installed in alpha's database, readable by alpha.
pub const MONITORING: &str = "monitoring";

/// What the attacks aim at.
#[derive(Debug, Clone)]
pub struct Target {
    /// The attacker's role, database and schema name.
    pub alpha: String,
    /// The victim's role, database and schema name.
    pub beta: String,
    /// Words that name the victim: its tenant id and display name.
    pub beta_words: Vec<String>,
    /// A large object of beta's.
    pub beta_lo: i64,
    /// The file of beta's table, relative to the data directory, and
    /// absolute.
    pub beta_file: String,
    pub beta_file_abs: String,
    /// The shard's data directory and configuration file.
    pub data_dir: String,
    pub config_file: String,
    /// A directory PostgreSQL could write to: file and program attacks
    /// aim here, and the suite checks it stays empty.
    pub marker: String,
    /// The shard key alpha sends (on the shard beta's victim uses).
    pub key: String,
}

impl Target {
    pub fn a(&self) -> String {
        quote_ident(&self.alpha)
    }

    fn b(&self) -> String {
        quote_ident(&self.beta)
    }

    fn b_lit(&self) -> String {
        quote_literal(&self.beta)
    }

    /// A path in the marker directory.
    fn mark(&self, file: &str) -> String {
        format!("{}/{file}", self.marker)
    }

    fn names_beta(&self) -> Expect {
        Expect::Lacks {
            what: "the victim's names",
            words: self.beta_words.clone(),
        }
    }
}

/// How an attack is sent.
#[derive(Debug, Clone)]
pub enum Send {
    /// One statement to `/v1/execute`.
    Execute(String),
    /// Statements to `/v1/transaction`.
    Transaction(Vec<String>),
    /// `SELECT * FROM items` in another keyspace.
    Keyspace(&'static str),
}

/// One attack and the outcome it must get.
#[derive(Debug, Clone)]
pub struct Attack {
    pub name: String,
    pub send: Send,
    pub expect: Expect,
}

pub fn attack(name: &str, sql: impl Into<String>, expect: Expect) -> Attack {
    Attack {
        name: name.into(),
        send: Send::Execute(sql.into()),
        expect,
    }
}

fn tx(name: &str, sqls: &[String], expect: Expect) -> Attack {
    Attack {
        name: name.into(),
        send: Send::Transaction(sqls.to_vec()),
        expect,
    }
}

/// `sql` run by PL/pgSQL's `EXECUTE`, past the router's keyword guard.
pub fn in_do(name: &str, sql: &str, expect: Expect) -> Attack {
    attack(
        &format!("{name} (in DO)"),
        format!("DO $x$ BEGIN EXECUTE {}; END $x$", quote_literal(sql)),
        expect,
    )
}

/// The guard's refusal (400, no SQLSTATE).
fn guard() -> Expect {
    Expect::router(400)
}

/// Everything alpha tries outside a live victim session.
pub fn attacks(t: &Target) -> Vec<Attack> {
    let mut list = Vec::new();
    list.extend(rows(t));
    list.extend(identity(t));
    list.extend(files(t));
    list.extend(rights(t));
    list.extend(catalogs(t));
    list
}

/// Reading and changing beta's rows by name: beta's schema is not in
/// alpha's database at all.
fn rows(t: &Target) -> Vec<Attack> {
    let (a, b) = (t.a(), t.b());
    let missing = || Expect::failed("42");
    let no_schema = || Expect::failed("3F");
    vec![
        attack(
            "schema-qualified read",
            format!("SELECT * FROM {b}.items"),
            missing(),
        ),
        attack(
            "cross-database reference",
            format!("SELECT * FROM {b}.{b}.items"),
            Expect::failed("0A"),
        ),
        attack(
            "read via CTE",
            format!("WITH x AS (SELECT * FROM {b}.items) SELECT * FROM x"),
            missing(),
        ),
        attack(
            "read via subquery",
            format!("SELECT (SELECT string_agg(v, ',') FROM {b}.items)"),
            missing(),
        ),
        attack(
            "read as base64",
            format!(
                "SELECT encode(convert_to(string_agg(v, ','), 'UTF8'), 'base64') FROM {b}.items"
            ),
            missing(),
        ),
        attack(
            "update",
            format!("UPDATE {b}.items SET v = 'pwned' RETURNING *"),
            missing(),
        ),
        attack(
            "delete",
            format!("DELETE FROM {b}.items RETURNING *"),
            missing(),
        ),
        attack(
            "insert",
            format!("INSERT INTO {b}.items VALUES ('evil', 'evil')"),
            missing(),
        ),
        attack("truncate", format!("TRUNCATE {b}.items"), no_schema()),
        attack("drop table", format!("DROP TABLE {b}.items"), no_schema()),
        attack(
            "drop schema",
            format!("DROP SCHEMA {b} CASCADE"),
            no_schema(),
        ),
        attack(
            "take ownership",
            format!("ALTER TABLE {b}.items OWNER TO {a}"),
            no_schema(),
        ),
        attack(
            "create in beta's schema",
            format!("CREATE TABLE {b}.trojan (x int)"),
            no_schema(),
        ),
        attack(
            "view over beta's table",
            format!("CREATE VIEW steal AS SELECT * FROM {b}.items"),
            missing(),
        ),
        attack(
            "trigger on beta's table",
            format!(
                "CREATE TRIGGER t BEFORE INSERT ON {b}.items \
                 FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
            ),
            no_schema(),
        ),
        tx(
            "lock beta's table",
            &[format!("LOCK TABLE {b}.items")],
            no_schema(),
        ),
        attack(
            "multiple statements in one",
            format!("SELECT 1; SELECT * FROM {b}.items"),
            Expect::failed("42601"),
        ),
        attack(
            "COPY beta's table",
            format!("COPY {b}.items TO STDOUT"),
            guard(),
        ),
        tx(
            "SECURITY DEFINER function",
            &[
                format!(
                    "CREATE FUNCTION steal() RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER \
                     AS $f$ BEGIN RETURN QUERY SELECT v FROM {b}.items; END $f$"
                ),
                "SELECT * FROM steal()".into(),
            ],
            missing(),
        ),
        // beta's large object lives in beta's database.
        attack(
            "read beta's large object",
            format!("SELECT lo_get({})", t.beta_lo),
            missing(),
        ),
        attack(
            "open beta's large object",
            format!("SELECT loread(lo_open({}, 262144), 100)", t.beta_lo),
            missing(),
        ),
        attack(
            "overwrite beta's large object",
            format!("SELECT lo_put({}, 0, 'pwned')", t.beta_lo),
            missing(),
        ),
        attack(
            "unlink beta's large object",
            format!("SELECT lo_unlink({})", t.beta_lo),
            missing(),
        ),
        attack(
            "pg_largeobject",
            "SELECT data FROM pg_largeobject",
            Expect::no_right(),
        ),
        // The router's own boundaries.
        Attack {
            name: "dedicated tenant's keyspace".into(),
            send: Send::Keyspace("gamma"),
            expect: Expect::router(403),
        },
        Attack {
            name: "unknown keyspace".into(),
            send: Send::Keyspace("nope"),
            expect: Expect::router(403),
        },
    ]
}

/// Becoming someone else.
fn identity(t: &Target) -> Vec<Attack> {
    let (a, b, bl) = (t.a(), t.b(), t.b_lit());
    let denied = Expect::no_right;
    vec![
        attack("SET ROLE", format!("SET ROLE {b}"), guard()),
        in_do("SET ROLE", &format!("SET ROLE {b}"), denied()),
        attack(
            "SET SESSION AUTHORIZATION",
            format!("SET SESSION AUTHORIZATION {b}"),
            guard(),
        ),
        in_do(
            "SET SESSION AUTHORIZATION",
            &format!("SET SESSION AUTHORIZATION {b}"),
            denied(),
        ),
        attack(
            "set_config role",
            format!("SELECT set_config('role', {bl}, false)"),
            denied(),
        ),
        attack(
            "set_config role superuser",
            "SELECT set_config('role', 'postgres', false)",
            denied(),
        ),
        attack(
            "set_config session_authorization",
            format!("SELECT set_config('session_authorization', {bl}, false)"),
            denied(),
        ),
        tx(
            "SET LOCAL ROLE then read",
            &[format!("SET LOCAL ROLE {b}"), "SELECT * FROM items".into()],
            denied(),
        ),
        tx(
            "SET LOCAL ROLE superuser then read",
            &[
                "SET LOCAL ROLE postgres".into(),
                format!("SELECT * FROM {b}.items"),
            ],
            denied(),
        ),
        attack("RESET ROLE", "RESET ROLE", guard()),
        // alpha has no other role to return to: harmless, and the
        // identity probe after every attack shows alpha is still alpha.
        in_do("RESET ROLE", "RESET ROLE", Expect::no_rows()),
        in_do(
            "RESET SESSION AUTHORIZATION",
            "RESET SESSION AUTHORIZATION",
            Expect::no_rows(),
        ),
        attack("SET search_path", format!("SET search_path = {b}"), guard()),
        tx(
            "set_config search_path then unqualified read",
            &[
                format!("SELECT set_config('search_path', {bl}, true)"),
                "SELECT * FROM items".into(),
            ],
            Expect::failed("42"),
        ),
        tx(
            "SET LOCAL search_path then read",
            &[
                format!("SET LOCAL search_path = {b}, public"),
                "SELECT * FROM items".into(),
            ],
            Expect::failed("42"),
        ),
        attack(
            "trojan function in public",
            "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'",
            denied(),
        ),
        attack(
            "table in public",
            "CREATE TABLE public.trap (x int)",
            denied(),
        ),
        attack("new schema", "CREATE SCHEMA evil", denied()),
        attack(
            "untrusted language",
            "CREATE FUNCTION sh() RETURNS text LANGUAGE c AS '/bin/sh', 'main'",
            denied(),
        ),
        attack(
            "internal language",
            "CREATE FUNCTION f() RETURNS text LANGUAGE internal AS 'textin'",
            denied(),
        ),
        attack(
            "ALTER ROLE other",
            format!("ALTER ROLE {b} PASSWORD 'owned'"),
            denied(),
        ),
        attack(
            "ALTER ROLE self SUPERUSER",
            format!("ALTER ROLE {a} SUPERUSER"),
            denied(),
        ),
        attack(
            "ALTER ROLE self CREATEROLE",
            format!("ALTER ROLE {a} CREATEROLE"),
            denied(),
        ),
        attack(
            "ALTER ROLE self BYPASSRLS",
            format!("ALTER ROLE {a} BYPASSRLS"),
            denied(),
        ),
        attack("CREATE ROLE", "CREATE ROLE evil SUPERUSER LOGIN", denied()),
        attack("GRANT role", format!("GRANT {b} TO {a}"), denied()),
        attack(
            "GRANT superuser role",
            format!("GRANT postgres TO {a}"),
            denied(),
        ),
        attack(
            "GRANT pg_read_server_files",
            format!("GRANT pg_read_server_files TO {a}"),
            denied(),
        ),
        attack(
            "GRANT pg_signal_backend",
            format!("GRANT pg_signal_backend TO {a}"),
            denied(),
        ),
        attack(
            "GRANT on beta's table",
            format!("GRANT ALL ON {b}.items TO {a}"),
            Expect::failed("3F"),
        ),
        attack(
            "GRANT on beta's schema",
            format!("GRANT USAGE ON SCHEMA {b} TO {a}"),
            Expect::failed("3F"),
        ),
        attack(
            "REASSIGN OWNED",
            format!("REASSIGN OWNED BY {b} TO {a}"),
            denied(),
        ),
        attack("DROP OWNED", format!("DROP OWNED BY {b}"), denied()),
        attack("CREATE DATABASE", "CREATE DATABASE evil", denied()),
        attack(
            "ALTER DATABASE other",
            format!("ALTER DATABASE {b} OWNER TO {a}"),
            denied(),
        ),
        attack(
            "DROP DATABASE other",
            format!("DROP DATABASE {b}"),
            denied(),
        ),
        attack(
            "event trigger",
            "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION pg_catalog.now()",
            denied(),
        ),
    ]
}

/// The server's files and programs: every write aims at the marker
/// directory, which the suite checks stays empty.
fn files(t: &Target) -> Vec<Attack> {
    let (a, b) = (t.a(), t.b());
    let denied = Expect::no_right;
    let file = quote_literal(&t.beta_file);
    let abs = quote_literal(&t.beta_file_abs);
    let mark = |f: &str| quote_literal(&t.mark(f));
    let program = |f: &str| quote_literal(&format!("touch {}", t.mark(f)));
    // What COPY TO PROGRAM runs reads what it is sent first: a program
    // that exits before PostgreSQL has written fails the COPY with a
    // broken pipe (seen once in the superuser control, which must
    // succeed).
    let to_program = |f: &str| quote_literal(&format!("cat > /dev/null; touch {}", t.mark(f)));
    vec![
        attack("pg_read_file", "SELECT pg_read_file('/etc/passwd')", denied()),
        attack(
            "pg_read_binary_file pg_control",
            "SELECT pg_read_binary_file('global/pg_control')",
            denied(),
        ),
        attack(
            "pg_read_binary_file of beta's table",
            format!("SELECT pg_read_binary_file({file})"),
            denied(),
        ),
        attack(
            "pg_read_binary_file of beta's table by absolute path",
            format!("SELECT pg_read_binary_file({abs})"),
            denied(),
        ),
        in_do(
            "pg_read_binary_file of beta's table",
            &format!("SELECT pg_read_binary_file({file})"),
            denied(),
        ),
        attack(
            "pg_read_file of beta's table",
            format!("SELECT pg_read_file({file}, 0, 8192)"),
            denied(),
        ),
        attack(
            "pg_stat_file of beta's table",
            format!("SELECT pg_stat_file({file})::text"),
            denied(),
        ),
        attack("pg_ls_dir", "SELECT pg_ls_dir('.')", denied()),
        attack("pg_ls_logdir", "SELECT name FROM pg_ls_logdir()", denied()),
        attack(
            "COPY TO PROGRAM",
            format!("COPY (SELECT 1) TO PROGRAM {}", to_program("program")),
            guard(),
        ),
        in_do(
            "COPY TO PROGRAM",
            &format!("COPY (SELECT 1) TO PROGRAM {}", to_program("program")),
            denied(),
        ),
        in_do(
            "COPY FROM PROGRAM",
            &format!("COPY items FROM PROGRAM {}", program("from-program")),
            denied(),
        ),
        in_do("COPY FROM file", "COPY items FROM '/etc/passwd'", denied()),
        attack(
            "COPY own table to a file",
            format!("COPY {a}.items TO {}", mark("copy-items")),
            guard(),
        ),
        in_do(
            "COPY own table to a file",
            &format!("COPY {a}.items TO {}", mark("copy-items")),
            denied(),
        ),
        in_do(
            "COPY a query to a file",
            &format!("COPY (SELECT * FROM items) TO {}", mark("copy-query")),
            denied(),
        ),
        in_do(
            "COPY beta's table to a file",
            &format!("COPY {b}.items TO {}", mark("copy-beta")),
            denied(),
        ),
        attack(
            "lo_export own large object",
            format!("SELECT lo_export(lo_from_bytea(0, 'x'), {})", mark("lo-own")),
            denied(),
        ),
        attack(
            "lo_export beta's large object",
            format!("SELECT lo_export({}, {})", t.beta_lo, mark("lo-beta")),
            denied(),
        ),
        attack("lo_import", "SELECT lo_import('/etc/passwd')", denied()),
        // adminpack is not installed: the function does not exist.
        attack(
            "pg_file_write",
            format!("SELECT pg_file_write({}, 'x', false)", mark("file-write")),
            Expect::failed("42883"),
        ),
        attack(
            "CREATE TABLESPACE",
            format!("CREATE TABLESPACE evil LOCATION {}", quote_literal(&t.marker)),
            denied(),
        ),
        attack("LOAD library", "LOAD '/tmp/evil.so'", guard()),
        in_do("LOAD library", "LOAD '/tmp/evil.so'", denied()),
        // Server settings: the suite checks pg_settings from a fresh
        // superuser session and postgresql.auto.conf after each attack.
        attack(
            "ALTER SYSTEM",
            format!("ALTER SYSTEM SET log_directory = {}", quote_literal(&t.marker)),
            denied(),
        ),
        in_do(
            "ALTER SYSTEM",
            "ALTER SYSTEM SET log_statement = 'all'",
            Expect::failed("25"),
        ),
        attack(
            "set_config of a superuser setting",
            "SELECT set_config('log_statement', 'all', false)",
            denied(),
        ),
        attack("pg_reload_conf", "SELECT pg_reload_conf()", denied()),
        attack("pg_rotate_logfile", "SELECT pg_rotate_logfile()", denied()),
        attack("pg_switch_wal", "SELECT pg_switch_wal()::text", denied()),
        attack("pg_promote", "SELECT pg_promote()", denied()),
        attack(
            "ALTER DATABASE own SET",
            format!("ALTER DATABASE {a} SET statement_timeout = 0"),
            denied(),
        ),
        // Trusted extensions still need CREATE on the database, which a
        // tenant does not have; untrusted ones need a superuser.
        attack("CREATE EXTENSION pgcrypto (trusted)", "CREATE EXTENSION pgcrypto", denied()),
        attack(
            "CREATE EXTENSION hstore (trusted) in own schema",
            format!("CREATE EXTENSION hstore SCHEMA {a}"),
            denied(),
        ),
        in_do(
            "CREATE EXTENSION pg_trgm (trusted)",
            "CREATE EXTENSION pg_trgm",
            denied(),
        ),
        attack("CREATE EXTENSION dblink", "CREATE EXTENSION dblink", denied()),
        attack(
            "CREATE EXTENSION postgres_fdw",
            "CREATE EXTENSION postgres_fdw",
            denied(),
        ),
        attack(
            "dblink call",
            format!(
                "SELECT * FROM dblink('dbname={} user=postgres', 'SELECT v FROM {b}.items') AS t(v text)",
                t.beta
            ),
            Expect::failed("42883"),
        ),
        attack(
            "foreign server",
            format!(
                "CREATE SERVER evil FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname {})",
                t.b_lit()
            ),
            Expect::failed("42704"),
        ),
    ]
}

/// Rights alpha has no business having, through functions.
fn rights(t: &Target) -> Vec<Attack> {
    vec![
        attack("LISTEN", "LISTEN beta_events", guard()),
        // NOTIFY checks no privilege, but channels are per database: the
        // suite's listener in beta's database must hear nothing.
        attack(
            "NOTIFY",
            "NOTIFY beta_events, 'from alpha'",
            Expect::no_rows(),
        ),
        in_do(
            "NOTIFY",
            "NOTIFY beta_events, 'from alpha'",
            Expect::no_rows(),
        ),
        attack(
            "pg_notify",
            "SELECT pg_notify('beta_events', 'from alpha')",
            Expect::no_right(),
        ),
        attack(
            "database size of beta",
            format!("SELECT pg_database_size({})", t.b_lit()),
            Expect::no_right(),
        ),
    ]
}

/// Catalogs and statistics: readable where PostgreSQL lets everyone
/// read, and then holding nothing of beta's.
fn catalogs(t: &Target) -> Vec<Attack> {
    let me = "current_user::regrole::oid";
    let names = || t.names_beta();
    let paths = || Expect::Lacks {
        what: "server file paths",
        words: vec![t.data_dir.clone(), t.config_file.clone()],
    };
    vec![
        attack(
            "pg_stats",
            "SELECT tablename, most_common_vals::text, histogram_bounds::text FROM pg_stats \
             WHERE tablename = 'items'",
            Expect::no_rows(),
        ),
        attack(
            "pg_statistic",
            "SELECT starelid::regclass::text, stavalues1::text FROM pg_statistic",
            Expect::no_right(),
        ),
        attack(
            "pg_authid",
            "SELECT rolname, rolpassword FROM pg_authid",
            Expect::no_right(),
        ),
        attack(
            "pg_shadow",
            "SELECT usename, passwd FROM pg_shadow",
            Expect::no_right(),
        ),
        attack(
            "beta's relations",
            format!(
                "SELECT relname FROM pg_class WHERE relnamespace = {}::regnamespace",
                t.b_lit()
            ),
            Expect::failed("3F"),
        ),
        attack(
            "pg_stat_user_tables",
            format!(
                "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname = {}",
                t.b_lit()
            ),
            Expect::no_rows(),
        ),
        attack("list databases", "SELECT datname FROM pg_database", names()),
        attack("list roles", "SELECT rolname FROM pg_roles", names()),
        attack("list users", "SELECT usename FROM pg_user", names()),
        attack(
            "list sessions",
            "SELECT usename, datname, application_name, query FROM pg_stat_activity",
            Expect::no_right(),
        ),
        attack(
            "list database statistics",
            "SELECT datname FROM pg_stat_database",
            Expect::no_right(),
        ),
        attack(
            "other sessions' queries",
            format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usesysid IS DISTINCT FROM {me} \
                 AND query IS DISTINCT FROM '<insufficient privilege>'"
            ),
            Expect::no_right(),
        ),
        // pg_stat_statements, as an operator installs it: every
        // database's statements, beta's with its secret among them.
        attack(
            "pg_stat_statements",
            format!("SELECT query FROM {MONITORING}.pg_stat_statements WHERE userid <> {me}"),
            names(),
        ),
        attack(
            "pg_stat_statements of others",
            format!(
                "SELECT count(*) FROM {MONITORING}.pg_stat_statements \
                 WHERE userid <> {me} AND query <> '<insufficient privilege>'"
            ),
            Expect::one(json!(0)),
        ),
        attack(
            "pg_stat_statements users",
            format!("SELECT userid::regrole::text FROM {MONITORING}.pg_stat_statements"),
            names(),
        ),
        // File paths: hidden from tenants (superuser-only settings).
        attack(
            "pg_settings of file paths",
            "SELECT name, setting FROM pg_settings WHERE name IN \
             ('data_directory', 'config_file', 'hba_file', 'ident_file', \
             'external_pid_file', 'log_directory')",
            Expect::no_rows(),
        ),
        attack(
            "all of pg_settings",
            "SELECT name, setting FROM pg_settings",
            paths(),
        ),
        attack(
            "SHOW data_directory",
            "SHOW data_directory",
            Expect::no_right(),
        ),
        attack(
            "current_setting hba_file",
            "SELECT current_setting('hba_file')",
            Expect::no_right(),
        ),
    ]
}

/// Attacks on beta's session `pid`, running a query while they are sent.
pub fn on_victim(t: &Target, pid: i32) -> Vec<Attack> {
    let denied = Expect::no_right;
    let bl = t.b_lit();
    vec![
        attack("cancel beta's query", format!("SELECT pg_cancel_backend({pid})"), denied()),
        attack(
            "terminate beta's session",
            format!("SELECT pg_terminate_backend({pid})"),
            denied(),
        ),
        attack(
            "terminate beta's session with a timeout",
            format!("SELECT pg_terminate_backend({pid}, 1000)"),
            denied(),
        ),
        in_do(
            "terminate beta's session",
            &format!("SELECT pg_terminate_backend({pid})"),
            denied(),
        ),
        attack(
            "cancel sessions by guessed pids",
            format!(
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(g)) FROM generate_series({}, {}) g \
                 WHERE g <> pg_backend_pid()",
                pid - 20,
                pid + 20
            ),
            denied(),
        ),
        attack(
            "terminate beta's sessions by database",
            format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {bl}"),
            denied(),
        ),
        attack(
            "cancel beta's sessions by role",
            format!("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE usename = {bl}"),
            denied(),
        ),
        attack(
            "beta's running query",
            format!("SELECT query FROM pg_stat_activity WHERE pid = {pid}"),
            Expect::no_right(),
        ),
        attack(
            "sessions while beta runs",
            "SELECT usename, datname, query FROM pg_stat_activity",
            Expect::no_right(),
        ),
    ]
}
