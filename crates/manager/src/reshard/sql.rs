//! The PostgreSQL side of resharding, in one tenant database at a time
//! (superuser sessions): table metadata, change capture, the refuse
//! trigger, batched copy, applying captured changes, verification and
//! the deletion of moved rows.
//!
//! Every statement is idempotent (`CREATE OR REPLACE`, `IF NOT EXISTS`,
//! upserts), so a resumed job simply runs it again. Sessions writing
//! on a target or deleting moved rows on a source run with
//! `session_replication_role = replica`: the tenant's own triggers and
//! foreign-key checks do not fire for rows that merely change place (as
//! with logical replication), and neither does a refuse trigger left by
//! an earlier job.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use shardline_core::catalog::{quote_ident, quote_literal, FENCE_VERSION_SQL, MOVED_SQLSTATE};
use shardline_core::fence::CLAIM_SETTING;
use shardline_core::hash::{routing_hash, sql_in_range};
use shardline_core::{KeyRange, KeyType, ShardKey};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Name of the capture trigger on every moving table of a source.
pub const CAPTURE_TRIGGER: &str = "shardline_reshard_capture";
/// Name of the trigger refusing writes to keys a shard does not own.
pub const REFUSE_TRIGGER: &str = "shardline_reshard_refuse";
/// The statement-level trigger on a source's tables that refuses every
/// write statement of a router session behind the fence (see
/// [`set_fence`]).
pub const FENCE_TRIGGER: &str = "shardline_reshard_fence";
/// The statement-level trigger that refuses TRUNCATE on a source table
/// while a job captures its changes (row triggers never see a TRUNCATE).
pub const NO_TRUNCATE_TRIGGER: &str = "shardline_reshard_no_truncate";
const NO_TRUNCATE_FUNCTION: &str = "shardline.reshard_no_truncate";
/// The function of [`FENCE_TRIGGER`], one per tenant database.
const FENCE_FUNCTION: &str = "shardline.reshard_fence";

/// The change table, closed to tenants (their triggers write to it as
/// its owner, through a SECURITY DEFINER function).
const CHANGE_TABLE: &str = "CREATE SCHEMA IF NOT EXISTS shardline; \
     REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
     CREATE TABLE IF NOT EXISTS shardline.reshard_changes ( \
       seq bigserial PRIMARY KEY, job text NOT NULL, tbl text NOT NULL, \
       op char(1) NOT NULL, row jsonb NOT NULL)";

/// Keeps the tenant, which owns its tables, from dropping, disabling,
/// renaming or replacing the triggers resharding puts on them (a table
/// owner may otherwise do all of that): event triggers, owned by the
/// superuser and firing for every role, check after each `ALTER TABLE`,
/// `ALTER TRIGGER` and `CREATE TRIGGER` that every trigger calling a
/// `shardline` function is still enabled and named `shardline_*` (and no
/// other is), and refuse a `DROP TRIGGER` of one unless its table goes
/// with it (a tenant may drop its own table). Superuser sessions — the
/// manager's, operators', and migrations, which log in as superuser —
/// are not checked. Idempotent.
const PROTECT_TRIGGERS: &str = "CREATE OR REPLACE FUNCTION shardline.protect_triggers() \
       RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER \
       SET search_path = pg_catalog, pg_temp AS $shardline$ \
     BEGIN \
       IF (SELECT rolsuper FROM pg_authid WHERE rolname = session_user) THEN RETURN; END IF; \
       IF TG_EVENT = 'sql_drop' THEN \
         IF EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d \
             WHERE d.object_type = 'trigger' AND d.address_names[3] LIKE 'shardline\\_%' \
               AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() t \
                 WHERE t.object_type = 'table' AND t.address_names[1] = d.address_names[1] \
                   AND t.address_names[2] = d.address_names[2])) THEN \
           RAISE EXCEPTION USING ERRCODE = '42501', \
             MESSAGE = 'shardline''s resharding triggers cannot be dropped', \
             HINT = 'they keep writes from going to a shard that no longer owns their keys'; \
         END IF; \
       ELSIF EXISTS (SELECT 1 FROM pg_trigger t \
           JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace \
           WHERE NOT t.tgisinternal \
             AND ((n.nspname = 'shardline') <> (t.tgname LIKE 'shardline\\_%') \
               OR (n.nspname = 'shardline' AND t.tgenabled <> 'O'))) THEN \
         RAISE EXCEPTION USING ERRCODE = '42501', \
           MESSAGE = 'shardline''s resharding triggers cannot be disabled, renamed or replaced', \
           HINT = 'they keep writes from going to a shard that no longer owns their keys; \
                   triggers of your own may not be named shardline_*'; \
       END IF; \
     END $shardline$; \
     REVOKE ALL ON FUNCTION shardline.protect_triggers() FROM PUBLIC; \
     DO $shardline$ BEGIN \
       IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger \
           WHERE evtname = 'shardline_protect_triggers') THEN \
         CREATE EVENT TRIGGER shardline_protect_triggers ON ddl_command_end \
           WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER', 'CREATE TRIGGER') \
           EXECUTE FUNCTION shardline.protect_triggers(); \
       END IF; \
       IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger \
           WHERE evtname = 'shardline_protect_trigger_drops') THEN \
         CREATE EVENT TRIGGER shardline_protect_trigger_drops ON sql_drop \
           WHEN TAG IN ('DROP TRIGGER') \
           EXECUTE FUNCTION shardline.protect_triggers(); \
       END IF; \
     END $shardline$";

