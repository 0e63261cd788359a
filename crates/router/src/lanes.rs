//! Lanes: threads that each run an event loop of their own, for client
//! connections (wire sessions and HTTP connections) that should never
//! wake another thread.
//!
//! On tokio's shared (work-stealing) runtime a task woken on one worker
//! while another is parked wakes that other worker too, so it may steal
//! the work: a futex wake and a context switch, measured at about a third
//! of a wire transaction's kernel time on two cores (docs/benchmarks.md,
//! "Worker threads"; what lanes save: "Lanes"). A lane is a thread with a single-threaded runtime: a session
//! handed to it runs there to its end, its sockets' readiness is read by
//! that thread's own poller, and the server sessions it borrows come from
//! pools of the same lane ([`current`] names the lane a pool is for), so
//! nothing crosses threads on the way of a transaction.
//!
//! Each accepted connection goes to the lane with the fewest open
//! connections (in turn among equals), so lanes stay even as clients
//! come and go. What a lane cannot do is lend its idle work: a lane
//! whose connections are busier than another's stays the busier one
//! (see docs/architecture.md, "Lanes").

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

thread_local! {
    static LANE: Cell<Option<u16>> = const { Cell::new(None) };
}

/// The lane the calling thread runs, if it is one.
pub fn current() -> Option<u16> {
    LANE.with(Cell::get)
}

/// A connection's work, made on the lane that runs it (so the sockets
/// it opens are registered with that lane's poller).
pub use shardline_http::Job;

/// The running lanes.
pub struct Lanes {
    count: usize,
    /// Emptied by [`stop`](Lanes::stop).
    senders: Mutex<Vec<mpsc::UnboundedSender<Job>>>,
    /// Connections each lane runs now.
    open: Arc<[AtomicUsize]>,
    /// Where the search for the least busy lane starts: ties go in turn.
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Starts `count` lanes (at least one).
    pub fn start(count: u16) -> std::io::Result<Lanes> {
        let count = count.max(1);
        let mut senders = Vec::with_capacity(usize::from(count));
        let mut threads = Vec::with_capacity(usize::from(count));
        for lane in 0..count {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("lane-{lane}"))
                .spawn(move || {
                    LANE.with(|l| l.set(Some(lane)));
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job());
                        }
                    });
                    // Dropping the runtime here cancels what is left:
                    // the caller waited for its sessions before closing.
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        Ok(Lanes {
            count: senders.len(),
            open: senders.iter().map(|_| AtomicUsize::new(0)).collect(),
            senders: Mutex::new(senders),
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
        })
    }

    /// How many lanes run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Connections each lane runs now, by lane.
    pub fn open_connections(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `job` on the lane with the fewest open connections (in turn
    /// among equals), counted until the job ends; `false` if the lanes
    /// stopped.
    pub fn run(&self, job: Job) -> bool {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let i = (0..self.count)
            .map(|k| (start + k) % self.count)
            .min_by_key(|&l| self.open[l].load(Ordering::Relaxed))
            .unwrap_or(0);
        let counted = Counted::new(Arc::clone(&self.open), i);
        let job: Job = Box::new(move || {
            let work = job();
            Box::pin(async move {
                let _counted = counted;
                work.await;
            })
        });
        let senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        senders.get(i).is_some_and(|s| s.send(job).is_ok())
    }

    /// Stops taking jobs and waits for the lane threads to end; what
    /// still runs on them is dropped. Blocks: from async code, call it
    /// through `spawn_blocking`.
    pub fn stop(&self) {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One open connection of a lane, for as long as it lives (a job never
/// run is dropped, and so uncounted, too).
struct Counted {
    open: Arc<[AtomicUsize]>,
    lane: usize,
}

impl Counted {
    fn new(open: Arc<[AtomicUsize]>, lane: usize) -> Counted {
        open[lane].fetch_add(1, Ordering::Relaxed);
        Counted { open, lane }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open[self.lane].fetch_sub(1, Ordering::Relaxed);
    }
}

impl shardline_http::Spread for Lanes {
    fn run(&self, job: Job) -> bool {
        Lanes::run(self, job)
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A job that reports its lane and thread name when it starts,
    /// then waits for `release` and reports `done`.
    fn held(
        started: std::sync::mpsc::Sender<(Option<u16>, Option<String>)>,
        release: tokio::sync::oneshot::Receiver<()>,
    ) -> Job {
        Box::new(move || {
            Box::pin(async move {
                // A timer: the lane's runtime has its drivers.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = started.send((current(), std::thread::current().name().map(String::from)));
                let _ = release.await;
            })
        })
    }

    fn wait_for(lanes: &Lanes, want: &[usize]) {
        for _ in 0..500 {
            if lanes.open_connections() == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(lanes.open_connections(), want);
    }

    #[test]
    fn jobs_are_dealt_in_turn_among_equals_and_run_on_their_lane() {
        let lanes = Lanes::start(3).expect("lanes start");
        assert_eq!(lanes.count(), 3);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..6 {
            let (release, wait) = tokio::sync::oneshot::channel();
            releases.push(release);
            assert!(lanes.run(held(tx.clone(), wait)));
        }
        let mut seen: Vec<_> = (0..6)
            .map(|_| {
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .expect("a job ran")
            })
            .collect();
        seen.sort();
        let want: Vec<_> = [0u16, 0, 1, 1, 2, 2]
            .iter()
            .map(|&l| (Some(l), Some(format!("lane-{l}"))))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(lanes.open_connections(), [2, 2, 2]);
        assert_eq!(current(), None, "the test's own thread is no lane");
        drop(releases);
        wait_for(&lanes, &[0, 0, 0]);
        lanes.stop();
    }

    /// After connections of one lane end, the next goes there, not to
    /// the next lane in turn (control: in turn, the fourth job of two
    /// lanes goes to lane 1).
    #[test]
    fn a_new_connection_goes_to_the_lane_with_fewest() {
        let lanes = Lanes::start(2).expect("lanes start");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..3 {
            let (release, wait) = tokio::sync::oneshot::channel();
            releases.push(release);
            assert!(lanes.run(held(tx.clone(), wait)));
        }
        for _ in 0..3 {
            rx.recv_timeout(std::time::Duration::from_secs(5))
                .expect("a job ran");
        }
        assert_eq!(lanes.open_connections(), [2, 1]);
        // The first and third job (lane 0) end.
        let mut releases = releases.into_iter();
        let (first, second, third) = (releases.next(), releases.next(), releases.next());
        drop((first, third));
        wait_for(&lanes, &[0, 1]);
        let (_release, wait) = tokio::sync::oneshot::channel();
        assert!(lanes.run(held(tx.clone(), wait)));
        let (lane, _) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a job ran");
        assert_eq!(lane, Some(0));
        assert_eq!(lanes.open_connections(), [1, 1]);
        drop(second);
        lanes.stop();
    }

    #[test]
    fn stopping_ends_the_threads_and_drops_what_still_runs() {
        let lanes = Lanes::start(1).expect("lanes start");
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(Arc::clone(&dropped));
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(lanes.run(Box::new(move || {
            Box::pin(async move {
                let _flag = flag;
                let _ = tx.send(());
                std::future::pending::<()>().await;
            })
        })));
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the job started");
        lanes.stop();
        assert!(
            dropped.load(Ordering::SeqCst),
            "the pending job was dropped"
        );
        assert!(
            !lanes.run(Box::new(|| Box::pin(async {}))),
            "stopped lanes take nothing"
        );
    }
}
