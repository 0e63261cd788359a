//! The phases of a resharding job, each persisted before its work and
//! idempotent: the driver, Prepare, Copy and CatchUp. Cutover is in
//! [`super::cutover`]; Cleanup, cancel and failure in [`super::cleanup`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use shardline_core::catalog::TenantState;
use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard, Tenant};
use shardline_core::KeyRange;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::sql::{self, TableMeta};
use super::{
    failpoint, phase_number, Reshards, FAILPOINT_AFTER_COPY, FAILPOINT_DURING_CATCHUP,
    FAILPOINT_DURING_COPY,
};
use crate::error::ServiceError;
use crate::pg;
use crate::service::{decode, put};

/// Most catch-up rounds before the cutover drains the rest while frozen.
const MAX_CATCHUP_ROUNDS: usize = 10;

/// Why a phase stopped, typed by what failed, so that whether the job
/// retries or fails is decided in one place ([`JobError::retryable`]) by
/// exhaustive matches rather than wherever the error was made.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A shard's PostgreSQL failed: a connection, or a statement (with
    /// its SQLSTATE).
    #[error("shard {shard}: {message}")]
    Shard {
        shard: String,
        sqlstate: Option<String>,
        message: String,
    },
    /// A call into the manager's services failed or was refused: a
    /// catalog read or change, a connection to a shard.
    #[error("{0}")]
    Service(ServiceError),
    /// Source and targets do not hold the same rows: the cutover is
    /// aborted (the sources keep the ranges) or cleanup stops.
    #[error("{0}")]
    Mismatch(String),
    /// The job cannot go on as planned: its tenant, shard or database is
    /// gone, a table no longer fits, a recorded value is unreadable.
    #[error("{0}")]
    Impossible(String),
    /// A cutover went back to catch-up because of this error.
    #[error("cutover aborted, back to catch-up: {0}")]
    CutoverAborted(Box<JobError>),
    /// Cancelled or shutting down.
    #[error("stopped")]
    Stopped,
}

impl JobError {
    /// Whether the job retries from its persisted phase after a pause
    /// (transient: a shard unreachable, a failover, contention) rather
    /// than failing (undone before the cutover). A statement error that
    /// will fail the same way again (a missing column, a constraint, a
    /// quota) fails the job instead of retrying for ever.
    pub fn retryable(&self) -> bool {
        match self {
            JobError::Shard { sqlstate, .. } => sqlstate.as_deref().is_none_or(transient_sqlstate),
            JobError::Service(e) => match e {
                ServiceError::Contended
                | ServiceError::ShardUnavailable(_)
                | ServiceError::Store(_) => true,
                ServiceError::Invalid(_)
                | ServiceError::NotFound(_)
                | ServiceError::Conflict(_)
                | ServiceError::QuotaExceeded(_)
                | ServiceError::Statement { .. } => false,
            },
            JobError::CutoverAborted(cause) => cause.retryable(),
            JobError::Mismatch(_) | JobError::Impossible(_) | JobError::Stopped => false,
        }
    }
}

/// SQLSTATEs that may pass when tried again: connection failures
/// (class 08), insufficient resources (53), operator intervention such
/// as a shutdown or a cancelled statement (57), system errors (58),
/// serialization failures and deadlocks (40), a lock not available
/// (55P03) and a read-only transaction (25006: the shard is failing
/// over). Everything else — syntax, missing objects, constraints, data —
/// fails the same way again.
fn transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "40"))
        || matches!(code, "55P03" | "25006")
}

impl From<ServiceError> for JobError {
    fn from(e: ServiceError) -> Self {
        JobError::Service(e)
    }
}

impl From<JobError> for ServiceError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Service(e) => e,
            JobError::Stopped => ServiceError::ShardUnavailable("the manager is stopping".into()),
            e if e.retryable() => ServiceError::ShardUnavailable(e.to_string()),
            e => ServiceError::Conflict(e.to_string()),
        }
    }
}

/// A shard's PostgreSQL error as a [`JobError`].
pub(super) fn db(shard: &str) -> impl Fn(tokio_postgres::Error) -> JobError + '_ {
    move |e| JobError::Shard {
        shard: shard.to_string(),
        sqlstate: e.code().map(|c| c.code().to_string()),
        message: pg::describe(&e),
    }
}

