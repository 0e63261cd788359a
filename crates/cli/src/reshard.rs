//! `shardline reshard ...`: online resharding jobs (split, merge, move,
//! and moving a tenant to its own keyspace), their status and cancellation, and a live progress line while one
//! runs.
//!
//! The progress goes to stderr, so stdout keeps only the job (text or
//! `--json`). On a terminal it is a bar redrawn every poll
//! ([`crate::progress`]); to a pipe or a file it is written as plain
//! lines, only when the phase changes or every few seconds, so logs stay
//! readable.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use shardline_api::manager::{JobInfo, ReshardKind, ReshardPhase, ReshardRequest};
use shardline_client::{ClientError, ManagerClient};

use crate::admin::print_json;
use crate::endpoints::Endpoints;
use crate::table::{details, render};

/// How often a followed job is polled (and its line redrawn).
const POLL: Duration = Duration::from_millis(500);

/// How often a plain (non-terminal) progress line is written when the
/// phase stays the same.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// How long the manager may stay unreachable while a job is followed
/// (it may be restarting: the job resumes when it is back).
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);

/// Width of the progress bar, in cells.
const BAR: usize = 24;

/// `shardline reshard ...`
#[derive(Debug, Subcommand)]
pub enum ReshardCmd {
    /// Split a shard's range: the shard keeps the lowest part, the new
    /// shards take the next parts
    Split {
        /// The shard whose range is split
        #[arg(long)]
        shard: String,
        /// Registered shards taking the upper parts, in order (comma-separated)
        #[arg(long, value_delimiter = ',', required = true)]
        into: Vec<String>,
        /// Split points as hex routing-hash prefixes (`80` = 0x8000000000000000),
        /// one per new shard [default: even parts]
        #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_split_point)]
        at: Vec<String>,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Merge a shard's ranges into the adjacent range of another shard
    Merge {
        /// The shard merged away
        #[arg(long)]
        shard: String,
        /// The shard absorbing its ranges
        #[arg(long)]
        into: String,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Move all ranges of a shard to another shard
    Move {
        /// The shard whose ranges move
        #[arg(long)]
        shard: String,
        /// The shard receiving them
        #[arg(long)]
        to: String,
        #[command(flatten)]
        job: JobArgs,
    },
    /// Move a tenant out of its keyspace into a dedicated keyspace named
    /// after it, on the given registered shards (`--to`), or a dedicated
    /// tenant back into a shared keyspace (`--to-keyspace`)
    TenantMove {
        /// The tenant that moves
        #[arg(long)]
        tenant: String,
        /// Registered shards of its new keyspace (comma-separated)
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "to_keyspace",
            conflicts_with = "to_keyspace"
        )]
        to: Vec<String>,
        /// The shared keyspace a dedicated tenant moves back into
        #[arg(long)]
        to_keyspace: Option<String>,
        /// Print the job and return at once instead of following it
        #[arg(long)]
        no_wait: bool,
    },
    /// Show one job, or list all
    Status {
        /// Job id [default: list every job]
        id: Option<String>,
    },
    /// Cancel a job before its cutover: the source stays as it was and
    /// what was copied is removed
    Cancel { id: String },
}

/// Options of the verbs that start a job.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Keyspace of the shards
    #[arg(long, default_value = "default")]
    pub keyspace: String,
    /// Print the job and return at once instead of following it
    #[arg(long)]
    pub no_wait: bool,
}

/// A split point as the API takes it: 16 hex digits. A shorter prefix is
/// padded like a key range bound (`80` is 0x8000000000000000).
fn parse_split_point(s: &str) -> Result<String, String> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "split point {s:?} is not a hex routing-hash prefix of 1 to 16 digits"
        ));
    }
    Ok(format!("{:0<16}", hex.to_ascii_lowercase()))
}

