//! The PostgreSQL side of tenants, on one shard, over superuser sessions
//! (the shard's DSN): the shard's lockdown, and for each tenant a login
//! role, a database of its own holding its schema, its migrations (run as
//! its role, in its schema, recorded in the same transaction) and their
//! drop.
//!
//! A database per tenant, not only a schema: LISTEN/NOTIFY channels, large
//! objects and advisory locks are per database in PostgreSQL, and NOTIFY
//! checks no privilege, so only separate databases keep tenants apart
//! there (docs/architecture.md, "Tenants").
//!
//! Each tenant database is also closed to what PostgreSQL would show of
//! the other tenants of the shard ([`HIDE_OTHER_TENANTS`]); with role and
//! database names that reveal nothing (`Tenant::pg_name`), that leaves
//! what docs/architecture.md ("What a tenant sees of others") lists.
//!
//! Every function is idempotent, so an interrupted create, migration or
//! delete is finished by running it again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shardline_api::manager::MigrationOutcome;
use shardline_core::catalog::{quote_ident, quote_literal, Migration, Tenant};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::ServiceError;
use crate::{pg, tenant_code};

/// Seed of the advisory locks that serialise one tenant's migrations on a
/// shard (any constant; it keeps them apart from other advisory locks).
const MIGRATION_LOCK_SEED: i64 = 0x5348_4c54_4d49_4752;

/// Statements that race between managers (`CREATE ... IF NOT EXISTS`,
/// grants on the database row) are retried this many times.
const RACE_ATTEMPTS: usize = 3;

/// In each tenant database: the record of its migrations, written in the
/// same transaction as each migration; closed to the tenant.
const TENANT_BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS shardline; \
     REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
     CREATE TABLE IF NOT EXISTS shardline.tenant_migrations ( \
       tenant text NOT NULL, name text NOT NULL, checksum text NOT NULL, \
       applied_at timestamptz NOT NULL DEFAULT now(), \
       PRIMARY KEY (tenant, name))";

/// In each tenant database, as superuser: what PUBLIC (so the tenant's
/// role) may no longer read or call there, because it shows the other
/// tenants of the shard: their sessions (role, database, the
/// `application_name` they chose, when they started, their locks and
/// advisory lock keys), per-database statistics (transactions, rows
/// written, sizes of the shared tablespace), the settings of databases
/// (`pg_db_role_setting`; a role's own settings still show in
/// `pg_roles`), comments on roles and databases, and which objects each
/// role owns in each database.
///
/// Revoked only where PUBLIC still has the right, so running it again
/// writes nothing. The ACLs of `pg_catalog` objects are per database, so
/// this changes nothing outside the tenant's database. Checked against
/// psql, psycopg, pgjdbc and node-postgres (`crates/manager/tests/
/// tenant_metadata.rs`): their connects, prepared statements and
/// metadata calls need none of it; psql's `\l+`, `\du+`, `\db+` and
/// `\drds` fail. `pg_roles` and `pg_database` stay readable: role names
/// can be listed whatever the grants (`oid::regrole`), so hiding them
/// would only break `\l`, `\du` and pgjdbc's privilege calls; the names
/// are opaque instead.
///
/// Bump [`TENANT_SETUP`] when this changes, so the reconciler applies
/// it to existing tenant databases.
pub const HIDE_OTHER_TENANTS: &str = "DO $hide$ \
DECLARE f regprocedure; r regclass; \
BEGIN \
  FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p \
    WHERE p.pronamespace = 'pg_catalog'::regnamespace \
      AND (p.proname LIKE 'pg\\_stat\\_get\\_db\\_%' \
        OR p.proname LIKE 'pg\\_stat\\_get\\_backend\\_%' \
        OR p.proname IN ('pg_stat_get_activity', 'pg_stat_get_progress_info', \
          'pg_lock_status', 'pg_prepared_xact', 'pg_tablespace_size', \
          'pg_tablespace_databases')) \
      AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') \
  LOOP \
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f); \
  END LOOP; \
  FOR r IN SELECT c.oid::regclass FROM pg_catalog.pg_class c \
    WHERE c.relnamespace = 'pg_catalog'::regnamespace \
      AND (c.relname LIKE 'pg\\_stat\\_progress\\_%' \
        OR c.relname IN ('pg_stat_activity', 'pg_stat_ssl', 'pg_stat_gssapi', \
          'pg_stat_database', 'pg_stat_database_conflicts', 'pg_locks', \
          'pg_prepared_xacts', 'pg_db_role_setting', 'pg_shdescription', \
          'pg_shdepend')) \
      AND pg_catalog.has_table_privilege('public', c.oid, 'SELECT') \
  LOOP \
    EXECUTE pg_catalog.format('REVOKE SELECT ON %s FROM PUBLIC', r); \
  END LOOP; \
END $hide$";

