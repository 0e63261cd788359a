//! Where a routed request runs, and what happens when it cannot.
//!
//! - An `eventual` read (see [`crate::classify`]) goes to a replica the
//!   health feed vouches for ([`ShardTarget::pick_replica`]), taking
//!   turns. If the replica cannot be had or fails in a way a primary
//!   would not — SQLSTATE 25006 (it refused a write the classifier could
//!   not see), a recovery conflict, a lost connection — the read runs on
//!   the primary instead. Reads only, so running one twice is harmless.
//! - Everything else goes to the primary. While the catalog shows the
//!   shard failing over, or after the primary could not be connected
//!   (refused, timed out, closed: the statement was never sent), the
//!   request is held: it waits, at no cost, for a routing table with a
//!   new primary or the failover called off, up to `failover_hold`, then
//!   tries once more on the primary of the latest table — unless that
//!   table still shows the failover: a router that holds never writes to
//!   the primary being replaced. Failing, or still failing over, it is
//!   answered 503 `shard_unavailable` with `Retry-After`.
//! - A statement whose connection broke after it was sent is not run
//!   again if it may have written: it may have committed. Reads are, as
//!   is a statement the primary refused as read-only (25006) while the
//!   catalog shows a failover (a planned switchover has made the old
//!   primary read-only: nothing was written).
//! - Every session says which catalog version the request was routed by
//!   (`shardline.map_version`): a source a resharding cutover fenced
//!   refuses writes from sessions behind the fence (SQLSTATE `SLM01`).
//!   Reads meet no trigger, so while the manager has not answered for
//!   longer than its router lease (it may have cut over without this
//!   router) a read first checks the shard's fence, and is answered as a
//!   refused write when it is behind.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use shardline_api::router::StatementResult;
use shardline_api::ErrorCode;

use crate::auth::TenantAuth;
use crate::error::{Reason, RouterError};
use crate::pg::server::ServerError;
use crate::pg::{exec, from_pg_error, from_pool_error, PoolError, PooledConn, ResultLimits};
use crate::pools::{InstanceTarget, Role, ShardTarget};
use crate::state::{RouterContext, RoutingCell};

/// Work to run on one connection.
pub trait Job: Sync {
    type Output: Send;

    /// Runs the work on `conn`; with `reset`, the session is reset after
    /// it in the same round trip.
    fn run<'a>(
        &'a self,
        conn: &'a mut PooledConn,
        reset: bool,
    ) -> impl Future<Output = Result<Self::Output, RouterError>> + Send + 'a;
}

/// One statement.
pub struct Statement<'a> {
    pub sql: &'a str,
    pub params: &'a [Value],
    /// It only reads ([`crate::classify::is_read`]).
    pub read: bool,
    /// The request's id, which names the session it runs on.
    pub request_id: Option<&'a str>,
}

impl Job for Statement<'_> {
    type Output = StatementResult;

    fn run<'a>(
        &'a self,
        conn: &'a mut PooledConn,
        reset: bool,
    ) -> impl Future<Output = Result<StatementResult, RouterError>> + Send + 'a {
        exec::execute_with(
            conn,
            self.sql,
            self.params,
            self.read,
            &ResultLimits::DEFAULT,
            reset,
            self.request_id,
        )
    }
}

/// A transaction (its errors carry the failing statement's index).
pub struct Transaction<'a> {
    pub statements: &'a [(String, Vec<Value>)],
    /// The request's id, which names the session it runs on.
    pub request_id: Option<&'a str>,
}

impl Job for Transaction<'_> {
    type Output = Vec<StatementResult>;

    async fn run(
        &self,
        conn: &mut PooledConn,
        reset: bool,
    ) -> Result<Vec<StatementResult>, RouterError> {
        exec::transaction_with(
            conn,
            self.statements,
            &ResultLimits::DEFAULT,
            reset,
            self.request_id,
        )
        .await
        .map_err(|(_, e)| e)
    }
}

/// What the request is, for choosing where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Every statement only reads.
    pub read: bool,
    /// The client accepts a replica's possibly older data.
    pub eventual: bool,
    /// No statement's text can change the session by itself (see
    /// [`crate::classify::may_change_session`]): unless its keyspace may
    /// hold code, the session needs no reset after it.
    pub session_clean: bool,
}

