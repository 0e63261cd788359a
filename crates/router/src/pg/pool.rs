//! The HTTP front end's face of a tenant's pool of server sessions
//! ([`RawPool`], shared with the wire front end): a session lent for one
//! request, with its prepared statements (by SQL text, see
//! [`super::statements`]), the routing version it states, and the reset
//! that brings it back to a known state.
//!
//! The request's task owns the session's socket for the request and
//! reads the answers itself: no connection task, no channel, no
//! cross-task wake-up per statement; a statement, its `Sync` and the
//! session reset go out in one write.
//!
//! A session is returned to the pool when its [`PooledConn`] drops,
//! unless it broke, was [discarded](PooledConn::discard), or was
//! [busy](PooledConn::set_busy) — dropped in the middle of a statement or
//! transaction (the caller's future was cancelled). A busy session may
//! still be running the statement or hold an open transaction: it is
//! closed, and a cancel request is sent so PostgreSQL stops the statement
//! now rather than when it notices the closed socket.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use shardline_core::catalog::FENCE_VERSION_SQL;
use shardline_core::fence::{claim, CLAIM_SETTING};
use shardline_tls::pg::PgTls;
use tokio_postgres::types::{Kind, Type};

use super::budget::ConnBudget;
use super::frame::{Fields, Frame};
use super::rawpool::{PoolError, PoolStats, RawConn, RawPool, RawPoolConfig};
use super::server::{send_cancel, CancelKey, DbFields, ServerConn, ServerError};
use super::statements::Described;

/// Pool settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most connections open at once (default 10; at least 1).
    pub max_size: usize,
    /// Longest wait for a free connection (default 5s).
    pub acquire_timeout: Duration,
    /// Longest wait to open a connection, and for a health check
    /// (default 5s).
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every statement on the
    /// pool's connections; PostgreSQL cancels longer ones with SQLSTATE
    /// 57014 (default 30s; `None` keeps the server's setting).
    pub statement_timeout: Option<Duration>,
    /// Idle connections older than this are closed (default 5 min).
    pub idle_timeout: Duration,
    /// Prepared statements kept per connection (default 256; 0 disables
    /// caching).
    pub statement_cache_capacity: usize,
    /// A connection idle for longer than this is checked with a round
    /// trip before it is handed out, so a connection the server dropped
    /// meanwhile is replaced rather than failing the request (default
    /// 10s; zero checks every time).
    pub health_check_after: Duration,
    /// The tenant's claim key ([`shardline_core::fence::claim_key`]):
    /// with one, sessions state their routing version as a claim the
    /// tenant's SQL cannot forge (the backend pid is read once per
    /// connection for it); without, as a plain number (default `None`).
    pub claim_key: Option<String>,
    /// Whether every request ends with [`SESSION_RESET`] (default true).
    /// Off only to measure what the reset costs (`shardline-bench
    /// execute`): without it a request's session state outlives it.
    pub reset_sessions: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 10,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(300),
            statement_cache_capacity: 256,
            health_check_after: Duration::from_secs(10),
            claim_key: None,
            reset_sessions: true,
        }
    }
}

/// How a session is brought back to a known state after a request that
/// could have changed it (see `shardline_core::session`), in one simple
/// query (one message, one implicit transaction): open cursors closed
/// (`WITH HOLD` ones outlive their transaction), every setting back to
/// its value at connection (`statement_timeout`, `search_path`,
/// `shardline.map_version`, ...; the router's own settings are startup
/// options, so they stay; `RESET ALL` leaves `role` alone, hence `RESET
/// ROLE`), no `LISTEN`, no temporary table or function, no sequence
/// values. [`SESSION_RESET_CHECK`] follows it.
///
/// Not `DISCARD ALL`, which would also deallocate the statements both
/// front ends keep prepared on the session.
pub const SESSION_RESET: &str =
    "CLOSE ALL; RESET ALL; RESET ROLE; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES";