/// The version of what [`provision`] sets up inside a tenant database
/// beyond its role, schema and migrations record; noted per tenant in the
/// shard's own database, so the reconciler brings older tenant databases
/// up to date. 1: [`HIDE_OTHER_TENANTS`].
pub const TENANT_SETUP: i32 = 1;

/// In the shard's own database: how many migrations each tenant has, and
/// the [`TENANT_SETUP`] its database has, so the reconciler sees who is
/// behind without visiting every tenant database. A hint, refreshed after
/// every provisioning; the tenant database is the truth.
const SHARD_BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS shardline; \
     REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
     CREATE TABLE IF NOT EXISTS shardline.tenants ( \
       tenant text PRIMARY KEY, migrations int NOT NULL, \
       updated_at timestamptz NOT NULL DEFAULT now()); \
     ALTER TABLE shardline.tenants ADD COLUMN IF NOT EXISTS setup int NOT NULL DEFAULT 0";

fn tenant_error(shard: &str, tenant: &str, e: &tokio_postgres::Error) -> ServiceError {
    match pg::statement_error(shard, e) {
        ServiceError::Statement {
            message,
            sqlstate,
            detail,
            hint,
            position,
        } => ServiceError::Statement {
            message: format!("{message} (tenant {tenant})"),
            sqlstate,
            detail,
            hint,
            position,
        },
        other => other,
    }
}

/// Runs `sql`, again when a concurrent session won a race on it.
async fn batch_with_retry(client: &Client, shard: &str, sql: &str) -> Result<(), ServiceError> {
    let mut last = None;
    for attempt in 0..RACE_ATTEMPTS {
        match client.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e) if e.as_db_error().is_some() => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20 * (attempt as u64 + 1))).await;
            }
            Err(e) => return Err(pg::statement_error(shard, &e)),
        }
    }
    Err(match last {
        Some(e) => pg::statement_error(shard, &e),
        None => ServiceError::ShardUnavailable(format!("shard {shard}: setup failed")),
    })
}

async fn current_database(client: &Client, shard: &str) -> Result<String, ServiceError> {
    let row = client
        .query_one("SELECT current_database()", &[])
        .await
        .map_err(|e| pg::statement_error(shard, &e))?;
    Ok(row.get(0))
}

/// Locks a database down: only roles granted explicitly may connect, none
/// may use `public` or send notifications by function.
async fn lock_down(client: &Client, shard: &str) -> Result<(), ServiceError> {
    let db = quote_ident(&current_database(client, shard).await?);
    let lockdown = format!(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC; \
         REVOKE ALL ON SCHEMA public FROM PUBLIC; \
         REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC"
    );
    batch_with_retry(client, shard, &lockdown).await
}

/// Locks the shard's own database down and creates the tenants table.
pub async fn prepare_database(admin: &Client, shard: &str) -> Result<(), ServiceError> {
    lock_down(admin, shard).await?;
    batch_with_retry(admin, shard, SHARD_BOOTSTRAP).await
}

/// Keeps failed statements (which may hold a password) out of the log.
async fn quiet(client: &Client, shard: &str, tenant: &str) -> Result<(), ServiceError> {
    client
        .batch_execute("SET log_min_error_statement = panic; SET log_statement = none")
        .await
        .map_err(|e| tenant_error(shard, tenant, &e))
}