/// Why an attempt on one instance failed.
enum Failure {
    /// No connection: nothing was sent.
    Acquire(PoolError),
    /// The statement failed; `broken` if its connection did too.
    Statement { error: RouterError, broken: bool },
}

/// Runs `job` for `tenant` on the shard of `target` (see the module
/// docs); `cell` is the live routing table, watched while held.
/// `version` is the catalog version of the routing table that chose the
/// shard: each session says it to PostgreSQL (`shardline.map_version`),
/// so a shard fenced by a later resharding refuses the write.
#[allow(clippy::too_many_arguments)]
pub async fn run<J: Job>(
    cell: &RoutingCell,
    ctx: &RouterContext,
    target: Arc<ShardTarget>,
    version: u64,
    keyspace: &str,
    tenant: &TenantAuth,
    job: &J,
    plan: Plan,
) -> Result<J::Output, RouterError> {
    let at = At {
        tenant,
        version,
        read: plan.read,
        check_fence: plan.read && ctx.contact.cut_off(),
        keyspace,
        session_clean: plan.session_clean,
        cell,
        ctx,
    };
    if !plan.read && ctx.contact.cut_off() {
        // Past its lease the manager may have promoted a replica without
        // this router's word: writes stop until the manager answers
        // again (reads go on, checking the resharding fence).
        return Err(Reason::CutOff.into());
    }
    if plan.read && plan.eventual {
        if let Some(out) = on_replica(ctx, &target, at, job).await? {
            return Ok(out);
        }
    }
    on_primary(cell, ctx, target, at, job, plan).await
}

/// Who runs a job, by which routing table's version, and whether to
/// check the shard's resharding fence first (reads while the manager has
/// not answered for longer than a lease; writes meet the fence anyway).
#[derive(Clone, Copy)]
struct At<'a> {
    tenant: &'a TenantAuth,
    version: u64,
    /// Every statement only reads.
    read: bool,
    check_fence: bool,
    keyspace: &'a str,
    session_clean: bool,
    cell: &'a RoutingCell,
    ctx: &'a RouterContext,
}

impl At<'_> {
    /// Whether the session must be reset after the job: its text could
    /// change the session, or its keyspace may hold code that could (by
    /// the latest routing table; a router cut off from the manager for
    /// longer than its lease cannot know, and assumes it may).
    fn needs_reset(&self) -> bool {
        !self.session_clean || self.code_possible()
    }

    fn code_possible(&self) -> bool {
        self.ctx.contact.cut_off()
            || self
                .cell
                .get()
                .keyspaces
                .get(self.keyspace)
                .is_none_or(|k| k.tenant_code)
    }
}

/// Runs a read on a usable replica; `None` when there is none or it
/// failed in a way the primary may not (the caller then uses the
/// primary).
async fn on_replica<J: Job>(
    ctx: &RouterContext,
    target: &ShardTarget,
    at: At<'_>,
    job: &J,
) -> Result<Option<J::Output>, RouterError> {
    let Some(view) = ctx.health.fresh(Instant::now()) else {
        return Ok(None);
    };
    let Some(replica) = target.pick_replica(&view, ctx.max_replica_lag).cloned() else {
        return Ok(None);
    };
    match attempt(&replica, at, job).await {
        Ok(out) => {
            ctx.metrics
                .replica_reads
                .with(&[&target.id, &replica.id])
                .inc();
            Ok(Some(out))
        }
        Err(Failure::Acquire(e)) => {
            tracing::debug!(shard = %target.id, instance = %replica.id, error = %e, "replica unavailable; reading from the primary");
            Ok(None)
        }
        Err(Failure::Statement { error, .. }) if replica_only_failure(&error) => {
            tracing::debug!(shard = %target.id, instance = %replica.id, code = error.code().as_str(), sqlstate = ?error.sqlstate(), "read failed on a replica; reading from the primary");
            Ok(None)
        }
        Err(Failure::Statement { error, .. }) => Err(error),
    }
}

/// Whether a read's failure on a replica is the replica's, not the
/// statement's: a primary might well run it.
fn replica_only_failure(e: &RouterError) -> bool {
    match e.code() {
        // 25006 (read-only), lost connections, shutdowns, and recovery
        // conflicts (40001/40P01 on a standby).
        ErrorCode::ShardUnavailable | ErrorCode::Unavailable | ErrorCode::TransactionConflict => {
            true
        }
        _ => false,
    }
}

