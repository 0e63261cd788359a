//! An `INSERT ... VALUES` whose rows go to several shards, outside a
//! transaction: each shard gets the statement with only its own rows,
//! all in a transaction of their own, committed only once every shard
//! has inserted its rows — one shard refusing a row (a constraint, a
//! quota, a shard down) inserts nothing anywhere.
//!
//! The commits themselves are not atomic across shards (that needs
//! two-phase commit): when a commit fails after another shard's
//! succeeded, the client gets SQLSTATE `40003` (statement completion
//! unknown) naming the shards whose rows were committed. `RETURNING`
//! rows come shard after shard; the command tag counts every shard's
//! rows.
//!
//! Both protocols: a simple query's rows are cut out of its text; an
//! extended-protocol `INSERT` (one `Execute`, ended by `Sync`) gets, per
//! shard, its rows with their `$n` numbered anew and only their
//! parameters bound, as the unnamed statement and portal. One inside a
//! transaction is refused with a hint: the transaction is one shard's.

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use shardline_api::router::ShardKeyValue;

use super::relay::give_back;
use super::route::{resolve_key, Opened};
use super::{Exec, Run, Session, SessionEnd};
use crate::pg::frame::Frame;
use crate::state::{Contact, Routing};
use crate::wire::analyze::{comment_key, Analysis};
use crate::wire::codec::{self, WireError};
use crate::wire::messages::{self, Parse};

/// The rows of a split `INSERT` that go to one shard.
#[derive(Debug)]
pub(super) struct Part {
    shard: String,
    /// The first of its rows' keys (for holds and quotas).
    key: ShardKeyValue,
    /// Indexes into [`crate::wire::analyze::InsertRows::rows`].
    rows: Vec<usize>,
}

/// What one shard answered to its part.
#[derive(Default)]
pub(super) struct Answer {
    pub description: Option<Frame>,
    pub rows: Vec<Frame>,
    pub count: u64,
    pub error: Option<Frame>,
}

/// The refusal for rows of several shards where they cannot be split.
pub(super) fn extended_refusal() -> WireError {
    WireError::error(
        "0A000",
        "the rows of this INSERT go to several shards; an INSERT is split per shard only \
         outside a transaction, alone in its batch",
    )
    .with_hint("insert each shard's rows in a statement of its own")
}