/// Creates or repairs the tenant's login role (no rights but its own) and
/// its database, then, inside that database, its schema (owned by the
/// role, closed to everyone else) and the migrations record. Returns a
/// superuser session in the tenant's database.
pub async fn provision(
    admin: &Client,
    shard: &str,
    dsn: &str,
    tenant: &Tenant,
    timeout: Duration,
) -> Result<Client, ServiceError> {
    let name = tenant.pg_name();
    let ident = quote_ident(&name);
    quiet(admin, shard, &tenant.id).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(|e| tenant_error(shard, &tenant.id, &e))?
        .is_some();
    if !exists {
        if let Err(e) = admin.batch_execute(&format!("CREATE ROLE {ident}")).await {
            // Another manager created it meanwhile: the same outcome.
            if e.code() != Some(&SqlState::DUPLICATE_OBJECT) {
                return Err(tenant_error(shard, &tenant.id, &e));
            }
        }
    }
    let role = format!(
        "ALTER ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT \
           NOREPLICATION NOBYPASSRLS PASSWORD {password}; \
         ALTER ROLE {ident} SET search_path = {ident}",
        password = quote_literal(&tenant.role_password),
    );
    batch_with_retry(admin, shard, &role)
        .await
        .map_err(|e| match e {
            // Never echo the statement (it holds the password); the
            // message from PostgreSQL does not contain it.
            ServiceError::Statement { message, .. } => ServiceError::Statement {
                message: format!("{message} (provisioning tenant {})", tenant.id),
                sqlstate: None,
                detail: None,
                hint: None,
                position: None,
            },
            other => other,
        })?;
    let db_exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| tenant_error(shard, &tenant.id, &e))?
        .is_some();
    if !db_exists {
        // CREATE DATABASE cannot run in a transaction block: alone.
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE {ident}"))
            .await
        {
            if e.code() != Some(&SqlState::DUPLICATE_DATABASE) {
                return Err(tenant_error(shard, &tenant.id, &e));
            }
        }
    }
    let grants = format!(
        "REVOKE ALL ON DATABASE {ident} FROM PUBLIC; \
         GRANT CONNECT, TEMPORARY ON DATABASE {ident} TO {ident}"
    );
    batch_with_retry(admin, shard, &grants).await?;
    let inside = pg::connect_db(dsn, &name, timeout)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("shard {shard}: {e}")))?;
    lock_down(&inside, shard).await?;
    let schema = format!(
        "CREATE SCHEMA IF NOT EXISTS {ident} AUTHORIZATION {ident}; \
         ALTER SCHEMA {ident} OWNER TO {ident}; \
         REVOKE ALL ON SCHEMA {ident} FROM PUBLIC"
    );
    batch_with_retry(&inside, shard, &schema).await?;
    batch_with_retry(&inside, shard, TENANT_BOOTSTRAP).await?;
    batch_with_retry(&inside, shard, HIDE_OTHER_TENANTS).await?;
    Ok(inside)
}

