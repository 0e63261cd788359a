//! [`AnalysisCache`]: analyses by exact text, and by shape for texts
//! that differ only in their keys ([`super::shape`]), bounded in bytes.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::shape::{shape, Template};
use super::{
    analyze, Analysis, CopySpec, FanOut, InsertRows, KeyRef, Kind, OutputAggregate, PreparedSql,
    SortKey,
};

/// What an entry costs beyond its text and analysis: the map slot, the
/// recency index's node share, two `Arc` headers.
const ENTRY_OVERHEAD: usize = 128;

/// A cache of [`analyze`] results by exact text, for clients that send
/// the same statements again and again (every driver does). Bounded by
/// bytes (texts plus an estimate of each analysis' size), not entries, so
/// a client sending huge texts cannot grow it past its budget; the least
/// recently used entries go first. Each entry records the tables
/// generation it was made under (the catalog version that declared the
/// shard-key columns): a lookup under another generation analyzes again
/// and replaces it.
///
/// A text whose keys are constants (`WHERE id = 42`, as the simple
/// protocol sends them) is kept by its shape instead, with a
/// [`Template`]: texts of that shape with other keys get the analysis
/// with their keys put in, unparsed. Shapes hold a NUL, which no client
/// text does, so both kinds share one map. A shape is tried for a
/// template once (it costs one or two more parses): a shape without one,
/// or a text its template does not fit, is then cached as itself.
///
/// Thread-safe; the lock is held for map updates only, never while
/// analyzing.
pub struct AnalysisCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Entries by last use; the smallest tick is the least recent.
    recency: BTreeMap<u64, Arc<str>>,
    tick: u64,
    bytes: usize,
}

struct Entry {
    generation: u64,
    analysis: Arc<Analysis>,
    /// For an entry by shape: where the keys are.
    template: Option<Arc<Template>>,
    bytes: usize,
    tick: u64,
}