/// The second half of the reset, a statement prepared once per
/// connection (planning it each time cost more than the rest of the
/// reset): releases session advisory locks, sets the session's version
/// claim again (`$1`, empty when it has none), and counts prepared
/// statements made from SQL (`PREPARE` in a `DO` block or a function; the
/// router's are made by the protocol): a session with any is not reused.
pub const SESSION_RESET_CHECK: &str = "SELECT pg_catalog.pg_advisory_unlock_all(), \
     pg_catalog.set_config('shardline.map_version', $1, false), \
     (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)";

/// `SET shardline.map_version = '<value>'`; `value` is digits, `:` and
/// hex only.
fn set_claim_sql(value: &str) -> String {
    format!("SET {CLAIM_SETTING} = '{value}'")
}

/// The reset check's name on every session that prepared it.
const RESET_CHECK_NAME: &str = "shardline_reset_check";

/// Names the session after the request it serves (`$1`, the request id),
/// so that `pg_stat_activity` and the server's log (`%a`) show which
/// request ran a statement. Not `SET`: a statement prepared once runs in
/// the request's own round trip and flush, before its statement.
pub const NAMING: &str = "SELECT pg_catalog.set_config('application_name', $1, false)";

/// [`NAMING`]'s name on every session that prepared it.
const NAMING_NAME: &str = "shardline_naming";

/// What a type's OID names, read from the tenant database's catalog for
/// types PostgreSQL does not build in (enums, domains, their arrays).
const TYPE_SQL: &str = "SELECT t.typname::text, t.typtype::text, t.typbasetype::int8, \
     t.typelem::int8, n.nspname::text FROM pg_catalog.pg_type t \
     JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1::oid";

/// Most catalog types kept per pool.
const MAX_TYPES: usize = 4096;

/// Why something sent on a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// PostgreSQL's error for what was sent; the session goes on unless
    /// the error was FATAL.
    #[error("{}", .0.message)]
    Db(Box<DbFields>),
    /// The session broke: I/O, closed by the server, a message out of
    /// place. It is not reused.
    #[error(transparent)]
    Lost(#[from] ServerError),
}

impl SessionError {
    /// PostgreSQL's error fields, if PostgreSQL sent the error.
    pub fn as_db_error(&self) -> Option<&DbFields> {
        match self {
            SessionError::Db(db) => Some(db),
            SessionError::Lost(_) => None,
        }
    }
}

/// A tenant's pool on one instance, as the HTTP front end uses it. Cheap
/// to clone.
#[derive(Clone)]
pub struct Pool {
    raw: RawPool,
    cfg: Arc<PoolConfig>,
    /// Catalog types by OID (see [`TYPE_SQL`]).
    types: Arc<Mutex<HashMap<u32, Type>>>,
}

impl Pool {
    /// A pool for `dsn` (key/value or URL form), with a budget of its
    /// own. Opens no connection.
    pub fn new(dsn: &str, cfg: PoolConfig) -> Result<Pool, PoolError> {
        let (pg, tls) =
            shardline_tls::pg::parse_dsn(dsn).map_err(|e| PoolError::InvalidDsn(e.to_string()))?;
        Ok(Self::from_config(pg, tls, cfg, None))
    }

    /// A pool for connection settings parsed already, e.g. a shard's DSN
    /// with another user and password; with `budget`, its connections
    /// count against that budget (else one of `max_size` of its own).
    /// Opens no connection.
    pub fn from_config(
        mut pg: tokio_postgres::Config,
        tls: PgTls,
        cfg: PoolConfig,
        budget: Option<Arc<ConnBudget>>,
    ) -> Pool {
        if let Some(t) = cfg.statement_timeout {
            let setting = format!("-c statement_timeout={}", t.as_millis().max(1));
            let options = match pg.get_options() {
                Some(existing) if !existing.is_empty() => format!("{existing} {setting}"),
                _ => setting,
            };
            pg.options(&options);
        }
        let max = cfg.max_size.max(1);
        let raw = RawPool::new(
            pg,
            tls,
            RawPoolConfig {
                max_size: max,
                acquire_timeout: cfg.acquire_timeout,
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                health_check_after: cfg.health_check_after,
            },
            budget.unwrap_or_else(|| ConnBudget::new(max)),
        );
        Pool {
            raw,
            cfg: Arc::new(cfg),
            types: Arc::default(),
        }
    }