/// Notes in the shard's tenants table how many migrations the tenant has
/// and that its database has the current [`TENANT_SETUP`] (callers have
/// just provisioned it).
async fn note_migrations(
    admin: &Client,
    inside: &Client,
    shard: &str,
    tenant: &str,
) -> Result<(), ServiceError> {
    let err = |e: tokio_postgres::Error| tenant_error(shard, tenant, &e);
    let n: i64 = inside
        .query_one(
            "SELECT count(*) FROM shardline.tenant_migrations WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(err)?
        .get(0);
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    admin
        .execute(
            "INSERT INTO shardline.tenants (tenant, migrations, setup) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant) DO UPDATE SET migrations = EXCLUDED.migrations, \
             setup = EXCLUDED.setup, updated_at = now()",
            &[&tenant, &n, &TENANT_SETUP],
        )
        .await
        .map_err(err)?;
    Ok(())
}

/// Applies one migration for one tenant on a shard (provisioning it first
/// if needed): see [`apply_in`]. Also returns whether the tenant's
/// database holds code now (see [`tenant_code::settle`]).
pub async fn apply_migration(
    admin: &Client,
    shard: &str,
    dsn: &str,
    tenant: &Tenant,
    migration: &Migration,
    timeout: Duration,
) -> Result<(MigrationOutcome, bool), ServiceError> {
    let mut inside = provision(admin, shard, dsn, tenant, timeout).await?;
    let outcome = apply_in(&mut inside, shard, tenant, migration).await?;
    note_migrations(admin, &inside, shard, &tenant.id).await?;
    let code = settle_code(&inside, shard, &tenant.id).await?;
    Ok((outcome, code))
}

/// [`tenant_code::settle`] in a tenant's database.
async fn settle_code(inside: &Client, shard: &str, tenant: &str) -> Result<bool, ServiceError> {
    tenant_code::settle(inside)
        .await
        .map_err(|e| tenant_error(shard, tenant, &e))
}

/// Applies one migration for one tenant, in its database (`client`), as
/// its role and in its schema, atomically with its record. Applied before
/// with the same checksum is a no-op; with another checksum it is refused
/// (409).
async fn apply_in(
    client: &mut Client,
    shard: &str,
    tenant: &Tenant,
    migration: &Migration,
) -> Result<MigrationOutcome, ServiceError> {
    let ident = quote_ident(&tenant.pg_name());
    let tenant = tenant.id.as_str();
    let err = |e: tokio_postgres::Error| tenant_error(shard, tenant, &e);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&tenant, &MIGRATION_LOCK_SEED],
    )
    .await
    .map_err(err)?;
    let existing = tx
        .query_opt(
            "SELECT checksum FROM shardline.tenant_migrations WHERE tenant = $1 AND name = $2",
            &[&tenant, &migration.name],
        )
        .await
        .map_err(err)?;
    if let Some(row) = existing {
        let checksum: String = row.get(0);
        return if checksum == migration.checksum {
            Ok(MigrationOutcome::AlreadyApplied)
        } else {
            Err(ServiceError::Conflict(format!(
                "migration {} was applied for tenant {tenant} on shard {shard} with another \
                 checksum ({checksum})",
                migration.name
            )))
        };
    }
    // The objects it creates are the tenant's, in the tenant's schema.
    tx.batch_execute(&format!(
        "SET LOCAL ROLE {ident}; SET LOCAL search_path = {ident}"
    ))
    .await
    .map_err(err)?;
    tx.batch_execute(&migration.sql).await.map_err(err)?;
    tx.batch_execute("RESET ROLE").await.map_err(err)?;
    tx.execute(
        "INSERT INTO shardline.tenant_migrations (tenant, name, checksum) VALUES ($1, $2, $3)",
        &[&tenant, &migration.name, &migration.checksum],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(MigrationOutcome::Applied)
}

/// Provisions a tenant and brings it up to `migrations`, in order.
/// Returns whether its database holds code (see [`tenant_code::settle`]).
pub async fn ensure_tenant(
    admin: &Client,
    shard: &str,
    dsn: &str,
    tenant: &Tenant,
    migrations: &[Migration],
    timeout: Duration,
) -> Result<bool, ServiceError> {
    let mut inside = provision(admin, shard, dsn, tenant, timeout).await?;
    for m in migrations {
        apply_in(&mut inside, shard, tenant, m).await?;
    }
    note_migrations(admin, &inside, shard, &tenant.id).await?;
    settle_code(&inside, shard, &tenant.id).await
}

