//! The router book: which routers the leader has given leases, kept in
//! the store (beside the catalog, so it never bumps the catalog's
//! version) when managers share one.
//!
//! A new leader cannot know the leases the one before it gave, so it
//! waits a whole lease before a failover or cutover may pass routers it
//! has not heard from (`RouterRegistry::inherit_leases_now`). With the
//! book it knows which routers those are and waits only until each has
//! heartbeated to it — about one heartbeat interval after a takeover
//! rather than a lease. For that to be safe, a router is written into
//! the book before its first lease from a leader is answered; entries of
//! routers gone for more than a lease are pruned by the leader.

use std::sync::Arc;

use shardline_catalog::{CatalogStore, Op, Precondition, StoreError};
use tokio_util::sync::CancellationToken;

use crate::routers::RouterRegistry;

/// The book, on its own store (a prefix of its own).
pub struct RouterBook {
    store: Arc<dyn CatalogStore>,
}

impl RouterBook {
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Self { store }
    }

    /// Before a router's lease is answered: records it unless this
    /// manager already leased it.
    pub async fn record(&self, routers: &RouterRegistry, id: &str) -> Result<(), StoreError> {
        if routers.knows(id) {
            return Ok(());
        }
        self.store
            .txn(
                &[],
                &[Op::Put {
                    key: id.to_string(),
                    value: b"{}".to_vec(),
                }],
            )
            .await
            .map(|_| ())
    }

    /// At the start of a term: the routers that may hold leases the
    /// previous leader gave (all of them, if the book cannot be read).
    pub async fn inherit(&self, routers: &RouterRegistry) {
        match self.store.snapshot("").await {
            Ok(book) => {
                tracing::info!(
                    routers = book.entries.len(),
                    "leases of the previous leader: waiting for these routers' heartbeats"
                );
                routers.inherit_leases_of(book.entries.into_iter().map(|e| e.key));
            }
            Err(e) => {
                tracing::warn!(error = %e, "read the router book; waiting a whole lease");
                routers.inherit_leases_now();
            }
        }
    }

    /// While leading: every lease, drops routers not live. Starts one
    /// lease into the term, when every lease the previous leader gave
    /// has run out. An entry rewritten meanwhile (the router came back)
    /// is kept: each delete is conditional on the entry read.
    pub async fn prune(&self, routers: &RouterRegistry, term: CancellationToken) {
        loop {
            tokio::select! {
                () = term.cancelled() => return,
                () = tokio::time::sleep(routers.lease()) => {}
            }
            let Ok(book) = self.store.snapshot("").await else {
                continue;
            };
            for entry in book.entries {
                if routers.knows(&entry.key) {
                    continue;
                }
                let gone = [Op::Delete {
                    key: entry.key.clone(),
                }];
                let unchanged = [Precondition::ModRevision(entry.key, entry.mod_revision)];
                if let Err(e) = self.store.txn(&unchanged, &gone).await {
                    if !matches!(e, StoreError::Conflict) {
                        tracing::debug!(error = %e, "prune the router book");
                    }
                }
            }
        }
    }
}
