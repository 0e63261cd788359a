//! What every phase of a job works with: its context ([`Ctx`]: the
//! catalog, the routers, settings, metrics, the registry), the job's
//! [`Plan`] with its sessions in tenant databases, and [`JobError`].
//! The bottom of the engine: it depends on nothing else in
//! [`super`] but the registry, the planner and the SQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shardline_core::catalog::TenantState;
use shardline_core::catalog::{keys, Keyspace, ReshardJob, ReshardPhase, Shard, Tenant};
use shardline_core::KeyRange;
use shardline_metrics::{CounterVec, GaugeVec};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::registry::{JobRegistry, Progress};
use super::sql::{self, TableMeta};
use super::state::{is_move_back, phase_number};
use crate::error::ServiceError;
use crate::pg;
use crate::routers::RouterRegistry;
use crate::service::{decode, put, CatalogService};

/// Settings of the resharding engine.
#[derive(Debug, Clone)]
pub struct ReshardSettings {
    /// Rows per copy batch, changes per catch-up batch, rows per cleanup
    /// delete.
    pub batch_rows: usize,
    /// Sleep between copy batches (throttles the load on the source).
    pub batch_pause: Duration,
    /// CatchUp ends when fewer changes than this are behind.
    pub catchup_threshold: u64,
    /// Time allowed to connect to a shard.
    pub connect_timeout: Duration,
    /// How long a job that hit a transient error waits before retrying.
    pub retry_interval: Duration,
}

impl ReshardSettings {
    /// From the manager's settings.
    pub fn from_config(cfg: &crate::ManagerConfig) -> Self {
        Self {
            batch_rows: cfg.reshard_batch_rows.max(1),
            batch_pause: cfg.reshard_batch_pause,
            catchup_threshold: 1000,
            connect_timeout: cfg.connect_timeout,
            retry_interval: Duration::from_secs(2),
        }
    }
}

/// The engine's metrics.
pub(super) struct Metrics {
    pub(super) rows_copied: CounterVec,
    pub(super) phase: GaugeVec,
    /// `reshard_last_progress_timestamp_seconds{job}`: when the job last
    /// moved forward on this manager, so a stalled job shows as an old
    /// timestamp beside an unfinished phase.
    pub(super) last_progress: GaugeVec,
}

impl Metrics {
    /// Shows a job's phase. The first phase this manager shows for a job
    /// starts its progress clock, and a phase further along than the one
    /// shown is progress; a step back (a cutover returning to catch-up)
    /// is not.
    fn show_phase(&self, id: &str, phase: ReshardPhase) {
        let shown = self.phase.with(&[id]);
        let number = phase_number(phase);
        if self.last_progress.with(&[id]).get() == 0.0 || number > shown.get() {
            self.progressed(id);
        }
        shown.set(number);
    }

    /// Records that the job moved forward now: a phase begun, a batch of
    /// rows copied or deleted, captured changes applied.
    fn progressed(&self, id: &str) {
        let now = crate::time::now_ms() as f64 / 1000.0;
        self.last_progress.with(&[id]).set(now);
    }
}

/// What the phases of every job share.
pub(super) struct Ctx {
    pub(super) svc: Arc<CatalogService>,
    pub(super) routers: Arc<RouterRegistry>,
    pub(super) settings: ReshardSettings,
    pub(super) metrics: Metrics,
    pub(super) jobs: Arc<JobRegistry>,
}

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
                is_move_back(job)
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

impl Ctx {
    /// The job as stored now.
    pub(super) async fn fresh_job(&self, id: &str) -> Result<ReshardJob, ServiceError> {
        self.svc
            .stored::<ReshardJob>(&keys::job(id))
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no resharding job {id}")))
    }

    /// The job's progress, as this manager knows it.
    pub(super) fn progress(&self, id: &str) -> Progress {
        self.jobs.progress(id)
    }

    pub(super) fn update_progress(&self, id: &str, f: impl FnOnce(&mut Progress)) {
        self.jobs.update_progress(id, f);
    }

    /// The `reshard_phase` metric of a job (and its progress clock: see
    /// [`Metrics::show_phase`]).
    pub(super) fn show_phase(&self, id: &str, phase: ReshardPhase) {
        self.metrics.show_phase(id, phase);
    }

    /// Records that the job moved forward now (a batch done).
    pub(super) fn progressed(&self, id: &str) {
        self.metrics.progressed(id);
    }

    /// Moves a job from one phase to the next (only from `from`).
    pub(super) async fn set_phase(
        &self,
        id: &str,
        from: ReshardPhase,
        to: ReshardPhase,
    ) -> Result<(), JobError> {
        let key = keys::job(id);
        let progress = self.progress(id);
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
                    job.rows_copied = Some(progress.rows_copied);
                    job.copy_ms = progress.copy_ms;
                }
                job.phase = to;
                Ok(vec![put(key.clone(), &job)])
            })
            .await?;
        self.show_phase(id, to);
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

    fn metrics() -> (shardline_metrics::Registry, Metrics) {
        let r = shardline_metrics::Registry::new();
        let m = Metrics {
            rows_copied: r.counter("reshard_rows_copied_total", "Rows.", &["job"]),
            phase: r.gauge("reshard_phase", "Phase.", &["job"]),
            last_progress: r.gauge("reshard_last_progress_timestamp_seconds", "When.", &["job"]),
        };
        (r, m)
    }

    #[test]
    fn progress_is_a_phase_further_along_or_a_batch() {
        let (r, m) = metrics();
        let at = |m: &Metrics| m.last_progress.with(&["j1"]).get();
        let before = crate::time::now_ms() as f64 / 1000.0;
        m.show_phase("j1", ReshardPhase::CatchUp);
        let first = at(&m);
        assert!(first >= before, "the first phase shown starts the clock");
        // Set back by hand, so a change below is not lost in one clock tick.
        m.last_progress.with(&["j1"]).set(1.0);
        m.show_phase("j1", ReshardPhase::CatchUp);
        assert_eq!(at(&m), 1.0, "the same phase again is no progress");
        m.show_phase("j1", ReshardPhase::Cutover);
        assert!(at(&m) >= first, "a phase further along is progress");
        m.last_progress.with(&["j1"]).set(1.0);
        m.show_phase("j1", ReshardPhase::CatchUp);
        assert_eq!(at(&m), 1.0, "a step back is no progress");
        m.progressed("j1");
        assert!(at(&m) >= first, "a batch is progress");
        let text = r.render();
        assert!(text.contains("reshard_phase{job=\"j1\"} 2\n"), "{text}");
        assert!(text.contains("reshard_last_progress_timestamp_seconds{job=\"j1\"}"));
    }
}
