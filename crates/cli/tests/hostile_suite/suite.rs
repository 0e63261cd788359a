//! The suite's state and set-up: the stack, the tenants (alpha the
//! attacker with one pooled connection per shard and two apps, beta the
//! victim, gamma dedicated, a hog, and a control tenant made superuser),
//! beta's secrets, alpha's helpers, the superuser views, the marker
//! directory and beta's listener; judging and counting each attack.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shardline_api::manager::{
    ApplyMigrationRequest, CreateAppRequest, CreateTenantRequest, TenantConfig,
};
use shardline_client::RouterClient;
use shardline_core::catalog::{quote_ident, quote_literal};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::AsyncMessage;

use super::attacks::{Attack, Target, MONITORING};
use super::probes::{self, Fingerprint, Probes, ShardView};
use super::verdict::{judge, Secrets, Tally, Verdict};
use super::wire::Login;
use super::wire_attacks::WireNames;
use super::{backend_pid, client, fresh_session, rows, send, Victim};
use crate::common::{self, Stack, StackOptions};

/// beta's secret: in its rows, its large object, a comment on its table
/// (so in `pg_stat_statements`) and its running query's text.
pub const SECRET: &str = "VICTIM-SECRET-7Q2x";
pub const GAMMA_SECRET: &str = "GAMMA-SECRET-5K8w";
/// beta's tenant id and name: distinctive, so a listing naming beta is
/// seen.
pub const BETA_ID: &str = "victimco_q7";
pub const BETA_NAME: &str = "VictimCo Q7 Ltd";
/// beta's app (the id `Stack::tenant` gives it): its user name on the
/// wire.
pub const BETA_APP: &str = "victimco_q7-app";
/// The router's request deadline in this suite: shorter than the
/// default, to cut the long sleeps sooner; the reads past the result
/// limits are refused well within it (0.1-1 s in a debug build). It also
/// bounds beta's victim request, which must outlive every attack on it:
/// 8 s was too short on a clean-clone CI run sharing two cores with the
/// other tests (the victim's request ended before the attacks did).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// PostgreSQL's `statement_timeout` through the router here: longer than
/// [`REQUEST_TIMEOUT`], so the attacks that lift their own limit meet
/// the router's deadline (504 on HTTP) before PostgreSQL's.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The router's connections per shard, over all tenants: a little more
/// than one tenant's pool (`TENANT_POOL`, the router's default).
pub const SHARD_BUDGET: usize = 10;
/// Connections of one tenant's pool per shard (the router's default).
pub const TENANT_POOL: usize = 8;

/// Who sends an attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Who {
    Alpha,
    /// A tenant whose role a superuser gave the rights to run programs
    /// and to signal any session: the controls.
    Superuser,
}

/// Everything the suite works with, and its count.
pub struct Suite {
    pub stack: Stack,
    pub alpha: RouterClient,
    pub alpha_other: RouterClient,
    pub beta: RouterClient,
    pub superuser: RouterClient,
    /// A tenant that holds its whole pool busy.
    pub hog: RouterClient,
    pub key: String,
    /// The shard of `key`, as an index into `probes.shards`.
    pub shard: usize,
    pub target: Target,
    pub probes: Probes,
    pub secrets: Secrets,
    pub listener: UnboundedReceiver<String>,
    /// The listener's session, kept open.
    pub _listener_session: tokio_postgres::Client,
    pub before: Fingerprint,
    /// alpha's role settings on each shard, to restore after the checks
    /// that change them.
    pub alpha_role_settings: Vec<Vec<(Option<String>, Vec<String>)>>,
    pub tally: Tally,
    pub controls: Tally,
    /// Who is who on the router's PostgreSQL protocol listener.
    pub wire: WireNames,
    pub logins: WireLogins,
}

/// The apps' logins over the PostgreSQL protocol (user = app id,
/// password = its token, database = the keyspace).
pub struct WireLogins {
    pub alpha: Login,
    pub alpha_other: Login,
    pub beta: Login,
    pub superuser: Login,
    pub hog: Login,
}

