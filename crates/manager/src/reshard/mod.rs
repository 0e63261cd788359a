//! Online resharding: split, merge and move key ranges of a keyspace
//! while clients keep writing.
//!
//! A job is a persisted state machine (`jobs/<id>` in the catalog):
//! Prepare → Copy → CatchUp → Cutover → Cleanup → Done, or Cancelled /
//! Failed. Each phase is persisted before its work starts and every step
//! is idempotent, so a restarted manager resumes a job from its phase
//! ([`Reshards::resume_all`], run at startup and from the background
//! loop). One job per keyspace; jobs run as tasks of the manager.
//!
//! # Layout, top down (each module uses only those below it)
//! - this module: [`Reshards`], the API (start, cancel, list, tables).
//! - [`engine`]: the driver of a job, phase by phase; undo and failure.
//! - [`cutover`]: the order of the cutover's steps, for every kind.
//! - [`strategy`]: what differs by kind of job, one strategy each:
//!   [`ranges`] (split, merge, move), [`tenant_out`], [`tenant_back`].
//! - shared below the strategies: [`copy`] (capture, Copy, CatchUp),
//!   [`baseline`] (the comparison of sources and targets), [`fence`]
//!   (refuse triggers and fences), [`publish`] (the job's catalog
//!   writes).
//! - [`job`]: the context, plan, sessions and errors of every phase.
//! - [`registry`]: which jobs run here, are cancelled or wait; progress.
//! - [`plan`] and [`plan_tenant`]: a request checked and turned into a
//!   job; [`state`]: what the catalog says about jobs; [`sql`]: the
//!   statements run in tenant databases.
//!
//! After a cutover every table of a source carries a trigger refusing
//! writes (SQLSTATE `SLM01`) to keys outside the ranges the shard owns;
//! it stays, so a stale router never writes to the old place (one hash
//! per written row is its cost).
//!
//! Change capture uses triggers writing into a change table in each
//! source tenant database, not logical replication: it needs no slot or
//! publication per tenant database, survives a failover of the source
//! (triggers and the change table are replicated like any table), and
//! costs nothing outside jobs. Its cost: one extra insert per write to
//! the moving range while a job runs.
//!
//! Progress (rows copied and estimated, changes behind) lives in this
//! manager's memory and metrics, not in the catalog: every catalog
//! change makes every router rebuild its routing table. The copy's total
//! is written once, with the phase change that ends the copy.

pub mod baseline;
pub mod copy;
pub mod cutover;
pub mod engine;
pub mod fence;
pub mod job;
pub mod plan;
pub mod plan_tenant;
pub mod publish;
pub mod ranges;
pub mod registry;
pub mod sql;
pub mod state;
pub mod strategy;
pub mod tenant_back;
pub mod tenant_out;

pub use job::ReshardSettings;
pub use plan::plan_job;
pub use registry::Progress;
pub use state::{active_job, is_finished, phase_number};

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_api::manager::{JobInfo, MoveInfo, ReshardRequest};
use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, TableSpec, TenantState};
use shardline_core::hash::sql_hash;
use shardline_core::Catalog;
use shardline_metrics::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ServiceError;
use crate::pg;
use crate::routers::RouterRegistry;
use crate::service::{decode, put, CatalogService};
use job::{Ctx, Metrics};
use state::Kind;

/// Failpoints of the resharding engine (test-only; see
/// [`crate::failpoints`]).
pub use crate::failpoints::{
    FAILPOINT_AFTER_CLEANUP, FAILPOINT_AFTER_COPY, FAILPOINT_DURING_CATCHUP,
    FAILPOINT_DURING_CLEANUP, FAILPOINT_DURING_COPY, FAILPOINT_DURING_CUTOVER, FAILPOINT_ENV,
};

/// Runs resharding jobs: one at a time per keyspace, each as a task of
/// the manager.
pub struct Reshards {
    cx: Arc<Ctx>,
    /// Serialises job creation (one job per keyspace).
    create: tokio::sync::Mutex<()>,
}