    /// The sessions, as the wire front end borrows them.
    pub fn raw(&self) -> &RawPool {
        &self.raw
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Whether both handles are of the same pool.
    pub fn ptr_eq(&self, other: &Pool) -> bool {
        self.raw.ptr_eq(&other.raw)
    }

    /// A session: an idle one if any is healthy, else a new one when
    /// under `max_size`, else the first one freed within
    /// `acquire_timeout`.
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        let conn = self.raw.get().await?;
        Ok(PooledConn {
            conn: Some(conn),
            pool: self.clone(),
            busy: false,
            discard: false,
            lost: false,
        })
    }

    /// Closes idle sessions older than `idle_timeout`; `get` skips such
    /// sessions anyway, and this also frees them when the pool sees no
    /// traffic.
    pub fn reap_idle(&self) {
        self.raw.reap_idle(std::time::Instant::now());
    }

    /// Refuses new `get`s (waiting ones fail with [`PoolError::Closed`])
    /// and closes the idle sessions; sessions in use close when dropped.
    pub fn close(&self) {
        self.raw.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.raw.is_closed()
    }

    /// Current numbers for metrics.
    pub fn stats(&self) -> PoolStats {
        self.raw.stats()
    }

    fn known_type(&self, oid: u32) -> Option<Type> {
        Type::from_oid(oid).or_else(|| {
            let types = self.types.lock().unwrap_or_else(PoisonError::into_inner);
            types.get(&oid).cloned()
        })
    }

    fn learn_type(&self, ty: &Type) {
        let mut types = self.types.lock().unwrap_or_else(PoisonError::into_inner);
        if types.len() >= MAX_TYPES {
            types.clear();
        }
        types.insert(ty.oid(), ty.clone());
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN (and its password) stays out of logs.
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A session on loan from a [`Pool`].
///
/// Code that runs statements on it directly ([`batch_execute`]
/// (Self::batch_execute)) must leave no session state behind (no open
/// transaction, no `SET`), or call [`discard`](Self::discard).
pub struct PooledConn {
    // `Some` until dropped.
    conn: Option<RawConn>,
    pool: Pool,
    busy: bool,
    discard: bool,
    /// The session's stream can no longer be read in step with what was
    /// sent (an I/O error, or an answer left half read): nothing more is
    /// sent on it.
    lost: bool,
}

impl PooledConn {
    fn session(&self) -> &ServerConn {
        &self
            .conn
            .as_ref()
            .expect("a PooledConn holds its session until dropped")
            .conn
    }

    fn session_mut(&mut self) -> &mut ServerConn {
        &mut self
            .conn
            .as_mut()
            .expect("a PooledConn holds its session until dropped")
            .conn
    }

    /// Sends whole messages; a session that cannot take them is broken.
    pub(super) async fn send(&mut self, out: &[u8]) -> Result<(), SessionError> {
        if self.lost {
            return Err(lost_before());
        }
        let sent = self.session_mut().send(out).await;
        sent.map_err(|e| self.lost(e))
    }

    /// Reads one message; a session that cannot give one is broken.
    pub(super) async fn read(&mut self) -> Result<Frame, SessionError> {
        if self.lost {
            return Err(lost_before());
        }
        let read = self.session_mut().read().await;
        read.map_err(|e| self.lost(e))
    }

    fn lost(&mut self, e: ServerError) -> SessionError {
        self.discard = true;
        self.lost = true;
        SessionError::Lost(e)
    }

    /// Marks the session's stream as out of step with what was sent.
    pub(super) fn set_lost(&mut self) {
        self.discard = true;
        self.lost = true;
    }

    /// Whether the session's stream is out of step (see
    /// [`set_lost`](Self::set_lost)); it is also [broken](Self::is_broken).
    pub(super) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Reads to `ReadyForQuery`: the first error PostgreSQL sent, if any
    /// (a FATAL one breaks the session).
    pub(super) async fn read_to_ready(&mut self) -> Result<(), SessionError> {
        let mut failed = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'E' if failed.is_none() => failed = Some(self.db_error(&f.body)),
                b'Z' => return failed.map_or(Ok(()), Err),
                _ => {}
            }
        }
    }