/// What resharding needs to know of one table in a tenant's schema.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// The tenant's schema.
    pub schema: String,
    pub name: String,
    /// The shard-key column.
    pub key: String,
    /// Primary-key columns, in index order.
    pub pk: Vec<String>,
    /// Columns that take values on insert (not generated ones).
    pub columns: Vec<String>,
}

impl TableMeta {
    /// `"schema"."table"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// A short, stable suffix for per-table function names (table names
    /// may be 63 bytes long, too long to prefix).
    fn tag(&self) -> String {
        let digest = Sha256::digest(self.name.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    fn pk_list(&self, alias: &str) -> String {
        list(&self.pk, alias)
    }
}

fn list(cols: &[String], alias: &str) -> String {
    cols.iter()
        .map(|c| {
            if alias.is_empty() {
                quote_ident(c)
            } else {
                format!("{alias}.{}", quote_ident(c))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A predicate: the routing hash of `key_sql` is in one of `ranges`.
pub fn in_ranges(key_type: KeyType, key_sql: &str, ranges: &[KeyRange]) -> String {
    if ranges.is_empty() {
        return "false".to_string();
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| sql_in_range(key_type, key_sql, r))
        .collect();
    format!("({})", parts.join(" OR "))
}

/// Why a table cannot be resharded, or a database error.
#[derive(Debug)]
pub enum MetaError {
    /// The table, its key column or its primary key is missing.
    Unfit(String),
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for MetaError {
    fn from(e: tokio_postgres::Error) -> Self {
        MetaError::Db(e)
    }
}

/// Reads a table's primary key and columns; checks the key column.
pub async fn table_meta(
    client: &Client,
    schema: &str,
    table: &str,
    key: &str,
) -> Result<TableMeta, MetaError> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&qualified])
        .await?
        .get(0);
    let Some(oid) = oid else {
        return Err(MetaError::Unfit(format!(
            "table {table} does not exist in schema {schema}"
        )));
    };
    let pk: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if pk.is_empty() {
        return Err(MetaError::Unfit(format!(
            "table {table} has no primary key; resharding needs one to copy and apply \
             changes row by row"
        )));
    }
    let all: Vec<(String, bool)> = client
        .query(
            "SELECT attname::text, attgenerated = '' FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if !all.iter().any(|(c, _)| c == key) {
        return Err(MetaError::Unfit(format!(
            "table {table} has no column {key} (its declared shard key)"
        )));
    }
    Ok(TableMeta {
        schema: schema.to_string(),
        name: table.to_string(),
        key: key.to_string(),
        pk,
        columns: all
            .into_iter()
            .filter(|(_, insertable)| *insertable)
            .map(|(c, _)| c)
            .collect(),
    })
}

/// Tables of `schema` (ordinary and partitioned).
pub async fn tables_of(
    client: &Client,
    schema: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
             ORDER BY 1",
            &[&schema],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Installs (or refreshes) the change table and the capture trigger of
/// one table: rows whose key is in `ranges` are recorded for `job`
/// after every insert, update and delete.
pub async fn install_capture(
    client: &Client,
    job: &str,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(CHANGE_TABLE).await?;
    let key = |rec: &str| format!("{rec}.{}", quote_ident(&t.key));
    let in_new = in_ranges(key_type, &key("NEW"), ranges);
    let in_old = in_ranges(key_type, &key("OLD"), ranges);
    // A new primary key, or a new shard key: the old row's place (its
    // target, when the key moves between two moving ranges of different
    // targets, on a table whose primary key omits the shard key) must
    // lose it.
    let pk_changed = format!(
        "ROW({}) IS DISTINCT FROM ROW({}) OR {} IS DISTINCT FROM {}",
        t.pk_list("OLD"),
        t.pk_list("NEW"),
        key("OLD"),
        key("NEW")
    );
    let record = |op: &str, rec: &str| {
        format!(
            "INSERT INTO shardline.reshard_changes (job, tbl, op, row) \
             VALUES ({}, {}, '{op}', to_jsonb({rec}));",
            quote_literal(job),
            quote_literal(&t.name)
        )
    };
    let func = format!(
        "shardline.{}",
        quote_ident(&format!("reshard_capture_{}", t.tag()))
    );
    // An update leaving the range is a delete there; one entering it an
    // insert; one changing the primary key or the shard key a delete and
    // an insert.
    let sql = format!(
        "CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql \
           SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $shardline$ \
         BEGIN \
           IF TG_OP = 'INSERT' THEN \
             IF {in_new} THEN {ins} END IF; \
           ELSIF TG_OP = 'UPDATE' THEN \
             IF coalesce({in_old}, false) AND (NOT coalesce({in_new}, false) OR {pk_changed}) \
               THEN {del} END IF; \
             IF {in_new} THEN {ins} END IF; \
           ELSE \
             IF {in_old} THEN {del} END IF; \
           END IF; \
           RETURN NULL; \
         END $shardline$; \
         REVOKE ALL ON FUNCTION {func}() FROM PUBLIC; \
         DROP TRIGGER IF EXISTS {trig} ON {table}; \
         CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {table} \
           FOR EACH ROW EXECUTE FUNCTION {func}(); \
         CREATE OR REPLACE FUNCTION {NO_TRUNCATE_FUNCTION}() RETURNS trigger \
           LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $shardline$ \
         BEGIN \
           RAISE EXCEPTION USING ERRCODE = '55000', \
             MESSAGE = 'TRUNCATE is refused while resharding moves this table''s rows', \
             HINT = 'delete the rows instead, or truncate after the resharding job'; \
         END $shardline$; \
         REVOKE ALL ON FUNCTION {NO_TRUNCATE_FUNCTION}() FROM PUBLIC; \
         DROP TRIGGER IF EXISTS {no_truncate} ON {table}; \
         CREATE TRIGGER {no_truncate} BEFORE TRUNCATE ON {table} \
           FOR EACH STATEMENT EXECUTE FUNCTION {NO_TRUNCATE_FUNCTION}(); \
         {PROTECT_TRIGGERS}",
        ins = record("I", "NEW"),
        del = record("D", "OLD"),
        trig = quote_ident(CAPTURE_TRIGGER),
        no_truncate = quote_ident(NO_TRUNCATE_TRIGGER),
        table = t.qualified(),
    );
    // A multi-statement simple query is one transaction: the table never
    // runs without capture between the drop and the create.
    client.batch_execute(&sql).await
}

/// Drops the capture trigger and function of a table, and its TRUNCATE
/// guard.
pub async fn drop_capture(client: &Client, t: &TableMeta) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {table}; DROP FUNCTION IF EXISTS shardline.{}(); \
             DROP TRIGGER IF EXISTS {} ON {table}",
            quote_ident(CAPTURE_TRIGGER),
            quote_ident(&format!("reshard_capture_{}", t.tag())),
            quote_ident(NO_TRUNCATE_TRIGGER),
            table = t.qualified(),
        ))
        .await
}

/// Drops the change table (one job per keyspace at a time, so it holds
/// only this job's changes).
pub async fn drop_change_table(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("DROP TABLE IF EXISTS shardline.reshard_changes")
        .await
}

/// Installs (or replaces) the trigger raising [`MOVED_SQLSTATE`] for a
/// write to a row whose key is outside `owned` (the ranges this shard
/// owns by the map being published). Creating a trigger waits for the
/// table's writers in flight, so every write before it is committed (and
/// captured) when this returns.
pub async fn install_refuse(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    owned: &[KeyRange],
) -> Result<(), tokio_postgres::Error> {
    let key = |rec: &str| format!("{rec}.{}", quote_ident(&t.key));
    let func = format!(
        "shardline.{}",
        quote_ident(&format!("reshard_refuse_{}", t.tag()))
    );
    // The fence function, open (version 0) until a cutover sets it.
    let fence_missing: bool = client
        .query_one(
            "SELECT to_regprocedure($1) IS NULL",
            &[&format!("{FENCE_FUNCTION}()")],
        )
        .await?
        .get(0);
    let fence = if fence_missing {
        fence_function(0)
    } else {
        String::new()
    };
    let sql = format!(
        "CREATE SCHEMA IF NOT EXISTS shardline; \
         REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
         CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql \
           SET search_path = pg_catalog, pg_temp AS $shardline$ \
         BEGIN \
           IF (TG_OP <> 'INSERT' AND NOT coalesce({own_old}, true)) \
              OR (TG_OP <> 'DELETE' AND NOT coalesce({own_new}, true)) THEN \
             RAISE EXCEPTION USING ERRCODE = '{MOVED_SQLSTATE}', \
               MESSAGE = 'key range moved; retry', \
               HINT = 'resharding moved this key to another shard; retry through the router'; \
           END IF; \
           IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; \
           RETURN NEW; \
         END $shardline$; \
         REVOKE ALL ON FUNCTION {func}() FROM PUBLIC; \
         DROP TRIGGER IF EXISTS {trig} ON {table}; \
         CREATE TRIGGER {trig} BEFORE INSERT OR UPDATE OR DELETE ON {table} \
           FOR EACH ROW EXECUTE FUNCTION {func}(); \
         {fence} \
         DROP TRIGGER IF EXISTS {fence_trig} ON {table}; \
         CREATE TRIGGER {fence_trig} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} \
           FOR EACH STATEMENT EXECUTE FUNCTION {FENCE_FUNCTION}(); \
         {PROTECT_TRIGGERS}",
        own_old = in_ranges(key_type, &key("OLD"), owned),
        own_new = in_ranges(key_type, &key("NEW"), owned),
        trig = quote_ident(REFUSE_TRIGGER),
        fence_trig = quote_ident(FENCE_TRIGGER),
        table = t.qualified(),
    );
    // One implicit transaction, as above.
    client.batch_execute(&sql).await
}

/// The fence function: refuses every write statement of a tenant
/// session once the fence is raised (`version` > 0) unless the session
/// states, in `shardline.map_version`, a genuine claim (see
/// [`shardline_core::fence`]; checked against the key in
/// `shardline.fence_key`, which only superusers can read — the function
/// is SECURITY DEFINER) to route by catalog `version` or newer. Behind
/// the fence: SQLSTATE `SLM01`, so the router retries by a newer map. No
/// valid claim — a tenant's SQL changed the setting, or it is missing —
/// is refused with 42501. Superuser sessions (the manager's, operators')
/// pass. [`FENCE_VERSION_SQL`] reads `version` back from the text
/// `v::int8 < VERSION`.
fn fence_function(version: u64) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {FENCE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql \
           SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $shardline$ \
         DECLARE claim text; v text; k text; \
         BEGIN \
           IF {version} = 0 THEN RETURN NULL; END IF; \
           IF (SELECT rolsuper FROM pg_authid WHERE rolname = session_user) THEN RETURN NULL; END IF; \
           claim := current_setting('{CLAIM_SETTING}', true); \
           IF claim IS NOT NULL AND claim ~ '^[0-9]{{1,18}}:[0-9a-f]{{64}}$' THEN \
             v := split_part(claim, ':', 1); \
             SELECT key INTO k FROM shardline.fence_key LIMIT 1; \
           END IF; \
           IF k IS NULL OR split_part(claim, ':', 2) <> encode(sha256(convert_to( \
               k || ':' || pg_backend_pid() || ':' || v || ':' || k, 'UTF8')), 'hex') THEN \
             RAISE EXCEPTION USING ERRCODE = '42501', \
               MESSAGE = 'this session does not state a valid routing version, which writes to a resharded shard need', \
               HINT = 'the router sets {CLAIM_SETTING}; statements must not change it'; \
           END IF; \
           IF v::int8 < {version} THEN \
             RAISE EXCEPTION USING ERRCODE = '{MOVED_SQLSTATE}', \
               MESSAGE = 'this shard was resharded after the routing table the statement was routed by; retry', \
               HINT = 'the router is behind the catalog; retry through an up-to-date router'; \
           END IF; \
           RETURN NULL; \
         END $shardline$; \
         REVOKE ALL ON FUNCTION {FENCE_FUNCTION}() FROM PUBLIC;"
    )
}

