//! Test-only fault injection, shared by the failover controller and the
//! resharding engine: with [`FAILPOINT_ENV`] naming a step, the manager
//! process aborts when it reaches that step, as a crash would, so tests
//! can check that a restarted manager resumes or rolls back. Never set it
//! in production.

/// Environment variable naming a failpoint.
pub const FAILPOINT_ENV: &str = "SHARDLINE_FAILPOINT";

/// Aborts the process if [`FAILPOINT_ENV`] names `name`.
pub fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting (test only)");
        std::process::abort();
    }
}

/// Failover: aborts once the intent is recorded, before the promotion.
pub const FAILPOINT_AFTER_INTENT: &str = "failover-after-intent";
/// Failover: aborts once the target is promoted, before the commit.
pub const FAILPOINT_AFTER_PROMOTE: &str = "failover-after-promote";
/// Resharding: aborts once the copy is complete, before CatchUp is
/// persisted.
pub const FAILPOINT_AFTER_COPY: &str = "reshard-after-copy";
/// Resharding: aborts in Copy, once the first batch of rows is on the
/// target.
pub const FAILPOINT_DURING_COPY: &str = "reshard-during-copy";
/// Resharding: aborts in CatchUp, after a batch of changes reached the
/// targets and before it is forgotten on the source (so it is applied
/// again).
pub const FAILPOINT_DURING_CATCHUP: &str = "reshard-during-catchup";
/// Resharding: aborts in the cutover, right after the ranges are frozen.
pub const FAILPOINT_DURING_CUTOVER: &str = "reshard-during-cutover";
/// Resharding: aborts in Cleanup, after the first batch of moved rows is
/// deleted from the source.
pub const FAILPOINT_DURING_CLEANUP: &str = "reshard-during-cleanup";
/// Resharding: aborts once the moved rows are deleted, before the job is
/// Done (and a source left without ranges released).
pub const FAILPOINT_AFTER_CLEANUP: &str = "reshard-after-cleanup";
