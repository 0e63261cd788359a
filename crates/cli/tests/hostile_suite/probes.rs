//! Where an attack's effect would land, looked at as a superuser after
//! every attack: beta's database (rows, objects, grants, large objects),
//! alpha's own database (objects, extensions, event triggers, rows), the
//! server (roles, memberships, databases, per-role and per-database
//! settings, tablespaces), the server's settings from a fresh session
//! and `postgresql.auto.conf` (where `ALTER SYSTEM` writes), and a
//! directory PostgreSQL could write to, where every file and program
//! attack aims.

use std::collections::BTreeMap;
use std::path::PathBuf;

use shardline_core::catalog::{quote_ident, quote_literal};
use tokio_postgres::{Client, NoTls};

use super::verdict::clip;

/// Opens a session (its driver task runs in the background).
pub async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to a shard as superuser: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Superuser sessions on one shard.
pub struct ShardView {
    pub name: String,
    pub dsn: String,
    pub data_dir: PathBuf,
    pub admin: Client,
    pub alpha_db: Client,
    pub beta_db: Client,
}

impl ShardView {
    pub async fn open(name: &str, dsn: &str, data_dir: PathBuf, alpha: &str, beta: &str) -> Self {
        Self {
            name: name.into(),
            dsn: dsn.into(),
            data_dir,
            admin: connect(dsn).await,
            alpha_db: connect(&db_dsn(dsn, alpha)).await,
            beta_db: connect(&db_dsn(dsn, beta)).await,
        }
    }
}