/// Stores the tenant's claim key (see [`shardline_core::fence`]) where
/// the fence function reads it and no tenant can.
fn fence_key_sql(key: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS shardline.fence_key (key text NOT NULL); \
         REVOKE ALL ON shardline.fence_key FROM PUBLIC; \
         DELETE FROM shardline.fence_key; \
         INSERT INTO shardline.fence_key VALUES ({});",
        quote_literal(key)
    )
}

/// Raises the fence of a source's tenant database to catalog `version`:
/// from now on a router session that routed by an older catalog writes
/// nothing here (its statement fails with `SLM01`), even to keys no row
/// matches any more. Set at cutover once every live router has that
/// version or its lease ran out, so only a router cut off from the
/// manager is behind it. `claim_key` is the tenant's
/// ([`shardline_core::fence::claim_key`]). Never lowers it.
pub async fn set_fence(
    client: &Client,
    version: u64,
    claim_key: &str,
) -> Result<(), tokio_postgres::Error> {
    if fence_version(client).await? >= version {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS shardline; REVOKE ALL ON SCHEMA shardline FROM PUBLIC; \
             {} {}",
            fence_key_sql(claim_key),
            fence_function(version)
        ))
        .await
}

/// The version a tenant database's fence is at (0: none).
pub async fn fence_version(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let row = client.query_one(FENCE_VERSION_SQL, &[]).await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// Whether a table has the refuse trigger.
pub async fn has_refuse(client: &Client, t: &TableMeta) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger \
               WHERE tgrelid = to_regclass($1) AND tgname = $2)",
            &[&t.qualified(), &REFUSE_TRIGGER],
        )
        .await?;
    Ok(row.get(0))
}

