//! One client's wire session after login: transaction pooling.
//!
//! A server session of the tenant's role is lent to the client for one
//! transaction (or one statement outside a transaction) and given back
//! when the server reports it idle, so many clients share few server
//! sessions. What a client's session holds that a server session must
//! not keep for the next client is kept here and put on whichever server
//! session serves it next:
//! - its shard key (`SET shardline.shard_key`, answered by the router),
//! - its session settings (`SET x = ...` outside a transaction, and
//!   startup parameters such as `TimeZone`), sent again before each
//!   transaction, the server session being reset after it,
//! - its prepared statements (protocol `Parse` with a name), prepared
//!   again on a server session that lacks them under a name derived from
//!   their text (see [`super::messages`]).
//!
//! Where a statement goes ([`Session::choose`]): the key of a comment
//! `/* shardline.shard_key='k' */` first, then the keys the statement
//! names for its tables' shard-key columns, then `SET LOCAL
//! shardline.shard_key`, then the session's `SET shardline.shard_key`.
//! A statement with no key that only reads the system catalogs (psql's
//! `\d`, drivers' type look-ups) runs on any shard of the keyspace; any
//! other is refused with SQLSTATE `0A000` and a hint. A lone `BEGIN` is
//! answered by the router and sent with the transaction's first keyed
//! statement, whose shard the transaction is then pinned to: a
//! statement for another shard inside it is refused and leaves the
//! transaction failed, as PostgreSQL would.
//!
//! # Layout
//! - this file: the session's state, its loop, and the client's messages.
//! - [`route`]: keys, the shard they name, attaching a server session.
//! - [`relay`]: batches rewritten for the server, its answers relayed,
//!   the session given back.
//! - [`merge`]: keyless reads run on every shard.
//! - [`split`]: an `INSERT`'s rows split over shards.
//! - [`copy`]: `COPY` without a key, rows split or concatenated.
//! - [`sqlprep`]: SQL `PREPARE`/`EXECUTE`/`DEALLOCATE`.
//! - [`aside`]: describing statements before a transaction's first.

mod aside;
mod copy;
mod merge;
mod relay;
mod route;
mod split;
mod sqlprep;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use shardline_api::router::ShardKeyValue;

use super::analyze::{Analysis, Kind};
use super::codec::{self, ClientIo, WireError};
use super::messages::{self, Bind, Parse};
use super::WireShared;
use crate::auth::{Admission, AppAuth};
use crate::pg::frame::Frame;
use crate::pg::rawpool::{RawConn, RawPool};
use crate::pg::server::{send_cancel, CancelKey, ServerError};
use relay::{read_server, rewrite_batch};
use route::{changes_session, is_read, no_key_error, raise_sql};

/// Prepared statements one server session keeps (least recently used
/// closed beyond).
const STATEMENTS_PER_SERVER: usize = 256;