impl AnalysisCache {
    /// An empty cache holding at most `max_bytes` (0 caches nothing).
    pub fn new(max_bytes: usize) -> Self {
        AnalysisCache {
            max_bytes,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                recency: BTreeMap::new(),
                tick: 0,
                bytes: 0,
            }),
        }
    }

    /// The analysis of `sql` under tables generation `generation`, cached
    /// or made now with `shard_key_of` (see [`analyze`]).
    pub fn get_or_analyze(
        &self,
        sql: &str,
        generation: u64,
        shard_key_of: &dyn Fn(&str) -> Option<String>,
    ) -> Arc<Analysis> {
        if let Some((analysis, _)) = self.lookup(sql, generation) {
            return analysis;
        }
        let shape = shape(sql);
        // Whether the shape was seen (under this generation): its
        // template, if it has one, does not fit this text, and making
        // another (one or two more parses) is not tried again.
        let mut shape_seen = false;
        if let Some(shape) = &shape {
            if let Some((template_analysis, template)) = self.lookup(&shape.key, generation) {
                shape_seen = true;
                if let Some(a) =
                    template.and_then(|t| t.instantiate(&template_analysis, shape, sql))
                {
                    return Arc::new(a);
                }
            }
        }
        let analysis = Arc::new(analyze(sql, shard_key_of));
        let tried = shape
            .as_ref()
            .filter(|_| !shape_seen && has_constant_key(&analysis));
        let template = tried.and_then(|s| {
            Template::new(&analysis, s, &|text: &str| analyze(text, shard_key_of))
                .map(|t| (s, Arc::new(t)))
        });
        let bytes = |key: &str| ENTRY_OVERHEAD + key.len() + analysis_bytes(&analysis);
        let mut inner = self.lock();
        match template {
            // A text with a template is kept by its shape only: kept as
            // itself too, each new key would push out other entries.
            Some((s, t)) => {
                let size = bytes(&s.key) + t.bytes();
                inner.insert(
                    &s.key,
                    generation,
                    Arc::clone(&analysis),
                    Some(t),
                    size,
                    self.max_bytes,
                );
            }
            None => {
                if let Some(s) = tried {
                    // The shape has no template: remembered, so its other
                    // texts are not tried again.
                    let size = bytes(&s.key);
                    inner.insert(
                        &s.key,
                        generation,
                        Arc::clone(&analysis),
                        None,
                        size,
                        self.max_bytes,
                    );
                }
                let size = bytes(sql);
                inner.insert(
                    sql,
                    generation,
                    Arc::clone(&analysis),
                    None,
                    size,
                    self.max_bytes,
                );
            }
        }
        drop(inner);
        analysis
    }

    /// The entry for `key` under `generation`, marked used.
    fn lookup(&self, key: &str, generation: u64) -> Option<(Arc<Analysis>, Option<Arc<Template>>)> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let entry = inner.entries.get_mut(key)?;
        if entry.generation != generation {
            return None;
        }
        inner.tick += 1;
        if let Some(key) = inner.recency.remove(&entry.tick) {
            inner.recency.insert(inner.tick, key);
        }
        entry.tick = inner.tick;
        Some((Arc::clone(&entry.analysis), entry.template.clone()))
    }

    /// The bytes the entries are estimated to take.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the cache. A panic elsewhere while holding the lock cannot
    /// leave it inconsistent in a way that matters (at worst the byte
    /// count drifts until entries go), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Stores an entry (replacing one for the same text), then evicts the
    /// least recently used until the total fits `max_bytes`; an entry
    /// larger than that is not stored.
    fn insert(
        &mut self,
        sql: &str,
        generation: u64,
        analysis: Arc<Analysis>,
        template: Option<Arc<Template>>,
        bytes: usize,
        max_bytes: usize,
    ) {
        if bytes > max_bytes {
            return;
        }
        if let Some(old) = self.entries.remove(sql) {
            self.recency.remove(&old.tick);
            self.bytes = self.bytes.saturating_sub(old.bytes);
        }
        while self.bytes + bytes > max_bytes {
            let Some((_, key)) = self.recency.pop_first() else {
                break;
            };
            if let Some(old) = self.entries.remove(&key) {
                self.bytes = self.bytes.saturating_sub(old.bytes);
            }
        }
        self.tick += 1;
        let key: Arc<str> = Arc::from(sql);
        self.recency.insert(self.tick, Arc::clone(&key));
        self.entries.insert(
            key,
            Entry {
                generation,
                analysis,
                template,
                bytes,
                tick: self.tick,
            },
        );
        self.bytes += bytes;
    }
}

/// Whether some key of the analysis is a constant of its text (only then
/// can its shape have a template).
fn has_constant_key(a: &Analysis) -> bool {
    a.keys
        .iter()
        .chain(&a.insert_row_keys)
        .any(|k| matches!(k, KeyRef::Literal(_)))
}

