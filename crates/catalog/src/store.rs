//! The store trait.

use async_trait::async_trait;

/// A store revision. 0 means "nothing written yet".
pub type Revision = u64;

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of a transaction did not hold; nothing was written.
    #[error("conflict: the catalog changed concurrently")]
    Conflict,
    /// A watch asked for history the store no longer keeps; re-read with
    /// [`CatalogStore::snapshot`] and watch from its revision.
    #[error("revision {requested} is compacted (oldest kept: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// This store campaigns for leadership and does not lead now (or no
    /// longer): nothing was written.
    #[error("this manager is not the leader")]
    NotLeader,
    /// The store cannot be reached or written now.
    #[error("catalog store unavailable: {0}")]
    Unavailable(String),
    /// The stored data is damaged.
    #[error("catalog store corrupt: {0}")]
    Corrupt(String),
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote it.
    pub mod_revision: Revision,
}

/// All entries under a prefix, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: Revision,
    /// Sorted by key.
    pub entries: Vec<Entry>,
}

/// A condition a transaction needs to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, Revision),
}

/// A write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting a missing key is not an error.
    Delete {
        key: String,
    },
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Entry),
    Delete { key: String, mod_revision: Revision },
}

/// The changes of one committed transaction, under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// A stream of watch batches in revision order. Ends (`None`) when the
/// store shuts down; an `Err` is final too.
pub type Watch = tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>;

/// A versioned key-value store with CAS transactions and watches.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// All entries whose key starts with `prefix`, and the store revision.
    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError>;

    /// One entry.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Applies `ops` atomically if every precondition holds; returns the
    /// new revision. With no ops, checks the preconditions only and
    /// returns the current revision. Durable when it returns `Ok`.
    async fn txn(&self, preconditions: &[Precondition], ops: &[Op])
        -> Result<Revision, StoreError>;

    /// Changes under `prefix` with revision `> after`, in order, starting
    /// with any already committed.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError>;
}