/// How long past the tenant's `statement_timeout` the router waits
/// before cancelling a statement itself.
const OVERDUE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A future a session keeps across its loop's turns, so it is set up
/// once (a timer entry, a waiter on a fence) rather than at every turn.
type Watch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Completes when `watch` does (never when `None`).
async fn watched(watch: Option<&mut Watch>) {
    match watch {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Completes when `fence` is cancelled.
fn fence_watch(fence: &tokio_util::sync::CancellationToken) -> Watch {
    Box::pin(fence.clone().cancelled_owned())
}

/// Completes when the router counts itself cut off from the manager.
fn lease_watch(ctx: &Arc<crate::state::RouterContext>) -> Watch {
    let ctx = Arc::clone(ctx);
    Box::pin(async move { ctx.contact.until_cut_off().await })
}

/// Messages a client may send before a `Sync` or `Flush`.
const MAX_BATCH: usize = 10_000;

/// A portal name no client uses: closing it is a no-op the server
/// answers with `CloseComplete`.
const NO_PORTAL: &str = "shardline_none";

/// What brings a server session back to how the pool gave it out after
/// a client changed it (settings, role, temporary objects, listens,
/// advisory locks, prepared statements). Its prepared statements go too:
/// a client that could change the session could also have deallocated
/// the router's statements or prepared others under their names (the
/// next client would run those); they are prepared again when needed.
const RESET: &str = "CLOSE ALL; RESET ALL; RESET ROLE; UNLISTEN *; DISCARD TEMP; \
     DISCARD SEQUENCES; DEALLOCATE ALL; SELECT pg_catalog.pg_advisory_unlock_all()";
/// A client's `Bind` or `Describe` of a statement it has not prepared:
/// refused here, since the server session may hold a statement of that
/// name prepared for another client.
fn unknown_statement(name: &str) -> WireError {
    WireError::error(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

/// Why a session ended other than by the client's `Terminate`.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("client connection: {0}")]
    Client(#[from] std::io::Error),
    #[error("server connection: {0}")]
    Server(#[from] ServerError),
    #[error("{}", .0.message)]
    Fatal(WireError),
}

/// A bound portal: its statement's text and analysis, and parameters.
/// Shared (`Arc`) between the batch's portal and its executions.
struct Run {
    analysis: Arc<Analysis>,
    /// The statement's `Parse` (its text) and the portal's `Bind` (its
    /// parameters).
    parse: Arc<Parse>,
    bind: Bind,
    bind_body: Bytes,
}

impl Run {
    fn text(&self) -> &str {
        &self.parse.query
    }
}

/// A prepared statement of the client's.
struct ClientStatement {
    parse: Arc<Parse>,
    server_name: String,
    analysis: Arc<Analysis>,
}

/// What the server is answering, oldest first.
#[derive(Default)]
struct Pending {
    /// Sent by the router itself: its answers are not the client's.
    injected: bool,
    /// What to do with each `ParseComplete`/`CloseComplete` to come.
    rewrites: VecDeque<Rewrite>,
    /// Statements prepared in this exchange and not yet confirmed.
    unconfirmed: Vec<String>,
    /// Session settings to keep if the exchange succeeds.
    sets: Vec<String>,
    /// The exchange resets every session setting (`RESET ALL`, ...).
    clears_sets: bool,
    failed: bool,
    /// Ended by `Sync` or a simple query (a `ReadyForQuery` will come).
    closed: bool,
    /// `CommandComplete`s of statements the router put before the
    /// client's in the same query (a SQL `PREPARE`): not the client's.
    drop_tags: usize,
    /// The statement confirmed prepared once those are dropped.
    confirm_on_tag: Option<String>,
    /// When the client's exchange was sent (for its duration metric).
    started: Option<std::time::Instant>,
    /// The router's own error, raised on the server to fail its
    /// transaction: the client gets this, not the server's report of it
    /// (which names a PL/pgSQL block and a source line).
    raised: Option<WireError>,
}

enum Rewrite {
    Keep,
    /// Pass on; the statement it prepared is confirmed.
    Confirm(String),
    /// Not the client's: drop (confirming a statement, if any).
    Drop(Option<String>),
    /// A no-op `Close` standing for a `Parse` the server needed not
    /// run: answered as `ParseComplete`.
    AsParseComplete,
}

/// A server session lent to this client.
struct Attached {
    conn: RawConn,
    pool: RawPool,
    shard: String,
    /// The primary's instance id, and its fence being cancelled (see
    /// [`route::Opened`]).
    primary: String,
    fence: Watch,
    /// The router's lease running out, watched once `writes` is set.
    lease: Option<Watch>,
    /// A statement that may write was sent: the router's lease running
    /// out ends the session (the manager may promote without this
    /// router's word).
    writes: bool,
    /// `ReadyForQuery` status: `I`, `T` or `E`.
    status: u8,
    pending: VecDeque<Pending>,
    /// The session was changed: reset it before giving it back.
    dirty: bool,
    /// The exchange (by its start) whose statement the router cancelled
    /// for running past its time.
    cancelled: Option<std::time::Instant>,
    _admission: Admission,
}

/// A statement being run, for choosing where.
struct Exec<'a> {
    sql: &'a str,
    analysis: &'a Analysis,
    params: Option<&'a [(i16, Option<Bytes>)]>,
}

/// Where a batch goes.
enum Choice {
    /// The session attached now.
    Here,
    /// A shard: by a key (routed again when held), or any shard for
    /// statements that touch no tenant data.
    Shard {
        shard: String,
        key: Option<ShardKeyValue>,
    },
    /// Every shard, merged (a keyless read; see [`super::fanout`]).
    FanOut,
    /// An `INSERT` whose rows go to several shards: each shard gets the
    /// statement with its own rows (see [`split`]).
    Split(Vec<split::Part>),
    /// A `COPY` of a sharded table with no key (see [`copy`]).
    Copy,
}

pub struct Session {
    pub(super) shared: Arc<WireShared>,
    pub(super) io: ClientIo,
    pub(super) app: Arc<AppAuth>,
    pub(super) keyspace: String,
    /// Where cancel requests for this session go now.
    pub(super) cancel: Arc<Mutex<Option<Arc<CancelKey>>>>,
    /// Session settings from startup, then the client's `SET`s.
    pub(super) sets: Vec<String>,
    statements: HashMap<String, ClientStatement>,
    /// SQL-level `PREPARE`d statements, by name.
    sql_statements: HashMap<String, sqlprep::SqlStatement>,
    /// The unnamed statement: its `Parse` and analysis.
    unnamed: Option<(Arc<Parse>, Arc<Analysis>)>,
    /// `SET shardline.shard_key` and `SET LOCAL shardline.shard_key`.
    session_key: Option<String>,
    local_key: Option<String>,
    /// A `BEGIN` the router answered, to send with the first statement.
    pending_begin: Option<String>,
    /// The transaction of `pending_begin` failed in the router.
    local_failed: bool,
    attached: Option<Attached>,
    batch: Vec<Frame>,
    /// After an error in an extended batch: drop messages to `Sync`.
    skip_to_sync: bool,
    /// A keyless `COPY FROM STDIN` under way on every shard.
    copy_in: Option<copy::CopyIn>,
    /// The last server session's (empty) exchange list, kept for the next
    /// one's: no allocation per transaction.
    spare_pending: VecDeque<Pending>,
}

impl Session {
    pub(super) fn new(
        shared: Arc<WireShared>,
        io: ClientIo,
        app: Arc<AppAuth>,
        keyspace: String,
        cancel: Arc<Mutex<Option<Arc<CancelKey>>>>,
        sets: Vec<String>,
    ) -> Self {
        Self {
            shared,
            io,
            app,
            keyspace,
            cancel,
            sets,
            statements: HashMap::new(),
            sql_statements: HashMap::new(),
            unnamed: None,
            session_key: None,
            local_key: None,
            pending_begin: None,
            local_failed: false,
            attached: None,
            batch: Vec::new(),
            skip_to_sync: false,
            copy_in: None,
            spare_pending: VecDeque::new(),
        }
    }

    /// Serves the client until it leaves.
    pub async fn run(mut self) -> Result<(), SessionEnd> {
        let out = self.serve().await;
        if let Some(a) = self.attached.take() {
            // Left in the middle of something: the server session may be
            // running a statement or hold a transaction. Closed, never
            // reused; its statement cancelled.
            if !a.pending.is_empty() {
                let key = a.conn.conn.cancel.clone();
                tokio::spawn(async move {
                    let _ = send_cancel(&key).await;
                });
            }
        }
        self.set_cancel(None);
        if let Err(SessionEnd::Fatal(e)) = &out {
            // Told, as PostgreSQL tells a session it ends (best effort:
            // the client may be gone).
            self.io.queue(&e.frame());
            let _ = self.io.flush().await;
        }
        out
    }

    async fn serve(&mut self) -> Result<(), SessionEnd> {
        // The timer for overdue statements is armed at the deadline of
        // the exchange under way, or of an earlier one: deadlines only
        // move later, and a timer that fires early is armed again. So it
        // is set once per time limit, not once per exchange.
        let mut overdue = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
        let mut armed = false;
        loop {
            self.release_if_idle();
            if !armed {
                if let Some(at) = self.overdue_at() {
                    overdue.as_mut().reset(at);
                    armed = true;
                }
            }
            if let Some(a) = self.attached.as_mut() {
                if a.writes && a.lease.is_none() {
                    a.lease = Some(lease_watch(&self.shared.ctx));
                }
            }
            let (fence, lease, server) = match self.attached.as_mut() {
                Some(a) => (Some(&mut a.fence), a.lease.as_mut(), Some(&mut a.conn)),
                None => (None, None, None),
            };
            let attached = server.is_some();
            let writes = lease.is_some();
            tokio::select! {
                biased;
                // Before any answer of the server is relayed: nothing it
                // answers after the fence reaches the client.
                () = watched(fence), if attached => return Err(self.end_fenced(false)),
                () = watched(lease), if writes => return Err(self.end_fenced(true)),
                r = read_server(server), if attached => {
                    let f = r?;
                    self.on_server(f).await?;
                }
                () = &mut overdue, if armed => {
                    armed = false;
                    if self
                        .overdue_at()
                        .is_some_and(|at| at <= tokio::time::Instant::now())
                    {
                        self.cancel_overdue();
                    }
                }
                r = self.io.read() => {
                    match r? {
                        None => return Ok(()),
                        Some(f) => {
                            if !self.on_client(f).await? {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ends the client's session when the server session it is attached
    /// to, on a primary, may no longer answer it: a failover began to
    /// replace that primary (`lease` false), or the router's lease ran out
    /// under a write (the manager may promote without this router's
    /// word). Whatever the server session was running is cancelled and
    /// the session closed, never reused; the client is told its statement
    /// or transaction may or may not have taken effect, as a PostgreSQL
    /// failover would tell it (the connection ends), and reconnects.
    fn end_fenced(&mut self, lease: bool) -> SessionEnd {
        let Some(a) = self.attached.take() else {
            return SessionEnd::Fatal(WireError::fatal("57P01", "terminating connection"));
        };
        let key = a.conn.conn.cancel.clone();
        tokio::spawn(async move {
            let _ = send_cancel(&key).await;
        });
        let why = if lease {
            "this router has not heard from the manager for longer than its lease".to_string()
        } else {
            format!(
                "shard {}'s primary {} is being replaced by a failover",
                a.shard, a.primary
            )
        };
        tracing::info!(shard = %a.shard, primary = %a.primary, lease,
            "a wire session on a fenced primary ended");
        drop(a);
        SessionEnd::Fatal(WireError::fatal(
            "57P01",
            format!(
                "terminating connection: {why}; a statement or transaction in progress may or \
                 may not have taken effect; reconnect and retry"
            ),
        ))
    }

    /// When the statement the server is running passes its time: the
    /// tenant's `statement_timeout` and a grace, or the router's
    /// `request_timeout` if sooner. A client may lift its own
    /// `statement_timeout` (`SET statement_timeout = 0`); the router
    /// still cancels the statement then, as the HTTP front end ends a
    /// request, so no client keeps a server session busy past the limit.
    fn overdue_at(&self) -> Option<tokio::time::Instant> {
        let ctx = &self.shared.ctx;
        let limit = ctx
            .pools
            .base
            .statement_timeout
            .map_or(ctx.request_timeout, |t| {
                (t + OVERDUE_GRACE).min(ctx.request_timeout)
            });
        let a = self.attached.as_ref()?;
        let started = a.pending.iter().find(|p| !p.injected)?.started?;
        if a.cancelled == Some(started) {
            return None;
        }
        Some(tokio::time::Instant::from_std(
            started + limit + OVERDUE_GRACE,
        ))
    }

    /// Cancels the attached server session's statement (once per
    /// exchange).
    fn cancel_overdue(&mut self) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        a.cancelled = a
            .pending
            .iter()
            .find(|p| !p.injected)
            .and_then(|p| p.started);
        let key = a.conn.conn.cancel.clone();
        tracing::info!(shard = %a.shard, "a wire statement ran past its time limit; cancelled");
        tokio::spawn(async move {
            if let Err(e) = send_cancel(&key).await {
                tracing::debug!(error = %e, "cancel an overdue statement");
            }
        });
    }

    fn set_cancel(&self, key: Option<Arc<CancelKey>>) {
        *self.cancel.lock().unwrap_or_else(PoisonError::into_inner) = key;
    }

    fn status(&self) -> u8 {
        match (&self.attached, &self.pending_begin) {
            (Some(a), _) => a.status,
            (None, Some(_)) if self.local_failed => b'E',
            (None, Some(_)) => b'T',
            (None, None) => b'I',
        }
    }

    fn in_transaction(&self) -> bool {
        self.status() != b'I' || self.pending_begin.is_some()
    }

    /// Handles one client message; `false` when the client said goodbye.
    async fn on_client(&mut self, f: Frame) -> Result<bool, SessionEnd> {
        match f.tag {
            // While a keyless COPY runs, Flush and Sync mean nothing.
            b'H' | b'S' if self.copy_in.is_some() => {}
            b'Q' => self.on_query(f).await?,
            b'P' | b'B' | b'D' | b'C' | b'E' => {
                if self.batch.len() >= MAX_BATCH {
                    return Err(SessionEnd::Fatal(WireError::fatal(
                        "54000",
                        format!("more than {MAX_BATCH} messages without Sync or Flush"),
                    )));
                }
                self.batch.push(f);
            }
            b'H' | b'S' => {
                let sync = f.tag == b'S';
                self.batch.push(f);
                self.on_batch(sync).await?;
            }
            b'd' | b'c' | b'f' if self.copy_in.is_some() => self.on_copy_in(f).await?,
            // COPY FROM STDIN data goes where the COPY runs.
            b'd' | b'c' | b'f' => {
                if let Some(a) = &mut self.attached {
                    let mut out = BytesMut::new();
                    f.encode(&mut out);
                    a.conn.conn.send(&out).await?;
                }
            }
            b'X' => return Ok(false),
            b'F' => {
                self.answer_error(
                    WireError::error("0A000", "the function call protocol is not supported"),
                    true,
                )
                .await?;
            }
            other => {
                return Err(SessionEnd::Fatal(WireError::fatal(
                    "08P01",
                    format!("invalid frontend message type {}", other as char),
                )))
            }
        }
        Ok(true)
    }

    /// Sends the router's own error; with `ready`, `ReadyForQuery`
    /// after it.
    async fn answer_error(&mut self, e: WireError, ready: bool) -> Result<(), SessionEnd> {
        self.app
            .metrics
            .request("postgres", &self.keyspace, "statement", "", "refused");
        if self.pending_begin.is_some() && self.attached.is_none() {
            self.local_failed = true;
        }
        self.io.queue(&e.frame());
        if ready {
            self.io.queue(&codec::ready(self.status()));
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Whether the keyspace may hold code that changes sessions (a
    /// router cut off from the manager cannot know, and assumes so).
    fn code_possible(&self) -> bool {
        self.shared.ctx.contact.cut_off()
            || self
                .shared
                .routing
                .get()
                .keyspaces
                .get(&self.keyspace)
                .is_none_or(|k| k.tenant_code)
    }

    fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let routing = self.shared.routing.get();
        let tables = routing.keyspaces.get(&self.keyspace).map(|k| &k.tables);
        let key_of = |t: &str| tables.and_then(|m| m.get(t).cloned());
        self.shared
            .analyses
            .get_or_analyze(sql, routing.version, &key_of)
    }

    async fn on_query(&mut self, f: Frame) -> Result<(), SessionEnd> {
        let sql = messages::query_text(&f.body)
            .map_err(|e| SessionEnd::Fatal(WireError::fatal("08P01", e.to_string())))?
            .to_string();
        let analysis = self.analyze(&sql);
        if let Some(p) = analysis.prepared.clone() {
            return self.on_sql_prepared(&sql, p).await;
        }
        if self.attached.is_none() {
            if sql.trim().is_empty() || analysis.parts.is_empty() {
                self.io.queue(&codec::empty(b'I'));
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
                return Ok(());
            }
            if let Some(tags) = self.answer_locally(&analysis.parts, &sql) {
                for t in tags {
                    self.io.queue(&codec::command_complete(&t));
                }
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
                return Ok(());
            }
        }
        self.note_shard_keys(&analysis.parts, analysis.clears_shard_key);
        let exec = Exec {
            sql: &sql,
            analysis: &analysis,
            params: None,
        };
        let choice = match self.choose(&[exec]) {
            Ok(Choice::FanOut) => return self.fan_out(&sql, &analysis).await,
            Ok(Choice::Split(parts)) => return self.split_insert(&sql, &analysis, parts).await,
            Ok(Choice::Copy) => {
                return match analysis.copy.as_ref() {
                    Some(spec) => self.copy(&sql, spec).await,
                    None => self.refuse(no_key_error(), true).await,
                }
            }
            Ok(c) => c,
            Err(e) => {
                self.opened_by(&analysis.parts);
                return self.refuse(e, true).await;
            }
        };
        let mut pending = Pending {
            closed: true,
            started: Some(std::time::Instant::now()),
            ..Pending::default()
        };
        self.track_sets(&analysis, &sql, &mut pending);
        let dirty = changes_session(&analysis, self.code_possible());
        if let Err(e) = self.go_to(choice, analysis.parts.iter().all(is_read)).await {
            self.opened_by(&analysis.parts);
            return self.refuse(e, true).await;
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        a.dirty |= dirty;
        a.pending.push_back(pending);
        let mut out = BytesMut::new();
        f.encode(&mut out);
        a.conn.conn.send(&out).await?;
        Ok(())
    }

    /// Tags of statements the router answers itself, if every one of
    /// `parts` is one (shard-key settings, and transaction control while
    /// no server session is attached).
    fn answer_locally(&mut self, parts: &[Kind], sql: &str) -> Option<Vec<String>> {
        let local = parts.iter().all(|k| {
            matches!(
                k,
                Kind::SetShardKey { .. } | Kind::Begin | Kind::Commit | Kind::Rollback
            )
        });
        if !local || (self.local_failed && !matches!(parts, [Kind::Commit | Kind::Rollback])) {
            return None;
        }
        let mut tags = Vec::new();
        for k in parts {
            match k {
                Kind::SetShardKey { value, local } => {
                    if *local {
                        self.local_key = value.clone();
                    } else {
                        self.session_key = value.clone();
                    }
                    tags.push(if value.is_some() { "SET" } else { "RESET" }.to_string());
                }
                Kind::Begin => {
                    if self.pending_begin.is_none() {
                        self.pending_begin = Some(sql.to_string());
                    }
                    tags.push("BEGIN".into());
                }
                Kind::Commit | Kind::Rollback => {
                    let failed = std::mem::take(&mut self.local_failed);
                    self.pending_begin = None;
                    self.local_key = None;
                    let commit = matches!(k, Kind::Commit) && !failed;
                    tags.push(if commit { "COMMIT" } else { "ROLLBACK" }.into());
                }
                _ => {}
            }
        }
        Some(tags)
    }

    /// A refused text that begins with `BEGIN` (`BEGIN; INSERT ...` in one
    /// query) leaves its transaction open and failed, as PostgreSQL leaves
    /// it when a statement after the `BEGIN` fails: the client must end it.
    fn opened_by(&mut self, parts: &[Kind]) {
        if self.attached.is_some() || self.pending_begin.is_some() {
            return;
        }
        let begins = parts
            .iter()
            .take_while(|k| matches!(k, Kind::Begin | Kind::SetShardKey { .. }))
            .any(|k| matches!(k, Kind::Begin));
        if begins {
            self.pending_begin = Some("BEGIN".into());
        }
    }

    /// Keeps the shard keys a text sets, when it is sent on to a server
    /// with other statements.
    /// `clears`: the text also runs `RESET ALL` or `DISCARD ALL`, which
    /// reset `shardline.shard_key` like any setting.
    fn note_shard_keys(&mut self, parts: &[Kind], clears: bool) {
        if clears {
            self.session_key = None;
            self.local_key = None;
        }
        for k in parts {
            if let Kind::SetShardKey { value, local } = k {
                if *local {
                    self.local_key = value.clone();
                } else {
                    self.session_key = value.clone();
                }
            }
        }
    }

    fn track_sets(&self, analysis: &Analysis, sql: &str, p: &mut Pending) {
        if let [Kind::Session] = analysis.parts.as_slice() {
            let t = sql.trim_start();
            let head: String = t.chars().take(16).collect::<String>().to_ascii_uppercase();
            if head.starts_with("SET ") && !head.starts_with("SET LOCAL") {
                if !self.in_transaction() {
                    p.sets.push(t.trim_end().trim_end_matches(';').to_string());
                }
            } else if head.starts_with("RESET ALL") || head.starts_with("DISCARD ALL") {
                p.clears_sets = true;
            }
        }
    }

    /// A refusal: in a transaction on a server, the server's transaction
    /// is failed too (by a statement that raises the same error), so a
    /// later `COMMIT` cannot commit what came before.
    async fn refuse(&mut self, e: WireError, ready: bool) -> Result<(), SessionEnd> {
        if let Some(a) = self.attached.as_mut() {
            if a.status != b'I' || !a.pending.is_empty() {
                let sql = raise_sql(&e);
                let mut out = BytesMut::new();
                postgres_protocol::message::frontend::query(&sql, &mut out)?;
                a.pending.push_back(Pending {
                    closed: true,
                    started: Some(std::time::Instant::now()),
                    raised: Some(e),
                    ..Pending::default()
                });
                a.conn.conn.send(&out).await?;
                return Ok(());
            }
        }
        self.answer_error(e, ready).await
    }

    async fn on_batch(&mut self, sync: bool) -> Result<(), SessionEnd> {
        let mut batch = std::mem::take(&mut self.batch);
        let out = self.run_batch(&batch, sync).await;
        // The list keeps its room for the next batch: no allocation per
        // exchange.
        batch.clear();
        if self.batch.is_empty() {
            self.batch = batch;
        }
        out
    }

    async fn run_batch(&mut self, batch: &[Frame], sync: bool) -> Result<(), SessionEnd> {
        if self.skip_to_sync {
            if sync {
                self.skip_to_sync = false;
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
            }
            return Ok(());
        }
        // First pass: statements and portals, to find the keys.
        // A batch binds few portals: a list beats a map.
        let mut portals: Vec<(String, Arc<Run>)> = Vec::new();
        let mut runs: Vec<Arc<Run>> = Vec::new();
        let bad = |e: std::io::Error| SessionEnd::Fatal(WireError::fatal("08P01", e.to_string()));
        for f in batch {
            match f.tag {
                b'P' => {
                    let p = Arc::new(Parse::read(&f.body).map_err(bad)?);
                    let analysis = self.analyze(&p.query);
                    if p.name.is_empty() {
                        self.unnamed = Some((p, analysis));
                    } else {
                        let server_name = p.server_name();
                        self.statements.insert(
                            p.name.clone(),
                            ClientStatement {
                                parse: p,
                                server_name,
                                analysis,
                            },
                        );
                    }
                }
                b'B' => {
                    let b = Bind::read(&f.body).map_err(bad)?;
                    if !b.statement.is_empty() && !self.statements.contains_key(&b.statement) {
                        return self
                            .refuse_batch(unknown_statement(&b.statement), sync)
                            .await;
                    }
                    let statement = if b.statement.is_empty() {
                        self.unnamed.clone()
                    } else {
                        self.statements
                            .get(&b.statement)
                            .map(|s| (Arc::clone(&s.parse), Arc::clone(&s.analysis)))
                    };
                    if let Some((parse, analysis)) = statement {
                        let run = Arc::new(Run {
                            analysis,
                            parse,
                            bind_body: f.body.clone(),
                            bind: b,
                        });
                        match portals
                            .iter_mut()
                            .find(|(name, _)| *name == run.bind.portal)
                        {
                            Some(slot) => slot.1 = run,
                            None => portals.push((run.bind.portal.clone(), run)),
                        }
                    }
                }
                b'D' => {
                    let (kind, name) = messages::target(&f.body).map_err(bad)?;
                    if kind == b'S' && !name.is_empty() && !self.statements.contains_key(&name) {
                        return self.refuse_batch(unknown_statement(&name), sync).await;
                    }
                }
                b'E' => {
                    let portal = messages::execute_portal(&f.body).map_err(bad)?;
                    if let Some((_, run)) = portals.iter().find(|(name, _)| *name == portal) {
                        runs.push(Arc::clone(run));
                    }
                }
                _ => {}
            }
        }
        let parts: Vec<Kind> = runs
            .iter()
            .flat_map(|r| r.analysis.parts.iter().cloned())
            .collect();
        if self.attached.is_none() && self.pending_begin.is_some() && Self::describes_only(batch) {
            return self.describe_aside(batch, sync).await;
        }
        if self.attached.is_none() {
            if batch.iter().all(|f| f.tag == b'S' || f.tag == b'H') {
                if sync {
                    self.io.queue(&codec::ready(self.status()));
                }
                self.io.flush().await?;
                return Ok(());
            }
            if !runs.is_empty() {
                let text = runs.first().map_or("", |r| r.text());
                if let Some(tags) = self.answer_locally(&parts, text) {
                    self.answer_batch_locally(batch, tags);
                    self.io.flush().await?;
                    return Ok(());
                }
            }
        }
        self.note_shard_keys(&parts, runs.iter().any(|r| r.analysis.clears_shard_key));
        let execs: Vec<Exec<'_>> = runs
            .iter()
            .map(|r| Exec {
                sql: r.text(),
                analysis: &r.analysis,
                params: Some(r.bind.params.as_slice()),
            })
            .collect();
        let choice = self.choose(&execs);
        let read = parts.iter().all(is_read);
        let mut pending = Pending {
            started: Some(std::time::Instant::now()),
            ..Pending::default()
        };
        let mut dirty = false;
        let code_possible = self.code_possible();
        for r in &runs {
            self.track_sets(&r.analysis, r.text(), &mut pending);
            dirty |= changes_session(&r.analysis, code_possible);
        }
        drop(execs);
        let choice = match choice {
            Ok(Choice::Copy) => {
                let e = WireError::error(
                    "0A000",
                    "a COPY without a shard key runs across shards only as a simple query",
                )
                .with_hint("SET shardline.shard_key = '...' to copy one shard's rows");
                return self.refuse_batch(e, sync).await;
            }
            Ok(Choice::Split(parts)) => {
                let describes_statement = batch
                    .iter()
                    .any(|f| f.tag == b'D' && f.body.first() == Some(&b'S'));
                return match runs.as_slice() {
                    [run] if sync && !describes_statement => {
                        self.split_insert_extended(batch, run, parts).await
                    }
                    _ => self.refuse_batch(split::extended_refusal(), sync).await,
                };
            }
            Ok(Choice::FanOut) => {
                return match runs.first() {
                    Some(run) if sync => self.fan_out_batch(batch, run).await,
                    _ => self.refuse_batch(no_key_error(), sync).await,
                };
            }
            Ok(c) => c,
            Err(e) => return self.refuse_batch(e, sync).await,
        };
        if let Err(e) = self.go_to(choice, read).await {
            return self.refuse_batch(e, sync).await;
        }
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        a.dirty |= dirty;
        let out = rewrite_batch(batch, &mut self.statements, a, &mut pending).map_err(bad)?;
        match a.pending.back_mut() {
            // A batch sent with `Flush` before: the same exchange.
            Some(open) if !open.closed && !open.injected => {
                open.rewrites.extend(pending.rewrites);
                open.unconfirmed.extend(pending.unconfirmed);
                open.sets.extend(pending.sets);
                open.clears_sets |= pending.clears_sets;
                open.closed = sync;
            }
            _ => {
                pending.closed = sync;
                a.pending.push_back(pending);
            }
        }
        a.conn.conn.send(&out).await?;
        Ok(())
    }

    async fn refuse_batch(&mut self, e: WireError, sync: bool) -> Result<(), SessionEnd> {
        if !sync {
            self.skip_to_sync = true;
        }
        self.refuse(e, sync).await
    }

    /// Answers an extended batch of statements the router handled: each
    /// message gets the answer PostgreSQL would give.
    fn answer_batch_locally(&mut self, batch: &[Frame], tags: Vec<String>) {
        let mut tags = tags.into_iter();
        for f in batch {
            match f.tag {
                b'P' => self.io.queue(&codec::empty(b'1')),
                b'B' => self.io.queue(&codec::empty(b'2')),
                b'C' => self.io.queue(&codec::empty(b'3')),
                b'D' => {
                    if f.body.first() == Some(&b'S') {
                        self.io.queue(&codec::parameter_description(&[]));
                    }
                    self.io.queue(&codec::empty(b'n'));
                }
                b'E' => {
                    let tag = tags.next().unwrap_or_else(|| "SET".into());
                    self.io.queue(&codec::command_complete(&tag));
                }
                b'S' => self.io.queue(&codec::ready(self.status())),
                _ => {}
            }
        }
    }
}
