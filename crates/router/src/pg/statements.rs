//! The HTTP front end's prepared statements on a server session: by SQL
//! text, bounded, least recently used closed first.
//!
//! A session is shared by both front ends (see [`super::rawpool`]), so
//! these statements carry names of their own (`shardline_h<n>`), apart
//! from the wire front end's ([`super::server::Prepared`]). A statement
//! evicted, or shown stale by PostgreSQL, is closed on the server with
//! the session's next request ([`StatementCache::take_closes`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::Type;

/// A statement PostgreSQL prepared and described: its parameter types
/// (as PostgreSQL inferred them) and its result columns.
#[derive(Debug)]
pub struct Described {
    /// The statement's name on the server.
    pub name: String,
    pub params: Vec<Type>,
    /// Each result column's name and type.
    pub columns: Vec<(String, Type)>,
}

/// Prepared statements by SQL text.
#[derive(Debug, Default)]
pub struct StatementCache {
    entries: HashMap<String, (Arc<Described>, u64)>,
    clock: u64,
    next_id: u64,
    /// Names to close on the server with the next request.
    closes: Vec<String>,
}

impl StatementCache {
    /// The statement prepared for `sql`, marked as just used.
    pub fn get(&mut self, sql: &str) -> Option<Arc<Described>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|(d, used)| {
            *used = clock;
            Arc::clone(d)
        })
    }

    /// A name no statement of this session has had.
    pub fn next_name(&mut self) -> String {
        self.next_id += 1;
        format!("shardline_h{}", self.next_id)
    }

    /// Keeps `d` for `sql`, evicting the least recently used statement
    /// when `capacity` are kept already; with a capacity of 0 nothing is
    /// kept and `d` is closed.
    pub fn insert(&mut self, sql: &str, d: Arc<Described>, capacity: usize) {
        if capacity == 0 {
            self.closes.push(d.name.clone());
            return;
        }
        if self.entries.len() >= capacity && !self.entries.contains_key(sql) {
            // A linear scan: only on misses of a full cache.
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.remove(&oldest);
            }
        }
        self.clock += 1;
        if let Some((old, _)) = self.entries.insert(sql.to_string(), (d, self.clock)) {
            self.closes.push(old.name.clone());
        }
    }

    /// Forgets the statement for `sql`, closing it on the server.
    pub fn remove(&mut self, sql: &str) {
        if let Some((d, _)) = self.entries.remove(sql) {
            self.closes.push(d.name.clone());
        }
    }

    /// Forgets every statement, without closing: the session dropped
    /// them itself (`DEALLOCATE ALL`).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.closes.clear();
    }

    /// The names to close on the server, taken.
    pub fn take_closes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.closes)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(name: &str) -> Arc<Described> {
        Arc::new(Described {
            name: name.into(),
            params: Vec::new(),
            columns: Vec::new(),
        })
    }

    #[test]
    fn bounded_least_recently_used_and_closed_on_the_server() {
        let mut c = StatementCache::default();
        let (a, b) = (c.next_name(), c.next_name());
        assert_ne!(a, b);
        c.insert("select a", described(&a), 2);
        c.insert("select b", described(&b), 2);
        assert!(c.get("select a").is_some());
        c.insert("select c", described("c"), 2);
        // b was the least recently used.
        assert!(c.get("select b").is_none());
        assert_eq!(c.take_closes(), vec![b]);
        c.remove("select a");
        assert_eq!(c.take_closes(), vec![a]);
        assert!(c.take_closes().is_empty());
        c.insert("select d", described("d"), 0);
        assert_eq!((c.len(), c.take_closes()), (1, vec!["d".to_string()]));
        c.clear();
        assert!(c.is_empty());
    }
}
