//! Watches on the etcd store.
//!
//! Each watch is a task that reads one etcd watch stream and turns its
//! events into one [`WatchBatch`] per revision. etcd sends all events of
//! one revision in one response (it splits a revision only for watches
//! that ask for fragments, which these do not), in the order of the
//! transaction's ops; a response may hold several revisions, which are
//! split here.
//!
//! etcd's watch streams do not survive a broken connection (an etcd
//! restart, a lost network): the task then reconnects with a doubling,
//! capped pause and watches again from the last revision it delivered, so
//! nothing is lost or repeated. A watch is created at `start_revision =
//! last` (not `last + 1`) and drops the events at `last`: etcd then
//! refuses it exactly when `last` is below its compaction revision `C`,
//! so the events after `last` are all still kept whenever it is accepted
//! (a compaction at `C` may drop a delete made at `C` itself). A refused
//! resume ends the watch with [`StoreError::Compacted`]; the caller
//! re-reads a snapshot and watches from its revision.
//!
//! The resume point is only ever a delivered revision. etcd's progress
//! notifications could move it forward on a quiet prefix, but etcd 3.4
//! can send one ahead of events still queued for the watcher, so a
//! resume from it could skip a batch; a quiet prefix whose last batch
//! was compacted away meanwhile therefore gets `Compacted` after a
//! reconnect and is re-read, which costs a read and loses nothing.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{call, catalog_key, is_compacted, is_future_revision, key_range, revision, Inner};
use crate::store::{Entry, Revision, StoreError, Watch, WatchBatch, WatchEvent};

/// Batches buffered between a watch task and its receiver.
const CHANNEL: usize = 64;

type Sender = mpsc::Sender<Result<WatchBatch, StoreError>>;

/// What one watch needs to (re)connect, shared by nothing else.
struct Target {
    client: Client,
    /// The catalog prefix, stripped from every key.
    store_prefix: String,
    /// etcd's range for the watched prefix.
    key: Vec<u8>,
    end: Vec<u8>,
    request_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

pub(super) async fn start(
    inner: &Arc<Inner>,
    prefix: &str,
    after: Revision,
) -> Result<Watch, StoreError> {
    let (key, end) = key_range(&inner.etcd_key(prefix));
    let target = Target {
        client: inner.client.clone(),
        store_prefix: inner.options.prefix.clone(),
        key,
        end,
        request_timeout: inner.options.request_timeout,
        reconnect_min: inner.options.reconnect_min,
        reconnect_max: inner.options.reconnect_max,
    };
    // A read at `after` fails exactly when a watch from it would be
    // refused, and answers at once, so a compacted start is an error of
    // this call, as with the file store.
    let compacted = target.probe(after).await?;
    let mut stream = target.open(after).await?;
    if compacted {
        return Err(target.compaction(&mut stream, after).await);
    }
    let (tx, rx) = mpsc::channel(CHANNEL);
    let closed = inner.closed.subscribe();
    let span = tracing::debug_span!("catalog_watch", prefix, after);
    tokio::spawn(run(target, after, stream, tx, closed).instrument(span));
    Ok(rx)
}

impl Target {
    /// Whether `after` is below etcd's compaction revision.
    async fn probe(&self, after: Revision) -> Result<bool, StoreError> {
        let options = etcd_client::GetOptions::new()
            .with_range(self.end.clone())
            .with_revision(start_revision(after))
            .with_count_only();
        let mut kv = self.client.kv_client();
        match call(
            self.request_timeout,
            kv.get(self.key.clone(), Some(options)),
        )
        .await
        {
            Ok(_) => Ok(false),
            Err(super::Failure::Etcd(e)) if is_compacted(&e) => Ok(true),
            // A watch may start ahead of the store; it sees what comes.
            Err(super::Failure::Etcd(e)) if is_future_revision(&e) => Ok(false),
            Err(failure) => Err(failure.into_store("start a catalog watch")),
        }
    }

    /// Opens an etcd watch of the range from `after` (see the module
    /// docs) and waits until etcd confirms it.
    async fn open(&self, after: Revision) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(start_revision(after));
        let mut client = self.client.watch_client();
        let timeout = self.request_timeout;
        let opened = async {
            let mut stream = client.watch(self.key.clone(), Some(options)).await?;
            let first = stream.message().await?;
            Ok((stream, first))
        };
        let (stream, first) = call(timeout, opened)
            .await
            .map_err(|f| f.into_store("open an etcd watch"))?;
        match first {
            Some(response) if response.created() && !response.canceled() => Ok(stream),
            Some(response) => Err(StoreError::Unavailable(format!(
                "etcd refused the watch: {}",
                response.cancel_reason()
            ))),
            None => Err(StoreError::Unavailable(
                "etcd closed the watch stream at once".into(),
            )),
        }
    }

