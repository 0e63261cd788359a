//! The catalog service: reads and writes the catalog through the store
//! and keeps the current snapshot in memory, following the store's watch,
//! for the API and the routers' long polls.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use shardline_catalog::{CatalogStore, Entry, Op, Precondition, StoreError, WatchEvent};
use shardline_core::Catalog;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ServiceError;

/// How many times a read-modify-write is retried on a concurrent change.
const MAX_CAS_ATTEMPTS: usize = 16;

/// One published catalog version, with its JSON made once on demand.
#[derive(Debug)]
pub struct Published {
    pub catalog: Catalog,
    json: OnceLock<Bytes>,
}

impl Published {
    fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            json: OnceLock::new(),
        }
    }

    /// The catalog as JSON, serialised once per version.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&self.catalog).unwrap_or_default()))
            .clone()
    }
}

/// What a read-modify-write saw of one key.
pub type ReadSet = HashMap<String, Option<Entry>>;

/// Reads and writes the catalog.
pub struct CatalogService {
    store: Arc<dyn CatalogStore>,
    tx: watch::Sender<Arc<Published>>,
    /// Serialises the work that touches tenants' roles and schemas on the
    /// shards (create, delete, migrations, reconciling), so a tenant is
    /// never provisioned while it is being dropped, nor migrated while
    /// being created.
    tenant_work: tokio::sync::Mutex<()>,
}

impl CatalogService {
    /// Loads the catalog and starts following the store.
    pub async fn start(
        store: Arc<dyn CatalogStore>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, ServiceError> {
        let catalog = load(store.as_ref()).await?;
        let (tx, _) = watch::channel(Arc::new(Published::new(catalog)));
        let service = Arc::new(Self {
            store,
            tx,
            tenant_work: tokio::sync::Mutex::new(()),
        });
        let follower = Arc::clone(&service);
        tracker.spawn(async move { follower.follow(shutdown).await });
        Ok(service)
    }

    /// The current catalog.
    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    /// Held while changing tenants' roles and schemas on the shards.
    pub async fn lock_tenant_work(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.tenant_work.lock().await
    }

    /// The same, when free now (background work skips a busy turn rather
    /// than wait behind a long migration).
    pub fn try_lock_tenant_work(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.tenant_work.try_lock().ok()
    }

    /// A receiver told of every new version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Applies the store's changes to the in-memory catalog, re-reading
    /// everything when the watch breaks.
    async fn follow(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        while !shutdown.is_cancelled() {
            let after = self.current().catalog.version;
            let mut watch = match self.store.watch("", after).await {
                Ok(w) => w,
                Err(e) => {
                    self.resync_after(e, &mut backoff, &shutdown).await;
                    continue;
                }
            };
            loop {
                let batch = tokio::select! {
                    () = shutdown.cancelled() => return,
                    b = watch.recv() => b,
                };
                let batch = match batch {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        self.resync_after(e, &mut backoff, &shutdown).await;
                        break;
                    }
                    None => break,
                };
                backoff = Duration::from_millis(50);
                let mut next = self.current().catalog.clone();
                for ev in &batch.events {
                    match ev {
                        WatchEvent::Put(e) => {
                            if let Err(err) = next.apply_put(&e.key, &e.value) {
                                tracing::error!(%err, "skip undecodable catalog entry");
                            }
                        }
                        WatchEvent::Delete { key, .. } => next.apply_delete(key),
                    }
                }
                next.version = batch.revision;
                self.tx.send_replace(Arc::new(Published::new(next)));
            }
        }
    }

    async fn resync_after(
        &self,
        err: StoreError,
        backoff: &mut Duration,
        shutdown: &CancellationToken,
    ) {
        tracing::warn!(%err, "catalog watch broke; re-reading the catalog");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        match load(self.store.as_ref()).await {
            Ok(cat) => {
                self.tx.send_replace(Arc::new(Published::new(cat)));
            }
            Err(e) => tracing::warn!(error = %e, "re-read the catalog"),
        }
    }

    /// Waits until the in-memory catalog has caught up with `version`, so
    /// a write is visible to the next read.
    pub async fn wait_for(&self, version: u64) {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(|p| p.catalog.version >= version);
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }

    /// One object as stored now (not as the in-memory catalog has it,
    /// which follows the store a moment later).
    pub async fn stored<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ServiceError> {
        match self.store.get(key).await? {
            Some(entry) => decode(&entry).map(Some),
            None => Ok(None),
        }
    }

    /// Read-modify-write with compare-and-swap: reads `keys`, lets `decide`
    /// turn what it saw into writes, commits them only if none of the keys
    /// changed meanwhile (else re-reads and decides again). Returns the
    /// committed revision, once it is published.
    pub async fn update<F>(&self, keys: &[String], mut decide: F) -> Result<u64, ServiceError>
    where
        F: FnMut(&ReadSet) -> Result<Vec<Op>, ServiceError>,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let mut seen = ReadSet::new();
            let mut pre = Vec::with_capacity(keys.len());
            for key in keys {
                let entry = self.store.get(key).await?;
                pre.push(match &entry {
                    None => Precondition::Absent(key.clone()),
                    Some(e) => Precondition::ModRevision(key.clone(), e.mod_revision),
                });
                seen.insert(key.clone(), entry);
            }
            let ops = decide(&seen)?;
            if ops.is_empty() {
                // Nothing to write: the catalog as read, which the
                // in-memory one holds once it reaches the newest entry
                // read. (Not the store's current revision: on etcd other
                // keys — the election's, the router book's — advance it
                // past any catalog version.)
                let read_at = seen
                    .values()
                    .flatten()
                    .map(|e| e.mod_revision)
                    .max()
                    .unwrap_or(0);
                self.wait_for(read_at).await;
                return Ok(read_at);
            }
            match self.store.txn(&pre, &ops).await {
                Ok(rev) => {
                    self.wait_for(rev).await;
                    return Ok(rev);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contended)
    }
}

async fn load(store: &dyn CatalogStore) -> Result<Catalog, ServiceError> {
    let snap = store.snapshot("").await?;
    Catalog::from_entries(
        snap.revision,
        snap.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice())),
    )
    .map_err(|e| ServiceError::Store(StoreError::Corrupt(e.to_string())))
}

/// Decodes a stored JSON object.
pub fn decode<T: serde::de::DeserializeOwned>(entry: &Entry) -> Result<T, ServiceError> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| ServiceError::Store(StoreError::Corrupt(format!("{}: {e}", entry.key))))
}

/// A put of a JSON object.
pub fn put<T: serde::Serialize>(key: String, value: &T) -> Op {
    Op::Put {
        key,
        value: serde_json::to_vec(value).unwrap_or_default(),
    }
}