/// Rows of `t` with keys in `ranges`: a count (for estimates).
pub async fn count_in(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
) -> Result<i64, tokio_postgres::Error> {
    let pred = in_ranges(key_type, &format!("t.{}", quote_ident(&t.key)), ranges);
    let sql = format!("SELECT count(*) FROM {} t WHERE {pred}", t.qualified());
    Ok(client.query_one(&sql, &[]).await?.get(0))
}

/// Primary keys (JSON objects) cutting the rows of `t` in `ranges` into
/// batches of `limit` rows: the key of every `limit`-th row in
/// primary-key order. Batch `i` is the rows after bound `i - 1` up to
/// bound `i`; the last one the rows after the last bound. Bounds are
/// only cut points: rows written since they were read fall into some
/// batch all the same.
pub async fn batch_bounds(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
    limit: usize,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let pred = in_ranges(key_type, &format!("t.{}", quote_ident(&t.key)), ranges);
    let sql = format!(
        "SELECT k FROM (SELECT {obj}::text AS k, row_number() OVER (ORDER BY {order}) AS n \
         FROM {q} t WHERE {pred}) b WHERE n % {limit} = 0 ORDER BY n",
        obj = pk_object(t, "t"),
        order = t.pk_list("t"),
        q = t.qualified(),
    );
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `jsonb_build_object('pk1', alias.pk1, ...)`.
fn pk_object(t: &TableMeta, alias: &str) -> String {
    let parts: Vec<String> =
        t.pk.iter()
            .map(|c| format!("{}, {alias}.{}", quote_literal(c), quote_ident(c)))
            .collect();
    format!("jsonb_build_object({})", parts.join(", "))
}

/// How [`copy_batch`] moves rows: `binary` when every column has a
/// built-in type, the same on both sides (binary values of built-in
/// types are the same for any session settings, while those of arrays
/// and composites of user-defined types carry the sending server's type
/// oids), `text` otherwise.
pub async fn copy_format(
    source: &Client,
    target: &Client,
    t: &TableMeta,
) -> Result<&'static str, tokio_postgres::Error> {
    let sql = "SELECT coalesce(bool_and(a.atttypid < 16384), true), \
               coalesce(string_agg(format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum), '') \
               FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
               AND NOT a.attisdropped AND a.attname::text = ANY($2)";
    let q = t.qualified();
    let (s, d) = (
        source.query_one(sql, &[&q, &t.columns]).await?,
        target.query_one(sql, &[&q, &t.columns]).await?,
    );
    let (s_builtin, s_types): (bool, String) = (s.get(0), s.get(1));
    let (d_builtin, d_types): (bool, String) = (d.get(0), d.get(1));
    Ok(if s_builtin && d_builtin && s_types == d_types {
        "binary"
    } else {
        "text"
    })
}

