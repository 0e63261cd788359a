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
