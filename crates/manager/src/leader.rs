//! Leadership: of the managers sharing one catalog, exactly one acts —
//! runs the health checker, failovers, the reconciler and resharding
//! jobs — while every one serves reads and the catalog watch.
//!
//! [`Leadership`] says who leads now and lets the leader-only work run
//! only while this manager leads ([`Leadership::run_while_leader`]): it
//! is started on gaining leadership and cancelled, and waited for, on
//! losing it, so a manager that lost its lease stops acting before it
//! starts again. Over the embedded file store a manager is the only one
//! of its catalog (the store locks the file), so it leads from its start
//! for good ([`Leadership::sole`]); an election over a shared store moves
//! leadership between managers through [`Leadership::set`].

use std::future::Future;
use std::sync::Arc;

use shardline_api::manager::{LeaderResponse, ManagerRef};
use shardline_catalog::ElectionView;
use shardline_metrics::{CounterVec, GaugeVec, Registry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Who leads, as this manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderView {
    /// The leader, if any is known.
    pub leader: Option<ManagerRef>,
    /// Counts leaderships: a new leader has a higher term.
    pub term: u64,
}

/// Whether this manager's lease holds now.
type LeaseCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// This manager's view of the leadership, and its metrics.
pub struct Leadership {
    me: ManagerRef,
    /// Under an election: whether this manager's lease still holds now
    /// (the view can lag a moment behind, as after a pause).
    lease: Option<LeaseCheck>,
    view: watch::Sender<LeaderView>,
    is_leader: GaugeVec,
    changes: CounterVec,
}

impl Leadership {
    fn new(me: ManagerRef, metrics: &Registry, lease: Option<LeaseCheck>) -> Arc<Self> {
        Arc::new(Self {
            me,
            lease,
            view: watch::Sender::new(LeaderView::default()),
            is_leader: metrics.gauge(
                "manager_is_leader",
                "1 while this manager is the leader (runs checks, failovers and jobs).",
                &[],
            ),
            changes: metrics.counter(
                "manager_leader_changes_total",
                "Times the leader this manager knows changed.",
                &[],
            ),
        })
    }

    /// The only manager of its catalog: the leader from now on.
    pub fn sole(me: ManagerRef, metrics: &Registry) -> Arc<Self> {
        let this = Self::new(me.clone(), metrics, None);
        this.set(LeaderView {
            leader: Some(me),
            term: 1,
        });
        this
    }

    /// A manager that does not know the leader yet (an election decides).
    pub fn unknown(me: ManagerRef, metrics: &Registry) -> Arc<Self> {
        let this = Self::new(me, metrics, None);
        this.is_leader.with(&[]).set(0.0);
        this
    }

    /// A manager that campaigns: follows the election's views, whose
    /// leader values are [`ManagerRef`]s as JSON.
    pub fn elected(
        me: ManagerRef,
        metrics: &Registry,
        mut views: watch::Receiver<ElectionView>,
        lease: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        let this = Self::new(me, metrics, Some(Box::new(lease)));
        this.is_leader.with(&[]).set(0.0);
        let follower = Arc::clone(&this);
        tokio::spawn(async move {
            loop {
                let view = views.borrow_and_update().clone();
                let leader = view.leader.as_deref().and_then(|v| {
                    serde_json::from_str::<ManagerRef>(v)
                        .map_err(
                            |e| tracing::error!(error = %e, value = v, "leader's campaign value"),
                        )
                        .ok()
                });
                follower.set(LeaderView {
                    leader,
                    term: view.term,
                });
                if views.changed().await.is_err() {
                    // The campaign ended: this manager leads no more.
                    follower.set(LeaderView::default());
                    return;
                }
            }
        });
        this
    }

    /// Records who leads now.
    pub fn set(&self, view: LeaderView) {
        let changed = self.view.send_if_modified(|v| {
            let changed = v.leader != view.leader;
            *v = view;
            changed
        });
        if changed {
            self.changes.with(&[]).inc();
        }
        self.is_leader
            .with(&[])
            .set(if self.is_leader() { 1.0 } else { 0.0 });
    }

    /// This manager.
    pub fn me(&self) -> &ManagerRef {
        &self.me
    }

    /// Whether this manager leads now.
    pub fn is_leader(&self) -> bool {
        self.view.borrow().leader.as_ref() == Some(&self.me) && self.lease_holds()
    }

    fn lease_holds(&self) -> bool {
        self.lease.as_ref().is_none_or(|holds| holds())
    }

    /// The answer of `GET /v1/leader`.
    pub fn response(&self) -> LeaderResponse {
        let view = self.view.borrow().clone();
        LeaderResponse {
            is_leader: view.leader.as_ref() == Some(&self.me) && self.lease_holds(),
            leader: view.leader,
            term: view.term,
            this_manager: self.me.clone(),
        }
    }

    /// Runs `work` each time this manager becomes leader, until
    /// `shutdown`: the token it is given is cancelled when leadership is
    /// lost (or at shutdown), and the work is waited for before it can
    /// start again, so no two runs overlap.
    pub async fn run_while_leader<F, Fut>(&self, shutdown: CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut views = self.view.subscribe();
        loop {
            // Until this manager leads.
            let leading = tokio::select! {
                () = shutdown.cancelled() => return,
                r = until(&mut views, |v| v.leader.as_ref() == Some(&self.me)) => r,
            };
            if !leading {
                return;
            }
            let term = shutdown.child_token();
            let run = work(term.clone());
            tokio::pin!(run);
            tokio::select! {
                () = &mut run => {}
                _ = until(&mut views, |v| v.leader.as_ref() != Some(&self.me)) => {
                    tracing::warn!("leadership lost: stopping the leader's work");
                    term.cancel();
                    run.await;
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}

/// Waits until the view passes `check`; false if the sender is gone.
async fn until(
    views: &mut watch::Receiver<LeaderView>,
    check: impl FnMut(&LeaderView) -> bool,
) -> bool {
    views.wait_for(check).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn member(id: &str) -> ManagerRef {
        ManagerRef {
            id: id.into(),
            url: format!("http://{id}"),
        }
    }

    #[tokio::test]
    async fn work_runs_only_while_leading_and_never_twice_at_once() {
        let metrics = Registry::new();
        let l = Leadership::unknown(member("m1"), &metrics);
        let shutdown = CancellationToken::new();
        let (starts, running, overlap) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let task = {
            let (l, shutdown) = (Arc::clone(&l), shutdown.clone());
            let (starts, running, overlap) = (starts.clone(), running.clone(), overlap.clone());
            tokio::spawn(async move {
                l.run_while_leader(shutdown, |token| {
                    let (starts, running, overlap) =
                        (starts.clone(), running.clone(), overlap.clone());
                    async move {
                        starts.fetch_add(1, Ordering::SeqCst);
                        if running.fetch_add(1, Ordering::SeqCst) > 0 {
                            overlap.fetch_add(1, Ordering::SeqCst);
                        }
                        token.cancelled().await;
                        // Stopping takes a while: nothing may start meanwhile.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .await
            })
        };
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "not leader: nothing runs");
        let lead = |id: &str, term| LeaderView {
            leader: Some(member(id)),
            term,
        };
        l.set(lead("m1", 1));
        settle().await;
        assert_eq!(
            (
                starts.load(Ordering::SeqCst),
                running.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        assert!(l.is_leader() && l.response().is_leader);
        // Another manager leads: the work stops.
        l.set(lead("m2", 2));
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "stopped on losing it");
        assert!(!l.response().is_leader);
        assert_eq!(l.response().leader, Some(member("m2")));
        // Back, lost and back at once: one run at a time.
        l.set(lead("m1", 3));
        l.set(lead("m2", 4));
        l.set(lead("m1", 5));
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1);
        assert_eq!(overlap.load(Ordering::SeqCst), 0, "two runs at once");
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0, "stopped at shutdown");
        let text = metrics.render();
        assert!(text.contains("manager_is_leader 1"), "{text}");
        assert!(text.contains("manager_leader_changes_total 5"), "{text}");
    }
}