/// A failed connection to a shard as a [`JobError`] (transient).
pub(super) fn unreachable(shard: &str, message: String) -> JobError {
    JobError::Shard {
        shard: shard.to_string(),
        sqlstate: None,
        message,
    }
}

pub(super) fn check(token: &CancellationToken) -> Result<(), JobError> {
    if token.is_cancelled() {
        Err(JobError::Stopped)
    } else {
        Ok(())
    }
}

/// What a phase works on: the job and the catalog objects it touches.
pub struct Plan {
    pub job: ReshardJob,
    pub keyspace: Keyspace,
    /// Active tenants of the keyspace.
    pub tenants: Vec<Tenant>,
    pub shards: BTreeMap<String, Shard>,
    /// Sessions in tenant databases, kept while the phase runs.
    sessions: Sessions,
}

/// A superuser session in a tenant database, on loan from a plan.
pub type Session = tokio::sync::OwnedMutexGuard<Client>;

/// Sessions in tenant databases by (shard, database), kept for as long as
/// the plan (one run of one phase): a cutover makes a dozen round trips
/// to each database while the moving keys' writes wait, and opening a
/// session costs more than any of them (more still on a loaded server).
/// A session in use is not lent twice: the second caller gets a new one.
#[derive(Default)]
struct Sessions(std::sync::Mutex<Slots>);

/// Kept sessions by (shard, database).
type Slots = HashMap<(String, String), Arc<tokio::sync::Mutex<Client>>>;

impl Sessions {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept session, if one is open and free.
    fn lend(&self, key: &(String, String)) -> Option<Session> {
        let slot = self.slots().get(key).cloned()?;
        let session = slot.try_lock_owned().ok()?;
        (!session.is_closed()).then_some(session)
    }

    /// Keeps `client` (unless a session for `key` is in use) and lends it.
    fn keep(&self, key: (String, String), client: Client) -> Session {
        let slot = Arc::new(tokio::sync::Mutex::new(client));
        let session = Arc::clone(&slot)
            .try_lock_owned()
            .expect("a new mutex is free");
        let mut slots = self.slots();
        let busy = slots.get(&key).is_some_and(|old| old.try_lock().is_err());
        if !busy {
            slots.insert(key, slot);
        }
        session
    }

    /// Closes the kept sessions on `shard` (before its tenant databases
    /// are dropped).
    fn forget(&self, shard: &str) {
        self.slots().retain(|(s, _), _| s != shard);
    }
}

impl Plan {
    /// From the current catalog.
    pub fn load(
        svc: &crate::service::CatalogService,
        job: &ReshardJob,
    ) -> Result<Plan, ServiceError> {
        let published = svc.current();
        let cat = &published.catalog;
        // A tenant moved back deleted its keyspace at the publish; the
        // shared keyspace has the same key type, tables and migrations.
        let keyspace = cat
            .keyspaces
            .get(&job.keyspace)
            .or_else(|| {
                super::tenant_back::is_move_back(job)
                    .then(|| job.to_keyspace.as_ref().and_then(|k| cat.keyspaces.get(k)))
                    .flatten()
            })
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no keyspace {}", job.keyspace)))?;
        // A tenant move involves its tenant alone (whose keyspace changes
        // at the publish).
        let tenants = cat
            .tenants
            .values()
            .filter(|t| match &job.tenant {
                Some(id) => t.id == *id,
                None => t.keyspace == job.keyspace && t.state == TenantState::Active,
            })
            .cloned()
            .collect();
        let mut shards = BTreeMap::new();
        for m in &job.moves {
            for id in [&m.from, &m.to] {
                let s = cat
                    .shards
                    .get(id)
                    .ok_or_else(|| ServiceError::NotFound(format!("no shard {id}")))?;
                shards.insert(id.clone(), s.clone());
            }
        }
        Ok(Plan {
            job: job.clone(),
            keyspace,
            tenants,
            shards,
            sessions: Sessions::default(),
        })
    }