    /// Reads etcd's cancellation of a watch known to start before its
    /// compaction revision, which names that revision.
    async fn compaction(&self, stream: &mut WatchStream, after: Revision) -> StoreError {
        let deadline = Instant::now() + self.request_timeout;
        // Bounded by the deadline; etcd sends the cancellation at its next
        // sync of unsynced watchers (every 100ms).
        while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
            match message {
                Ok(Some(response)) if response.compact_revision() > 0 => {
                    return StoreError::Compacted {
                        requested: after,
                        oldest: revision(response.compact_revision())
                            .unwrap_or(after.saturating_add(1)),
                    };
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    return StoreError::Unavailable(format!(
                        "read the compaction revision from etcd: {e}"
                    ))
                }
            }
        }
        StoreError::Unavailable("etcd said the watch start is compacted but not up to where".into())
    }

    fn pause(&self, backoff: Duration) -> Duration {
        (backoff * 2).clamp(self.reconnect_min, self.reconnect_max)
    }
}

/// The etcd start revision for a watch after `after`: etcd reads 0 as
/// "now", and revision 1 has no events, so 0 becomes 1.
fn start_revision(after: Revision) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX).max(1)
}

/// How reading one etcd watch stream ended.
enum End {
    /// The receiver or the store is gone.
    Done,
    /// The stream broke; reconnect.
    Broken(String),
    /// The watch is over with this error.
    Failed(StoreError),
}

async fn run(
    target: Target,
    mut last: Revision,
    stream: WatchStream,
    tx: Sender,
    mut closed: tokio::sync::watch::Receiver<()>,
) {
    let mut stream = Some(stream);
    let mut backoff = target.reconnect_min;
    loop {
        let mut current = match stream.take() {
            Some(current) => current,
            None => {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = closed.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match target.open(last).await {
                    Ok(reopened) => {
                        tracing::info!(last, "catalog watch reconnected");
                        reopened
                    }
                    Err(e) => {
                        backoff = target.pause(backoff);
                        tracing::debug!(last, error = %e, ?backoff, "catalog watch reconnect failed");
                        continue;
                    }
                }
            }
        };
        let opened = Instant::now();
        match follow(&target, &mut current, &mut last, &tx, &mut closed).await {
            End::Done => return,
            End::Failed(e) => {
                tracing::info!(last, error = %e, "catalog watch ended");
                let _ = tx.send(Err(e)).await;
                return;
            }
            End::Broken(why) => {
                // A stream that lived a while broke for a new reason: the
                // first retry comes quickly. One that breaks at once again
                // keeps the grown pause.
                if opened.elapsed() >= target.reconnect_max {
                    backoff = target.reconnect_min;
                } else {
                    backoff = target.pause(backoff);
                }
                tracing::warn!(last, reason = %why, "catalog watch broke; reconnecting");
            }
        }
    }
}

/// Delivers the batches of one etcd watch stream until it ends.
async fn follow(
    target: &Target,
    stream: &mut WatchStream,
    last: &mut Revision,
    tx: &Sender,
    closed: &mut tokio::sync::watch::Receiver<()>,
) -> End {
    loop {
        let message = tokio::select! {
            () = tx.closed() => return End::Done,
            _ = closed.changed() => return End::Done,
            message = stream.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return End::Broken("etcd ended the watch stream".into()),
            Err(e) => return End::Broken(e.to_string()),
        };
        if response.compact_revision() > 0 {
            return End::Failed(StoreError::Compacted {
                requested: *last,
                oldest: revision(response.compact_revision()).unwrap_or(last.saturating_add(1)),
            });
        }
        if response.canceled() {
            return End::Broken(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        let batches = match batches(&target.store_prefix, response.events(), *last) {
            Ok(batches) => batches,
            Err(e) => return End::Failed(e),
        };
        for batch in batches {
            let revision = batch.revision;
            if tx.send(Ok(batch)).await.is_err() {
                return End::Done;
            }
            *last = revision;
        }
    }
}

/// Groups etcd events into one batch per revision, dropping those at or
/// before `after`.
fn batches(
    store_prefix: &str,
    events: &[etcd_client::Event],
    after: Revision,
) -> Result<Vec<WatchBatch>, StoreError> {
    let mut out: Vec<WatchBatch> = Vec::new();
    for event in events {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::Corrupt("an etcd watch event without a key".into()))?;
        // A delete's mod_revision is the revision of the delete.
        let rev = revision(kv.mod_revision())?;
        if rev <= after {
            continue;
        }
        let key = catalog_key(store_prefix, kv.key())?;
        let event = match event.event_type() {
            EventType::Put => WatchEvent::Put(Entry {
                key,
                value: kv.value().to_vec(),
                mod_revision: rev,
            }),
            EventType::Delete => WatchEvent::Delete {
                key,
                mod_revision: rev,
            },
        };
        match out.last_mut() {
            Some(batch) if batch.revision == rev => batch.events.push(event),
            Some(batch) if batch.revision > rev => {
                return Err(StoreError::Corrupt(format!(
                    "etcd sent revision {rev} after {}",
                    batch.revision
                )))
            }
            _ => out.push(WatchBatch {
                revision: rev,
                events: vec![event],
            }),
        }
    }
    Ok(out)
}
