//! One strategy per kind of job ([`super::state::Kind`]): what differs
//! between a split/merge/move of ranges, a tenant moving out to a
//! keyspace of its own and a tenant moving back. The engine runs the
//! phases every kind shares (capture, copy, catch-up, the baseline, the
//! cutover's order of steps) and calls the strategy where the kinds
//! differ.

use std::collections::BTreeMap;
use std::future::Future;

use tokio_util::sync::CancellationToken;

use super::baseline::{Stage, Verified};
use super::job::{Ctx, JobError, Plan};

/// What a kind of job does in each phase. Every step is idempotent: a
/// manager that resumes a job runs it again.
pub(super) trait Strategy {
    /// Prepare: every target ready for the rows of the tenants that move
    /// (databases, roles, migrations).
    fn prepare(cx: &Ctx, plan: &Plan) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Cutover step b: routers hold the traffic that moves (or, with
    /// `held` false, are released to the sources); the catalog version
    /// routers must reach.
    fn hold(
        cx: &Ctx,
        plan: &Plan,
        held: bool,
    ) -> impl Future<Output = Result<u64, JobError>> + Send;

    /// Sources and targets compared at `stage`; while held, the targets
    /// first made ready to own the rows (sequences, refuse triggers).
    fn verify(
        cx: &Ctx,
        plan: &Plan,
        stage: Stage<'_>,
    ) -> impl Future<Output = Result<Verified, JobError>> + Send;

    /// Cutover step e: the one catalog write that gives the moved rows
    /// their new owners and puts the job in Cleanup.
    fn publish(
        cx: &Ctx,
        plan: &Plan,
        verified: BTreeMap<String, String>,
        pause_ms: u64,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Cleanup: the moved data removed from the sources (checked once
    /// more against what the cutover verified), then Done.
    fn cleanup(
        cx: &Ctx,
        plan: &Plan,
        token: &CancellationToken,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Undo before a publish: what the job copied to the targets removed.
    fn undo_targets(cx: &Ctx, plan: &Plan) -> impl Future<Output = Result<(), JobError>> + Send;
}
