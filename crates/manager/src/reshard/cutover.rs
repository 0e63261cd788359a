//! Cutover (steps a-e of the design): sources refuse the moving keys,
//! the moving traffic is held, routers acknowledge (or their lease runs
//! out), the last changes are applied and verified, then one catalog
//! write publishes the new owners. Until that write nothing is lost by
//! stopping: the traffic is released and the sources take writes again.
//! The order of the steps is the same for every kind of job; what each
//! step does to hold, verify and publish is the kind's [`Strategy`].

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::baseline;
use super::copy;
use super::fence;
use super::job::{Ctx, JobError, Plan};
use super::publish;
use super::strategy::Strategy;
use crate::failpoints::{failpoint, FAILPOINT_DURING_CUTOVER};
use shardline_core::catalog::ReshardPhase;

/// Cutover, steps a-e. A transient failure before the publish puts the
/// job back in CatchUp with the traffic released.
pub(super) async fn run<K: Strategy>(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
) -> Result<(), JobError> {
    match steps::<K>(cx, plan, token).await {
        Err(e) if e.retryable() => {
            abort::<K>(cx, plan).await;
            Err(JobError::CutoverAborted(Box::new(e)))
        }
        Err(JobError::Stopped) if !cx.jobs.is_cancelling(&plan.job.id) => {
            // Shutting down: do not keep writes blocked meanwhile.
            abort::<K>(cx, plan).await;
            Err(JobError::Stopped)
        }
        other => other,
    }
}

async fn steps<K: Strategy>(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
) -> Result<(), JobError> {
    let id = &plan.job.id;
    let started = Instant::now();
    // Every moving row compared before the freeze, so that only the
    // rows changed since are compared while writes are held.
    let mut base = baseline::baseline(cx, plan, token).await?;
    let seen = K::verify(cx, plan, baseline::Stage::Before(&base)).await?;
    base.keep_sums(seen);
    tracing::info!(job = %id, ms = started.elapsed().as_millis() as u64,
        "cutover: baseline verified");
    // a. Nothing can change a moving row on a source from now on.
    fence::refuse_moving(cx, plan).await?;
    tracing::info!(job = %id, "cutover: sources refuse moving keys");
    // b. Routers hold requests for the moving ranges (or tenant).
    let version = K::hold(cx, plan, true).await?;
    let frozen_at = Instant::now();
    tracing::info!(job = %id, version, "cutover: ranges frozen");
    failpoint(FAILPOINT_DURING_CUTOVER);
    // c. Every live router has that catalog, or its lease ran out.
    publish::wait_for_routers(cx, plan, version, token).await?;
    tracing::info!(job = %id, waited_ms = frozen_at.elapsed().as_millis() as u64,
        "cutover: routers acknowledged");
    // Only a router cut off from the manager routes by an older
    // catalog now: the sources refuse all its writes from here on.
    fence::fence_sources(cx, plan, version).await?;
    // d. The last changes, then verification.
    copy::apply_changes(cx, plan, token, true, Some(&mut base.changed)).await?;
    tracing::info!(job = %id, at_ms = frozen_at.elapsed().as_millis() as u64,
        "cutover: last changes applied");
    let verified = K::verify(cx, plan, baseline::Stage::Held(&base))
        .await?
        .parts;
    tracing::info!(job = %id, checks = verified.len(),
        at_ms = frozen_at.elapsed().as_millis() as u64, "cutover: verified");
    // e. Publish.
    let pause = frozen_at.elapsed().as_millis() as u64;
    K::publish(cx, plan, verified, pause).await?;
    tracing::info!(job = %id, cutover_pause_ms = pause, "cutover: new map published");
    Ok(())
}

/// Puts a job back in CatchUp after a failed cutover: sources take
/// writes to the moving keys again, routers are released to them.
async fn abort<K: Strategy>(cx: &Ctx, plan: &Plan) {
    if let Err(e) = fence::restore_refuse(cx, plan).await {
        tracing::error!(job = %plan.job.id, error = ?e,
            "let the sources take writes to the moving ranges again; retried by the job");
    }
    if let Err(e) = K::hold(cx, plan, false).await {
        tracing::error!(job = %plan.job.id, error = ?e, "unfreeze the ranges");
    }
    if let Err(e) = cx
        .set_phase(&plan.job.id, ReshardPhase::Cutover, ReshardPhase::CatchUp)
        .await
    {
        tracing::error!(job = %plan.job.id, error = ?e, "put the job back in catch-up");
    }
}