    /// Whether the job moves one tenant to a keyspace of its own.
    pub(super) fn is_tenant_move(&self) -> bool {
        self.job.tenant.is_some()
    }

    /// The tenant a tenant move moves.
    pub(super) fn moving_tenant(&self) -> Result<&Tenant, JobError> {
        let id = self.job.tenant.as_deref().unwrap_or_default();
        self.tenants
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| JobError::Impossible(format!("no tenant {id:?} to move")))
    }

    pub(super) fn sources(&self) -> Vec<String> {
        let mut v: Vec<String> = self.job.moves.iter().map(|m| m.from.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub(super) fn targets(&self) -> Vec<String> {
        let mut v: Vec<String> = self.job.moves.iter().map(|m| m.to.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Ranges leaving `source`.
    pub(super) fn moving_from(&self, source: &str) -> Vec<KeyRange> {
        self.job
            .moves
            .iter()
            .filter(|m| m.from == source)
            .map(|m| m.range)
            .collect()
    }

    /// Ranges arriving on `target`.
    pub(super) fn moving_to(&self, target: &str) -> Vec<KeyRange> {
        self.job
            .moves
            .iter()
            .filter(|m| m.to == target)
            .map(|m| m.range)
            .collect()
    }

    /// Targets of `source`, each with the ranges it receives from it.
    pub(super) fn routes(&self, source: &str) -> BTreeMap<String, Vec<KeyRange>> {
        let mut out: BTreeMap<String, Vec<KeyRange>> = BTreeMap::new();
        for m in self.job.moves.iter().filter(|m| m.from == source) {
            out.entry(m.to.clone()).or_default().push(m.range);
        }
        out
    }

    pub(super) fn moving(&self) -> Vec<KeyRange> {
        self.job.moves.iter().map(|m| m.range).collect()
    }

    /// Closes the plan's sessions on `shard`.
    pub(super) fn forget_sessions(&self, shard: &str) {
        self.sessions.forget(shard);
    }

    pub(super) fn dsn(&self, shard: &str) -> Result<&str, JobError> {
        self.shards
            .get(shard)
            .map(|s| s.primary.dsn.as_str())
            .ok_or_else(|| JobError::Impossible(format!("no shard {shard}")))
    }
}

/// A verification entry's key.
pub(super) fn verified_key(tenant: &str, table: &str, range: &KeyRange) -> String {
    format!("{tenant}/{table}/{range}")
}

impl Reshards {
    /// Runs a job until it ends or stops, and settles the outcome.
    pub(super) async fn drive_and_settle(self: &Arc<Self>, id: &str, token: &CancellationToken) {
        match self.drive(id, token).await {
            Ok(()) => {
                self.jobs.succeeded(id);
                self.update_progress(id, |p| p.last_error = None);
            }
            Err(JobError::Stopped) => {}
            Err(e) => {
                let msg = e.to_string();
                // Past the publish nothing can be undone: the job can only
                // finish, so it keeps trying whatever the error (the
                // operator sees it in `last_error`), unless the moved rows
                // themselves no longer match.
                let published = !matches!(e, JobError::Mismatch(_))
                    && self
                        .fresh_job(id)
                        .await
                        .is_ok_and(|j| j.phase == ReshardPhase::Cleanup);
                if e.retryable() || published {
                    tracing::warn!(job = %id, error = %msg, "resharding step failed; retrying");
                    self.update_progress(id, |p| p.last_error = Some(msg));
                    self.retry_later(id);
                    return;
                }
                tracing::error!(job = %id, error = %msg, "resharding job fails");
                if let Err(e) = self.fail(id, &msg).await {
                    tracing::warn!(job = %id, error = %e, "record the failure; retrying");
                    self.retry_later(id);
                }
            }
        }
    }

    /// Runs the job again after `retry_interval`.
    fn retry_later(&self, id: &str) {
        self.jobs.retry_after(id, self.settings.retry_interval);
    }

    async fn drive(&self, id: &str, token: &CancellationToken) -> Result<(), JobError> {
        loop {
            check(token)?;
            let job = self.fresh_job(id).await?;
            self.metrics.phase.with(&[id]).set(phase_number(job.phase));
            let plan = Plan::load(&self.svc, &job)?;
            let started = Instant::now();
            tracing::info!(job = %id, phase = ?job.phase, "phase starts");
            match job.phase {
                ReshardPhase::Prepare => {
                    self.prepare(&plan).await?;
                    self.set_phase(id, ReshardPhase::Prepare, ReshardPhase::Copy)
                        .await?;
                }
                ReshardPhase::Copy => {
                    self.copy(&plan, token).await?;
                    failpoint(FAILPOINT_AFTER_COPY);
                    self.set_phase(id, ReshardPhase::Copy, ReshardPhase::CatchUp)
                        .await?;
                }
                ReshardPhase::CatchUp => {
                    self.catch_up(&plan, token).await?;
                    self.set_phase(id, ReshardPhase::CatchUp, ReshardPhase::Cutover)
                        .await?;
                }
                ReshardPhase::Cutover => self.cutover(&plan, token).await?,
                ReshardPhase::Cleanup => self.cleanup(&plan, token).await?,
                ReshardPhase::Done | ReshardPhase::Cancelled | ReshardPhase::Failed => {
                    return Ok(())
                }
            }
            tracing::info!(job = %id, phase = ?job.phase,
                elapsed_ms = started.elapsed().as_millis() as u64, "phase done");
        }
    }

    /// Moves a job from one phase to the next (only from `from`).
    pub(super) async fn set_phase(
        &self,
        id: &str,
        from: ReshardPhase,
        to: ReshardPhase,
    ) -> Result<(), JobError> {
        let key = keys::job(id);
        let copied = self.progress(id).rows_copied;
        self.svc
            .update(std::slice::from_ref(&key), |seen| {
                let Some(entry) = &seen[&key] else {
                    return Err(ServiceError::NotFound(format!("no resharding job {id}")));
                };
                let mut job: ReshardJob = decode(entry)?;
                if job.phase != from {
                    return Err(ServiceError::Contended);
                }
                if from == ReshardPhase::Copy {
                    job.rows_copied = Some(copied);
                }
                job.phase = to;
                Ok(vec![put(key.clone(), &job)])
            })
            .await?;
        self.metrics.phase.with(&[id]).set(phase_number(to));
        Ok(())
    }

    /// A superuser session in a tenant's database on a shard (the plan's
    /// own, opened on first use); `None` when the database does not exist
    /// there.
    pub(super) async fn tenant_db(
        &self,
        plan: &Plan,
        shard: &str,
        tenant: &Tenant,
    ) -> Result<Option<Session>, JobError> {
        let key = (shard.to_string(), tenant.pg_name());
        if let Some(session) = plan.sessions.lend(&key) {
            return Ok(Some(session));
        }
        let dsn = plan.dsn(shard)?;
        let timeout = self.settings.connect_timeout;
        let admin = pg::connect_shard(shard, dsn, timeout).await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&tenant.pg_name()],
            )
            .await
            .map_err(db(shard))?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let client = pg::connect_db(dsn, &tenant.pg_name(), timeout)
            .await
            .map_err(|e| unreachable(shard, e))?;
        Ok(Some(plan.sessions.keep(key, client)))
    }

    /// The same, required to exist.
    pub(super) async fn must_db(
        &self,
        plan: &Plan,
        shard: &str,
        tenant: &Tenant,
    ) -> Result<Session, JobError> {
        self.tenant_db(plan, shard, tenant).await?.ok_or_else(|| {
            JobError::Impossible(format!(
                "tenant {} has no database on shard {shard}",
                tenant.id
            ))
        })
    }

    /// The moving tables of a tenant, read on one shard.
    pub(super) async fn metas(
        &self,
        plan: &Plan,
        client: &Client,
        shard: &str,
        tenant: &Tenant,
        lenient: bool,
    ) -> Result<Vec<TableMeta>, JobError> {
        let schema = tenant.pg_name();
        let mut out = Vec::new();
        for (table, spec) in &plan.keyspace.tables {
            match sql::table_meta(client, &schema, table, &spec.shard_key).await {
                Ok(m) => out.push(m),
                Err(sql::MetaError::Unfit(_)) if lenient => {}
                Err(sql::MetaError::Unfit(m)) => {
                    return Err(JobError::Impossible(format!(
                        "tenant {} on shard {shard}: {m}",
                        tenant.id
                    )))
                }
                Err(sql::MetaError::Db(e)) => return Err(db(shard)(e)),
            }
        }
        Ok(out)
    }

    /// Prepare: every tenant provisioned and migrated on every target;
    /// capture installed on the sources.
    async fn prepare(&self, plan: &Plan) -> Result<(), JobError> {
        // Not beside a tenant's creation or deletion.
        let _work = self.svc.lock_tenant_work().await;
        if plan.is_tenant_move() {
            self.prepare_tenant(plan).await?;
            return self.install_capture(plan).await;
        }
        let published = self.svc.current();
        for target in plan.targets() {
            super::ensure_on(
                &published.catalog,
                &target,
                &plan.keyspace,
                self.settings.connect_timeout,
            )
            .await?;
            tracing::info!(job = %plan.job.id, shard = %target, "target prepared");
        }
        self.install_capture(plan).await
    }

    async fn install_capture(&self, plan: &Plan) -> Result<(), JobError> {
        for source in plan.sources() {
            let ranges = plan.moving_from(&source);
            for tenant in &plan.tenants {
                let client = self.must_db(plan, &source, tenant).await?;
                for meta in self.metas(plan, &client, &source, tenant, false).await? {
                    sql::install_capture(
                        &client,
                        &plan.job.id,
                        &meta,
                        plan.keyspace.key_type,
                        &ranges,
                    )
                    .await
                    .map_err(db(&source))?;
                }
            }
        }
        Ok(())
    }

    /// Copy: every row of the moving ranges, from one snapshot per table,
    /// in batches (capture is on, so later changes are recorded).
    async fn copy(&self, plan: &Plan, token: &CancellationToken) -> Result<(), JobError> {
        // Again after a restart: capture must precede the snapshot.
        self.install_capture(plan).await?;
        let id = &plan.job.id;
        let key_type = plan.keyspace.key_type;
        self.update_progress(id, |p| {
            p.rows_copied = 0;
            p.rows_estimated = 0;
        });
        // (source, tenant index, target, ranges, table)
        let mut work = Vec::new();
        for source in plan.sources() {
            for (ti, tenant) in plan.tenants.iter().enumerate() {
                let src = self.must_db(plan, &source, tenant).await?;
                for meta in self.metas(plan, &src, &source, tenant, false).await? {
                    for (target, ranges) in plan.routes(&source) {
                        let n = sql::count_in(&src, &meta, key_type, &ranges)
                            .await
                            .map_err(db(&source))?;
                        self.update_progress(id, |p| p.rows_estimated += n.max(0) as u64);
                        work.push((source.clone(), ti, target, ranges, meta.clone()));
                    }
                }
            }
        }
        let batch = self.settings.batch_rows;
        for (source, ti, target, ranges, meta) in work {
            check(token)?;
            let tenant = &plan.tenants[ti];
            let src = self.must_db(plan, &source, tenant).await?;
            let tgt = self.must_db(plan, &target, tenant).await?;
            sql::as_replica(&tgt).await.map_err(db(&target))?;
            src.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(db(&source))?;
            // Batches cut by primary key in the snapshot, each streamed
            // with COPY straight into the table; a batch finding rows
            // there (copied by an earlier run) goes again through a
            // staging table, inserting only the missing ones.
            let bounds = sql::batch_bounds(&src, &meta, key_type, &ranges, batch)
                .await
                .map_err(db(&source))?;
            let format = sql::copy_format(&src, &tgt, &meta)
                .await
                .map_err(db(&target))?;
            let mut staging = false;
            let mut copied = 0u64;
            for i in 0..=bounds.len() {
                check(token)?;
                let after = i.checked_sub(1).and_then(|j| bounds.get(j));
                let span = (after.map(String::as_str), bounds.get(i).map(String::as_str));
                let copy = |into| {
                    sql::copy_batch(&src, &tgt, &meta, key_type, &ranges, span, format, into)
                };
                let n = match copy(sql::CopyInto::Table).await {
                    Err(e) if e.is_conflict() => {
                        if !staging {
                            sql::create_staging(&tgt, &meta)
                                .await
                                .map_err(db(&target))?;
                            staging = true;
                        }
                        copy(sql::CopyInto::Staging).await
                    }
                    other => other,
                }
                .map_err(|e| match e {
                    sql::CopyError::Source(e) => db(&source)(e),
                    sql::CopyError::Target(e) => db(&target)(e),
                })?;
                copied += n;
                self.metrics.rows_copied.with(&[id]).inc_by(n);
                self.update_progress(id, |p| p.rows_copied += n);
                // A crash with part of the range copied (test only).
                failpoint(FAILPOINT_DURING_COPY);
                if i < bounds.len() && !self.settings.batch_pause.is_zero() {
                    tokio::time::sleep(self.settings.batch_pause).await;
                }
            }
            if staging {
                sql::drop_staging(&tgt, &meta).await.map_err(db(&target))?;
            }
            src.batch_execute("COMMIT").await.map_err(db(&source))?;
            tracing::info!(job = %id, tenant = %tenant.id, table = %meta.name, %source,
                %target, rows = copied, "table copied");
        }
        Ok(())
    }

    /// CatchUp: applies captured changes until few are behind.
    async fn catch_up(&self, plan: &Plan, token: &CancellationToken) -> Result<(), JobError> {
        let threshold = self.settings.catchup_threshold;
        for round in 0..MAX_CATCHUP_ROUNDS {
            let behind = self.apply_changes(plan, token, false, None).await?;
            tracing::info!(job = %plan.job.id, round, behind, "catch-up round");
            if behind < threshold {
                break;
            }
        }
        Ok(())
    }

    /// Applies captured changes to the targets, batch by batch; with
    /// `drain`, until none is left, else until fewer than the threshold.
    /// With `changed`, records the row of every change applied (see
    /// [`Changed`]). Returns how many are behind.
    pub(super) async fn apply_changes(
        &self,
        plan: &Plan,
        token: &CancellationToken,
        drain: bool,
        mut changed: Option<&mut Changed>,
    ) -> Result<u64, JobError> {
        let id = &plan.job.id;
        let mut total = 0u64;
        for source in plan.sources() {
            for tenant in &plan.tenants {
                let src = self.must_db(plan, &source, tenant).await?;
                if !sql::has_change_table(&src).await.map_err(db(&source))? {
                    continue;
                }
                let metas = self.metas_by_name(plan, &src, &source, tenant).await?;
                let mut targets: HashMap<String, Session> = HashMap::new();
                let behind = loop {
                    check(token)?;
                    let changes = sql::read_changes(&src, id, self.settings.batch_rows)
                        .await
                        .map_err(db(&source))?;
                    if changes.is_empty() {
                        break 0;
                    }
                    self.apply_batch(plan, &source, tenant, &metas, &changes, &mut targets)
                        .await?;
                    if let Some(changed) = changed.as_deref_mut() {
                        record_changed(changed, tenant, &changes);
                    }
                    if !drain {
                        failpoint(FAILPOINT_DURING_CATCHUP);
                    }
                    let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
                    sql::forget_changes(&src, id, &seqs)
                        .await
                        .map_err(db(&source))?;
                    let behind = sql::changes_behind(&src, id)
                        .await
                        .map_err(db(&source))?
                        .max(0) as u64;
                    self.update_progress(id, |p| p.changes_behind = behind);
                    if behind == 0 || (!drain && behind < self.settings.catchup_threshold) {
                        break behind;
                    }
                };
                total += behind;
            }
        }
        self.update_progress(id, |p| p.changes_behind = total);
        Ok(total)
    }

    /// The moving tables of a tenant on a source, by name.
    pub(super) async fn metas_by_name(
        &self,
        plan: &Plan,
        client: &Client,
        source: &str,
        tenant: &Tenant,
    ) -> Result<HashMap<String, TableMeta>, JobError> {
        Ok(self
            .metas(plan, client, source, tenant, false)
            .await?
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect())
    }

    /// Applies one batch of a source's changes (in `seq` order) to the
    /// targets of their keys, one transaction per target; `targets`
    /// keeps the sessions (in replica mode) between batches. The changes
    /// stay in the change table.
    pub(super) async fn apply_batch(
        &self,
        plan: &Plan,
        source: &str,
        tenant: &Tenant,
        metas: &HashMap<String, TableMeta>,
        changes: &[sql::Change],
        targets: &mut HashMap<String, Session>,
    ) -> Result<(), JobError> {
        let moving = plan.moving_from(source);
        let net = sql::net_changes(changes, metas, plan.keyspace.key_type, |h| {
            moving
                .iter()
                .any(|r| r.contains(h))
                .then(|| plan.job.to_map.lookup(h).shard.clone())
        })
        .map_err(JobError::Impossible)?;
        let mut by_target: BTreeMap<String, Vec<(String, sql::Net)>> = BTreeMap::new();
        for ((target, table), n) in net {
            by_target.entry(target).or_default().push((table, n));
        }
        for (target, tables) in by_target {
            if !targets.contains_key(&target) {
                let c = self.must_db(plan, &target, tenant).await?;
                sql::as_replica(&c).await.map_err(db(&target))?;
                targets.insert(target.clone(), c);
            }
            let Some(client) = targets.get_mut(&target) else {
                continue;
            };
            let tx = client.transaction().await.map_err(db(&target))?;
            for (table, n) in &tables {
                let Some(meta) = metas.get(table) else {
                    continue;
                };
                sql::delete_keys(&tx, meta, &n.deletes)
                    .await
                    .map_err(db(&target))?;
                sql::upsert(&tx, meta, &n.upserts)
                    .await
                    .map_err(db(&target))?;
            }
            tx.commit().await.map_err(db(&target))?;
        }
        Ok(())
    }
}

/// Rows (JSON) of the changes applied since a cutover's baseline, by
/// (tenant id, table): their primary keys name every moving row that may
/// differ from the baseline's snapshots.
pub(super) type Changed = HashMap<(String, String), Vec<String>>;

/// Adds the rows of `changes` to `changed`.
pub(super) fn record_changed(changed: &mut Changed, tenant: &Tenant, changes: &[sql::Change]) {
    for c in changes {
        changed
            .entry((tenant.id.clone(), c.table.clone()))
            .or_default()
            .push(c.row.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_error(sqlstate: Option<&str>) -> JobError {
        JobError::Shard {
            shard: "s1".into(),
            sqlstate: sqlstate.map(str::to_string),
            message: "m".into(),
        }
    }

    #[test]
    fn transient_failures_retry_and_lasting_ones_fail() {
        // No SQLSTATE: the connection broke or timed out.
        assert!(shard_error(None).retryable());
        for code in [
            "08006", "08001", "53300", "57P01", "57014", "58030", "40001", "40P01",
        ] {
            assert!(shard_error(Some(code)).retryable(), "{code}");
        }
        for code in ["55P03", "25006"] {
            assert!(shard_error(Some(code)).retryable(), "{code}");
        }
        // The same statement fails the same way again.
        for code in [
            "42P01", "42703", "42501", "23505", "22P02", "0A000", "XX000", "55000",
        ] {
            assert!(!shard_error(Some(code)).retryable(), "{code}");
        }
        let service = |e| JobError::from(e).retryable();
        assert!(service(ServiceError::Contended));
        assert!(service(ServiceError::ShardUnavailable("down".into())));
        assert!(!service(ServiceError::QuotaExceeded("shards".into())));
        assert!(!service(ServiceError::Conflict("taken".into())));
        assert!(!service(ServiceError::NotFound("gone".into())));
        assert!(!service(ServiceError::Invalid("bad".into())));
        assert!(!service(ServiceError::Statement {
            message: "syntax".into(),
            sqlstate: Some("42601".into()),
            detail: None,
            hint: None,
            position: None,
        }));
        assert!(!JobError::Mismatch("differs".into()).retryable());
        assert!(!JobError::Impossible("no tenant".into()).retryable());
        assert!(!JobError::Stopped.retryable());
        // An aborted cutover retries as its cause does.
        assert!(JobError::CutoverAborted(Box::new(shard_error(None))).retryable());
        assert!(!JobError::CutoverAborted(Box::new(shard_error(Some("42P01")))).retryable());
    }
}