/// `shardline reshard ...`.
pub async fn run(ep: &Endpoints, cmd: ReshardCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    let (req, no_wait) = match cmd {
        ReshardCmd::Split {
            shard,
            into,
            at,
            job,
        } => (
            request(ReshardKind::Split, shard, into, at, &job),
            job.no_wait,
        ),
        ReshardCmd::Merge { shard, into, job } => (
            request(ReshardKind::Merge, shard, vec![into], vec![], &job),
            job.no_wait,
        ),
        ReshardCmd::Move { shard, to, job } => (
            request(ReshardKind::Move, shard, vec![to], vec![], &job),
            job.no_wait,
        ),
        ReshardCmd::TenantMove {
            tenant,
            to,
            to_keyspace,
            no_wait,
        } => {
            // The job names the keyspace the tenant leaves: its current one.
            let info = m
                .get_tenant(&tenant)
                .await
                .map_err(|e| anyhow!(e).context(format!("look up tenant {tenant}")))?;
            (
                tenant_move_request(tenant, info.keyspace, to, to_keyspace),
                no_wait,
            )
        }
        ReshardCmd::Status { id: Some(id) } => return show(&m.get_job(&id).await?, json),
        ReshardCmd::Status { id: None } => {
            let jobs = m.list_jobs().await?;
            if json {
                return print_json(&jobs);
            }
            print!("{}", job_table(&jobs));
            return Ok(());
        }
        ReshardCmd::Cancel { id } => return show(&m.cancel_job(&id).await?, json),
    };
    let job = m.reshard(&req).await?;
    if no_wait {
        return show(&job, json);
    }
    if !json {
        print!("{}", job_details(&job));
        println!();
    }
    let last = follow(&m, job).await?;
    if json {
        print_json(&last)?;
    } else {
        println!("{}", outcome(&last));
    }
    if last.phase == ReshardPhase::Failed {
        bail!(
            "job {} failed: {}",
            last.id,
            last.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(())
}

fn request(
    kind: ReshardKind,
    source: String,
    targets: Vec<String>,
    at: Vec<String>,
    job: &JobArgs,
) -> ReshardRequest {
    ReshardRequest {
        keyspace: job.keyspace.clone(),
        kind,
        source,
        targets,
        at,
        tenant: None,
        to_keyspace: None,
    }
}

fn tenant_move_request(
    tenant: String,
    keyspace: String,
    targets: Vec<String>,
    to_keyspace: Option<String>,
) -> ReshardRequest {
    ReshardRequest {
        keyspace,
        kind: ReshardKind::TenantMove,
        source: String::new(),
        targets,
        at: vec![],
        tenant: Some(tenant),
        to_keyspace,
    }
}

fn show(job: &JobInfo, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(job);
    }
    print!("{}", job_details(job));
    Ok(())
}

/// Whether a job has stopped for good.
fn finished(phase: ReshardPhase) -> bool {
    match phase {
        ReshardPhase::Done | ReshardPhase::Cancelled | ReshardPhase::Failed => true,
        ReshardPhase::Prepare
        | ReshardPhase::Copy
        | ReshardPhase::CatchUp
        | ReshardPhase::Cutover
        | ReshardPhase::Cleanup => false,
    }
}

/// Whether a failed poll may be tried again: the manager is down or
/// restarting, or busy (a GET does nothing twice).
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect(_) | ClientError::Transport(_) | ClientError::Timeout => true,
        ClientError::Api { status, error } => *status >= 500 || error.retryable,
        ClientError::Decode(_) | ClientError::Config(_) => false,
    }
}

/// Polls the job until it finishes, drawing its progress on stderr.
async fn follow(m: &ManagerClient, mut job: JobInfo) -> anyhow::Result<JobInfo> {
    let mut line = ProgressLine::new(crate::progress::on_terminal());
    let mut failing_since: Option<Instant> = None;
    loop {
        line.draw(&job);
        if finished(job.phase) {
            line.finish();
            return Ok(job);
        }
        tokio::time::sleep(POLL).await;
        match m.get_job(&job.id).await {
            Ok(next) => {
                job = next;
                failing_since = None;
            }
            Err(e) if transient(&e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    line.finish();
                    return Err(anyhow!(e).context(format!(
                        "follow job {} (it may still be running: `shardline reshard status {}`)",
                        job.id, job.id
                    )));
                }
            }
            Err(e) => {
                line.finish();
                return Err(anyhow!(e).context(format!("follow job {}", job.id)));
            }
        }
    }
}

/// The live progress on stderr: a bar on a terminal, plain lines
/// elsewhere.
struct ProgressLine {
    /// On a terminal: the bar.
    bar: Option<ProgressBar>,
    /// Phase and time of the last plain line.
    last_plain: Option<(ReshardPhase, Instant)>,
}

impl ProgressLine {
    fn new(terminal: bool) -> Self {
        Self {
            bar: terminal.then(crate::progress::rows_bar),
            last_plain: None,
        }
    }

    fn draw(&mut self, job: &JobInfo) {
        if let Some(bar) = &self.bar {
            // The estimate may trail the rows copied.
            let total = job.rows_estimated.max(job.rows_copied);
            if total > 0 {
                bar.set_length(total);
            }
            bar.set_position(job.rows_copied);
            bar.set_message(format!(
                "{}, {} changes behind",
                phase_name(job.phase),
                thousands(job.changes_behind)
            ));
            return;
        }
        let due = match self.last_plain {
            None => true,
            Some((phase, at)) => phase != job.phase || at.elapsed() >= PLAIN_EVERY,
        };
        if due {
            let mut err = std::io::stderr().lock();
            // Progress is a courtesy: a closed stderr must not stop the
            // job's follower.
            let _ = writeln!(err, "{}", progress(job));
            let _ = err.flush();
            self.last_plain = Some((job.phase, Instant::now()));
        }
    }