/// The session's staging table for copying `t`: a temporary table with
/// `t`'s insertable columns.
fn staging(t: &TableMeta) -> String {
    format!(
        "pg_temp.{}",
        quote_ident(&format!("shardline_copy_{}", t.tag()))
    )
}

/// Creates (afresh) the target session's staging table for `t`.
pub async fn create_staging(target: &Client, t: &TableMeta) -> Result<(), tokio_postgres::Error> {
    let s = staging(t);
    target
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {s}; CREATE TEMP TABLE {name} AS SELECT {cols} FROM {q} \
             WITH NO DATA",
            name = quote_ident(&format!("shardline_copy_{}", t.tag())),
            cols = list(&t.columns, ""),
            q = t.qualified(),
        ))
        .await
}

/// Drops the target session's staging table for `t`.
pub async fn drop_staging(target: &Client, t: &TableMeta) -> Result<(), tokio_postgres::Error> {
    target
        .batch_execute(&format!("DROP TABLE IF EXISTS {}", staging(t)))
        .await
}

/// Where [`copy_batch`] writes on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyInto {
    /// Straight into the table: fastest, and fails with 23505 (unique
    /// violation) as soon as one of the rows is there already (a batch
    /// copied again after a restart), changing nothing.
    Table,
    /// Through the staging table (see [`create_staging`]), then inserted
    /// where their primary key is not there yet (`ON CONFLICT DO
    /// NOTHING`).
    Staging,
}

