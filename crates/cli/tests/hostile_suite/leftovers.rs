//! Session state (issue 10, point 2): what one request can leave on a
//! pooled connection for the next — settings, role, temporary tables,
//! advisory locks, LISTEN, cursors WITH HOLD, prepared statements,
//! sequence state, the resharding fence's `shardline.map_version` — and
//! defaults alpha can set on its own role, which outlive every session.

use shardline_core::catalog::quote_literal;

use super::attacks::{Send, Target};

/// A piece of session state a request leaves behind, and how the next
/// request would see it.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub name: String,
    /// Request 1: sets the state.
    pub action: Send,
    /// An SQL expression (text) showing the state.
    pub probe: String,
    /// Request 2 comes from alpha's other app.
    pub other_app: bool,
    /// What a clean session shows; `None`: the value of the probe on a
    /// fresh session before any attack.
    pub not: Option<&'static str>,
    /// The state lives in the role, not the session: request 2 runs on a
    /// new connection, which must not see it either.
    pub new_session: bool,
}

fn leftover(name: &str, action: Send, probe: impl Into<String>) -> Leftover {
    Leftover {
        name: name.into(),
        action,
        probe: probe.into(),
        other_app: false,
        not: None,
        new_session: false,
    }
}

fn exec(sql: impl Into<String>) -> Send {
    Send::Execute(sql.into())
}

fn in_do_block(sql: &str) -> Send {
    Send::Execute(format!("DO $x$ BEGIN {sql}; END $x$"))
}

/// Session state (issue 10, point 2): request 1 sets it; request 2 on
/// the same pooled connection must not see it. alpha has one connection
/// per shard, so the two requests share it unless the router replaced
/// it. `probe(text)` and `run_then(text, text)` are alpha's own
/// functions (see the suite's set-up).
pub fn leftovers(t: &Target) -> Vec<Leftover> {
    let a = t.a();
    let seq = quote_literal(&format!("{a}.leftover_seq"));
    let own_row = format!(
        "{a}.probe({})",
        quote_literal(&format!(
            "SELECT v FROM items WHERE k = {}",
            quote_literal(&t.key)
        ))
    );
    vec![
        leftover(
            "statement_timeout by set_config",
            exec("SELECT set_config('statement_timeout', '0', false)"),
            "current_setting('statement_timeout')",
        ),
        leftover(
            "search_path by set_config",
            exec("SELECT set_config('search_path', 'pg_catalog', false)"),
            "current_setting('search_path')",
        ),
        Leftover {
            other_app: true,
            ..leftover(
                "search_path by set_config, read by another app",
                exec("SELECT set_config('search_path', 'pg_catalog', false)"),
                own_row.clone(),
            )
        },
        leftover(
            "default_transaction_read_only by set_config",
            exec("SELECT set_config('default_transaction_read_only', 'on', false)"),
            "current_setting('default_transaction_read_only')",
        ),
        leftover(
            "SET in DO",
            in_do_block("SET work_mem = '77MB'"),
            "current_setting('work_mem')",
        ),
        leftover(
            "SET statement_timeout by EXECUTE in DO",
            in_do_block("EXECUTE 'SET statement_timeout = 0'"),
            "current_setting('statement_timeout')",
        ),
        leftover(
            "role by set_config",
            exec(format!(
                "SELECT set_config('role', {}, false)",
                quote_literal(&t.alpha)
            )),
            "current_setting('role')",
        ),
        leftover(
            "SET ROLE in DO",
            in_do_block(&format!("SET ROLE {a}")),
            "current_setting('role')",
        ),
        leftover(
            "CREATE TEMP TABLE",
            exec("CREATE TEMP TABLE leftover_tmp (x int)"),
            "(to_regclass('pg_temp.leftover_tmp') IS NOT NULL)::text",
        ),
        Leftover {
            other_app: true,
            ..leftover(
                "temp table shadowing alpha's table, read by another app",
                Send::Transaction(vec![
                    "CREATE TEMP TABLE items (k text PRIMARY KEY, v text NOT NULL)".into(),
                    format!(
                        "INSERT INTO items VALUES ({}, 'shadow')",
                        quote_literal(&t.key)
                    ),
                ]),
                own_row.clone(),
            )
        },
        leftover(
            "session advisory lock",
            exec("SELECT 1 FROM pg_advisory_lock(4711)"),
            // True only for the session holding it (tenants may not read
            // pg_locks).
            "pg_advisory_unlock(4711)::text",
        ),
        leftover(
            "LISTEN in DO",
            in_do_block("LISTEN leftover_channel"),
            "(SELECT count(*) FROM pg_listening_channels())::text",
        ),
        leftover(
            "LISTEN in a function",
            exec(format!(
                "SELECT {a}.run_then('LISTEN leftover_fn', 'SELECT 1')"
            )),
            "(SELECT count(*) FROM pg_listening_channels())::text",
        ),
        leftover(
            "DECLARE WITH HOLD in DO",
            in_do_block("EXECUTE 'DECLARE leftover_cursor CURSOR WITH HOLD FOR SELECT 1'"),
            "(SELECT count(*) FROM pg_cursors WHERE name = 'leftover_cursor')::text",
        ),
        leftover(
            "PREPARE in DO",
            in_do_block("EXECUTE 'PREPARE leftover_statement AS SELECT 1'"),
            "(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover_statement')::text",
        ),
        leftover(
            "nextval then currval",
            exec(format!("SELECT nextval({seq})")),
            format!(
                "{a}.probe({})",
                quote_literal(&format!("SELECT currval({seq})::text"))
            ),
        ),
        leftover(
            "nextval then lastval",
            exec(format!("SELECT nextval({seq})")),
            format!("{a}.probe('SELECT lastval()::text')"),
        ),
        Leftover {
            not: Some("999999"),
            ..leftover(
                "shardline.map_version by set_config",
                exec("SELECT set_config('shardline.map_version', '999999', false)"),
                "coalesce(current_setting('shardline.map_version', true), '')",
            )
        },
        // Defaults of alpha's own role: PostgreSQL lets a role set them,
        // and they outlive every session; a new connection of alpha's
        // must still get the router's settings and find its tables.
        Leftover {
            new_session: true,
            other_app: true,
            ..leftover(
                "search_path of alpha's role, read by a new session",
                in_do_block(&format!("ALTER ROLE {a} SET search_path = pg_catalog")),
                own_row,
            )
        },
        Leftover {
            new_session: true,
            ..leftover(
                "statement_timeout of alpha's role, read by a new session",
                in_do_block(&format!("ALTER ROLE {a} SET statement_timeout = 0")),
                "current_setting('statement_timeout')",
            )
        },
    ]
}
