//! The catalog store: a small versioned key-value store with
//! compare-and-swap transactions and watches, behind one trait with two
//! implementations: an embedded file store (one manager, crash-safe) and
//! etcd (several managers). Both pass the one conformance suite in
//! [`conformance`].
//!
//! The model is etcd's: one revision counter for the whole store, bumped
//! by every committed transaction; each entry remembers the revision that
//! last changed it (`mod_revision`).
//!
//! # Layout
//! - [`store`]: the [`CatalogStore`] trait and its types.
//! - [`file`]: [`FileStore`], the embedded store (`file/format.rs`: the
//!   on-disk format; `file/watch.rs`: its watches).
//! - [`etcd`]: [`EtcdStore`], the store on an etcd cluster (`etcd/watch.rs`:
//!   its watches, which reconnect and resume by themselves;
//!   `etcd/election.rs`: leader election and the fence on writes).
//! - [`conformance`]: the shared test suite every store must pass.

pub mod conformance;
pub mod etcd;
pub mod file;
pub mod store;

pub use etcd::{ElectionOptions, ElectionView, EtcdStore, EtcdStoreOptions, EtcdTls};
pub use file::{FileStore, FileStoreOptions};
pub use store::{
    CatalogStore, Entry, Op, Precondition, Revision, Snapshot, StoreError, Watch, WatchBatch,
    WatchEvent,
};