/// Copies the rows of `t` in `ranges` after primary key `after` up to
/// `upto` (JSON objects; `None`: unbounded) from `source` (in its
/// snapshot) to `target`: `COPY ... TO STDOUT` streamed into `COPY ...
/// FROM STDIN` as `into` says. How many rows were read.
#[allow(clippy::too_many_arguments)]
pub async fn copy_batch(
    source: &Client,
    target: &Client,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
    (after, upto): (Option<&str>, Option<&str>),
    format: &str,
    into: CopyInto,
) -> Result<u64, CopyError> {
    use futures_util::{SinkExt, TryStreamExt};

    let q = t.qualified();
    let mut pred = in_ranges(key_type, &format!("t.{}", quote_ident(&t.key)), ranges);
    // COPY takes no parameters: the bounds are literals, read as records
    // of the table so each key column compares by its own type.
    let bound = |json: &str| {
        format!(
            "(SELECT {pk} FROM jsonb_populate_record(NULL::{q}, {}::jsonb))",
            quote_literal(json),
            pk = t.pk_list(""),
        )
    };
    let order = t.pk_list("t");
    if let Some(a) = after {
        pred.push_str(&format!(" AND ({order}) > {}", bound(a)));
    }
    if let Some(u) = upto {
        pred.push_str(&format!(" AND ({order}) <= {}", bound(u)));
    }
    let cols = list(&t.columns, "");
    let out = format!(
        "COPY (SELECT {} FROM {q} t WHERE {pred}) TO STDOUT (FORMAT {format})",
        list(&t.columns, "t")
    );
    let s = staging(t);
    let dest = match into {
        CopyInto::Table => &q,
        CopyInto::Staging => &s,
    };
    let copy_in = format!("COPY {dest} ({cols}) FROM STDIN (FORMAT {format})");
    let rows = source.copy_out(&out).await.map_err(CopyError::Source)?;
    let sink = target.copy_in(&copy_in).await.map_err(CopyError::Target)?;
    let mut rows = std::pin::pin!(rows);
    let mut sink = std::pin::pin!(sink);
    // PostgreSQL sends a row per message; the target takes any split of
    // the stream, so rows go on in messages of about COPY_CHUNK bytes
    // (a tenth of the sends and frames). Dropping the sink on an error
    // aborts the target's COPY.
    let mut buf = bytes::BytesMut::new();
    while let Some(row) = rows.try_next().await.map_err(CopyError::Source)? {
        buf.extend_from_slice(&row);
        if buf.len() >= COPY_CHUNK {
            sink.feed(buf.split().freeze())
                .await
                .map_err(CopyError::Target)?;
        }
    }
    if !buf.is_empty() {
        sink.feed(buf.freeze()).await.map_err(CopyError::Target)?;
    }
    let n = sink.as_mut().finish().await.map_err(CopyError::Target)?;
    if into == CopyInto::Staging {
        target
            .batch_execute(&format!(
                "INSERT INTO {q} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM {s} \
                 ON CONFLICT DO NOTHING; TRUNCATE {s}"
            ))
            .await
            .map_err(CopyError::Target)?;
    }
    Ok(n)
}

/// Bytes of rows per message a copy sends to the target.
const COPY_CHUNK: usize = 64 * 1024;

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    Source(tokio_postgres::Error),
    Target(tokio_postgres::Error),
}

impl CopyError {
    /// A row of the batch was on the target already.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CopyError::Target(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }
}

/// Inserts rows (JSON texts, all columns) with `on_conflict`.
async fn insert_rows(
    client: &impl tokio_postgres::GenericClient,
    t: &TableMeta,
    rows: &[String],
    on_conflict: &str,
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let cols = list(&t.columns, "");
    let sql = format!(
        "INSERT INTO {q} ({cols}) OVERRIDING SYSTEM VALUE \
         SELECT {cols} FROM jsonb_populate_recordset(NULL::{q}, $1::text::jsonb) {on_conflict}",
        q = t.qualified()
    );
    client.execute(&sql, &[&json_array(rows)]).await
}

/// Inserts rows or overwrites them whole.
pub async fn upsert(
    client: &impl tokio_postgres::GenericClient,
    t: &TableMeta,
    rows: &[String],
) -> Result<u64, tokio_postgres::Error> {
    let sets: Vec<String> = t
        .columns
        .iter()
        .filter(|c| !t.pk.contains(c))
        .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let action = if sets.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", sets.join(", "))
    };
    let on_conflict = format!("ON CONFLICT ({}) DO {action}", t.pk_list(""));
    insert_rows(client, t, rows, &on_conflict).await
}

/// Deletes the rows with the primary keys of `rows` (JSON texts).
pub async fn delete_keys(
    client: &impl tokio_postgres::GenericClient,
    t: &TableMeta,
    rows: &[String],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let on: Vec<String> =
        t.pk.iter()
            .map(|c| format!("t.{0} = d.{0}", quote_ident(c)))
            .collect();
    let sql = format!(
        "DELETE FROM {q} t USING jsonb_populate_recordset(NULL::{q}, $1::text::jsonb) d \
         WHERE {}",
        on.join(" AND "),
        q = t.qualified()
    );
    client.execute(&sql, &[&json_array(rows)]).await
}

fn json_array(rows: &[String]) -> String {
    let mut out = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push(']');
    out
}

/// One captured change.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub table: String,
    /// `I`, `U` or `D`.
    pub op: String,
    /// The row as JSON text.
    pub row: String,
}

/// Whether the change table exists (it does once capture is installed).
pub async fn has_change_table(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT to_regclass('shardline.reshard_changes') IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}

/// The oldest `limit` changes of `job`.
pub async fn read_changes(
    client: &Client,
    job: &str,
    limit: usize,
) -> Result<Vec<Change>, tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT seq, tbl, op::text, row::text FROM shardline.reshard_changes \
             WHERE job = $1 ORDER BY seq LIMIT $2",
            &[&job, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Change {
            seq: r.get(0),
            table: r.get(1),
            op: r.get(2),
            row: r.get(3),
        })
        .collect())
}