/// An estimate of an analysis' size, heap included.
fn analysis_bytes(a: &Analysis) -> usize {
    let keys = |keys: &Vec<KeyRef>| {
        keys.capacity() * size_of::<KeyRef>()
            + keys
                .iter()
                .map(|k| match k {
                    KeyRef::Literal(s) => s.capacity(),
                    KeyRef::Param(_) => 0,
                })
                .sum::<usize>()
    };
    let kind = |kind: &Kind| match kind {
        Kind::SetShardKey {
            value: Some(value), ..
        } => value.capacity(),
        _ => 0,
    };
    let fanout = |f: &FanOut| {
        size_of::<FanOut>()
            + f.aggregates.capacity() * size_of::<OutputAggregate>()
            + f.order_by.capacity() * size_of::<SortKey>()
    };
    size_of::<Analysis>()
        + keys(&a.keys)
        + keys(&a.insert_row_keys)
        + kind(&a.kind)
        + a.parts.capacity() * size_of::<Kind>()
        + a.parts.iter().map(kind).sum::<usize>()
        + a.fanout.as_ref().map_or(0, fanout)
        + a.parse_error.as_ref().map_or(0, String::capacity)
        + a.copy.as_ref().map_or(0, |c| {
            size_of::<CopySpec>()
                + c.table.capacity()
                + c.key_column.capacity()
                + c.columns
                    .iter()
                    .map(|s| s.capacity() + size_of::<String>())
                    .sum::<usize>()
        })
        + a.prepared.as_ref().map_or(0, |p| match p {
            PreparedSql::Prepare { name, .. } | PreparedSql::Deallocate { name: Some(name) } => {
                name.capacity()
            }
            PreparedSql::Execute { name, args, .. } => {
                name.capacity()
                    + args
                        .iter()
                        .map(|a| {
                            size_of::<Option<String>>() + a.as_ref().map_or(0, String::capacity)
                        })
                        .sum::<usize>()
            }
            PreparedSql::Deallocate { name: None } => 0,
        })
        + a.insert_rows.as_ref().map_or(0, |r| {
            size_of::<InsertRows>() + r.rows.capacity() * size_of::<std::ops::Range<usize>>()
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::AnalysisCache;
    use crate::wire::analyze::tests::keys_of;
    use crate::wire::analyze::Kind;

    #[test]
    fn cache_hits_and_generations() {
        let cache = AnalysisCache::new(1 << 20);
        // A key that is no constant: cached by its exact text.
        let sql = "SELECT * FROM users WHERE id = $1";
        let first = cache.get_or_analyze(sql, 1, &keys_of);
        let again = cache.get_or_analyze(sql, 1, &keys_of);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(cache.len(), 1);
        assert!(cache.bytes() > sql.len());
        // A new generation (here: the table is no longer sharded) analyzes again.
        let unsharded = cache.get_or_analyze(sql, 2, &|_| None);
        assert!(!unsharded.touches_sharded);
        assert_eq!(cache.len(), 1);
        assert!(!cache.get_or_analyze(sql, 2, &keys_of).touches_sharded);
    }

    #[test]
    fn cache_evicts_least_recently_used_within_its_bytes() {
        let probe = AnalysisCache::new(1 << 20);
        probe.get_or_analyze("SELECT 0001", 1, &keys_of);
        let entry = probe.bytes();
        let cache = AnalysisCache::new(entry * 3);
        let sql = |i: usize| format!("SELECT {i:04}");
        for i in 0..3 {
            cache.get_or_analyze(&sql(i), 1, &keys_of);
        }
        assert_eq!(cache.len(), 3);
        // Touch 0, so 1 is the least recently used.
        let zero = cache.get_or_analyze(&sql(0), 1, &keys_of);
        cache.get_or_analyze(&sql(3), 1, &keys_of);
        assert_eq!(cache.len(), 3);
        assert!(cache.bytes() <= entry * 3);
        assert!(Arc::ptr_eq(
            &zero,
            &cache.get_or_analyze(&sql(0), 1, &keys_of)
        ));
        let before = cache.bytes();
        cache.get_or_analyze(&sql(1), 1, &keys_of); // evicted: analyzed and cached again
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), before);
        // A text bigger than the whole budget is analyzed but not kept.
        let big = format!("SELECT '{}'", "x".repeat(entry * 3));
        assert_eq!(cache.get_or_analyze(&big, 1, &keys_of).kind, Kind::Read);
        assert_eq!(cache.len(), 3);
        let none = AnalysisCache::new(0);
        none.get_or_analyze("SELECT 1", 1, &keys_of);
        assert!(none.is_empty() && none.bytes() == 0);
    }

    #[test]
    fn cache_is_shared_across_threads() {
        let cache = Arc::new(AnalysisCache::new(1 << 16));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let sql = format!("SELECT * FROM users WHERE id = {}", (i * 7 + t) % 50);
                        let a = cache.get_or_analyze(&sql, 1, &keys_of);
                        assert_eq!(a.keys.len(), 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        assert!(cache.len() <= 50 && cache.bytes() <= 1 << 16);
    }
}
