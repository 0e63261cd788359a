//! The embedded file store: the whole catalog in memory, persisted to one
//! file on every committed transaction.
//!
//! A commit writes the complete new state to `<path>.tmp`, fsyncs it,
//! renames it over `<path>` and fsyncs the directory, so the file on disk
//! is always one complete state, old or new, whenever the process dies.
//! Rewriting the whole file keeps the format trivial; the catalog is small
//! (thousands of entries), so a commit costs milliseconds.
//!
//! One process owns a file: [`FileStore::open`] takes an exclusive `flock`
//! on `<path>.lock`, which the kernel releases when the process exits, even
//! by `kill -9`.
//!
//! Watches are served from an in-memory history of the last committed
//! batches (see [`FileStoreOptions::history`]); the history starts empty at
//! open, so a watch can only start from the revision at open or later.

mod format;
mod watch;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use tokio::sync::{broadcast, Mutex as AsyncMutex};

use self::format::Stored;
use crate::store::{
    CatalogStore, Entry, Op, Precondition, Revision, Snapshot, StoreError, Watch, WatchEvent,
};

/// How many committed batches are kept for watches by default.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Tuning for [`FileStore::open_with`].
#[derive(Debug, Clone)]
pub struct FileStoreOptions {
    /// Committed batches kept in memory for watches. A watch that starts
    /// (or falls) further behind than this ends with
    /// [`StoreError::Compacted`] and must re-read a snapshot.
    pub history: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            history: DEFAULT_HISTORY,
        }
    }
}

/// The embedded, crash-safe, single-process catalog store.
///
/// Cloning shares the one store; the file lock is released when the last
/// clone is dropped, and open watches then end.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .field("revision", &self.revision())
            .finish()
    }
}

/// One committed transaction's changes, unfiltered.
#[derive(Debug)]
struct Committed {
    revision: Revision,
    events: Vec<WatchEvent>,
}

struct Inner {
    path: PathBuf,
    tmp_path: PathBuf,
    state: RwLock<State>,
    /// Serialises commits. Held across the file write, so readers (which
    /// take `state` only) are never blocked by the disk.
    writer: Arc<AsyncMutex<Writer>>,
    history_limit: usize,
    /// Holds the `flock`; closing it releases the lock.
    _lock: File,
}

struct State {
    entries: BTreeMap<String, Stored>,
    revision: Revision,
    /// The last committed batches, oldest first, with consecutive revisions.
    history: VecDeque<Arc<Committed>>,
    /// The lowest `after` a watch can start from: everything after it is
    /// in `history`.
    oldest: Revision,
    /// Every committed batch, for running watches.
    live: broadcast::Sender<Arc<Committed>>,
}

/// A transaction's net effect per key: `Some` puts, `None` deletes.
type Changes = BTreeMap<String, Option<Stored>>;

struct Writer {
    /// Set when a commit failed after its rename: the file may then hold a
    /// state that memory does not, so no further commit is safe until the
    /// store is reopened from the file.
    failed: Option<String>,
}

impl FileStore {
    /// Opens (or creates, empty at revision 0) the store at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<FileStore, StoreError> {
        Self::open_with(path, FileStoreOptions::default()).await
    }

    /// Opens (or creates) the store at `path` with `options`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: FileStoreOptions,
    ) -> Result<FileStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path, options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;
        Ok(FileStore {
            inner: Arc::new(inner),
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.inner.read().revision
    }
}

impl Inner {
    fn open(path: PathBuf, options: FileStoreOptions) -> Result<Inner, StoreError> {
        let lock_path = with_suffix(&path, ".lock");
        let tmp_path = with_suffix(&path, ".tmp");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_error("open lock file", &lock_path, &e))?;
        lock_exclusive(&lock).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::Unavailable(format!(
                    "catalog file {} is locked by another process",
                    path.display()
                ))
            } else {
                io_error("lock", &lock_path, &e)
            }
        })?;
        // A leftover from a commit cut short; it was never renamed, so it
        // never became the store.
        match std::fs::remove_file(&tmp_path) {
            Ok(()) => {
                tracing::info!(path = %tmp_path.display(), "removed unfinished catalog write")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &tmp_path, &e)),
        }
        let decoded = match std::fs::read(&path) {
            Ok(bytes) => format::decode(&bytes).map_err(|why| {
                StoreError::Corrupt(format!("catalog file {}: {why}", path.display()))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let empty = BTreeMap::new();
                let bytes = format::encode(0, &empty, &BTreeMap::new())
                    .map_err(|e| StoreError::Unavailable(format!("encode catalog: {e}")))?;
                write_atomically(&path, &tmp_path, &bytes).map_err(|(_, e)| e)?;
                tracing::info!(path = %path.display(), "created empty catalog file");
                format::Decoded {
                    revision: 0,
                    entries: empty,
                }
            }
            Err(e) => return Err(io_error("read", &path, &e)),
        };
        // The broadcast only bridges a running watch to the next commit; a
        // watch that lags past it catches up from `history`.
        let (live, _) = broadcast::channel(options.history.clamp(16, 1024));
        Ok(Inner {
            path,
            tmp_path,
            state: RwLock::new(State {
                entries: decoded.entries,
                revision: decoded.revision,
                history: VecDeque::new(),
                oldest: decoded.revision,
                live,
            }),
            writer: Arc::new(AsyncMutex::new(Writer { failed: None })),
            history_limit: options.history,
            _lock: lock,
        })
    }

    // No critical section can panic half-way, so a poisoned lock still
    // guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs on a blocking thread with the writer lock held.
    fn commit(
        &self,
        writer: &mut Writer,
        preconditions: &[Precondition],
        ops: Vec<Op>,
    ) -> Result<Revision, StoreError> {
        if let Some(why) = &writer.failed {
            return Err(StoreError::Unavailable(format!(
                "an earlier write failed ({why}); reopen the store"
            )));
        }
        // Only this thread changes `state` (it holds the writer lock), so
        // what is read here stays true until the write-back below.
        let (revision, changes, events, bytes) = {
            let state = self.read();
            check(&state.entries, preconditions)?;
            let revision = state.revision.checked_add(1).ok_or_else(|| {
                StoreError::Unavailable("the revision counter is exhausted".into())
            })?;
            let (changes, events) = plan(&state.entries, ops, revision)
                .map_err(|e| StoreError::Unavailable(format!("encode catalog entry: {e}")))?;
            if events.is_empty() {
                // Like etcd, a transaction that changes nothing is not a
                // new revision.
                return Ok(state.revision);
            }
            let bytes = format::encode(revision, &state.entries, &changes)
                .map_err(|e| StoreError::Unavailable(format!("encode catalog: {e}")))?;
            (revision, changes, events, bytes)
        };
        if let Err((renamed, e)) = write_atomically(&self.path, &self.tmp_path, &bytes) {
            if renamed {
                writer.failed = Some(e.to_string());
            }
            tracing::error!(path = %self.path.display(), error = %e, "catalog commit failed");
            return Err(e);
        }
        let committed = Arc::new(Committed { revision, events });
        let mut state = self.write();
        for (key, change) in changes {
            match change {
                Some(stored) => {
                    state.entries.insert(key, stored);
                }
                None => {
                    state.entries.remove(&key);
                }
            }
        }
        state.revision = revision;
        state.history.push_back(committed.clone());
        while state.history.len() > self.history_limit {
            if let Some(dropped) = state.history.pop_front() {
                state.oldest = dropped.revision;
            }
        }
        // Sent under the state lock so that a watch subscribing under it
        // sees each batch exactly once: in history or live. No receivers
        // is not an error.
        let _ = state.live.send(committed);
        Ok(revision)
    }
}