/// Changes of `job` not applied yet.
pub async fn changes_behind(client: &Client, job: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM shardline.reshard_changes WHERE job = $1",
            &[&job],
        )
        .await?
        .get(0))
}

/// Forgets applied changes, by their `seq`. Not "up to the last one":
/// a transaction that took a lower `seq` may commit after a higher one
/// was read, and its change must stay for the next batch.
pub async fn forget_changes(
    client: &Client,
    job: &str,
    seqs: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM shardline.reshard_changes WHERE job = $1 AND seq = ANY($2)",
            &[&job, &seqs],
        )
        .await
}

/// What one batch of changes does to one table: the last state of each
/// primary key (captured rows are whole, so only the last one counts).
#[derive(Debug, Default)]
pub struct Net {
    pub upserts: Vec<String>,
    pub deletes: Vec<String>,
}

/// Primary keys in first-seen order, and each one's last change
/// (`true` for a delete) with its row.
type Latest = (Vec<String>, HashMap<String, (bool, String)>);

/// Collapses changes (in `seq` order) to their net effect per table and
/// target shard. `target_of` names the shard a row's key belongs to
/// (`None`: skip it); `key_of` finds its primary key.
pub fn net_changes(
    changes: &[Change],
    metas: &HashMap<String, TableMeta>,
    key_type: KeyType,
    target_of: impl Fn(u64) -> Option<String>,
) -> Result<HashMap<(String, String), Net>, String> {
    // (target, table) -> pk -> (op, row), in first-seen order per table.
    let mut last: HashMap<(String, String), Latest> = HashMap::new();
    for c in changes {
        let Some(meta) = metas.get(&c.table) else {
            return Err(format!("a change of unknown table {}", c.table));
        };
        let value: serde_json::Value = serde_json::from_str(&c.row)
            .map_err(|e| format!("a captured row of {} does not parse: {e}", c.table))?;
        let Some(hash) = row_hash(&value, &meta.key, key_type) else {
            continue; // a NULL key: never in a range.
        };
        let Some(target) = target_of(hash) else {
            continue;
        };
        let pk: Vec<&serde_json::Value> = meta
            .pk
            .iter()
            .map(|p| value.get(p).unwrap_or(&serde_json::Value::Null))
            .collect();
        let pk = serde_json::to_string(&pk).unwrap_or_default();
        let entry = last.entry((target, c.table.clone())).or_default();
        if !entry.1.contains_key(&pk) {
            entry.0.push(pk.clone());
        }
        entry.1.insert(pk, (c.op == "D", c.row.clone()));
    }
    let mut out = HashMap::new();
    for (k, (order, mut by_pk)) in last {
        let mut net = Net::default();
        for pk in order {
            if let Some((delete, row)) = by_pk.remove(&pk) {
                if delete {
                    net.deletes.push(row);
                } else {
                    net.upserts.push(row);
                }
            }
        }
        out.insert(k, net);
    }
    Ok(out)
}

/// The routing hash of the key column of a row in JSON.
fn row_hash(row: &serde_json::Value, key: &str, key_type: KeyType) -> Option<u64> {
    let v = row.get(key)?;
    match key_type {
        KeyType::Text => v.as_str().map(|s| routing_hash(ShardKey::Text(s))),
        KeyType::Bigint => v.as_i64().map(|i| routing_hash(ShardKey::Bigint(i))),
        KeyType::Uuid => v
            .as_str()
            .and_then(shardline_core::hash::parse_uuid)
            .map(|u| routing_hash(ShardKey::Uuid(u))),
    }
}

/// Row count and checksum (`count:sum of a 64-bit hash of each row`) of
/// the rows of `t` in `range`.
pub async fn checksum(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    range: &KeyRange,
) -> Result<String, tokio_postgres::Error> {
    let mut sums = checksums(client, t, key_type, std::slice::from_ref(range), None, None).await?;
    Ok(sums.pop().unwrap_or_else(|| "0:0".into()))
}