impl Suite {
    /// Prints the count by outcome and the controls' verdict, stops the
    /// stack, and fails naming every attack or control not as declared.
    pub async fn finish(self, what: &str, started: Instant, phases: &[String]) {
        println!(
            "{what}: {} ({:.1}s: {})",
            self.tally.summary(),
            started.elapsed().as_secs_f64(),
            phases.join(", ")
        );
        println!("controls: {}", self.controls.summary());
        let mut failures: Vec<String> = self.tally.unexpected().to_vec();
        failures.extend(
            self.controls
                .unexpected()
                .iter()
                .map(|c| format!("control {c}")),
        );
        for f in &failures {
            println!("NOT AS DECLARED: {f}");
        }
        self.stack.stop().await;
        assert!(
            failures.is_empty(),
            "{what}: {} attacks or controls not as declared:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    pub fn client(&self, who: Who) -> RouterClient {
        match who {
            Who::Alpha => self.alpha.clone(),
            Who::Superuser => self.superuser.clone(),
        }
    }

    pub fn view(&self) -> &ShardView {
        &self.probes.shards[self.shard]
    }

    /// alpha's own view must stay alpha's: same user, database, no
    /// rights on beta, no superuser.
    pub async fn identity_effects(&self) -> Vec<String> {
        let sql = format!(
            "SELECT current_user::text, session_user::text, current_database()::text, \
             has_database_privilege({b}, 'CONNECT'), pg_has_role({b}, 'USAGE'), \
             current_setting('is_superuser')",
            b = quote_literal(&self.target.beta)
        );
        let a = json!(self.target.alpha);
        let want = vec![vec![
            a.clone(),
            a.clone(),
            a,
            json!(false),
            json!(false),
            json!("off"),
        ]];
        match rows(&self.alpha, &self.key, &sql).await {
            Ok(rows) if rows == want => Vec::new(),
            Ok(rows) => vec![format!(
                "alpha's identity or rights changed: {}",
                Value::from(rows)
            )],
            Err(e) => vec![format!("alpha's identity probe failed: {e}")],
        }
    }

    /// Notifications beta's listener heard (none may come from alpha).
    pub fn notifications(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(payload) = self.listener.try_recv() {
            out.push(format!("beta's listener heard {payload:?}"));
        }
        out
    }

    /// Everything that changed where an attack's effect would land.
    pub async fn effects(&mut self) -> Vec<String> {
        let mut out = self.probes.effects(&self.before).await;
        out.extend(self.identity_effects().await);
        out.extend(self.notifications());
        out
    }

    /// Judges and counts; after an unexpected verdict, starts alpha on a
    /// new connection, empties the marker directory and takes the
    /// fingerprint again, so the next attack is judged on its own.
    pub async fn conclude(&mut self, name: &str, verdict: Verdict) -> Verdict {
        self.tally.record(name, &verdict);
        if verdict.is_unexpected() {
            fresh_session(&self.alpha, &self.key).await;
            self.probes.clear_marker();
            self.before = self.probes.fingerprint().await;
            let _ = self.notifications();
        }
        verdict
    }

    /// Sends one attack and judges it.
    pub async fn attempt(&mut self, who: Who, a: &Attack, victim: Option<&Victim>) -> Verdict {
        let got = send(&self.client(who), &self.key, &a.send).await;
        let mut effects = Vec::new();
        if let Some(v) = victim {
            effects.extend(v.effects(&self.view().admin).await);
        }
        effects.extend(self.effects().await);
        let verdict = judge(&a.expect, &got, &self.secrets, &effects);
        self.conclude(&a.name, verdict).await
    }

    /// The router is still healthy: ready, and ordinary requests of
    /// beta's and alpha's succeed.
    pub async fn health_effects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ready = common::raw(&self.stack.router_url, "GET", "/readyz", None, b"", &[]).await;
        if ready.status != 200 {
            out.push(format!("/readyz answered {}", ready.status));
        }
        if let Err(e) = rows(&self.beta, &self.key, "SELECT count(*) FROM items").await {
            out.push(format!("beta's ordinary request failed afterwards: {e}"));
        }
        let own = format!("SELECT v FROM items WHERE k = {}", quote_literal(&self.key));
        match rows(&self.alpha, &self.key, &own).await {
            Ok(r) if r == vec![vec![json!("alpha-own")]] => {}
            Ok(r) => out.push(format!("alpha's ordinary request answered {r:?}")),
            Err(e) => out.push(format!("alpha's ordinary request failed afterwards: {e}")),
        }
        out
    }
}