async fn on_primary<J: Job>(
    cell: &RoutingCell,
    ctx: &RouterContext,
    mut target: Arc<ShardTarget>,
    at: At<'_>,
    job: &J,
    plan: Plan,
) -> Result<J::Output, RouterError> {
    let mut held = false;
    if target.failover.is_some() {
        target = hold(cell, ctx, &target.id, &target.primary, true).await?;
        held = true;
    }
    loop {
        let primary = Arc::clone(&target.primary);
        let failure = match attempt(&primary, at, job).await {
            Ok(out) => return Ok(out),
            Err(f) => f,
        };
        let again = !held
            && match &failure {
                Failure::Acquire(e) => is_connection_failure(e),
                // A read is sent again when its connection broke under
                // it, not when the router closed it on purpose after a
                // client's error (a result past the limits: 400).
                Failure::Statement { error, broken } => {
                    (plan.read && *broken && error.retryable())
                        || (error.is_read_only() && failing_over(cell, &target.id, &primary))
                }
            };
        if !again {
            return Err(match failure {
                Failure::Acquire(e) if held && is_connection_failure(&e) => {
                    Reason::PrimaryUnreachable {
                        shard: target.id.clone(),
                    }
                    .into()
                }
                Failure::Acquire(e) => from_pool_error(&e),
                Failure::Statement { error, .. } => error,
            });
        }
        target = hold(cell, ctx, &target.id, &primary, false).await?;
        held = true;
    }
}

/// Whether the live table shows `shard` failing over, or with another
/// primary than `primary`.
fn failing_over(cell: &RoutingCell, shard: &str, primary: &Arc<InstanceTarget>) -> bool {
    cell.get()
        .shards
        .get(shard)
        .is_some_and(|t| t.failover.is_some() || !Arc::ptr_eq(&t.primary, primary))
}

/// Waits, up to `failover_hold`, for a table where `shard` is not
/// failing over and either has another primary than `failed` or had its
/// failover called off (`saw_failover`: the caller saw one under way).
/// Returns the shard's target in the latest table either way.
async fn hold(
    cell: &RoutingCell,
    ctx: &RouterContext,
    shard: &str,
    failed: &Arc<InstanceTarget>,
    mut saw_failover: bool,
) -> Result<Arc<ShardTarget>, RouterError> {
    let deadline = tokio::time::Instant::now() + ctx.failover_hold;
    let mut tables = cell.subscribe();
    let mut waited = false;
    loop {
        let routing = Arc::clone(&tables.borrow_and_update());
        let Some(target) = routing.shards.get(shard).cloned() else {
            return Err(Reason::ShardNotInCatalog {
                shard: shard.to_string(),
            }
            .into());
        };
        saw_failover |= target.failover.is_some();
        let settled =
            target.failover.is_none() && (saw_failover || !Arc::ptr_eq(&target.primary, failed));
        if settled {
            if waited {
                ctx.metrics.held.with(&[shard, "resumed"]).inc();
            }
            return Ok(target);
        }
        if !waited {
            tracing::debug!(
                shard,
                failover = target.failover.is_some(),
                "holding a request for the shard's primary"
            );
            waited = true;
        }
        match tokio::time::timeout_at(deadline, tables.changed()).await {
            Ok(Ok(())) => {}
            // Out of time, or the table is never changing again.
            Ok(Err(_)) | Err(_) => {
                ctx.metrics.held.with(&[shard, "timed_out"]).inc();
                let latest = cell.get().shards.get(shard).cloned().unwrap_or(target);
                if latest.failover.is_some() {
                    // Never onto the primary of an open intent: this
                    // router told the manager it holds, and the manager
                    // may promote the target at any moment; a write the
                    // old primary took now could be lost with it.
                    return Err(Reason::FailoverTimedOut {
                        shard: shard.to_string(),
                        hold: ctx.failover_hold,
                    }
                    .into());
                }
                return Ok(latest);
            }
        }
    }
}

/// Whether a failure to get a connection means the server could not be
/// reached (rather than being busy or refusing our login).
pub fn is_connection_failure(e: &PoolError) -> bool {
    match e {
        PoolError::ConnectTimeout(_) | PoolError::Closed => true,
        PoolError::Connect(source) => match source {
            // Shutting down, starting up, in recovery; connection errors.
            ServerError::Refused(db) => db.code.starts_with("57P") || db.code.starts_with("08"),
            // Refused, reset, closed: no PostgreSQL error at all.
            _ => true,
        },
        PoolError::Timeout(_) | PoolError::InvalidDsn(_) | PoolError::BudgetExhausted(_) => false,
    }
}