/// [`checksum`] for each of `ranges`, in one round trip; with `keys`
/// (rows as JSON), of the rows with their primary keys only; with
/// `snapshot`, read in that exported snapshot (`pg_export_snapshot`).
///
/// The row hash is PostgreSQL's `hash_record_extended`, which hashes
/// each column by its type's hash function (about twice as fast as
/// hashing the row's text). A table with a column type that has none
/// (json, money, point, ...) fails with 42883 as soon as a row is read,
/// and is hashed by its text instead: on both sides alike, since either
/// both have rows (and fail) or the counts differ anyway.
pub async fn checksums(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
    keys: Option<&[String]>,
    snapshot: Option<&str>,
) -> Result<Vec<String>, tokio_postgres::Error> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    // Only the rows with the primary keys of `keys` (JSON rows), found
    // by the primary-key index.
    let only = match keys {
        None => String::new(),
        Some(_) => format!(
            " AND ({}) IN (SELECT {} FROM jsonb_populate_recordset(NULL::{}, $1::text::jsonb))",
            t.pk_list("t"),
            t.pk_list(""),
            t.qualified()
        ),
    };
    let json = keys.map(json_array).unwrap_or_default();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match keys {
        None => Vec::new(),
        Some(_) => vec![&json],
    };
    let key = format!("t.{}", quote_ident(&t.key));
    // One filtered scan per range (faster than one scan grouping every
    // row by range: rows outside the ranges are never hashed), sent as
    // one statement.
    let sql = |hash: &str| {
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "SELECT {i}, count(*), coalesce(sum({hash}), 0)::text FROM {} t WHERE {}{only}",
                    t.qualified(),
                    in_ranges(key_type, &key, std::slice::from_ref(r))
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    // Each attempt in a transaction of its own when it reads in an
    // exported snapshot (a failed statement ends a transaction).
    let begin = snapshot.map(|id| {
        format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(id)
        )
    });
    let attempt = |hash: &'static str| {
        let (sql, begin, params) = (sql(hash), begin.clone(), &params);
        async move {
            if let Some(begin) = &begin {
                client.batch_execute(begin).await?;
            }
            let rows = client.query(&sql, params).await;
            if begin.is_some() {
                client.batch_execute("ROLLBACK").await?;
            }
            rows
        }
    };
    let rows = match attempt("hash_record_extended(t.*, 0)").await {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
            attempt("hashtextextended((t.*)::text, 0)").await?
        }
        other => other?,
    };
    let mut out = vec!["0:0".to_string(); ranges.len()];
    for row in rows {
        let (i, n, sum): (i32, i64, String) = (row.get(0), row.get(1), row.get(2));
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = format!("{n}:{sum}");
        }
    }
    Ok(out)
}

/// Deletes up to `limit` rows of `t` in `ranges`; how many went.
pub async fn delete_batch(
    client: &Client,
    t: &TableMeta,
    key_type: KeyType,
    ranges: &[KeyRange],
    limit: usize,
) -> Result<u64, tokio_postgres::Error> {
    let pred = in_ranges(key_type, &format!("t.{}", quote_ident(&t.key)), ranges);
    let sql = format!(
        "DELETE FROM {q} WHERE ctid = ANY (ARRAY(SELECT t.ctid FROM {q} t WHERE {pred} \
         LIMIT {limit}))",
        q = t.qualified()
    );
    client.execute(&sql, &[]).await
}

/// Advances the target's sequences in `schema` to at least the source's.
pub async fn sync_sequences(
    source: &Client,
    target: &Client,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let rows = source
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences \
             WHERE schemaname = $1 AND last_value IS NOT NULL",
            &[&schema],
        )
        .await?;
    for r in rows {
        let name: String = r.get(0);
        let value: i64 = r.get(1);
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(&name));
        target
            .execute(
                "SELECT setval(to_regclass($1), $2) FROM pg_sequences \
                 WHERE schemaname = $3 AND sequencename = $4 \
                   AND coalesce(last_value, min_value - 1) < $2",
                &[&qualified, &value, &schema, &name],
            )
            .await?;
    }
    Ok(())
}

/// Makes a session's writes skip ordinary triggers and foreign-key
/// checks (rows change place; they are not new writes).
pub async fn as_replica(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute("SET session_replication_role = replica")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TableMeta {
        TableMeta {
            schema: "s".into(),
            name: "items".into(),
            key: "id".into(),
            pk: vec!["id".into()],
            columns: vec!["id".into(), "v".into()],
        }
    }

    #[test]
    fn nets_changes_per_key() {
        let metas = HashMap::from([("items".to_string(), meta())]);
        let ch = |seq, op: &str, id: &str, v: i64| Change {
            seq,
            table: "items".into(),
            op: op.into(),
            row: format!("{{\"id\":\"{id}\",\"v\":{v}}}"),
        };
        let changes = vec![
            ch(1, "I", "a", 1),
            ch(2, "U", "a", 2),
            ch(3, "I", "b", 1),
            ch(4, "D", "b", 1),
            ch(5, "D", "c", 1),
            ch(6, "I", "c", 7),
        ];
        let net = net_changes(&changes, &metas, KeyType::Text, |_| Some("t".into())).unwrap();
        let n = &net[&("t".to_string(), "items".to_string())];
        assert_eq!(
            n.upserts,
            ["{\"id\":\"a\",\"v\":2}", "{\"id\":\"c\",\"v\":7}"]
        );
        assert_eq!(n.deletes, ["{\"id\":\"b\",\"v\":1}"]);
        let skipped = net_changes(&changes, &metas, KeyType::Text, |_| None).unwrap();
        assert!(skipped.is_empty());
    }

    #[test]
    fn predicates() {
        assert_eq!(in_ranges(KeyType::Text, "k", &[]), "false");
        let p = in_ranges(KeyType::Text, "k", &[KeyRange::parse("-80").unwrap()]);
        assert!(p.contains("hashtextextended"), "{p}");
    }
}
