//! The health book: the shards whose primary is failing its checks, kept
//! in the store beside the catalog (a prefix of its own, so it never
//! bumps the catalog's version) when managers share one.
//!
//! Without it a new leader counts a dead primary's failed checks from
//! zero, so a leader lost while a primary is failing delays that
//! primary's failover by `failover_after` rounds on top of the takeover,
//! and the new leader does not know the primary's last WAL position
//! (the replicas' lag is unknown until one is promoted). With it the new
//! leader goes on counting where the old one stopped.
//!
//! The leader writes a shard's entry only when it changes (each round
//! while the primary fails, once when it is up again); a new leader takes
//! over entries written within [`MAX_AGE`] for the primary the catalog
//! still names. Older ones are stale (no leader counted meanwhile) and
//! the count starts again, as without the book.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardline_catalog::{CatalogStore, Op, StoreError};

/// Entries older than this are not taken over. Above a takeover (the
/// leader's lease plus a poll) and a few health rounds; below the time
/// after which a primary that failed then may have come back unseen.
pub const MAX_AGE: Duration = Duration::from_secs(15);

/// A shard's failing primary, as the leader last counted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failing {
    /// The primary's instance id.
    pub instance: String,
    /// Its consecutive failed checks.
    pub failures: u32,
    /// Its WAL position when it last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_lsn: Option<u64>,
    /// When it was written (milliseconds since the epoch).
    pub at_ms: u64,
}

/// The book, on its own store (a prefix of its own); keys are shard ids.
pub struct HealthBook {
    store: Arc<dyn CatalogStore>,
}

impl HealthBook {
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Self { store }
    }

    /// Every entry, by shard (none if the book cannot be read: the count
    /// starts again, as without a book).
    pub async fn load(&self) -> BTreeMap<String, Failing> {
        match self.store.snapshot("").await {
            Ok(book) => book
                .entries
                .into_iter()
                .filter_map(|e| {
                    let failing = serde_json::from_slice(&e.value).ok()?;
                    Some((e.key, failing))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "read the health book; counting failed checks anew");
                BTreeMap::new()
            }
        }
    }

    /// Writes (or, with `None`, removes) a shard's entry.
    pub async fn set(&self, shard: &str, failing: Option<&Failing>) -> Result<(), StoreError> {
        let op = match failing {
            Some(f) => Op::Put {
                key: shard.to_string(),
                value: serde_json::to_vec(f).expect("an entry serializes"),
            },
            None => Op::Delete {
                key: shard.to_string(),
            },
        };
        self.store.txn(&[], &[op]).await.map(|_| ())
    }
}

/// Whether an entry written at `at_ms` may be taken over at `now_ms`.
pub fn fresh(at_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(at_ms) <= MAX_AGE.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recent_entries_are_taken_over() {
        assert!(fresh(1_000, 1_000));
        assert!(fresh(1_000, 16_000));
        assert!(!fresh(1_000, 16_001));
        // A clock behind the writer's: taken over.
        assert!(fresh(2_000, 1_000));
    }
}