impl Reshards {
    /// An engine; jobs run on `tracker` until `shutdown`.
    pub fn new(
        svc: Arc<CatalogService>,
        routers: Arc<RouterRegistry>,
        settings: ReshardSettings,
        metrics: &Registry,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let changes_behind = metrics.gauge(
            "reshard_changes_behind",
            "Captured changes not yet applied to the targets.",
            &["job"],
        );
        let cx = Ctx {
            svc,
            routers,
            settings,
            jobs: registry::JobRegistry::new(changes_behind, tracker, shutdown),
            metrics: Metrics {
                rows_copied: metrics.counter(
                    "reshard_rows_copied_total",
                    "Rows copied to target shards by resharding jobs.",
                    &["job"],
                ),
                phase: metrics.gauge(
                    "reshard_phase",
                    "Phase of each job: Prepare=0, Copy=1, CatchUp=2, Cutover=3, Cleanup=4, \
                     Done=5, Cancelled=6, Failed=7.",
                    &["job"],
                ),
                last_progress: metrics.gauge(
                    "reshard_last_progress_timestamp_seconds",
                    "Unix time a job last moved forward on this manager: a phase begun, \
                     a batch of rows copied or deleted, captured changes applied.",
                    &["job"],
                ),
            },
        };
        Arc::new(Self {
            cx: Arc::new(cx),
            create: tokio::sync::Mutex::new(()),
        })
    }