    /// Clears the bar: the outcome line that follows says how it ended.
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A phase as the API writes it (`catch_up`).
fn phase_name(p: ReshardPhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{p:?}"))
}

fn kind_name(k: ReshardKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{k:?}"))
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `[#########...............]  37%` for `done` of `total`.
fn bar(done: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    let ratio = (done as f64 / total as f64).clamp(0.0, 1.0);
    let full = (ratio * BAR as f64).round() as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(full),
        ".".repeat(BAR - full),
        (ratio * 100.0).floor() as u64
    )
}

/// One progress line: phase, rows copied / estimated with a bar,
/// changes behind.
fn progress(job: &JobInfo) -> String {
    let rows = if job.rows_estimated > 0 {
        format!(
            "{} {} / {} rows",
            bar(job.rows_copied, job.rows_estimated),
            thousands(job.rows_copied),
            thousands(job.rows_estimated)
        )
    } else {
        format!("{} rows", thousands(job.rows_copied))
    };
    format!(
        "{} {:<9} {rows}  {} changes behind",
        job.id,
        phase_name(job.phase),
        thousands(job.changes_behind)
    )
}

/// What a finished job came to, in one line.
fn outcome(job: &JobInfo) -> String {
    let pause = job
        .cutover_pause_ms
        .map_or_else(|| "not measured".to_string(), |ms| format!("{ms} ms"));
    let copy = job.copy_ms.map_or_else(String::new, |ms| {
        format!(
            " in {:.1} s ({} rows/s)",
            ms as f64 / 1000.0,
            thousands(job.rows_copied * 1000 / ms.max(1))
        )
    });
    match job.phase {
        ReshardPhase::Done => format!(
            "job {} done: {} rows copied{copy}, cutover pause {pause}",
            job.id,
            thousands(job.rows_copied)
        ),
        ReshardPhase::Failed => format!(
            "job {} failed: {}",
            job.id,
            job.error.as_deref().unwrap_or("no reason given")
        ),
        phase => format!("job {} {}", job.id, phase_name(phase)),
    }
}

/// The ranges moving, led (for a tenant move) by the tenant and the
/// keyspace it moves to.
fn moves_text(job: &JobInfo) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(tenant) = &job.tenant {
        let to = job.to_keyspace.as_deref().unwrap_or("?");
        parts.push(format!("tenant {tenant} -> keyspace {to}"));
    }
    parts.extend(
        job.moves
            .iter()
            .map(|mv| format!("{} {} -> {}", mv.range, mv.from, mv.to)),
    );
    parts.join(", ")
}

fn job_details(job: &JobInfo) -> String {
    let mut rows = vec![
        ("job", job.id.clone()),
        ("kind", kind_name(job.kind)),
        ("keyspace", job.keyspace.clone()),
    ];
    if let Some(tenant) = &job.tenant {
        rows.push(("tenant", tenant.clone()));
        rows.push(("to keyspace", job.to_keyspace.clone().unwrap_or_default()));
    }
    rows.extend([
        ("moves", moves_text(job)),
        ("phase", phase_name(job.phase)),
        (
            "rows copied",
            format!(
                "{} of ~{}",
                thousands(job.rows_copied),
                thousands(job.rows_estimated)
            ),
        ),
        (
            "copy time",
            job.copy_ms.map(|ms| format!("{ms} ms")).unwrap_or_default(),
        ),
        ("changes behind", thousands(job.changes_behind)),
        (
            "cutover pause",
            job.cutover_pause_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_default(),
        ),
        ("error", job.error.clone().unwrap_or_default()),
        ("created", job.created_at.clone()),
    ]);
    details(&rows)
}

