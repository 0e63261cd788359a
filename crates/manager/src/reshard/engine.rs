//! The driver of a job: runs it phase by phase, each persisted before
//! its work and idempotent, with the strategy of its kind; settles the
//! outcome (retry after a pause, or fail); undoes a job that has not
//! published (cancel, failure).
//!
//! Phases: Prepare → Copy → CatchUp → Cutover → Cleanup → Done, or
//! Cancelled / Failed. Shared phases are in [`super::copy`] and
//! [`super::cutover`]; what differs by kind in [`super::ranges`],
//! [`super::tenant_out`] and [`super::tenant_back`].

use std::time::Instant;

use shardline_core::catalog::{ReshardJob, ReshardPhase};
use tokio_util::sync::CancellationToken;

use super::copy;
use super::cutover;
use super::fence;
use super::job::{check, db, Ctx, JobError, Plan};
use super::publish;
use super::ranges::Ranges;
use super::sql;
use super::state::Kind;
use super::strategy::Strategy;
use super::tenant_back::TenantBack;
use super::tenant_out::TenantOut;
use crate::failpoints::{failpoint, FAILPOINT_AFTER_COPY};

/// Runs a job until it ends or stops, and settles the outcome.
pub(super) async fn drive_and_settle(cx: &Ctx, id: &str, token: &CancellationToken) {
    match drive(cx, id, token).await {
        Ok(()) => {
            cx.jobs.succeeded(id);
            cx.update_progress(id, |p| p.last_error = None);
        }
        Err(JobError::Stopped) => {}
        Err(e) => {
            let msg = e.to_string();
            // Past the publish nothing can be undone: the job can only
            // finish, so it keeps trying whatever the error (the
            // operator sees it in `last_error`), unless the moved rows
            // themselves no longer match.
            let published = !matches!(e, JobError::Mismatch(_))
                && cx
                    .fresh_job(id)
                    .await
                    .is_ok_and(|j| j.phase == ReshardPhase::Cleanup);
            if e.retryable() || published {
                tracing::warn!(job = %id, error = %msg, "resharding step failed; retrying");
                cx.update_progress(id, |p| p.last_error = Some(msg));
                retry_later(cx, id);
                return;
            }
            tracing::error!(job = %id, error = %msg, "resharding job fails");
            if let Err(e) = fail(cx, id, &msg).await {
                tracing::warn!(job = %id, error = %e, "record the failure; retrying");
                retry_later(cx, id);
            }
        }
    }
}

/// Runs the job again after `retry_interval`.
fn retry_later(cx: &Ctx, id: &str) {
    cx.jobs.retry_after(id, cx.settings.retry_interval);
}

async fn drive(cx: &Ctx, id: &str, token: &CancellationToken) -> Result<(), JobError> {
    let job = cx.fresh_job(id).await?;
    match Kind::of(&job) {
        Kind::Ranges => drive_as::<Ranges>(cx, id, token).await,
        Kind::TenantOut => drive_as::<TenantOut>(cx, id, token).await,
        Kind::TenantBack => drive_as::<TenantBack>(cx, id, token).await,
    }
}

async fn drive_as<K: Strategy>(
    cx: &Ctx,
    id: &str,
    token: &CancellationToken,
) -> Result<(), JobError> {
    loop {
        check(token)?;
        let job = cx.fresh_job(id).await?;
        cx.show_phase(id, job.phase);
        let plan = Plan::load(&cx.svc, &job)?;
        let started = Instant::now();
        tracing::info!(job = %id, phase = ?job.phase, "phase starts");
        match job.phase {
            ReshardPhase::Prepare => {
                prepare::<K>(cx, &plan).await?;
                cx.set_phase(id, ReshardPhase::Prepare, ReshardPhase::Copy)
                    .await?;
            }
            ReshardPhase::Copy => {
                copy::copy(cx, &plan, token).await?;
                failpoint(FAILPOINT_AFTER_COPY);
                cx.set_phase(id, ReshardPhase::Copy, ReshardPhase::CatchUp)
                    .await?;
            }
            ReshardPhase::CatchUp => {
                copy::catch_up(cx, &plan, token).await?;
                cx.set_phase(id, ReshardPhase::CatchUp, ReshardPhase::Cutover)
                    .await?;
            }
            ReshardPhase::Cutover => cutover::run::<K>(cx, &plan, token).await?,
            ReshardPhase::Cleanup => K::cleanup(cx, &plan, token).await?,
            ReshardPhase::Done | ReshardPhase::Cancelled | ReshardPhase::Failed => return Ok(()),
        }
        tracing::info!(job = %id, phase = ?job.phase,
            elapsed_ms = started.elapsed().as_millis() as u64, "phase done");
    }
}

/// Prepare: the targets ready (by kind), capture installed on the
/// sources.
async fn prepare<K: Strategy>(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
    // Not beside a tenant's creation or deletion.
    let _work = cx.svc.lock_tenant_work().await;
    K::prepare(cx, plan).await?;
    copy::install_capture(cx, plan).await
}

/// Undoes a job that has not published and ends it in `phase`
/// (Cancelled or Failed) with `error`.
pub(super) async fn undo_and_end(
    cx: &Ctx,
    job: &ReshardJob,
    phase: ReshardPhase,
    error: Option<String>,
) -> Result<(), JobError> {
    let plan = Plan::load(&cx.svc, job)?;
    match Kind::of(job) {
        Kind::Ranges => undo::<Ranges>(cx, &plan).await?,
        Kind::TenantOut => undo::<TenantOut>(cx, &plan).await?,
        Kind::TenantBack => undo::<TenantBack>(cx, &plan).await?,
    }
    publish::finish_undone(cx, job, phase, error).await?;
    Ok(())
}

/// Undoes a job that has not published: capture and change table
/// dropped, refuse triggers back to the old map, what was copied to the
/// targets removed.
async fn undo<K: Strategy>(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
    fence::restore_refuse(cx, plan).await?;
    for source in plan.sources() {
        for tenant in &plan.tenants {
            let Some(src) = cx.tenant_db(plan, &source, tenant).await? else {
                continue;
            };
            for meta in cx.metas(plan, &src, &source, tenant, true).await? {
                sql::drop_capture(&src, &meta).await.map_err(db(&source))?;
            }
            sql::drop_change_table(&src).await.map_err(db(&source))?;
        }
    }
    K::undo_targets(cx, plan).await
}

/// A fatal error: before the publish, undo and fail; after it, fail
/// (the new owners have the rows; the source keeps its copy).
async fn fail(cx: &Ctx, id: &str, msg: &str) -> Result<(), JobError> {
    let job = cx.fresh_job(id).await?;
    if job.phase < ReshardPhase::Cleanup {
        undo_and_end(cx, &job, ReshardPhase::Failed, Some(msg.to_string())).await
    } else {
        publish::mark_failed(cx, id, msg).await
    }
}