/// `dsn` with another database.
pub fn db_dsn(dsn: &str, db: &str) -> String {
    format!(
        "{dsn} dbname='{}'",
        db.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// The objects of a database outside the system schemas (temporary
/// ones apart: a session's own temp tables are checked as session
/// state).
const OBJECTS: &str = "SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' \
     || pg_get_userbyid(c.relowner) || ':' || coalesce(c.relacl::text, '') \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
     AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' ORDER BY 1";

const FUNCTIONS: &str = "SELECT p.oid::regprocedure::text || ':' || pg_get_userbyid(p.proowner) \
     || ':' || p.prosecdef FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

const SCHEMAS: &str = "SELECT nspname || ':' || pg_get_userbyid(nspowner) || ':' \
     || coalesce(nspacl::text, '') FROM pg_namespace \
     WHERE nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%' ORDER BY 1";

const TRIGGERS: &str = "SELECT tgrelid::regclass::text || ':' || tgname || ':' || tgenabled::text \
     FROM pg_trigger WHERE NOT tgisinternal \
     UNION ALL SELECT 'event ' || evtname FROM pg_event_trigger ORDER BY 1";

const EXTENSIONS: &str = "SELECT extname || ' ' || extversion FROM pg_extension ORDER BY 1";

const LARGE_OBJECTS: &str = "SELECT m.oid::text || ':' || pg_get_userbyid(m.lomowner) || ':' \
     || md5(lo_get(m.oid)) FROM pg_largeobject_metadata m ORDER BY m.oid";

/// What the suite looks at: each label's rows, joined.
pub type Fingerprint = BTreeMap<String, String>;

/// The views of every shard, the marker directory, and who is who.
pub struct Probes {
    pub shards: Vec<ShardView>,
    pub marker: PathBuf,
    pub alpha: String,
    pub beta: String,
}

impl Probes {
    /// A superuser's view of everything an attack must not change.
    pub async fn fingerprint(&self) -> Fingerprint {
        let (a, b) = (quote_ident(&self.alpha), quote_ident(&self.beta));
        let alpha_role = quote_literal(&self.alpha);
        let mut out = BTreeMap::new();
        for shard in &self.shards {
            let beta_view = [
                (
                    "beta rows",
                    format!("SELECT k || '=' || v FROM {b}.items ORDER BY k"),
                ),
                ("beta objects", OBJECTS.to_string()),
                ("beta functions", FUNCTIONS.to_string()),
                ("beta schemas", SCHEMAS.to_string()),
                ("beta triggers", TRIGGERS.to_string()),
                ("beta large objects", LARGE_OBJECTS.to_string()),
            ];
            let alpha_view = [
                (
                    "alpha rows",
                    format!("SELECT k || '=' || v FROM {a}.items ORDER BY k"),
                ),
                ("alpha objects", OBJECTS.to_string()),
                ("alpha functions", FUNCTIONS.to_string()),
                ("alpha schemas", SCHEMAS.to_string()),
                ("alpha triggers", TRIGGERS.to_string()),
                ("alpha extensions", EXTENSIONS.to_string()),
                ("alpha large objects", LARGE_OBJECTS.to_string()),
            ];
            let server_view = [
                (
                    "roles",
                    "SELECT rolname || ' super=' || rolsuper || ' inherit=' || rolinherit \
                     || ' createrole=' || rolcreaterole || ' createdb=' || rolcreatedb \
                     || ' login=' || rolcanlogin || ' replication=' || rolreplication \
                     || ' bypassrls=' || rolbypassrls \
                     || ' password=' || coalesce(md5(rolpassword), '-') \
                     FROM pg_authid ORDER BY rolname"
                        .to_string(),
                ),
                (
                    "role memberships",
                    "SELECT r.rolname || ' in ' || g.rolname || ' admin=' || m.admin_option \
                     FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
                     JOIN pg_roles g ON g.oid = m.roleid ORDER BY 1"
                        .to_string(),
                ),
                (
                    "databases",
                    "SELECT datname || ' owner=' || pg_get_userbyid(datdba) \
                     || ' acl=' || coalesce(datacl::text, '') \
                     || ' connlimit=' || datconnlimit FROM pg_database ORDER BY 1"
                        .to_string(),
                ),
                // PostgreSQL lets a role set its own defaults (ALTER ROLE
                // self SET): alpha's are left out here and checked where
                // they would matter, by a new session of alpha's (the
                // session-state checks).
                (
                    "role and database settings",
                    format!(
                        "SELECT coalesce(d.datname, '*') || '/' || coalesce(r.rolname, '*') \
                         || ' ' || s.setconfig::text FROM pg_db_role_setting s \
                         LEFT JOIN pg_database d ON d.oid = s.setdatabase \
                         LEFT JOIN pg_roles r ON r.oid = s.setrole \
                         WHERE r.rolname IS DISTINCT FROM {alpha_role} ORDER BY 1"
                    ),
                ),
                (
                    "tablespaces",
                    "SELECT spcname || ':' || coalesce(spcacl::text, '') FROM pg_tablespace \
                     ORDER BY 1"
                        .to_string(),
                ),
            ];
            for (client, view) in [
                (&shard.beta_db, &beta_view[..]),
                (&shard.alpha_db, &alpha_view[..]),
                (&shard.admin, &server_view[..]),
            ] {
                for (label, sql) in view {
                    out.insert(
                        format!("{} {label}", shard.name),
                        rows_text(client, sql).await,
                    );
                }
            }
            // The settings a new session starts with, and ALTER SYSTEM's
            // file.
            let fresh = connect(&shard.dsn).await;
            for row in fresh
                .query("SELECT name, setting FROM pg_settings", &[])
                .await
                .unwrap_or_else(|e| panic!("read pg_settings: {e}"))
            {
                let name: String = row.get(0);
                let setting: Option<String> = row.get(1);
                out.insert(
                    format!("{} setting {name}", shard.name),
                    setting.unwrap_or_default(),
                );
            }
            let auto_conf = shard.data_dir.join("postgresql.auto.conf");
            out.insert(
                format!("{} postgresql.auto.conf", shard.name),
                std::fs::read_to_string(&auto_conf).unwrap_or_else(|e| format!("unreadable: {e}")),
            );
        }
        out
    }

    /// Files in the marker directory, where no attack may write.
    pub fn marker_files(&self) -> Vec<String> {
        match std::fs::read_dir(&self.marker) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => vec![format!("(marker directory unreadable: {e})")],
        }
    }

    /// Empties the marker directory (after a control, or an attack that
    /// wrote there, so the next attack is judged on its own).
    pub fn clear_marker(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.marker) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// What changed since `before`, and what landed in the marker
    /// directory, as descriptions.
    pub async fn effects(&self, before: &Fingerprint) -> Vec<String> {
        let now = self.fingerprint().await;
        let mut out = diff(before, &now);
        for file in self.marker_files() {
            out.push(format!(
                "marker file {file:?} appeared in {}",
                self.marker.display()
            ));
        }
        out
    }
}

impl Drop for Probes {
    /// Removes the marker directory (made for this run).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.marker);
    }
}

/// The rows of a one-column query, joined with `;`.
async fn rows_text(client: &Client, sql: &str) -> String {
    match client.query(sql, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(";"),
        Err(e) => format!(
            "probe failed: {}",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        ),
    }
}

/// The labels whose values differ, as "label: before → after".
pub fn diff(before: &Fingerprint, after: &Fingerprint) -> Vec<String> {
    let mut out = Vec::new();
    for (label, now) in after {
        match before.get(label) {
            Some(was) if was == now => {}
            Some(was) => out.push(format!(
                "{label} changed: {} → {}",
                clip(was, 200),
                clip(now, 200)
            )),
            None => out.push(format!("{label} appeared: {}", clip(now, 200))),
        }
    }
    for label in before.keys().filter(|l| !after.contains_key(*l)) {
        out.push(format!("{label} disappeared"));
    }
    out
}

/// The resident memory of this process (which hosts the router in these
/// tests), from `/proc/self/status`.
pub fn vm_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