/// One attempt on one instance.
async fn attempt<J: Job>(inst: &InstanceTarget, at: At<'_>, job: &J) -> Result<J::Output, Failure> {
    let mut conn = acquire(inst, at.tenant).await.map_err(Failure::Acquire)?;
    if let Err(e) = conn.set_map_version(at.version).await {
        return Err(Failure::Statement {
            error: from_pg_error(&e),
            broken: true,
        });
    }
    if at.check_fence {
        match conn.fence_version().await {
            Ok(fence) if fence > at.version => {
                return Err(Failure::Statement {
                    error: fenced(fence, at.version),
                    broken: false,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Failure::Statement {
                    error: from_pg_error(&e),
                    broken: conn.is_broken(),
                })
            }
        }
    }
    let reset = at.needs_reset();
    let primary = inst.role == Role::Primary;
    let result = if primary {
        // A failover fencing this primary cancels the statement: the
        // future is dropped mid-statement, and the connection, busy,
        // cancels it and closes when dropped.
        // So does the router's lease running out under a write: past it
        // the manager may promote a replica without this router's word,
        // so no write of this router may still run (or be answered 200)
        // on the primary it knows.
        tokio::select! {
            biased;
            () = inst.fenced() => return Err(fenced_primary(inst, &mut conn)),
            () = at.ctx.contact.until_cut_off(), if !at.read => {
                return Err(lease_ran_out(&mut conn))
            }
            r = job.run(&mut conn, reset) => r,
        }
    } else {
        job.run(&mut conn, reset).await
    };
    if primary && inst.is_fenced() && !at.read {
        // Done, but after the fence: the manager may promote a replica
        // that never got this write. Not a success.
        return Err(fenced_primary(inst, &mut conn));
    }
    if primary && !at.read && at.ctx.contact.cut_off() {
        return Err(lease_ran_out(&mut conn));
    }
    // The manager marks a keyspace as holding code, and waits for every
    // router to have that catalog, before a migration creates any: a
    // job that ran without a reset while that happened is reset now.
    if !reset && !conn.is_broken() && conn.resets_sessions() && at.code_possible() {
        conn.reset().await;
    }
    match result {
        Ok(out) => Ok(out),
        Err(error) => Err(Failure::Statement {
            broken: conn.is_broken(),
            error,
        }),
    }
}

/// The answer for a request whose statement ran on a primary a failover
/// fenced (see [`InstanceTarget::fence`]): retryable, its connection
/// closed. A write's outcome is unknown: it may have committed on the
/// old primary before the cancel reached it.
fn fenced_primary(inst: &InstanceTarget, conn: &mut PooledConn) -> Failure {
    conn.discard();
    Failure::Statement {
        error: Reason::PrimaryFenced {
            shard: inst.shard.clone(),
            primary: inst.id.clone(),
        }
        .into(),
        broken: true,
    }
}

/// The answer for a write still running, or done, when the router's
/// lease ran out (see [`crate::state::Contact::cut_off`]): retryable, its connection
/// closed (which cancels a running statement); the outcome is unknown.
fn lease_ran_out(conn: &mut PooledConn) -> Failure {
    conn.discard();
    Failure::Statement {
        error: Reason::LeaseRanOut.into(),
        broken: true,
    }
}

/// The answer for a read the shard's fence refuses: moved, as the
/// source's own refusal of a write (SQLSTATE `SLM01`), so the caller
/// holds it for a newer routing table.
fn fenced(fence: u64, version: u64) -> RouterError {
    Reason::Resharded { fence, version }.into()
}

/// A connection to `inst` as the tenant's role. A pool the reaper
/// closed between lookup and use is replaced once.
pub async fn acquire(inst: &InstanceTarget, tenant: &TenantAuth) -> Result<PooledConn, PoolError> {
    let mut retried = false;
    loop {
        let pool = inst.pool_for(tenant);
        match pool.get().await {
            Ok(conn) => return Ok(conn),
            Err(PoolError::Closed) if !retried && !inst.is_closed() => retried = true,
            Err(e) => return Err(e),
        }
    }
}
