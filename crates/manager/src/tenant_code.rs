//! Code in tenant databases: whether a keyspace's tenant databases hold
//! any (so routers must reset every session after every request; see
//! `shardline_core::session`), and the guard that keeps tenants from
//! adding some where there is none.
//!
//! Code is a function or procedure that is not PostgreSQL's own (the
//! tenant's, an extension's, a temporary one) or an object of the
//! tenant's that calls one of
//! [`SESSION_CHANGING_FUNCTIONS`](shardline_core::session::SESSION_CHANGING_FUNCTIONS)
//! (a view, a default, a policy, an operator, ...). shardline's own
//! functions (schema `shardline`) only refuse, capture or check writes.
//!
//! Each tenant database has, owned by the superuser:
//! - `shardline.code_free`: one row while the database is meant to hold
//!   no code (its keyspace's routers skip resets);
//! - the event trigger `shardline_guard_tenant_code`: after every DDL
//!   command of a non-superuser session, while `code_free` has its row,
//!   it refuses the command if the database now holds code. Migrations
//!   log in as the superuser (and act as the tenant's role), so only they
//!   add code.
//!
//! [`settle`] brings one database to the truth: it installs both, and
//! sets or removes the row by what the database holds. The row is
//! written under an `ACCESS EXCLUSIVE` lock, which waits for every DDL
//! transaction whose guard read the table (an `ACCESS SHARE` lock held to
//! its end), so code made concurrently is committed, and seen, before the
//! check.

use shardline_core::session::SESSION_CHANGING_FUNCTIONS;
use tokio_postgres::Client;

/// The first object id of objects not made by `initdb`.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// Whether the database holds code (see the module docs), as SQL.
/// PostgreSQL records no dependency on its own functions (they are
/// pinned), so calls are found in the stored expressions themselves —
/// defaults, constraints, view and rule bodies, policies, trigger
/// conditions, domain defaults, index expressions — as the `:funcid` or
/// `:opfuncid` of their node trees, and in operators and casts built on
/// one of the functions.
fn holds_code_sql() -> String {
    format!(
        "WITH f AS (SELECT p.oid FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace \
               AND p.proname = ANY ({names})), \
           pat AS (SELECT ':(funcid|opfuncid) (' || string_agg(f.oid::text, '|') || ')\\M' AS re \
             FROM f), \
           trees AS ( \
             SELECT adbin AS t FROM pg_catalog.pg_attrdef WHERE oid >= {n} \
             UNION ALL SELECT conbin FROM pg_catalog.pg_constraint WHERE oid >= {n} \
             UNION ALL SELECT ev_action FROM pg_catalog.pg_rewrite WHERE oid >= {n} \
             UNION ALL SELECT ev_qual FROM pg_catalog.pg_rewrite WHERE oid >= {n} \
             UNION ALL SELECT polqual FROM pg_catalog.pg_policy WHERE oid >= {n} \
             UNION ALL SELECT polwithcheck FROM pg_catalog.pg_policy WHERE oid >= {n} \
             UNION ALL SELECT tgqual FROM pg_catalog.pg_trigger WHERE oid >= {n} \
             UNION ALL SELECT typdefaultbin FROM pg_catalog.pg_type WHERE oid >= {n} \
             UNION ALL SELECT indexprs FROM pg_catalog.pg_index WHERE indexrelid >= {n} \
             UNION ALL SELECT indpred FROM pg_catalog.pg_index WHERE indexrelid >= {n}) \
         SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p \
             WHERE p.oid >= {n} \
               AND p.pronamespace <> coalesce(pg_catalog.to_regnamespace('shardline')::oid, 0)) \
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator o \
             WHERE o.oid >= {n} AND o.oprcode IN (SELECT oid FROM f)) \
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast c \
             WHERE c.oid >= {n} AND c.castfunc IN (SELECT oid FROM f)) \
           OR EXISTS (SELECT 1 FROM trees, pat WHERE trees.t::text ~ pat.re)",
        names = names_array(),
        n = FIRST_NORMAL_OBJECT_ID,
    )
}

/// [`SESSION_CHANGING_FUNCTIONS`] as a SQL array literal.
fn names_array() -> String {
    let quoted: Vec<String> = SESSION_CHANGING_FUNCTIONS
        .iter()
        .map(|n| format!("'{n}'"))
        .collect();
    format!("ARRAY[{}]::name[]", quoted.join(", "))
}

/// The guard (see the module docs). Idempotent.
fn guard_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS shardline; \
         REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
         CREATE TABLE IF NOT EXISTS shardline.code_free (free boolean PRIMARY KEY DEFAULT true \
           CHECK (free)); \
         REVOKE ALL ON shardline.code_free FROM PUBLIC; \
         CREATE OR REPLACE FUNCTION shardline.guard_tenant_code() RETURNS event_trigger \
           LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $shardline$ \
         BEGIN \
           IF (SELECT rolsuper FROM pg_authid WHERE rolname = session_user) THEN RETURN; END IF; \
           IF NOT EXISTS (SELECT 1 FROM shardline.code_free) THEN RETURN; END IF; \
           IF ({holds}) THEN \
             RAISE EXCEPTION USING ERRCODE = '42501', \
               MESSAGE = format('%s is refused here: functions, procedures, extensions and \
objects calling set_config, session advisory locks or SQL-running functions come only with \
migrations', tg_tag), \
               HINT = 'add it with a migration (shardline schema apply); see docs/operations.md, \
\"Session state\"'; \
           END IF; \
         END $shardline$; \
         REVOKE ALL ON FUNCTION shardline.guard_tenant_code() FROM PUBLIC; \
         DO $shardline$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger \
               WHERE evtname = 'shardline_guard_tenant_code') THEN \
             CREATE EVENT TRIGGER shardline_guard_tenant_code ON ddl_command_end \
               EXECUTE FUNCTION shardline.guard_tenant_code(); \
           END IF; \
         END $shardline$",
        holds = holds_code_sql(),
    )
}

/// Installs the guard in a tenant database (superuser session `client`)
/// and marks it code-free or not by what it holds now; returns whether it
/// holds code.
///
/// One transaction, holding `code_free` exclusively from before the look
/// until the mark is final: a tenant's DDL reads `code_free` in its guard,
/// so one that ran before waits for its commit to be seen here, and one
/// that runs meanwhile waits and sees only the final mark. (Marking first
/// and clearing after the look, in two transactions, refused a tenant's
/// ordinary DDL in a keyspace with code while the reconciler settled it.)
pub async fn settle(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client.batch_execute(&guard_sql()).await?;
    let settled = settle_in_transaction(client).await;
    if settled.is_err() {
        // Out of the failed transaction, for whoever uses the session next.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    settled
}

async fn settle_in_transaction(client: &Client) -> Result<bool, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN; LOCK TABLE shardline.code_free IN ACCESS EXCLUSIVE MODE")
        .await?;
    let holds: bool = client.query_one(&holds_code_sql(), &[]).await?.get(0);
    client
        .batch_execute(if holds {
            "DELETE FROM shardline.code_free; COMMIT"
        } else {
            "INSERT INTO shardline.code_free VALUES (true) ON CONFLICT DO NOTHING; COMMIT"
        })
        .await?;
    Ok(holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_names_every_function() {
        let sql = holds_code_sql();
        for f in SESSION_CHANGING_FUNCTIONS {
            assert!(sql.contains(&format!("'{f}'")), "{f}");
        }
        assert!(guard_sql().contains("shardline_guard_tenant_code"));
    }
}
