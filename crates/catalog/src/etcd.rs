//! The etcd store: the catalog in an etcd cluster, so several managers
//! can share it.
//!
//! Every key lives under a configurable prefix ([`EtcdStoreOptions::prefix`]),
//! so several catalogs (or tests) can share one cluster; the prefix is
//! added on the way in and stripped on the way out, and nothing outside it
//! is read or written.
//!
//! # Revisions
//! A [`Revision`] is etcd's own revision, unchanged: the cluster-wide
//! counter that every write transaction bumps by one, and each key's
//! `mod_revision`. Keeping the number as it is means a revision seen in
//! `etcdctl` or in etcd's logs is the catalog's, and no translation can
//! drift. The cost is that the counter is shared by everything in the
//! cluster: a fresh prefix starts at the cluster's current revision, not
//! at 0, and another catalog's writes advance the revision of this one
//! (its snapshots and transactions then return revisions with gaps; its
//! watches see only its own batches). etcd starts at revision 1 with no
//! keys and no events, so `after = 0` ("from the start") and `after = 1`
//! mean the same to a watch.
//!
//! # Semantics, mapped to etcd
//! - Preconditions are transaction compares: `Absent` is
//!   `create_revision == 0`, `ModRevision` is `mod_revision == r`. A
//!   failed compare is [`StoreError::Conflict`].
//! - etcd bumps the revision only for a transaction that changes a key, so
//!   a transaction without ops, or with only deletes of missing keys,
//!   returns the current revision and no watch sees it, as the trait asks.
//! - etcd rejects a transaction that writes one key twice; only the last
//!   op on each key is sent (it decides the key's final state, which is
//!   what a reader sees), so such a transaction has one event per key.
//! - etcd limits a transaction to `--max-txn-ops` ops (128 by default) and
//!   a request to `--max-request-bytes` (1.5 MiB); a bigger transaction
//!   fails as [`StoreError::Unavailable`] and writes nothing.
//! - A snapshot is read in pages, every page at the revision of the
//!   first, so it is one consistent state however large.
//! - Every request is bounded by [`EtcdStoreOptions::request_timeout`];
//!   a failure to reach etcd, or no answer in time, is
//!   [`StoreError::Unavailable`]. A transaction that timed out may still
//!   have committed: callers re-read before retrying (their
//!   preconditions make the retry safe).
//! - Watches reconnect by themselves; see `etcd/watch.rs`.

mod election;
mod watch;

pub use election::{ElectionOptions, ElectionView};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    TlsOptions, Txn, TxnOp,
};

use crate::store::{CatalogStore, Entry, Op, Precondition, Revision, Snapshot, StoreError, Watch};

/// Entries read per request while taking a snapshot.
const PAGE: i64 = 1000;
/// Times a snapshot starts over when etcd compacts the revision it reads.
const SNAPSHOT_ATTEMPTS: usize = 3;

/// Where the etcd store connects and how it behaves.
#[derive(Debug, Clone)]
pub struct EtcdStoreOptions {
    /// Client URLs of the cluster's members, such as
    /// `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prepended to every key (default `shardline/`). Two stores with
    /// different prefixes never see each other's keys; a prefix should
    /// not be a prefix of another catalog's (end it with `/`).
    pub prefix: String,
    /// The bound on each request: a read, a transaction, the start of a
    /// watch (default 5s).
    pub request_timeout: Duration,
    /// The bound on opening a connection to a member (default 2s).
    pub connect_timeout: Duration,
    /// How often an idle connection is pinged; a ping unanswered within
    /// the same time breaks the connection, so a watch on a dead
    /// connection reconnects (default 10s; etcd refuses pings more often
    /// than every 5s).
    pub keep_alive: Duration,
    /// The first pause before a broken watch reconnects (default 50ms).
    pub reconnect_min: Duration,
    /// The longest pause between reconnection attempts; each failed
    /// attempt doubles the pause up to it (default 2s).
    pub reconnect_max: Duration,
    /// User and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd, in PEM.
#[derive(Clone)]
pub struct EtcdTls {
    /// The certificate authority etcd's server certificates are signed by.
    pub ca: Vec<u8>,
    /// A client certificate and its key, when etcd asks for one
    /// (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl EtcdStoreOptions {
    /// The defaults, for these endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdStoreOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "shardline/".to_string(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            keep_alive: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            user: None,
            tls: None,
        }
    }

    /// The same, with keys under `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// The catalog store on etcd.