impl Session {
    /// How the rows of an `INSERT` split over shards, when it can be:
    /// one simple-protocol `INSERT ... VALUES` outside a transaction,
    /// every row keyed by a literal and no other key named (a subquery's
    /// key would need its own shard).
    pub(super) fn split_plan(
        &self,
        execs: &[Exec<'_>],
        routing: &Routing,
    ) -> Result<Option<Vec<Part>>, WireError> {
        let [e] = execs else { return Ok(None) };
        let a = e.analysis;
        if self.in_transaction() || a.insert_rows.is_none() {
            return Ok(None);
        }
        let key_type = routing
            .keyspaces
            .get(&self.keyspace)
            .map_or(shardline_core::KeyType::Text, |k| k.key_type);
        if e.sql.contains("shardline.shard_key") && comment_key(e.sql).is_some() {
            return Ok(None);
        }
        if !a.keys.iter().all(|k| a.insert_row_keys.contains(k)) {
            return Ok(None);
        }
        let mut parts: Vec<Part> = Vec::new();
        for (i, k) in a.insert_row_keys.iter().enumerate() {
            let Some(k) = resolve_key(k, e.params, key_type) else {
                return Ok(None);
            };
            let key = ShardKeyValue::Text(k);
            let shard = routing
                .route(&self.keyspace, &key)
                .map_err(|e| WireError::from_router(&e))?
                .range
                .shard
                .clone();
            match parts.iter_mut().find(|p| p.shard == shard) {
                Some(p) => p.rows.push(i),
                None => parts.push(Part {
                    shard,
                    key,
                    rows: vec![i],
                }),
            }
        }
        Ok(Some(parts))
    }

    /// Runs a simple-protocol `INSERT` split per shard (see the module
    /// docs) and answers the client.
    pub(super) async fn split_insert(
        &mut self,
        sql: &str,
        analysis: &Analysis,
        parts: Vec<Part>,
    ) -> Result<(), SessionEnd> {
        let Some(rows) = analysis.insert_rows.as_ref() else {
            return self.refuse(extended_refusal(), true).await;
        };
        let mut payloads = Vec::with_capacity(parts.len());
        for p in &parts {
            let mut out = BytesMut::new();
            postgres_protocol::message::frontend::query(&rows.text_with(sql, &p.rows), &mut out)?;
            payloads.push(out.freeze());
        }
        let Some(answers) = self.run_split(&parts, payloads).await? else {
            return Ok(());
        };
        if let Some(d) = answers.iter().find_map(|a| a.description.as_ref()) {
            self.io.queue(d);
        }
        self.queue_rows_and_tag(&answers);
        self.io.queue(&codec::ready(self.status()));
        self.io.flush().await?;
        Ok(())
    }

    /// Runs an extended-protocol `INSERT` split per shard: each shard's
    /// statement has only its rows and their parameters, numbered anew,
    /// run as the unnamed statement and portal; each of the client's
    /// messages gets the answer PostgreSQL would give.
    pub(super) async fn split_insert_extended(
        &mut self,
        batch: &[Frame],
        run: &Run,
        parts: Vec<Part>,
    ) -> Result<(), SessionEnd> {
        let Some(rows) = run.analysis.insert_rows.as_ref() else {
            return self.refuse_batch(extended_refusal(), true).await;
        };
        let mut payloads = Vec::with_capacity(parts.len());
        for p in &parts {
            let Some((text, olds)) = rows.text_with_params(run.text(), &p.rows) else {
                return self.refuse_batch(extended_refusal(), true).await;
            };
            let parse = Parse {
                name: String::new(),
                query: text,
                param_types: olds
                    .iter()
                    .map(|&o| {
                        o.checked_sub(1)
                            .and_then(|i| run.parse.param_types.get(i))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect(),
            };
            let mut out = BytesMut::new();
            parse.frame_as("").encode(&mut out);
            run.bind.frame_with(&run.bind_body, &olds).encode(&mut out);
            messages::describe_execute_sync(&mut out);
            payloads.push(out.freeze());
        }
        let Some(answers) = self.run_split(&parts, payloads).await? else {
            return Ok(());
        };
        for f in batch {
            match f.tag {
                b'P' => self.io.queue(&codec::empty(b'1')),
                b'B' => self.io.queue(&codec::empty(b'2')),
                b'C' => self.io.queue(&codec::empty(b'3')),
                b'D' => {
                    let d = answers.iter().find_map(|a| a.description.clone());
                    self.io.queue(&d.unwrap_or_else(|| codec::empty(b'n')));
                }
                b'E' => self.queue_rows_and_tag(&answers),
                b'S' => self.io.queue(&codec::ready(self.status())),
                _ => {}
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    fn queue_rows_and_tag(&mut self, answers: &[Answer]) {
        for a in answers {
            for r in &a.rows {
                self.io.queue(r);
            }
        }
        let count: u64 = answers.iter().map(|a| a.count).sum();
        self.io
            .queue(&codec::command_complete(&format!("INSERT 0 {count}")));
    }

    /// Sends each part's payload (a simple query, or an extended batch
    /// ended by `Sync`) to its shard in a transaction, and commits them
    /// all once every shard succeeded: their answers, or `None` once the
    /// failure was answered to the client.
    async fn run_split(
        &mut self,
        parts: &[Part],
        payloads: Vec<Bytes>,
    ) -> Result<Option<Vec<Answer>>, SessionEnd> {
        if self.attached.is_some() {
            // Pipelined statements before this one: answered first.
            self.drain().await?;
            self.release_if_idle();
            if self.attached.is_some() {
                self.refuse(extended_refusal(), true).await?;
                return Ok(None);
            }
        }
        let mut opened = Vec::with_capacity(parts.len());
        for p in parts {
            match self
                .open(&p.shard, Some(p.key.clone()), false, Some("BEGIN".into()))
                .await
            {
                Ok(o) => opened.push(o),
                Err(e) => {
                    end_all(opened, "ROLLBACK").await;
                    self.refuse(e, true).await?;
                    return Ok(None);
                }
            }
        }
        let runs = opened
            .into_iter()
            .zip(payloads)
            .map(|(mut o, out)| async move {
                let answer = match o.conn.conn.send(&out).await {
                    Ok(()) => {
                        let ready = o.injected + 1;
                        read_answers(&mut o, ready).await
                    }
                    Err(e) => Err(e.to_string()),
                };
                (o, answer)
            });
        let done = join_all(runs).await;
        let mut sessions = Vec::with_capacity(done.len());
        let mut answers = Vec::with_capacity(done.len());
        let mut failure: Option<Result<Frame, String>> = None;
        for (o, a) in done {
            match a {
                Ok(a) => {
                    if failure.is_none() {
                        if let Some(e) = &a.error {
                            failure = Some(Ok(e.clone()));
                        }
                    }
                    answers.push(a);
                    sessions.push(o);
                }
                Err(e) => {
                    // Its server session is gone (dropped, never reused).
                    failure.get_or_insert(Err(e));
                }
            }
        }
        let metrics = &self.app.metrics;
        if let Some(f) = failure {
            end_all(sessions, "ROLLBACK").await;
            metrics.request("postgres", &self.keyspace, "split", "", "statement_failed");
            match f {
                Ok(frame) => {
                    self.io.queue(&frame);
                    self.io.queue(&codec::ready(self.status()));
                    self.io.flush().await?;
                }
                Err(e) => {
                    let e = WireError::error("57P03", format!("a shard is unavailable: {e}"));
                    self.refuse(e, true).await?;
                }
            }
            return Ok(None);
        }
        let shards: Vec<String> = sessions.iter().map(|o| o.shard.clone()).collect();
        let committed = commit_all(sessions, &self.shared.ctx.contact).await;
        if committed.len() < shards.len() {
            metrics.request("postgres", &self.keyspace, "split", "", "statement_failed");
            let e = partial_commit(&shards, &committed);
            self.refuse(e, true).await?;
            return Ok(None);
        }
        metrics.request("postgres", &self.keyspace, "split", "", "ok");
        Ok(Some(answers))
    }
}

/// The error for commits that did not all succeed: `committed` of
/// `shards` did.
pub(super) fn partial_commit(shards: &[String], committed: &[String]) -> WireError {
    if committed.is_empty() {
        return WireError::error(
            "57P03",
            "the shards did not confirm their commits; the rows may not have been written",
        );
    }
    let rest: Vec<&str> = shards
        .iter()
        .filter(|s| !committed.contains(s))
        .map(String::as_str)
        .collect();
    WireError::error(
        "40003",
        format!(
            "the rows of shard(s) {} were committed, those of {} may not have been",
            committed.join(", "),
            rest.join(", ")
        ),
    )
}

/// Reads a server session's answers up to its `ready`th `ReadyForQuery`:
/// the last query's rows and command tag, and the first error (a failed
/// statement the router injected counts: its transaction must not go
/// on). `Err` when the connection fails.
pub(super) async fn read_answers(o: &mut Opened, ready: usize) -> Result<Answer, String> {
    let mut answer = Answer::default();
    let mut seen = 0;
    while seen < ready {
        let f = o.conn.conn.read().await.map_err(|e| e.to_string())?;
        let last = seen + 1 == ready;
        match f.tag {
            b'E' if answer.error.is_none() => answer.error = Some(f),
            b'T' if last => answer.description = Some(f),
            b'D' if last => answer.rows.push(f),
            b'C' if last => {
                answer.count = codec::tag_count(&f.body).unwrap_or(0);
            }
            b'Z' => seen += 1,
            _ => {}
        }
    }
    Ok(answer)
}

/// Rolls each session's transaction back at once and gives the
/// sessions back.
pub(super) async fn end_all(sessions: Vec<Opened>, sql: &'static str) -> Vec<String> {
    end_each(sessions, sql, |_| true).await
}

/// Commits each session's transaction at once and gives the sessions
/// back; the shards whose commit succeeded. A commit answered after a
/// failover began to replace its primary, or after the router's lease
/// ran out, is not counted as one: the manager may promote a replica
/// that never got it.
pub(super) async fn commit_all(sessions: Vec<Opened>, contact: &Contact) -> Vec<String> {
    end_each(sessions, "COMMIT", |o| {
        !o.fence.is_cancelled() && !contact.cut_off()
    })
    .await
}

/// Ends each session's transaction with `sql` (`COMMIT` or `ROLLBACK`)
/// at once and gives the sessions back; the shards whose `sql`
/// succeeded and `confirmed` holds for. A session whose end fails, is
/// cut or is not confirmed is closed.
async fn end_each(
    sessions: Vec<Opened>,
    sql: &'static str,
    confirmed: impl Fn(&Opened) -> bool,
) -> Vec<String> {
    let confirmed = &confirmed;
    let ends = sessions.into_iter().map(|mut o| async move {
        let ok = match o.conn.conn.simple(sql).await {
            Ok(Ok(b'I')) => true,
            Ok(other) => {
                tracing::warn!(shard = %o.shard, ?other, "{sql} of a split insert");
                false
            }
            Err(e) => {
                tracing::warn!(shard = %o.shard, error = %e, "{sql} of a split insert");
                return None;
            }
        };
        if !confirmed(&o) {
            tracing::warn!(shard = %o.shard, primary = %o.primary,
                "{sql} of a split insert answered after the primary was fenced");
            return None;
        }
        let shard = o.shard.clone();
        let Opened {
            conn, pool, dirty, ..
        } = o;
        give_back(conn, pool, dirty);
        ok.then_some(shard)
    });
    join_all(ends).await.into_iter().flatten().collect()
}