pub async fn set_up() -> Suite {
    let stack = Stack::start(StackOptions {
        shards: 2,
        spare: 2,
        spare_for: Some("gamma".into()),
        pg_settings: &[("shared_preload_libraries", "pg_stat_statements")],
        statement_timeout: STATEMENT_TIMEOUT,
        tune_router: |cfg| {
            // The PostgreSQL protocol too (hostile_wire.rs).
            cfg.pg_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.request_timeout = REQUEST_TIMEOUT;
            cfg.shard_max_connections = SHARD_BUDGET;
            cfg.tenant_pool_size = TENANT_POOL;
        },
        ..StackOptions::default()
    })
    .await;
    let items = "CREATE TABLE items (k text PRIMARY KEY, v text NOT NULL)";
    stack.migrate("001_items", items).await;
    // One connection per shard: every request of alpha's (both apps)
    // reuses the same session, so state an attack leaves is probed.
    let alpha = stack
        .tenant(CreateTenantRequest {
            id: "alpha".into(),
            config: TenantConfig {
                max_connections_per_shard: Some(1),
                ..TenantConfig::default()
            },
            ..CreateTenantRequest::default()
        })
        .await;
    let alpha_other = stack
        .admin
        .create_app(&CreateAppRequest {
            name: "alpha-other-app".into(),
            tenant: Some("alpha".into()),
            ..CreateAppRequest::default()
        })
        .await
        .expect("alpha's second app");
    let beta = stack
        .tenant(CreateTenantRequest {
            id: BETA_ID.into(),
            name: Some(BETA_NAME.into()),
            ..CreateTenantRequest::default()
        })
        .await;
    let gamma = stack
        .tenant(CreateTenantRequest {
            id: "gamma".into(),
            dedicated: true,
            shards: Some(2),
            ..CreateTenantRequest::default()
        })
        .await;
    let superuser = stack
        .tenant(CreateTenantRequest {
            id: "control".into(),
            ..CreateTenantRequest::default()
        })
        .await;
    let hog = stack
        .tenant(CreateTenantRequest {
            id: "hog".into(),
            ..CreateTenantRequest::default()
        })
        .await;
    stack
        .admin
        .apply_migration(
            "gamma",
            &ApplyMigrationRequest {
                name: "001_items".into(),
                sql: items.into(),
            },
        )
        .await
        .expect("gamma's table");
    // Code in the shared keyspace, as only a migration may bring it (see
    // docs/operations.md, "Session state"): two helper functions the
    // session-state checks use, and the operator's monitoring extension,
    // which takes the superuser (a migration may `RESET ROLE`). The
    // keyspace is then marked as holding code: routers reset every
    // session after every request there (the router's tests cover the
    // keyspace without code).
    stack
        .admin
        .apply_migration(
            "default",
            &ApplyMigrationRequest {
                name: "002_helpers_and_monitoring".into(),
                sql: format!(
                    "CREATE FUNCTION probe(q text) RETURNS text LANGUAGE plpgsql AS $f$ \
                     DECLARE r text; BEGIN EXECUTE q INTO r; RETURN r; \
                     EXCEPTION WHEN others THEN RETURN 'error ' || SQLSTATE; END $f$; \
                     CREATE FUNCTION run_then(action text, probe text) RETURNS text \
                     LANGUAGE plpgsql AS $f$ DECLARE r text; BEGIN EXECUTE action; \
                     EXECUTE probe INTO r; RETURN r; END $f$; \
                     DO $d$ DECLARE me text := current_user; BEGIN \
                       RESET ROLE; \
                       CREATE SCHEMA IF NOT EXISTS {MONITORING}; \
                       CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA {MONITORING}; \
                       EXECUTE format('GRANT USAGE ON SCHEMA {MONITORING} TO %I', me); \
                       EXECUTE format('SET LOCAL ROLE %I', me); \
                     END $d$"
                ),
            },
        )
        .await
        .expect("the shared keyspace's helpers and monitoring");
    let pg_name = |id: &'static str| {
        let admin = stack.admin.clone();
        async move {
            admin
                .get_tenant(id)
                .await
                .unwrap_or_else(|e| panic!("tenant {id}: {e}"))
                .pg_name
        }
    };
    let (alpha_pg, beta_pg, superuser_pg) = (
        pg_name("alpha").await,
        pg_name(BETA_ID).await,
        pg_name("control").await,
    );
    let tokens = [
        ("alpha-app", alpha.token.clone()),
        ("alpha-other-app", alpha_other.token.clone()),
        (BETA_APP, beta.token.clone()),
        ("control-app", superuser.token.clone()),
        ("hog-app", hog.token.clone()),
    ];
    let pg_addr = stack
        .router_pg
        .expect("the router listens for the PostgreSQL protocol");
    let login = |i: usize| Login::router(pg_addr, tokens[i].0, &tokens[i].1, "default");
    let logins = WireLogins {
        alpha: login(0),
        alpha_other: login(1),
        beta: login(2),
        superuser: login(3),
        hog: login(4),
    };
    let alpha_other = client(&stack.router_url, &alpha_other.token);
    assert!(
        common::wait_for_token(&alpha_other).await,
        "alpha's second app"
    );
    let (alpha, beta, superuser, hog) = (
        client(&stack.router_url, &alpha.token),
        client(&stack.router_url, &beta.token),
        client(&stack.router_url, &superuser.token),
        client(&stack.router_url, &hog.token),
    );

    // beta's secrets on both shards; gamma's too.
    let mut keys_by_shard: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let insert = format!(
            "INSERT INTO items VALUES ({}, {})",
            quote_literal(&key),
            quote_literal(&format!("{SECRET}-{i}"))
        );
        rows(&beta, &key, &insert).await.expect("beta's row");
        let route = stack.router.route("default", &key).await.expect("route");
        keys_by_shard.entry(route.shard).or_insert(key.clone());
        let gamma_insert = format!(
            "INSERT INTO items VALUES ({}, '{GAMMA_SECRET}')",
            quote_literal(&key)
        );
        gamma
            .exec(&key, &gamma_insert, vec![])
            .await
            .expect("gamma's row");
    }
    assert_eq!(keys_by_shard.len(), 2, "beta's keys cover both shards");
    let (shard_id, key) = keys_by_shard
        .iter()
        .next()
        .map(|(s, k)| (s.clone(), k.clone()))
        .expect("a key");
    let other_key = keys_by_shard
        .values()
        .nth(1)
        .cloned()
        .expect("a key on the other shard");
    let shard: usize = shard_id
        .trim_start_matches('s')
        .parse()
        .expect("shard ids are s<N>");
    let lo = rows(
        &beta,
        &key,
        &format!("SELECT lo_from_bytea(0, convert_to('{SECRET}-lo', 'UTF8'))::int8"),
    )
    .await
    .expect("beta's large object");
    let beta_lo = lo[0][0].as_i64().expect("an oid");
    rows(
        &beta,
        &key,
        &format!("COMMENT ON TABLE items IS '{SECRET}-comment'"),
    )
    .await
    .expect("beta's comment");

    // alpha's own: a row and a sequence (the helper functions came with
    // the keyspace's migration).
    for sql in [
        format!(
            "INSERT INTO items VALUES ({}, 'alpha-own')",
            quote_literal(&key)
        ),
        "CREATE SEQUENCE leftover_seq".into(),
    ] {
        rows(&alpha, &key, &sql)
            .await
            .unwrap_or_else(|e| panic!("alpha's set-up {sql}: {e}"));
    }

    // Superuser views of both shared shards; the operator's monitoring
    // extension in alpha's database; the control tenant made superuser.
    let mut views = Vec::new();
    for (i, pg) in stack.shards.iter().take(2).enumerate() {
        let view = ShardView::open(
            &format!("s{i}"),
            &pg.dsn(),
            pg.data_dir().to_path_buf(),
            &alpha_pg,
            &beta_pg,
        )
        .await;
        // Not SUPERUSER: the reconciler takes that back from a tenant
        // role (a superuser is no tenant), and rightly so.
        let control = quote_ident(&superuser_pg);
        view.admin
            .batch_execute(&format!(
                "ALTER ROLE {control} INHERIT; \
                 GRANT pg_execute_server_program, pg_signal_backend TO {control}"
            ))
            .await
            .expect("give the control tenant its rights");
        views.push(view);
    }
    let view = &views[shard];
    view.beta_db
        .batch_execute(&format!("ANALYZE {}.items", quote_ident(&beta_pg)))
        .await
        .expect("analyze beta's table");
    let file_row = view
        .beta_db
        .query_one(
            &format!(
                "SELECT pg_relation_filepath({}), current_setting('data_directory'), \
                 current_setting('config_file')",
                quote_literal(&format!("{}.items", quote_ident(&beta_pg)))
            ),
            &[],
        )
        .await
        .expect("beta's table's file");
    let (beta_file, data_dir, config_file): (String, String, String) =
        (file_row.get(0), file_row.get(1), file_row.get(2));
    let beta_file_abs = format!("{data_dir}/{beta_file}");
    assert!(
        std::path::Path::new(&beta_file_abs).exists(),
        "beta's table file {beta_file_abs} exists (the attack aims at a real file)"
    );

    // A directory PostgreSQL (its own user) could write to.
    let marker = tempfile::Builder::new()
        .prefix("shardline-hostile-")
        .tempdir_in("/tmp")
        .expect("marker directory")
        .keep();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o777))
            .expect("open the marker directory");
    }

    let (listener_session, listener) = listen(&probes::db_dsn(&view.dsn, &beta_pg)).await;
    let alpha_role_settings = role_settings(&views, &alpha_pg).await;
    let target = Target {
        alpha: alpha_pg.clone(),
        beta: beta_pg.clone(),
        beta_words: vec![BETA_ID.into(), BETA_NAME.into()],
        beta_lo,
        beta_file,
        beta_file_abs,
        data_dir,
        config_file,
        marker: marker.display().to_string(),
        key: key.clone(),
    };
    let probes = Probes {
        shards: views,
        marker,
        alpha: alpha_pg,
        beta: beta_pg,
    };
    let before = probes.fingerprint().await;
    // A probe that fails already reads the same before and after every
    // attack, and would hide what it watches.
    let failing: Vec<(&String, &String)> = before
        .iter()
        .filter(|(_, v)| v.starts_with("probe failed"))
        .collect();
    assert!(
        failing.is_empty(),
        "probes failing before any attack: {failing:?}"
    );

    let mut suite = Suite {
        stack,
        alpha,
        alpha_other,
        beta,
        superuser,
        hog,
        key,
        shard,
        target,
        probes,
        secrets: Secrets::new(&[SECRET, GAMMA_SECRET]),
        listener,
        _listener_session: listener_session,
        before,
        alpha_role_settings,
        tally: Tally::default(),
        controls: Tally::default(),
        wire: WireNames {
            addr: pg_addr,
            alpha_app: tokens[0].0.into(),
            alpha_token: tokens[0].1.clone(),
            beta_app: BETA_APP.into(),
            beta_tenant: BETA_ID.into(),
            keyspace: "default".into(),
            other_key,
        },
        logins,
    };
    set_up_controls(&mut suite).await;
    suite
}

