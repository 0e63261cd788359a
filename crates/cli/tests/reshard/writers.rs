//! The writers of the resharding tests: what they were told happened,
//! and the answers they may get by the router's design.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use shardline_api::ErrorCode;
use shardline_client::{ClientError, RouterClient};

use crate::{exec, ACCOUNTS};

/// What the writers were told happened.
#[derive(Default, Clone)]
pub struct Truth {
    /// Accounts inserted and acknowledged.
    pub inserted: HashSet<String>,
    /// Accounts deleted and acknowledged.
    pub deleted: HashSet<String>,
    /// Acknowledged increments per account.
    pub increments: HashMap<String, i64>,
    /// Events inserted and acknowledged.
    pub events: HashSet<String>,
    /// Ids whose last write failed in a way that leaves its effect unknown
    /// (connection lost mid-statement): excluded from exact checks.
    pub unknown: HashSet<String>,
    /// Longest time one write took to be acknowledged.
    pub longest: Duration,
}

/// What the writers of one job were answered: how many acknowledged
/// writes changed their one row, and every other answer.
#[derive(Default)]
pub struct Answers {
    /// Acknowledged writes that changed exactly their one row.
    pub one_row: u64,
    /// Writes answered 5xx: what, the status, the error code and whether
    /// it was retryable.
    pub server_errors: Vec<(String, u16, ErrorCode, bool)>,
    /// Writes with no answer (timeout, connection lost), and why.
    pub unanswered: Vec<String>,
    /// Acknowledged UPDATEs and DELETEs of a row the writer knows exists
    /// that report another row count than 1, and INSERTs likewise: a
    /// lost (or doubled) row.
    pub wrong_counts: Vec<String>,
    /// Writes refused with a 4xx: none is expected.
    pub refused: Vec<String>,
}

impl Answers {
    fn failed(&mut self, what: &str, key: &str, e: &ClientError) {
        match e {
            ClientError::Api { status, error } if *status >= 500 => self.server_errors.push((
                format!("{what} of {key}: {error}"),
                *status,
                error.code,
                error.retryable,
            )),
            ClientError::Api { status, error } => self
                .refused
                .push(format!("{what} of {key}: {status} {error}")),
            other => self.unanswered.push(format!("{what} of {key}: {other}")),
        }
    }
}

/// Writers running at once.
pub const WRITERS: usize = 4;

/// Writer `w`: a steady mix of inserts, updates and deletes, each of
/// exactly one row: inserts of new ids, updates of the loaded accounts
/// (never deleted) and deletes of accounts this writer inserted. So every
/// acknowledged write must report `rows_affected` 1.
pub async fn writer(
    run: usize,
    w: usize,
    router: RouterClient,
    truth: Arc<Mutex<Truth>>,
    answers: Arc<Mutex<Answers>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    // Accounts this writer inserted, acknowledged, not yet deleted.
    let mut mine: VecDeque<String> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (key, req, what) = match i % 4 {
            0 => {
                let id = format!("new-{run}-{w}-{i}");
                (
                    id.clone(),
                    exec(
                        "INSERT INTO accounts (id, balance) VALUES ($1, 0)",
                        &id,
                        vec![json!(id)],
                    ),
                    "insert",
                )
            }
            1 | 2 => {
                // Each writer updates its own slice of the accounts, so
                // no two writers race on one row.
                let n = (i as i64 * 7919 + w as i64) % ACCOUNTS;
                let n = n - n % 4 + w as i64 % 4;
                let id = format!("acc-{n}");
                (
                    id.clone(),
                    exec(
                        "UPDATE accounts SET balance = balance + 1 WHERE id = $1",
                        &id,
                        vec![json!(id)],
                    ),
                    "update",
                )
            }
            _ => {
                let id = format!("ev-{run}-{w}-{i}");
                let account = format!("acc-{}", i as i64 % ACCOUNTS);
                (
                    id.clone(),
                    exec(
                        "INSERT INTO events (id, account, payload) VALUES ($1, $2, 'x')",
                        &account,
                        vec![json!(id), json!(account)],
                    ),
                    "event",
                )
            }
        };
        let started = Instant::now();
        let res = router.execute(&req).await;
        let took = started.elapsed();
        match res {
            Ok(r) => {
                let mut t = truth.lock().unwrap();
                t.longest = t.longest.max(took);
                let affected = r.result.rows_affected;
                if affected != 1 {
                    answers.lock().unwrap().wrong_counts.push(format!(
                        "writer {w}: {what} of {key} acknowledged with rows_affected {affected}"
                    ));
                    continue;
                }
                answers.lock().unwrap().one_row += 1;
                match what {
                    "insert" => {
                        t.inserted.insert(key.clone());
                        mine.push_back(key);
                    }
                    "update" => *t.increments.entry(key).or_default() += 1,
                    _ => {
                        t.events.insert(key);
                    }
                }
            }
            Err(e) => {
                // Its effect is unknown (a 503 held through a cutover
                // wrote nothing, but a lost connection may have).
                truth.lock().unwrap().unknown.insert(key.clone());
                answers.lock().unwrap().failed(what, &key, &e);
            }
        }
        // Every eighth round deletes the oldest account this writer
        // inserted (acknowledged, so it exists).
        if i.is_multiple_of(8) {
            let Some(id) = mine.pop_front() else {
                continue;
            };
            let r = router
                .execute(&exec(
                    "DELETE FROM accounts WHERE id = $1",
                    &id,
                    vec![json!(id)],
                ))
                .await;
            match r {
                Ok(r) if r.result.rows_affected == 1 => {
                    truth.lock().unwrap().deleted.insert(id);
                    answers.lock().unwrap().one_row += 1;
                }
                Ok(r) => answers.lock().unwrap().wrong_counts.push(format!(
                    "writer {w}: delete of {id} acknowledged with rows_affected {}",
                    r.result.rows_affected
                )),
                Err(e) => {
                    truth.lock().unwrap().unknown.insert(id.clone());
                    answers.lock().unwrap().failed("delete", &id, &e);
                }
            }
        }
    }
}