    /// PostgreSQL's error; a FATAL one breaks the session.
    pub(super) fn db_error(&mut self, body: &[u8]) -> SessionError {
        let db = DbFields::parse(body);
        if db.is_fatal() {
            self.discard = true;
        }
        SessionError::Db(Box::new(db))
    }

    /// Closes, with the next request, the statements the cache dropped.
    pub(super) fn put_closes(&mut self, out: &mut BytesMut) {
        for name in self.session_mut().statements.take_closes() {
            frontend::close(b'S', &name, out).expect("a statement name has no NUL");
        }
    }

    /// Runs `sql` (one or more statements, simple protocol) and reads to
    /// its end; the first error PostgreSQL sent, if any.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.lost(ServerError::Io(e)))?;
        self.send(&out).await?;
        self.read_to_ready().await
    }

    /// A prepared statement for `sql`, from this session's cache or
    /// newly prepared and described (and cached, evicting the least
    /// recently used).
    pub async fn prepare_cached(&mut self, sql: &str) -> Result<Arc<Described>, SessionError> {
        if let Some(d) = self.session_mut().statements.get(sql) {
            return Ok(d);
        }
        let name = self.session_mut().statements.next_name();
        let mut out = BytesMut::new();
        self.put_closes(&mut out);
        frontend::parse(&name, sql, std::iter::empty(), &mut out)
            .map_err(|e| self.lost(ServerError::Io(e)))?;
        frontend::describe(b'S', &name, &mut out).expect("a statement name has no NUL");
        frontend::sync(&mut out);
        self.send(&out).await?;
        let (mut param_oids, mut columns, mut failed) = (Vec::new(), Vec::new(), None);
        loop {
            let f = self.read().await?;
            match f.tag {
                b't' => param_oids = parameter_oids(&f.body).map_err(|e| self.lost(e.into()))?,
                b'T' => columns = row_columns(&f.body).map_err(|e| self.lost(e.into()))?,
                b'E' if failed.is_none() => failed = Some(self.db_error(&f.body)),
                b'Z' => break,
                _ => {}
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let mut params = Vec::with_capacity(param_oids.len());
        for oid in param_oids {
            params.push(self.type_of(oid, 0).await?);
        }
        let mut typed = Vec::with_capacity(columns.len());
        for (column, oid) in columns {
            typed.push((column, self.type_of(oid, 0).await?));
        }
        let d = Arc::new(Described {
            name,
            params,
            columns: typed,
        });
        let capacity = self.pool.cfg.statement_cache_capacity;
        self.session_mut()
            .statements
            .insert(sql, Arc::clone(&d), capacity);
        Ok(d)
    }

    /// The type `oid` names: a built-in one, or one read from the
    /// catalog (`depth` bounds the nesting of domains and arrays).
    fn type_of(
        &mut self,
        oid: u32,
        depth: u8,
    ) -> Pin<Box<dyn Future<Output = Result<Type, SessionError>> + Send + '_>> {
        Box::pin(async move {
            if let Some(ty) = self.pool.known_type(oid) {
                return Ok(ty);
            }
            let row = self.catalog_row(oid).await?;
            let [name, typtype, base, elem, schema] = row;
            let oid_of = |s: &str| s.parse::<u32>().unwrap_or(0);
            let nested = depth < 4;
            let kind = match typtype.as_str() {
                "e" => Kind::Enum(Vec::new()),
                "p" => Kind::Pseudo,
                "d" if nested && oid_of(&base) != 0 => {
                    Kind::Domain(self.type_of(oid_of(&base), depth + 1).await?)
                }
                "b" if nested && oid_of(&elem) != 0 => {
                    Kind::Array(self.type_of(oid_of(&elem), depth + 1).await?)
                }
                _ => Kind::Simple,
            };
            let ty = Type::new(name, oid, kind, schema);
            self.pool.learn_type(&ty);
            Ok(ty)
        })
    }

    /// `pg_type`'s row for `oid` (see [`TYPE_SQL`]), in text; a type
    /// not there is named by its OID.
    async fn catalog_row(&mut self, oid: u32) -> Result<[String; 5], SessionError> {
        let mut out = BytesMut::new();
        frontend::parse("", TYPE_SQL, [Type::TEXT.oid()], &mut out)
            .map_err(|e| self.lost(ServerError::Io(e)))?;
        let value = oid.to_string();
        bind_text(&mut out, "", &[Some(value.as_str())]);
        frontend::execute("", 0, &mut out).expect("the unnamed portal");
        frontend::sync(&mut out);
        self.send(&out).await?;
        let mut row = [
            value,
            "b".into(),
            "0".into(),
            "0".into(),
            "pg_catalog".into(),
        ];
        let mut failed = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'D' => {
                    let values = data_row(&f.body).map_err(|e| self.lost(e.into()))?;
                    for (slot, v) in row.iter_mut().zip(values) {
                        if let Some(v) = v {
                            *slot = String::from_utf8_lossy(v).into_owned();
                        }
                    }
                }
                b'E' if failed.is_none() => failed = Some(self.db_error(&f.body)),
                b'Z' => return failed.map_or(Ok(row), Err),
                _ => {}
            }
        }
    }

    /// States `version` (the catalog version of the routing table the
    /// request was routed by) in the session's `shardline.map_version`,
    /// as a claim when the pool has a claim key (see
    /// [`shardline_core::fence`]), with a round trip only when it differs
    /// from what the session last stated. Shards fenced by a resharding
    /// refuse writes from sessions behind the fence (see the manager's
    /// `reshard::sql::set_fence`).
    pub async fn set_map_version(&mut self, version: u64) -> Result<(), SessionError> {
        if self.session().map_version == version {
            return Ok(());
        }
        self.busy = true;
        let value = match &self.pool.cfg.claim_key {
            Some(key) => claim(key, self.session().cancel.pid, version),
            None => version.to_string(),
        };
        self.batch_execute(&set_claim_sql(&value)).await?;
        self.busy = false;
        let session = self.session_mut();
        session.map_version = version;
        session.claim = Some(value);
        Ok(())
    }

    /// Whether this pool resets sessions (see [`SESSION_RESET`]).
    pub fn resets_sessions(&self) -> bool {
        self.pool.cfg.reset_sessions
    }

    /// Prepares [`SESSION_RESET_CHECK`] on this session unless it is
    /// already (one round trip, once per session), so that a reset can
    /// then go out in a request's round trip. Not inside a failed
    /// transaction.
    pub async fn prepare_reset(&mut self) -> Result<(), SessionError> {
        if self.session().reset_check {
            return Ok(());
        }
        self.prepare_text(RESET_CHECK_NAME, SESSION_RESET_CHECK)
            .await?;
        self.session_mut().reset_check = true;
        Ok(())
    }

    /// Prepares [`NAMING`] on this session unless it is already (one
    /// round trip, once per session); [`put_naming`](Self::put_naming)
    /// then names the session within a request's round trip.
    pub async fn prepare_naming(&mut self) -> Result<(), SessionError> {
        if self.session().naming {
            return Ok(());
        }
        self.prepare_text(NAMING_NAME, NAMING).await?;
        self.session_mut().naming = true;
        Ok(())
    }

    /// Prepares `sql`, of one text parameter, as `name`.
    async fn prepare_text(&mut self, name: &str, sql: &str) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        frontend::parse(name, sql, [Type::TEXT.oid()], &mut out)
            .map_err(|e| self.lost(ServerError::Io(e)))?;
        frontend::sync(&mut out);
        self.send(&out).await?;
        self.read_to_ready().await
    }

    /// Appends [`NAMING`] of `name` without a `Sync`: the statement
    /// written behind it shares its implicit transaction (a failure of
    /// either undoes both) and its round trip. Read its answer with
    /// [`read_naming`](Self::read_naming) before the statement's.
    pub(super) fn put_naming(&mut self, out: &mut BytesMut, name: &str) {
        bind_text(out, NAMING_NAME, &[Some(name)]);
        frontend::execute("", 0, out).expect("the unnamed portal");
    }

    /// Reads [`NAMING`]'s answer, up to its `CommandComplete`. On its
    /// error PostgreSQL skips the rest up to the `Sync`, which is read
    /// too: the statement behind it did not run.
    pub(super) async fn read_naming(&mut self) -> Result<(), SessionError> {
        loop {
            let f = self.read().await?;
            match f.tag {
                b'C' => return Ok(()),
                b'E' => {
                    let e = self.db_error(&f.body);
                    self.read_to_ready().await?;
                    return Err(e);
                }
                b'Z' => {
                    self.set_lost();
                    return Err(lost_before());
                }
                _ => {}
            }
        }
    }

    /// Appends the reset: [`SESSION_RESET`], then [`SESSION_RESET_CHECK`]
    /// restoring the session's claim. Written behind a request's last
    /// statement, it shares that statement's round trip; read its answer
    /// with [`read_reset`](Self::read_reset) once the statement's is
    /// read. Call [`prepare_reset`](Self::prepare_reset) first.
    pub(super) fn put_reset(&mut self, out: &mut BytesMut) {
        frontend::query(SESSION_RESET, out).expect("a constant without NUL");
        let claim = self.session().claim.clone().unwrap_or_default();
        bind_text(out, RESET_CHECK_NAME, &[Some(claim.as_str())]);
        frontend::execute("", 0, out).expect("the unnamed portal");
        frontend::sync(out);
    }

    /// Reads the reset's answer: whether the session holds prepared
    /// statements made from SQL.
    pub(super) async fn read_reset(&mut self) -> Result<bool, SessionError> {
        self.read_to_ready().await?;
        let mut from_sql = None;
        let mut failed = None;
        loop {
            let f = self.read().await?;
            match f.tag {
                b'D' => {
                    let values = data_row(&f.body).map_err(|e| self.lost(e.into()))?;
                    from_sql = values
                        .get(2)
                        .copied()
                        .flatten()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
                }
                b'E' if failed.is_none() => failed = Some(self.db_error(&f.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(from_sql.is_none_or(|n| n > 0)),
        }
    }

    /// Records a reset's outcome: a session that failed its reset, or
    /// holds prepared statements made from SQL, is in no known state and
    /// is not reused.
    pub fn reset_done(&mut self, outcome: Result<bool, SessionError>) {
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                tracing::debug!("a request left prepared statements; discarding the connection");
                self.discard();
            }
            Err(e) => {
                tracing::debug!(error = %e, "session reset failed; discarding the connection");
                self.discard();
            }
        }
    }

    /// Resets the session now, on its own round trip (a request that
    /// did not send the reset with its statement finds afterwards that
    /// it should have: its keyspace was marked as holding code
    /// meanwhile).
    pub async fn reset(&mut self) {
        self.busy = true;
        if let Err(e) = self.prepare_reset().await {
            self.busy = false;
            self.reset_done(Err(e));
            return;
        }
        let mut out = BytesMut::new();
        self.put_reset(&mut out);
        let outcome = match self.send(&out).await {
            Ok(()) => self.read_reset().await,
            Err(e) => Err(e),
        };
        self.busy = false;
        self.reset_done(outcome);
    }

    /// The resharding fence of the database this session is in (see
    /// [`FENCE_VERSION_SQL`]; 0: none).
    pub async fn fence_version(&mut self) -> Result<u64, SessionError> {
        let stmt = self.prepare_cached(FENCE_VERSION_SQL).await?;
        self.busy = true;
        let mut out = BytesMut::new();
        self.put_closes(&mut out);
        bind_text(&mut out, &stmt.name, &[]);
        frontend::execute("", 0, &mut out).expect("the unnamed portal");
        frontend::sync(&mut out);
        self.send(&out).await?;
        let (mut fence, mut failed) = (0i64, None);
        loop {
            let f = self.read().await?;
            match f.tag {
                b'D' => {
                    let values = data_row(&f.body).map_err(|e| self.lost(e.into()))?;
                    fence = values
                        .first()
                        .copied()
                        .flatten()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(0);
                }
                b'E' if failed.is_none() => failed = Some(self.db_error(&f.body)),
                b'Z' => break,
                _ => {}
            }
        }
        self.busy = false;
        match failed {
            Some(e) => Err(e),
            None => Ok(fence.max(0) as u64),
        }
    }

    /// The `shardline.map_version` this session last set (0: never).
    pub fn map_version(&self) -> u64 {
        self.session().map_version
    }

    /// Forgets the cached statement for `sql` (e.g. after PostgreSQL said
    /// its result type changed); it is closed with the next request.
    pub fn evict_statement(&mut self, sql: &str) {
        self.session_mut().statements.remove(sql);
    }

    /// Statements in this session's cache.
    pub fn cached_statements(&self) -> usize {
        self.session().statements.len()
    }

    /// Where a cancel request for this session goes.
    pub fn cancel_key(&self) -> Arc<CancelKey> {
        Arc::clone(&self.session().cancel)
    }

    /// Marks that a statement or transaction is under way. A session
    /// dropped while busy is closed (and its statement cancelled), never
    /// reused.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// Closes the session when dropped instead of returning it.
    pub fn discard(&mut self) {
        self.discard = true;
    }

    /// Whether the session broke or is marked for discarding.
    pub fn is_broken(&self) -> bool {
        self.discard
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.busy {
            // Cancelled mid-work: stop the statement now; closing the
            // session ends any open transaction.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let key = conn.conn.cancel.clone();
                rt.spawn(async move {
                    let _ = send_cancel(&key).await;
                });
            }
            return;
        }
        if self.discard {
            return;
        }
        self.pool.raw.put(conn);
    }
}