/// Checks every precondition against the current entries.
fn check(
    entries: &BTreeMap<String, Stored>,
    preconditions: &[Precondition],
) -> Result<(), StoreError> {
    for precondition in preconditions {
        let holds = match precondition {
            Precondition::Absent(key) => !entries.contains_key(key),
            Precondition::ModRevision(key, rev) => {
                entries.get(key).is_some_and(|s| s.mod_revision == *rev)
            }
        };
        if !holds {
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}

/// Applies `ops` in order on top of `entries` without changing them:
/// returns the net change per key (encoded, ready to write) and the
/// events. Deleting a key that is missing (at that point of the
/// transaction) is no change and no event.
fn plan(
    entries: &BTreeMap<String, Stored>,
    ops: Vec<Op>,
    revision: Revision,
) -> Result<(Changes, Vec<WatchEvent>), serde_json::Error> {
    let mut changes = Changes::new();
    let mut events = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let stored = Stored::new(&key, value, revision)?;
                events.push(WatchEvent::Put(Entry {
                    key: key.clone(),
                    value: stored.value.clone(),
                    mod_revision: revision,
                }));
                changes.insert(key, Some(stored));
            }
            Op::Delete { key } => {
                let exists = match changes.get(&key) {
                    Some(change) => change.is_some(),
                    None => entries.contains_key(&key),
                };
                if exists {
                    events.push(WatchEvent::Delete {
                        key: key.clone(),
                        mod_revision: revision,
                    });
                    changes.insert(key, None);
                }
            }
        }
    }
    Ok((changes, events))
}

#[async_trait]
impl CatalogStore for FileStore {
    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let state = self.inner.read();
        let entries = state
            .entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, stored)| Entry {
                key: key.clone(),
                value: stored.value.clone(),
                mod_revision: stored.mod_revision,
            })
            .collect();
        Ok(Snapshot {
            revision: state.revision,
            entries,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.inner.read().entries.get(key).map(|stored| Entry {
            key: key.to_string(),
            value: stored.value.clone(),
            mod_revision: stored.mod_revision,
        }))
    }

    async fn txn(
        &self,
        preconditions: &[Precondition],
        ops: &[Op],
    ) -> Result<Revision, StoreError> {
        if ops.is_empty() {
            // Nothing to write: one consistent read answers it.
            let state = self.inner.read();
            check(&state.entries, preconditions)?;
            return Ok(state.revision);
        }
        let writer = self.inner.writer.clone().lock_owned().await;
        let inner = self.inner.clone();
        let preconditions = preconditions.to_vec();
        let ops = ops.to_vec();
        // The commit runs to its end even if this future is dropped, so
        // memory never disagrees with a file that was already renamed.
        tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            inner.commit(&mut writer, &preconditions, ops)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("commit task failed: {e}")))?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        watch::start(&self.inner, prefix, after)
    }
}

/// Writes `bytes` to `tmp`, then renames it over `path`, with the fsyncs
/// that make the rename durable and the file complete. On error, tells
/// whether the rename had happened.
fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), (bool, StoreError)> {
    let write = || -> io::Result<()> {
        let mut file = File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(tmp);
        return Err((false, io_error("write", tmp, &e)));
    }
    if let Err(e) = std::fs::rename(tmp, path) {
        let _ = std::fs::remove_file(tmp);
        return Err((false, io_error("rename into place", path, &e)));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (true, io_error("fsync directory", dir, &e)))
}

fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock on a file descriptor this `File` owns and keeps open;
    // it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}