    /// The background loop while this manager leads: resumes unfinished
    /// jobs at once and every `interval`; when `term` ends (leadership
    /// lost, or shutdown), stops the jobs it runs and waits for them.
    pub async fn run(self: Arc<Self>, interval: Duration, term: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = term.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.resume_all();
        }
        self.cx.jobs.stop_all().await;
    }

    /// Starts every unfinished job nobody runs (after a restart, or after
    /// a transient error's wait).
    pub fn resume_all(self: &Arc<Self>) {
        let published = self.cx.svc.current();
        for job in published.catalog.jobs.values() {
            self.cx.show_phase(&job.id, job.phase);
            if !is_finished(job.phase) {
                self.spawn(&job.id);
            }
        }
    }

    /// Drives the job in the background unless the registry says no.
    fn spawn(self: &Arc<Self>, id: &str) {
        let cx = Arc::clone(&self.cx);
        let owned = id.to_string();
        self.cx.jobs.spawn(id, move |token| async move {
            engine::drive_and_settle(&cx, &owned, &token).await;
        });
    }

    /// The job's progress, as this manager knows it.
    pub fn progress(&self, id: &str) -> Progress {
        self.cx.progress(id)
    }

    pub fn info(&self, job: &ReshardJob) -> JobInfo {
        let p = self.progress(&job.id);
        JobInfo {
            id: job.id.clone(),
            kind: job.kind,
            keyspace: job.keyspace.clone(),
            tenant: job.tenant.clone(),
            to_keyspace: job.to_keyspace.clone(),
            moves: job
                .moves
                .iter()
                .map(|m| MoveInfo {
                    range: m.range.to_string(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                })
                .collect(),
            phase: job.phase,
            // Past the copy, the count it recorded (another manager may
            // have copied); during it, this leader's own.
            rows_copied: match job.rows_copied {
                Some(n) if job.phase != ReshardPhase::Copy => n,
                _ => p.rows_copied,
            },
            rows_estimated: p.rows_estimated,
            changes_behind: p.changes_behind,
            error: job
                .error
                .clone()
                .or_else(|| p.last_error.filter(|_| !is_finished(job.phase))),
            cutover_pause_ms: job.cutover_pause_ms,
            copy_ms: job.copy_ms.or(p.copy_ms),
            created_at: job.created_at.clone(),
        }
    }

    /// Every job, newest last.
    pub fn list(&self) -> Vec<JobInfo> {
        let published = self.cx.svc.current();
        let mut jobs: Vec<&ReshardJob> = published.catalog.jobs.values().collect();
        jobs.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        jobs.into_iter().map(|j| self.info(j)).collect()
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<JobInfo, ServiceError> {
        let published = self.cx.svc.current();
        published
            .catalog
            .jobs
            .get(id)
            .map(|j| self.info(j))
            .ok_or_else(|| ServiceError::NotFound(format!("no resharding job {id}")))
    }

    /// Validates a request, records the job (phase Prepare) and starts
    /// it.
    pub async fn start(self: &Arc<Self>, req: &ReshardRequest) -> Result<JobInfo, ServiceError> {
        let _one = self.create.lock().await;
        let published = self.cx.svc.current();
        let job = plan_job(&published.catalog, req, &new_job_id())?;
        self.check_tables(&published.catalog, &job).await?;
        if Kind::of(&job) == Kind::TenantBack {
            tenant_back::check_no_leftover(
                &published.catalog,
                &job,
                self.cx.settings.connect_timeout,
            )
            .await?;
        }
        let job_key = keys::job(&job.id);
        let ks_key = keys::keyspace(&job.keyspace);
        self.cx
            .svc
            .update(&[job_key.clone(), ks_key.clone()], |seen| {
                let Some(entry) = &seen[&ks_key] else {
                    return Err(ServiceError::NotFound(format!(
                        "no keyspace {}",
                        job.keyspace
                    )));
                };
                let ks: Keyspace = decode(entry)?;
                if ks.map.as_ref() != Some(&job.from_map) {
                    return Err(ServiceError::Conflict(format!(
                        "the map of keyspace {} changed meanwhile; retry",
                        job.keyspace
                    )));
                }
                Ok(vec![put(job_key.clone(), &job)])
            })
            .await?;
        tracing::info!(job = %job.id, keyspace = %job.keyspace, kind = ?job.kind,
            moves = job.moves.len(), "resharding job created");
        self.cx.show_phase(&job.id, job.phase);
        self.spawn(&job.id);
        Ok(self.info(&job))
    }

    /// Refuses a job whose tenants' tables cannot be moved: every table
    /// in a tenant's schema must have a declared shard key and a primary
    /// key (checked on the source for the first active tenant; all
    /// tenants of a keyspace share its migrations).
    async fn check_tables(&self, cat: &Catalog, job: &ReshardJob) -> Result<(), ServiceError> {
        let Some(ks) = cat.keyspaces.get(&job.keyspace) else {
            return Err(ServiceError::NotFound(format!(
                "no keyspace {}",
                job.keyspace
            )));
        };
        let Some(tenant) = cat
            .tenants
            .values()
            .find(|t| t.keyspace == ks.name && t.state == TenantState::Active)
        else {
            return Ok(());
        };
        let Some(source) = job.moves.first().and_then(|m| cat.shards.get(&m.from)) else {
            return Ok(());
        };
        let schema = tenant.pg_name();
        let client = pg::connect_db(
            &source.primary.dsn,
            &schema,
            self.cx.settings.connect_timeout,
        )
        .await
        .map_err(|e| {
            ServiceError::ShardUnavailable(format!("shard {} is unreachable: {e}", source.id))
        })?;
        let tables = sql::tables_of(&client, &schema)
            .await
            .map_err(|e| pg::statement_error(&source.id, &e))?;
        for table in &tables {
            let Some(spec) = ks.tables.get(table) else {
                return Err(ServiceError::Conflict(format!(
                    "table {table} has no shard key: declare it with PUT /v1/keyspaces/{}/tables/{table} \
                     before resharding",
                    ks.name
                )));
            };
            match sql::table_meta(&client, &schema, table, &spec.shard_key).await {
                Ok(_) => {}
                Err(sql::MetaError::Unfit(m)) => return Err(ServiceError::Conflict(m)),
                Err(sql::MetaError::Db(e)) => return Err(pg::statement_error(&source.id, &e)),
            }
        }
        Ok(())
    }

    /// Cancels a job before its cutover published the new map: stops it,
    /// removes capture, refuse triggers and copied rows, unfreezes.
    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<JobInfo, ServiceError> {
        let job = self.cx.fresh_job(id).await?;
        refuse_cancel(&job)?;
        self.cx.jobs.cancel(id);
        // The running task stops at its next step (a batch at most).
        let deadline = Instant::now() + Duration::from_secs(60);
        let claim = loop {
            if let Some((claim, _)) = self.cx.jobs.claim(id) {
                break claim;
            }
            if Instant::now() > deadline {
                self.cx.jobs.uncancel(id);
                return Err(ServiceError::Conflict(format!(
                    "job {id} did not stop within 60 s; retry the cancel"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let this = Arc::clone(self);
        let id_owned = id.to_string();
        let res = self
            .cx
            .jobs
            .run_detached(async move {
                let res = this.cancel_claimed(&id_owned).await;
                drop(claim);
                res
            })
            .await
            .map_err(|e| {
                tracing::error!(job = %id, error = %e, "cancel task");
                ServiceError::ShardUnavailable(format!("cancelling job {id} failed; retry"))
            })?;
        if res.is_err() {
            // Not cancelled: the job may go on (or the cancel be retried).
            self.cx.jobs.uncancel(id);
        }
        res?;
        self.get(id)
    }

    async fn cancel_claimed(self: &Arc<Self>, id: &str) -> Result<(), ServiceError> {
        // Read from the store: the task may have published a moment ago.
        let job = self.cx.fresh_job(id).await?;
        refuse_cancel(&job)?;
        tracing::info!(job = %id, phase = ?job.phase, "cancelling");
        engine::undo_and_end(&self.cx, &job, ReshardPhase::Cancelled, None).await?;
        tracing::info!(job = %id, "cancelled");
        Ok(())
    }

    /// Records a shard key column (`PUT /v1/keyspaces/{ks}/tables/{t}`),
    /// checked against a tenant's table when the keyspace has tenants.
    pub async fn set_table(
        &self,
        keyspace: &str,
        table: &str,
        spec: &TableSpec,
    ) -> Result<Keyspace, ServiceError> {
        check_pg_name("table", table)?;
        check_pg_name("shard_key", &spec.shard_key)?;
        let published = self.cx.svc.current();
        let cat = &published.catalog;
        let Some(ks) = cat.keyspaces.get(keyspace) else {
            return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
        };
        if let Some(job) = active_job(cat, keyspace) {
            return Err(ServiceError::Conflict(format!(
                "resharding job {} runs in keyspace {keyspace}; change tables after it ends",
                job.id
            )));
        }
        let tenant = cat
            .tenants
            .values()
            .find(|t| t.keyspace == keyspace && t.state == TenantState::Active);
        let shard = ks
            .map
            .as_ref()
            .and_then(|m| m.ranges().first())
            .and_then(|r| cat.shards.get(&r.shard));
        if let (Some(tenant), Some(shard)) = (tenant, shard) {
            let schema = tenant.pg_name();
            let client = pg::connect_db(
                &shard.primary.dsn,
                &schema,
                self.cx.settings.connect_timeout,
            )
            .await
            .map_err(|e| {
                ServiceError::ShardUnavailable(format!("shard {} is unreachable: {e}", shard.id))
            })?;
            let qualified = format!(
                "{}.{}",
                shardline_core::catalog::quote_ident(&schema),
                shardline_core::catalog::quote_ident(table)
            );
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
                .await
                .map_err(|e| pg::statement_error(&shard.id, &e))?
                .get(0);
            if !exists {
                return Err(ServiceError::NotFound(format!(
                    "no table {table} in the schema of tenant {} (shard {})",
                    tenant.id, shard.id
                )));
            }
            let probe = format!(
                "SELECT {} FROM {qualified} t LIMIT 0",
                sql_hash(
                    ks.key_type,
                    &format!(
                        "t.{}",
                        shardline_core::catalog::quote_ident(&spec.shard_key)
                    )
                )
            );
            if let Err(e) = client.query(&probe, &[]).await {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| pg::describe(&e));
                return Err(ServiceError::Invalid(format!(
                    "column {} of table {table} cannot be a {:?} shard key: {why}",
                    spec.shard_key, ks.key_type
                )));
            }
        }
        let key = keys::keyspace(keyspace);
        self.cx
            .svc
            .update(std::slice::from_ref(&key), |seen| {
                let Some(entry) = &seen[&key] else {
                    return Err(ServiceError::NotFound(format!("no keyspace {keyspace}")));
                };
                let mut ks: Keyspace = decode(entry)?;
                ks.tables.insert(table.to_string(), spec.clone());
                Ok(vec![put(key.clone(), &ks)])
            })
            .await?;
        let published = self.cx.svc.current();
        published
            .catalog
            .keyspaces
            .get(keyspace)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no keyspace {keyspace}")))
    }
}

fn refuse_cancel(job: &ReshardJob) -> Result<(), ServiceError> {
    if is_finished(job.phase) {
        return Err(ServiceError::Conflict(format!(
            "job {} has ended ({:?})",
            job.id, job.phase
        )));
    }
    if job.phase >= ReshardPhase::Cleanup {
        return Err(ServiceError::Conflict(format!(
            "job {} has cut over already (the new map is published); it cannot be cancelled",
            job.id
        )));
    }
    Ok(())
}

/// A table or column name: 1-63 bytes, no NUL (names are quoted in SQL).
fn check_pg_name(what: &str, name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(ServiceError::Invalid(format!(
            "invalid {what} {name:?}: use 1-63 bytes"
        )));
    }
    Ok(())
}

fn new_job_id() -> String {
    let bytes: [u8; 6] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("rs-{hex}")
}
