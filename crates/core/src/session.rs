//! What can change a PostgreSQL session's state, so that routers know
//! when a pooled session needs a reset after a request.
//!
//! A router's pooled sessions are shared by a tenant's requests. State a
//! request leaves in a session — settings, role, temporary tables,
//! advisory locks, `LISTEN`, open cursors, prepared statements — must not
//! reach the next one. Resetting after every request costs a statement
//! per request (docs/benchmarks.md), so routers reset only after requests
//! that could have changed the session, and that is decided soundly:
//!
//! - Only code can change session state from inside a plain `SELECT`,
//!   `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `VALUES`, `TABLE` or `SHOW`
//!   (utility statements, `DO`, `CALL`, `SELECT INTO` are seen in the
//!   text and always reset). Code is a function or procedure of the
//!   tenant's (a trigger, a default or a view may call one without the
//!   statement naming it), or a built-in function in
//!   [`SESSION_CHANGING_FUNCTIONS`].
//! - Tenants cannot create code: an event trigger in every tenant
//!   database refuses, for non-superuser sessions, `CREATE FUNCTION`,
//!   `PROCEDURE`, `AGGREGATE`, `EXTENSION`, ... and any object that
//!   depends on one of those built-ins. Code comes only from migrations,
//!   which the manager applies after it has marked the keyspace
//!   ([`crate::catalog::Keyspace::tenant_code`]) and every live router
//!   has that catalog.
//! - A statement naming one of those built-ins (in any case, quoted or
//!   not, even inside a string), or written with Unicode escapes (`U&`),
//!   which could spell one, resets too.

/// Built-in functions that change the session they run in (settings,
/// session advisory locks, the random seed) or run SQL given as text
/// (which could do so). A tenant's object may not call them; a statement
/// that names one is followed by a reset.
pub const SESSION_CHANGING_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "setseed",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// Sequence functions: they change the session's `currval`/`lastval`,
/// or read them. A statement naming one resets (a column default calling
/// `nextval` is everywhere, so objects may call these).
pub const SEQUENCE_FUNCTIONS: &[&str] = &["nextval", "setval", "currval", "lastval"];

/// Whether `sql`'s text names one of [`SESSION_CHANGING_FUNCTIONS`] or
/// [`SEQUENCE_FUNCTIONS`], or uses a Unicode escape (`U&'...'`,
/// `U&"..."`), anywhere, in any case. Errs towards `true`: a name in a
/// string or comment counts.
pub fn names_session_changing_function(sql: &str) -> bool {
    // Lower-cased on the stack for the usual short statement: this runs
    // for every HTTP request.
    let mut buf = [0u8; 512];
    let owned;
    let lower = match buf.get_mut(..sql.len()) {
        Some(short) => {
            short.copy_from_slice(sql.as_bytes());
            short.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid; were it not to,
            // err towards a reset.
            match std::str::from_utf8(short) {
                Ok(lower) => lower,
                Err(_) => return true,
            }
        }
        None => {
            owned = sql.to_ascii_lowercase();
            owned.as_str()
        }
    };
    lower.contains("u&")
        || SESSION_CHANGING_FUNCTIONS
            .iter()
            .chain(SEQUENCE_FUNCTIONS)
            .any(|f| lower.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_statements_are_searched_whole() {
        // Past the stack buffer: lower-cased on the heap, same answer.
        let padding = format!("/* {} */", "x".repeat(600));
        let named = format!("SELECT 1 {padding}, SET_Config('a', 'b', false)");
        assert!(names_session_changing_function(&named));
        let plain = format!("SELECT 1 {padding}, now()");
        assert!(!names_session_changing_function(&plain));
        // Just under and over the buffer's size.
        for len in [511, 512, 513] {
            let sql = format!("{}nextval", " ".repeat(len - 7));
            assert_eq!(sql.len(), len);
            assert!(names_session_changing_function(&sql), "{len}");
        }
    }

    #[test]
    fn finds_the_functions_however_written() {
        for sql in [
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT pg_catalog.SET_CONFIG('a', 'b', false)",
            "SELECT \"set_config\"('a', 'b', false)",
            "SELECT pg_try_advisory_lock(1)",
            "SELECT pg_advisory_lock_shared(1, 2)",
            "SELECT setseed(0.5)",
            "SELECT query_to_xml('select 1', true, false, '')",
            "SELECT * FROM ts_stat('select 1')",
            "SELECT U&\"\\0073et_config\"('a', 'b', false)",
            "SELECT u&'x'",
            "SELECT 'set_config is only text here'",
            "SELECT nextval('s')",
            "SELECT lastval()",
        ] {
            assert!(names_session_changing_function(sql), "{sql}");
        }
        for sql in [
            "SELECT id, balance FROM accounts WHERE id = $1",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock_all()",
            "SELECT current_setting('search_path')",
            "INSERT INTO t VALUES ($1) RETURNING *",
        ] {
            assert!(!names_session_changing_function(sql), "{sql}");
        }
    }
}