fn job_table(jobs: &[JobInfo]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                kind_name(j.kind),
                j.keyspace.clone(),
                moves_text(j),
                phase_name(j.phase),
                format!(
                    "{}/{}",
                    thousands(j.rows_copied),
                    thousands(j.rows_estimated)
                ),
                thousands(j.changes_behind),
                j.cutover_pause_ms
                    .map(|ms| format!("{ms} ms"))
                    .unwrap_or_default(),
                j.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render(
        &[
            "job", "kind", "keyspace", "moves", "phase", "rows", "behind", "pause", "error",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use shardline_api::manager::MoveInfo;

    use super::*;

    fn job(phase: ReshardPhase) -> JobInfo {
        JobInfo {
            id: "j1".into(),
            kind: ReshardKind::Split,
            keyspace: "default".into(),
            tenant: None,
            to_keyspace: None,
            moves: vec![MoveInfo {
                range: "80-".into(),
                from: "s1".into(),
                to: "s2".into(),
            }],
            phase,
            rows_copied: 150_000,
            rows_estimated: 200_000,
            changes_behind: 1_234,
            error: None,
            cutover_pause_ms: None,
            copy_ms: None,
            created_at: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn split_points_are_padded_hex() {
        assert_eq!(parse_split_point("80").unwrap(), "8000000000000000");
        assert_eq!(parse_split_point("0xC0").unwrap(), "c000000000000000");
        assert_eq!(
            parse_split_point("0123456789abcdef").unwrap(),
            "0123456789abcdef"
        );
        for bad in ["", "0x", "xyz", "0123456789abcdef0", "-80"] {
            assert!(parse_split_point(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn progress_shows_phase_rows_bar_and_lag() {
        let line = progress(&job(ReshardPhase::CatchUp));
        assert_eq!(
            line,
            "j1 catch_up  [##################......]  75% 150,000 / 200,000 rows  1,234 changes behind"
        );
        let mut early = job(ReshardPhase::Prepare);
        early.rows_estimated = 0;
        early.rows_copied = 0;
        assert_eq!(
            progress(&early),
            "j1 prepare   0 rows  1,234 changes behind"
        );
        // Estimates can be low (reltuples): the bar stops at full.
        assert_eq!(bar(12, 10), format!("[{}] 100%", "#".repeat(BAR)));
        assert_eq!(bar(0, 10), format!("[{}]   0%", ".".repeat(BAR)));
    }

    #[test]
    fn numbers_and_outcomes() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
        let mut done = job(ReshardPhase::Done);
        done.cutover_pause_ms = Some(42);
        assert_eq!(
            outcome(&done),
            "job j1 done: 150,000 rows copied, cutover pause 42 ms"
        );
        done.copy_ms = Some(1_500);
        assert_eq!(
            outcome(&done),
            "job j1 done: 150,000 rows copied in 1.5 s (100,000 rows/s), cutover pause 42 ms"
        );
        let mut failed = job(ReshardPhase::Failed);
        failed.error = Some("checksum mismatch on acme.kv".into());
        assert_eq!(
            outcome(&failed),
            "job j1 failed: checksum mismatch on acme.kv"
        );
        assert_eq!(outcome(&job(ReshardPhase::Cancelled)), "job j1 cancelled");
        assert!(finished(ReshardPhase::Failed) && !finished(ReshardPhase::Cutover));
    }

    #[test]
    fn tables_show_moves_and_progress() {
        let t = job_table(&[job(ReshardPhase::Copy)]);
        assert!(t.contains("80- s1 -> s2"), "{t}");
        assert!(t.contains("150,000/200,000"), "{t}");
        let d = job_details(&job(ReshardPhase::Copy));
        assert!(d.contains("phase           copy"), "{d}");
    }

    #[test]
    fn tenant_moves_show_tenant_and_target_keyspace() {
        let mut mv = job(ReshardPhase::Copy);
        mv.kind = ReshardKind::TenantMove;
        mv.tenant = Some("acme".into());
        mv.to_keyspace = Some("acme".into());
        let t = job_table(std::slice::from_ref(&mv));
        assert!(
            t.contains("tenant acme -> keyspace acme, 80- s1 -> s2"),
            "{t}"
        );
        assert!(t.contains("tenant_move"), "{t}");
        let d = job_details(&mv);
        assert!(d.contains("tenant          acme"), "{d}");
        assert!(d.contains("to keyspace     acme"), "{d}");
        assert!(!job_details(&job(ReshardPhase::Copy)).contains("tenant"));

        let req = tenant_move_request("acme".into(), "shared".into(), vec!["s7".into()], None);
        assert_eq!(req.kind, ReshardKind::TenantMove);
        assert_eq!(
            (
                req.keyspace.as_str(),
                req.source.as_str(),
                req.tenant.as_deref()
            ),
            ("shared", "", Some("acme"))
        );
        assert_eq!(req.targets, ["s7"]);
    }

    #[test]
    fn only_transient_poll_failures_are_retried() {
        assert!(transient(&ClientError::Connect("refused".into())));
        assert!(transient(&ClientError::Timeout));
        let api = |status, code| ClientError::Api {
            status,
            error: Box::new(shardline_api::ApiError::new(code, "x")),
        };
        assert!(transient(&api(503, shardline_api::ErrorCode::Unavailable)));
        assert!(!transient(&api(404, shardline_api::ErrorCode::NotFound)));
        assert!(!transient(&ClientError::Decode("x".into())));
    }
}