/// The error for using a session that was lost before.
fn lost_before() -> SessionError {
    SessionError::Lost(ServerError::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the session was lost before",
    )))
}

/// Appends a `Bind` of the unnamed portal to `statement` with text
/// parameters, asking for text results.
fn bind_text(out: &mut BytesMut, statement: &str, values: &[Option<&str>]) {
    put_bind(
        out,
        statement,
        0,
        values.iter().map(|v| v.map(str::as_bytes)),
    );
}

/// Appends a `Bind` of the unnamed portal to `statement` with parameters
/// already encoded in `format` (0 text, 1 binary), asking for results in
/// the same format.
pub(super) fn put_bind<'a, I>(out: &mut BytesMut, statement: &str, format: i16, values: I)
where
    I: IntoIterator<Item = Option<&'a [u8]>>,
    I::IntoIter: ExactSizeIterator,
{
    frontend::bind(
        "",
        statement,
        [format],
        values,
        |v, buf| match v {
            Some(v) => {
                buf.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        [format],
        out,
    )
    .map_err(|_| ())
    .expect("encoded parameters always bind");
}

/// The parameter type OIDs of a `ParameterDescription`.
fn parameter_oids(body: &[u8]) -> std::io::Result<Vec<u32>> {
    let mut f = Fields::new(body);
    // Counts are unsigned: up to 65,535 parameters.
    let n = f.i16()? as u16;
    (0..n).map(|_| f.i32().map(|oid| oid as u32)).collect()
}

/// Each column's name and type OID from a `RowDescription`.
fn row_columns(body: &[u8]) -> std::io::Result<Vec<(String, u32)>> {
    let mut f = Fields::new(body);
    let n = f.i16()? as u16;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let name = f.cstr()?.to_string();
        // Table OID, column number, then the type OID; then the type's
        // size and modifier and the format.
        f.bytes(6)?;
        let oid = f.i32()? as u32;
        f.bytes(8)?;
        out.push((name, oid));
    }
    Ok(out)
}

/// The values of a `DataRow` (`None`: NULL).
pub(super) fn data_row(body: &[u8]) -> std::io::Result<Vec<Option<&[u8]>>> {
    let mut f = Fields::new(body);
    let n = f.i16()? as u16;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = f.i32()?;
        out.push(match usize::try_from(len) {
            Ok(len) => Some(f.bytes(len)?),
            Err(_) => None,
        });
    }
    Ok(out)
}