///
/// Cloning shares one client; watches end when the last clone is dropped.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.options.endpoints)
            .field("prefix", &self.inner.options.prefix)
            .finish()
    }
}

struct Inner {
    client: Client,
    options: EtcdStoreOptions,
    /// Dropped with the store, which ends its watch tasks.
    closed: tokio::sync::watch::Sender<()>,
    /// Whether writes are fenced by an election, and the fence.
    fence: election::FenceState,
}

impl EtcdStore {
    /// Makes a store on the cluster at `options.endpoints`. Does no I/O
    /// (connections open on first use), so a store can be made while etcd
    /// is down; its calls then fail with [`StoreError::Unavailable`].
    pub async fn connect(options: EtcdStoreOptions) -> Result<EtcdStore, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive, options.keep_alive)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        // No per-request timeout here: tonic would apply it to a watch
        // stream's whole life. Each call is bounded by `call` instead.
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| StoreError::Unavailable(format!("set up the etcd client: {e}")))?;
        let (closed, _) = tokio::sync::watch::channel(());
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                options,
                closed,
                fence: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The key prefix of this store.
    pub fn prefix(&self) -> &str {
        &self.inner.options.prefix
    }
}

impl Inner {
    /// The etcd key of a catalog key.
    fn etcd_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.options.prefix.len() + key.len());
        full.extend_from_slice(self.options.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The catalog key of an etcd key under the prefix.
    fn catalog_key(&self, etcd_key: &[u8]) -> Result<String, StoreError> {
        catalog_key(&self.options.prefix, etcd_key)
    }

    fn entry(&self, kv: &KeyValue) -> Result<Entry, StoreError> {
        Ok(Entry {
            key: self.catalog_key(kv.key())?,
            value: kv.value().to_vec(),
            mod_revision: revision(kv.mod_revision())?,
        })
    }

    /// Runs one etcd request, bounded by the request timeout.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Failure> {
        call(self.options.request_timeout, fut).await
    }

    /// One consistent read of every key under `prefix`, or `Compacted`
    /// when etcd compacted the revision between two pages.
    async fn read_pages(&self, prefix: &str) -> Result<Snapshot, Failure> {
        let (mut from, end) = key_range(&self.etcd_key(prefix));
        let mut kv = self.client.kv_client();
        let mut at: Option<i64> = None;
        let mut entries = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if let Some(at) = at {
                options = options.with_revision(at);
            }
            let page = self.call(kv.get(from.clone(), Some(options))).await?;
            let read_at = match at {
                Some(at) => at,
                None => header_revision(page.header()).map_err(Failure::Store)?,
            };
            at = Some(read_at);
            for kv in page.kvs() {
                entries.push(self.entry(kv).map_err(Failure::Store)?);
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    // The next page starts right after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    return Ok(Snapshot {
                        revision: revision(read_at).map_err(Failure::Store)?,
                        entries,
                    })
                }
            }
        }
    }
}

#[async_trait]
impl CatalogStore for EtcdStore {
    async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.inner.read_pages(prefix).await {
                Ok(snapshot) => return Ok(snapshot),
                Err(Failure::Etcd(e)) if is_compacted(&e) && attempt < SNAPSHOT_ATTEMPTS => {
                    tracing::debug!(
                        prefix,
                        attempt,
                        "snapshot revision compacted; reading again"
                    );
                }
                Err(failure) => return Err(failure.into_store("read a catalog snapshot")),
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut kv = self.inner.client.kv_client();
        let response = self
            .inner
            .call(kv.get(self.inner.etcd_key(key), None))
            .await
            .map_err(|f| f.into_store("read a catalog key"))?;
        response
            .kvs()
            .first()
            .map(|kv| self.inner.entry(kv))
            .transpose()
    }

