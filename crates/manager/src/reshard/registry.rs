//! The job registry: which jobs run in this manager, which an operator
//! is cancelling, which wait out a transient error, and each job's
//! progress. It knows nothing of what a job does: the engine hands it a
//! job's work to run ([`JobRegistry::spawn`]) and asks it whether a job
//! may run now.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shardline_metrics::GaugeVec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// A job's progress, in this manager's memory.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub rows_copied: u64,
    pub rows_estimated: u64,
    pub changes_behind: u64,
    /// How long the copy took, once it ended on this manager.
    pub copy_ms: Option<u64>,
    /// The last transient error (the job retries).
    pub last_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The jobs of one manager.
pub struct JobRegistry {
    progress: Mutex<HashMap<String, Progress>>,
    /// Jobs running in this manager, with the token that stops them.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Jobs an operator cancelled: never resumed.
    cancelling: Mutex<HashSet<String>>,
    /// Jobs waiting out a transient error.
    retry_at: Mutex<HashMap<String, Instant>>,
    /// `reshard_changes_behind`, kept with the progress.
    changes_behind: GaugeVec,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// A job's slot in the registry's running set, freed when dropped: while
/// it is held, nothing else runs the job.
pub struct Claim {
    owner: Arc<JobRegistry>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.owner.running).remove(&self.id);
    }
}

impl JobRegistry {
    /// Jobs run on `tracker` until `shutdown`.
    pub fn new(
        changes_behind: GaugeVec,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            progress: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            cancelling: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            changes_behind,
            tracker,
            shutdown,
        })
    }

    /// Takes the job's slot, with a token that stops the holder; `None`
    /// if something runs it already.
    pub fn claim(self: &Arc<Self>, id: &str) -> Option<(Claim, CancellationToken)> {
        let mut running = lock(&self.running);
        if running.contains_key(id) {
            return None;
        }
        let token = self.shutdown.child_token();
        running.insert(id.to_string(), token.clone());
        Some((
            Claim {
                owner: Arc::clone(self),
                id: id.to_string(),
            },
            token,
        ))
    }

    /// Runs `work` for job `id` in the background unless it runs already,
    /// is being cancelled or waits out an error.
    pub fn spawn<F, Fut>(self: &Arc<Self>, id: &str, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.is_cancelling(id) || self.is_waiting(id) {
            return;
        }
        let Some((claim, token)) = self.claim(id) else {
            return;
        };
        let span = tracing::info_span!("reshard", job = %id);
        let fut = work(token);
        self.tracker.spawn(
            async move {
                fut.await;
                drop(claim);
            }
            .instrument(span),
        );
    }

    /// Runs `work` in the background to its end (a client going away
    /// does not cut it short) and returns its output.
    pub async fn run_detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.tracker.spawn(work).await
    }

    /// Stops the job if it runs here and keeps it from being resumed
    /// until [`uncancel`](Self::uncancel).
    pub fn cancel(&self, id: &str) {
        lock(&self.cancelling).insert(id.to_string());
        if let Some(token) = lock(&self.running).get(id) {
            token.cancel();
        }
    }

    /// Stops every job running here and waits until none does (each
    /// stops at its next step; they resume wherever leadership goes).
    pub async fn stop_all(&self) {
        for token in lock(&self.running).values() {
            token.cancel();
        }
        // A job's step (a batch, a cutover's wait for routers) ends
        // within seconds; bounded so a stuck one cannot stop shutdown.
        for _ in 0..3_000 {
            if lock(&self.running).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("resharding jobs still running after 60 s");
    }

    /// A cancel that did not happen: the job may run again.
    pub fn uncancel(&self, id: &str) {
        lock(&self.cancelling).remove(id);
    }

    /// Whether an operator is cancelling the job.
    pub fn is_cancelling(&self, id: &str) -> bool {
        lock(&self.cancelling).contains(id)
    }

    /// The job runs again no sooner than `after` from now.
    pub fn retry_after(&self, id: &str, after: Duration) {
        lock(&self.retry_at).insert(id.to_string(), Instant::now() + after);
    }

    /// The job went through: no wait before it runs again.
    pub fn succeeded(&self, id: &str) {
        lock(&self.retry_at).remove(id);
    }

    /// Whether the job waits out an error.
    fn is_waiting(&self, id: &str) -> bool {
        lock(&self.retry_at)
            .get(id)
            .is_some_and(|at| Instant::now() < *at)
    }

    /// The job's progress, as this manager knows it.
    pub fn progress(&self, id: &str) -> Progress {
        lock(&self.progress).get(id).cloned().unwrap_or_default()
    }

    /// Changes the job's progress.
    pub fn update_progress(&self, id: &str, f: impl FnOnce(&mut Progress)) {
        let mut all = lock(&self.progress);
        let p = all.entry(id.to_string()).or_default();
        f(p);
        self.changes_behind.with(&[id]).set(p.changes_behind as f64);
    }
}