/// The rows a `CommandComplete` tag counts (`INSERT 0 3`, `UPDATE 2`,
/// `SELECT 5`); 0 for tags without a count.
pub(super) fn tag_rows(body: &[u8]) -> u64 {
    let tag = body.split(|&b| b == 0).next().unwrap_or_default();
    std::str::from_utf8(tag)
        .ok()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_row_descriptions_rows_and_tags() {
        let mut body = BytesMut::new();
        body.extend_from_slice(&2i16.to_be_bytes());
        for (name, oid) in [("id", 20u32), ("v", 25)] {
            frontend_cstr(&mut body, name);
            body.extend_from_slice(&[0; 6]);
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&[0; 8]);
        }
        assert_eq!(
            row_columns(&body).unwrap(),
            vec![("id".to_string(), 20), ("v".to_string(), 25)]
        );
        assert!(row_columns(&body[..body.len() - 1]).is_err());

        let mut row = BytesMut::new();
        row.extend_from_slice(&2i16.to_be_bytes());
        row.extend_from_slice(&(-1i32).to_be_bytes());
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"ab");
        assert_eq!(data_row(&row).unwrap(), vec![None, Some(&b"ab"[..])]);
        assert!(data_row(&row[..row.len() - 1]).is_err());

        assert_eq!(tag_rows(b"INSERT 0 3\0"), 3);
        assert_eq!(tag_rows(b"UPDATE 12\0"), 12);
        assert_eq!(tag_rows(b"CREATE TABLE\0"), 0);
        assert_eq!(parameter_oids(&[0, 1, 0, 0, 0, 23]).unwrap(), vec![23]);
        // 65,535 parameters: the count is unsigned.
        let mut many = vec![0xff, 0xff];
        many.extend(std::iter::repeat_n([0, 0, 0, 23], 65_535).flatten());
        assert_eq!(parameter_oids(&many).unwrap().len(), 65_535);
    }

    fn frontend_cstr(out: &mut BytesMut, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&[0]);
    }

    #[test]
    fn the_type_query_and_the_reset_check_take_text() {
        // Both are prepared with one text parameter.
        assert!(TYPE_SQL.contains("$1::oid") && !TYPE_SQL.contains("$2"));
        assert!(SESSION_RESET_CHECK.contains("$1") && !SESSION_RESET_CHECK.contains("$2"));
    }
}