/// The first table of the tenant's schema (`schema.table`) that holds a
/// row, if any (none when it has no database on the shard).
pub async fn first_table_with_rows(
    admin: &Client,
    shard: &str,
    dsn: &str,
    tenant: &Tenant,
    timeout: Duration,
) -> Result<Option<String>, ServiceError> {
    let err = |e: tokio_postgres::Error| tenant_error(shard, &tenant.id, &e);
    let schema = tenant.pg_name();
    let db_exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&schema])
        .await
        .map_err(err)?
        .is_some();
    if !db_exists {
        return Ok(None);
    }
    let client = pg::connect_db(dsn, &schema, timeout)
        .await
        .map_err(|e| ServiceError::ShardUnavailable(format!("shard {shard}: {e}")))?;
    let tables = client
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'm') ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(err)?;
    for row in tables {
        let table: String = row.get(0);
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.{})",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let has_rows: bool = client.query_one(&sql, &[]).await.map_err(err)?.get(0);
        if has_rows {
            return Ok(Some(format!("{schema}.{table}")));
        }
    }
    Ok(None)
}

/// Drops the tenant's database (with its schema, objects and rows) and its
/// role from the shard. Sessions of the role are ended first. Nothing
/// there is fine.
pub async fn drop_tenant(admin: &Client, shard: &str, tenant: &Tenant) -> Result<(), ServiceError> {
    let name = tenant.pg_name();
    let tenant = tenant.id.as_str();
    let err = |e: tokio_postgres::Error| tenant_error(shard, tenant, &e);
    let ident = quote_ident(&name);
    let role_exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .map_err(err)?
        .is_some();
    if role_exists {
        // No new sessions; WITH (FORCE) ends the ones in its database.
        admin
            .batch_execute(&format!("ALTER ROLE {ident} NOLOGIN"))
            .await
            .map_err(err)?;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"))
        .await
        .map_err(err)?;
    if role_exists {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .map_err(err)?;
        admin
            .batch_execute(&format!("DROP OWNED BY {ident}; DROP ROLE {ident}"))
            .await
            .map_err(err)?;
    }
    let has_table: bool = admin
        .query_one("SELECT to_regclass('shardline.tenants') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .get(0);
    if has_table {
        admin
            .execute(
                "DELETE FROM shardline.tenants WHERE tenant = $1",
                &[&tenant],
            )
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// What a shard holds of its tenants, as the reconciler compares it with
/// the catalog.
#[derive(Debug, Default)]
pub struct Observed {
    /// Names of the roles that can log in (not superusers) and have a
    /// database of the same name.
    pub provisioned: HashSet<String>,
    /// Migrations recorded per tenant id.
    pub migrations: HashMap<String, usize>,
    /// The [`TENANT_SETUP`] recorded per tenant id.
    pub setup: HashMap<String, i32>,
}

/// Reads what the shard holds of the tenants.
pub async fn observe(admin: &Client, shard: &str) -> Result<Observed, ServiceError> {
    let err = |e: tokio_postgres::Error| pg::statement_error(shard, &e);
    let mut out = Observed::default();
    let rows = admin
        .query(
            "SELECT r.rolname::text FROM pg_roles r \
             JOIN pg_database d ON d.datname = r.rolname \
             WHERE r.rolcanlogin AND NOT r.rolsuper",
            &[],
        )
        .await
        .map_err(err)?;
    out.provisioned = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let table = admin
        .query_one(
            "SELECT to_regclass('shardline.tenants') IS NOT NULL, \
               EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'setup' \
                 AND attrelid = to_regclass('shardline.tenants'))",
            &[],
        )
        .await
        .map_err(err)?;
    let (has_table, has_setup): (bool, bool) = (table.get(0), table.get(1));
    if has_table {
        // A table from before the setup column reads as setup 0.
        let sql = if has_setup {
            "SELECT tenant, migrations, setup FROM shardline.tenants"
        } else {
            "SELECT tenant, migrations, 0 FROM shardline.tenants"
        };
        let rows = admin.query(sql, &[]).await.map_err(err)?;
        for r in rows {
            let tenant: String = r.get(0);
            let n: i32 = r.get(1);
            out.setup.insert(tenant.clone(), r.get(2));
            out.migrations
                .insert(tenant, usize::try_from(n).unwrap_or_default());
        }
    }
    Ok(out)
}
