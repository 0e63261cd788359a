//! Watches on the file store.
//!
//! Each watch is a task that replays the kept history after its start
//! revision, then forwards live batches. Commits never wait for a watcher:
//! they push into a bounded broadcast; a watcher that lags past it catches
//! up from the history again, and one that lags past the history too ends
//! with [`StoreError::Compacted`] (the caller re-reads a snapshot).

use std::sync::{Arc, Weak};

use tokio::sync::{broadcast, mpsc};
use tracing::Instrument as _;

use super::{Committed, Inner};
use crate::store::{Revision, StoreError, Watch, WatchBatch, WatchEvent};

/// Batches buffered between a watch task and its receiver.
const CHANNEL: usize = 64;

type Live = broadcast::Receiver<Arc<Committed>>;
type Sender = mpsc::Sender<Result<WatchBatch, StoreError>>;

pub(super) fn start(
    inner: &Arc<Inner>,
    prefix: &str,
    after: Revision,
) -> Result<Watch, StoreError> {
    let (backlog, live) = subscribe(inner, after)?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    let span = tracing::debug_span!("catalog_watch", prefix, after);
    tokio::spawn(
        run(
            Arc::downgrade(inner),
            prefix.to_string(),
            after,
            backlog,
            live,
            tx,
        )
        .instrument(span),
    );
    Ok(rx)
}

/// The kept batches after `after`, and a receiver for every later one.
fn subscribe(inner: &Inner, after: Revision) -> Result<(Vec<Arc<Committed>>, Live), StoreError> {
    // Under the same lock a commit holds while it records and sends a
    // batch, so no batch is missed or seen twice.
    let state = inner.read();
    if after < state.oldest {
        return Err(StoreError::Compacted {
            requested: after,
            oldest: state.oldest,
        });
    }
    let start = state.history.partition_point(|c| c.revision <= after);
    let backlog = state.history.range(start..).cloned().collect();
    Ok((backlog, state.live.subscribe()))
}

async fn run(
    inner: Weak<Inner>,
    prefix: String,
    mut last: Revision,
    mut backlog: Vec<Arc<Committed>>,
    mut live: Live,
    tx: Sender,
) {
    loop {
        for committed in backlog.drain(..) {
            if !deliver(&tx, &prefix, &committed).await {
                return;
            }
            last = committed.revision;
        }
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = live.recv() => next,
            };
            match next {
                Ok(committed) => {
                    // Only a watch that starts after the current revision
                    // sees older batches here.
                    if committed.revision <= last {
                        continue;
                    }
                    if !deliver(&tx, &prefix, &committed).await {
                        return;
                    }
                    last = committed.revision;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                // The store was dropped.
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match subscribe(&inner, last) {
            Ok((kept, receiver)) => {
                tracing::debug!(last, "watch lagged; catching up from history");
                backlog = kept;
                live = receiver;
            }
            Err(e) => {
                tracing::info!(last, error = %e, "watch fell behind the kept history");
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Sends the part of `committed` under `prefix`, if any; false when the
/// receiver is gone.
async fn deliver(tx: &Sender, prefix: &str, committed: &Committed) -> bool {
    let events: Vec<WatchEvent> = committed
        .events
        .iter()
        .filter(|event| {
            let key = match event {
                WatchEvent::Put(entry) => &entry.key,
                WatchEvent::Delete { key, .. } => key,
            };
            key.starts_with(prefix)
        })
        .cloned()
        .collect();
    if events.is_empty() {
        return true;
    }
    tx.send(Ok(WatchBatch {
        revision: committed.revision,
        events,
    }))
    .await
    .is_ok()
}