/// Controls of the set-up: the secrets are where the attacks look (so
/// an answer without them shows something), and alpha's requests share
/// one connection.
pub async fn set_up_controls(s: &mut Suite) {
    let admin = &s.view().alpha_db;
    let in_statements: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {MONITORING}.pg_stat_statements WHERE query LIKE '%{SECRET}%'"
            ),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    s.controls.check(
        "beta's secret is in pg_stat_statements",
        "control held",
        (in_statements < 1).then(|| format!("{in_statements} statements hold it")),
    );
    let own = rows(&s.beta, &s.key, "SELECT string_agg(v, ',') FROM items").await;
    s.controls.check(
        "beta reading its own rows sees the secret",
        "control held",
        match own {
            Ok(r) if Value::from(r.clone()).to_string().contains(SECRET) => None,
            other => Some(format!("{other:?}")),
        },
    );
    let (p1, p2) = (
        backend_pid(&s.alpha, &s.key).await,
        backend_pid(&s.alpha_other, &s.key).await,
    );
    s.controls.check(
        "alpha's two apps share one pooled connection",
        "control held",
        (p1 != p2).then(|| format!("pids {p1} and {p2}")),
    );
}

/// A listener on beta's channel in beta's database (a superuser's, to
/// stand for any listener beta could have); what it hears arrives on
/// the receiver while the client lives.
pub async fn listen(dsn: &str) -> (tokio_postgres::Client, UnboundedReceiver<String>) {
    let (client, mut conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("listener");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    client
        .batch_execute("LISTEN beta_events")
        .await
        .expect("listen on beta's channel");
    (client, rx)
}

/// alpha's role settings on each shard (per database, or all).
pub async fn role_settings(
    views: &[ShardView],
    role: &str,
) -> Vec<Vec<(Option<String>, Vec<String>)>> {
    let mut out = Vec::new();
    for v in views {
        let rows = v
            .admin
            .query(
                "SELECT d.datname::text, s.setconfig FROM pg_db_role_setting s \
                 LEFT JOIN pg_database d ON d.oid = s.setdatabase \
                 WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1)",
                &[&role],
            )
            .await
            .expect("alpha's role settings");
        out.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    out
}

/// Puts alpha's role settings back as they were.
pub async fn restore_role_settings(s: &Suite) {
    let a = quote_ident(&s.target.alpha);
    for (view, settings) in s.probes.shards.iter().zip(&s.alpha_role_settings) {
        let mut sql = format!("ALTER ROLE {a} RESET ALL; ");
        for db in view
            .admin
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn",
                &[],
            )
            .await
            .expect("databases")
        {
            let db: String = db.get(0);
            sql.push_str(&format!(
                "ALTER ROLE {a} IN DATABASE {} RESET ALL; ",
                quote_ident(&db)
            ));
        }
        for (db, config) in settings {
            let scope = db
                .as_ref()
                .map(|d| format!(" IN DATABASE {}", quote_ident(d)))
                .unwrap_or_default();
            for entry in config {
                if let Some((name, value)) = entry.split_once('=') {
                    sql.push_str(&format!(
                        "ALTER ROLE {a}{scope} SET {name} = {}; ",
                        quote_literal(value)
                    ));
                }
            }
        }
        view.admin
            .batch_execute(&sql)
            .await
            .expect("restore alpha's role settings");
    }
}

/// The value of a session-state probe on alpha's next connection:
/// `(pid, value)`.
pub async fn probe_value(client: &RouterClient, key: &str, probe: &str) -> Result<String, String> {
    let sql = format!("SELECT pg_backend_pid()::int8, ({probe})::text");
    let rows = rows(client, key, &sql).await?;
    match rows.first().and_then(|r| r.get(1)) {
        Some(Value::String(v)) => Ok(v.clone()),
        other => Err(format!("probe answered {other:?}")),
    }
}

pub async fn start_victim(s: &Suite) -> Victim {
    let view = s.view();
    Victim::start(
        &s.beta,
        &s.key,
        &probes::db_dsn(&view.dsn, &s.target.beta),
        &s.target.beta,
        &view.admin,
        SECRET,
    )
    .await
}

impl Suite {
    /// Waits up to `wait` for the number of active backends on the key's
    /// shard running a statement tagged `tag` to be `want`; returns the
    /// last count.
    pub async fn running(&self, tag: &str, want: i64, wait: Duration) -> i64 {
        let like = format!("%{tag}%");
        let deadline = Instant::now() + wait;
        let mut n = -1;
        loop {
            if let Ok(row) = self
                .view()
                .admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                     AND query LIKE $1 AND pid <> pg_backend_pid()",
                    &[&like],
                )
                .await
            {
                n = row.get(0);
            }
            if n == want || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