    async fn txn(
        &self,
        preconditions: &[Precondition],
        ops: &[Op],
    ) -> Result<Revision, StoreError> {
        let mut compares = Vec::with_capacity(preconditions.len());
        for precondition in preconditions {
            compares.push(match precondition {
                Precondition::Absent(key) => {
                    Compare::create_revision(self.inner.etcd_key(key), CompareOp::Equal, 0)
                }
                Precondition::ModRevision(key, rev) => match i64::try_from(*rev) {
                    // etcd compares a missing key's mod_revision as 0, and
                    // no etcd revision is above i64::MAX: neither can hold.
                    Ok(rev) if rev > 0 => {
                        Compare::mod_revision(self.inner.etcd_key(key), CompareOp::Equal, rev)
                    }
                    _ => return Err(StoreError::Conflict),
                },
            });
        }
        if let Some(fence) = self.inner.fence_compare()? {
            compares.push(fence);
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(last_op_per_key(ops, |key| self.inner.etcd_key(key)));
        let mut kv = self.inner.client.kv_client();
        let response = self
            .inner
            .call(kv.txn(txn))
            .await
            .map_err(|f| f.into_store("commit a catalog transaction"))?;
        if !response.succeeded() {
            return Err(self.inner.refusal().await);
        }
        // The new revision after a write; the current one when the
        // transaction changed nothing.
        revision(header_revision(response.header())?)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        watch::start(&self.inner, prefix, after).await
    }
}

/// The ops etcd accepts for `ops`: the last op on each key, in op order.
fn last_op_per_key(ops: &[Op], etcd_key: impl Fn(&str) -> Vec<u8>) -> Vec<TxnOp> {
    fn key(op: &Op) -> &str {
        match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
    ops.iter()
        .enumerate()
        .filter(|(i, op)| !ops[i + 1..].iter().any(|later| key(later) == key(op)))
        .map(|(_, op)| match op {
            Op::Put { key, value } => TxnOp::put(etcd_key(key), value.clone(), None),
            Op::Delete { key } => TxnOp::delete(etcd_key(key), None),
        })
        .collect()
}

/// Why an etcd request failed.
#[derive(Debug)]
enum Failure {
    /// etcd (or the connection to it) answered with an error.
    Etcd(etcd_client::Error),
    /// No answer within the request timeout.
    TimedOut(Duration),
    /// The answer made no sense.
    Store(StoreError),
}

impl Failure {
    /// The store error for a failure of `what` (a verb phrase).
    fn into_store(self, what: &str) -> StoreError {
        match self {
            Failure::Etcd(e) => StoreError::Unavailable(format!("{what}: {e}")),
            Failure::TimedOut(limit) => {
                StoreError::Unavailable(format!("{what}: no answer from etcd within {limit:?}"))
            }
            Failure::Store(e) => e,
        }
    }
}

async fn call<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::Etcd(e)),
        Err(_) => Err(Failure::TimedOut(limit)),
    }
}

/// True for etcd's answer to a read or watch at a compacted revision.
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision has been compacted"))
}

/// True for etcd's answer to a read at a revision it has not reached.
fn is_future_revision(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision is a future revision"))
}

/// The start and end of etcd's range for every key starting with
/// `prefix` (etcd's convention: `[prefix, prefix + 1)`, and `"\0"` for
/// "to the end").
fn key_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

fn catalog_key(prefix: &str, etcd_key: &[u8]) -> Result<String, StoreError> {
    let rest = etcd_key
        .strip_prefix(prefix.as_bytes())
        .ok_or_else(|| StoreError::Corrupt("etcd returned a key outside the prefix".into()))?;
    String::from_utf8(rest.to_vec())
        .map_err(|_| StoreError::Corrupt(format!("a key under {prefix:?} is not UTF-8")))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt("etcd answered without a response header".into()))
}

/// A revision read from etcd.
fn revision(rev: i64) -> Result<Revision, StoreError> {
    Revision::try_from(rev)
        .map_err(|_| StoreError::Corrupt(format!("etcd returned revision {rev}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges() {
        assert_eq!(key_range(b""), (vec![0], vec![0]), "everything");
        assert_eq!(key_range(b"a/"), (b"a/".to_vec(), b"a0".to_vec()));
        assert_eq!(key_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(key_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
    }

    #[test]
    fn keys_are_stripped_of_the_prefix() {
        assert_eq!(catalog_key("p/", b"p/a/b").unwrap(), "a/b");
        assert!(matches!(
            catalog_key("p/", b"q/a"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            catalog_key("p/", b"p/\xff"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn only_the_last_op_on_a_key_is_sent() {
        let put = |key: &str, value: &str| Op::Put {
            key: key.into(),
            value: value.into(),
        };
        let ops = [
            put("a", "1"),
            put("b", "1"),
            Op::Delete { key: "a".into() },
            put("c", "1"),
            put("b", "2"),
        ];
        let sent = last_op_per_key(&ops, |key| key.as_bytes().to_vec());
        let expected = [
            TxnOp::delete("a", None),
            TxnOp::put("c", "1", None),
            TxnOp::put("b", "2", None),
        ];
        assert_eq!(format!("{sent:?}"), format!("{expected:?}"));
    }
}