/// The answers the writers of one job may get besides acknowledgements,
/// by the router's design:
/// - every acknowledged write changed exactly one row (see [`writer`]);
///   a 0 from an UPDATE or DELETE is a row lost in the move;
/// - no 4xx: every statement is valid;
/// - every write is answered: a held request is answered after at most
///   `failover_hold` (5 s) plus its statement (10 s statement timeout),
///   inside the client's 20 s;
/// - a 5xx only as `503 shard_unavailable` (retryable) for a request held
///   for the whole `failover_hold` while its range was frozen — the
///   router answers nothing else of ours here. The range is frozen (or
///   the source refuses it) for the cutover pause plus the moment between
///   the source starting to refuse and the freeze, and the router hearing
///   of the publication: at most the pause + 1 s. Each writer has one
///   request in flight, and each such 503 took `failover_hold` of that
///   window, so there are at most `WRITERS × ⌊(pause + 1 s) /
///   failover_hold⌋` of them: none while the pause is under 4 s
///   (measured: 64-377 ms, docs/benchmarks.md).
pub fn check_answers(f: &Answers, cutover_pause_ms: u64) {
    let hold = shardline_router::RouterConfig::new("http://unused", "unused").failover_hold;
    let window = Duration::from_millis(cutover_pause_ms) + Duration::from_secs(1);
    let bound = WRITERS * (window.as_millis() / hold.as_millis()) as usize;
    assert!(
        f.wrong_counts.is_empty(),
        "{} acknowledged writes changed another number of rows than 1 (lost rows), e.g. {:?}",
        f.wrong_counts.len(),
        &f.wrong_counts[..f.wrong_counts.len().min(5)]
    );
    assert!(
        f.refused.is_empty(),
        "writes refused as the client's error: {:?}",
        &f.refused[..f.refused.len().min(5)]
    );
    assert!(
        f.unanswered.is_empty(),
        "{} writes not answered, e.g. {:?}",
        f.unanswered.len(),
        &f.unanswered[..f.unanswered.len().min(5)]
    );
    for (what, status, code, retryable) in &f.server_errors {
        assert!(
            *status == 503 && *code == ErrorCode::ShardUnavailable && *retryable,
            "only a held write may fail, as a retryable 503: {what} ({status})"
        );
    }
    assert!(
        f.server_errors.len() <= bound,
        "{} writes answered 5xx; at most {bound} may be (cutover pause {cutover_pause_ms} ms, \
         hold {hold:?}), e.g. {:?}",
        f.server_errors.len(),
        &f.server_errors[..f.server_errors.len().min(5)]
    );
}
