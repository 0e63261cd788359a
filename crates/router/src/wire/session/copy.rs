//! `COPY` of a sharded table with no shard key (no `SET
//! shardline.shard_key`), outside a transaction, as a simple query:
//! - `COPY ... TO STDOUT` runs on each shard in turn and the rows are
//!   concatenated (a CSV header once), with one `COPY n` of all;
//! - `COPY ... FROM STDIN` (text or CSV) runs on every shard in a
//!   transaction of its own: each row goes to the shard of its key
//!   column, and the shards commit only once every one has taken all its
//!   rows (then as [`super::split`] does: a commit failing after
//!   another's succeeded is `40003`). A row without a key (NULL, or a
//!   column list that leaves the key out) fails the whole `COPY`.
//!
//! Binary `COPY` without a key is refused: its rows are not cut here.

use bytes::{BufMut as _, Bytes, BytesMut};
use shardline_api::router::ShardKeyValue;

use super::relay::give_back;
use super::route::{check_prefix, Opened};
use super::split::{commit_all, end_all, read_answers};
use super::{Session, SessionEnd};
use crate::pg::frame::Frame;
use crate::wire::analyze::{CopyFormat, CopySpec};
use crate::wire::codec::{self, WireError};
use crate::wire::copy::{Piece, RowSplitter};
use crate::wire::fanout::data_row;

/// Bytes of rows gathered for one shard before they are sent.
const SEND_AT: usize = 64 * 1024;

/// A `COPY ... FROM STDIN` under way on every shard.
pub(super) struct CopyIn {
    sessions: Vec<Opened>,
    splitter: RowSplitter,
    /// Rows gathered per session, not yet sent.
    buffers: Vec<BytesMut>,
    rows: u64,
}

impl Session {
    /// Runs a keyless `COPY` (see the module docs).
    pub(super) async fn copy(&mut self, sql: &str, spec: &CopySpec) -> Result<(), SessionEnd> {
        if spec.format == CopyFormat::Binary {
            let e = WireError::error(
                "0A000",
                "a binary COPY without a shard key cannot be split across shards",
            )
            .with_hint("SET shardline.shard_key = '...' to copy one shard's rows");
            return self.refuse(e, true).await;
        }
        let shards = match self.keyspace_shards() {
            Ok(s) => s,
            Err(e) => return self.refuse(e, true).await,
        };
        if spec.to {
            self.copy_out(sql, spec, shards).await
        } else {
            self.copy_in_start(sql, spec, shards).await
        }
    }

    /// The shards of the session's keyspace, in id order.
    pub(super) fn keyspace_shards(&self) -> Result<Vec<String>, WireError> {
        let routing = self.shared.routing.get();
        let map = routing
            .keyspaces
            .get(&self.keyspace)
            .and_then(|k| k.map.as_ref())
            .ok_or_else(|| {
                WireError::error(
                    "57P03",
                    format!("keyspace \"{}\" has no shards yet", self.keyspace),
                )
            })?;
        let mut ids: Vec<String> = map.ranges().iter().map(|r| r.shard.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    async fn copy_out(
        &mut self,
        sql: &str,
        spec: &CopySpec,
        shards: Vec<String>,
    ) -> Result<(), SessionEnd> {
        let mut query = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut query)?;
        let mut total = 0u64;
        let mut started = false;
        for (n, shard) in shards.iter().enumerate() {
            let mut o = match self.open(shard, None, true, None).await {
                Ok(o) => o,
                Err(e) => return self.copy_failed(e, started).await,
            };
            let failed = |e: crate::pg::server::ServerError| {
                WireError::error("57P03", format!("shard {shard} is unavailable: {e}"))
            };
            if let Err(e) = o.conn.conn.send(&query).await {
                return self.copy_failed(failed(e), started).await;
            }
            let mut ready = 0;
            let mut data = 0usize;
            let mut error = None;
            while ready <= o.injected {
                let f = match o.conn.conn.read().await {
                    Ok(f) => f,
                    Err(e) => return self.copy_failed(failed(e), started).await,
                };
                let mine = ready == o.injected;
                match f.tag {
                    b'Z' => ready += 1,
                    b'E' => error = error.or(Some(f)),
                    b'H' if mine && !started => {
                        started = true;
                        self.io.queue(&f);
                    }
                    b'd' if mine => {
                        data += 1;
                        // Each shard sends the CSV header first: once.
                        if !(spec.header && n > 0 && data == 1) {
                            self.io.queue(&f);
                        }
                        if self.io.wbuf.len() > SEND_AT {
                            self.io.flush().await?;
                        }
                    }
                    b'C' if mine => total += codec::tag_count(&f.body).unwrap_or(0),
                    _ => {}
                }
            }
            let Opened {
                conn, pool, dirty, ..
            } = o;
            give_back(conn, pool, dirty);
            if let Some(e) = error {
                self.count_copy("statement_failed");
                self.io.queue(&e);
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
                return Ok(());
            }
        }
        self.count_copy("ok");
        self.io.queue(&codec::empty(b'c'));
        self.io
            .queue(&codec::command_complete(&format!("COPY {total}")));
        self.io.queue(&codec::ready(self.status()));
        self.io.flush().await?;
        Ok(())
    }

    /// An error ending a `COPY TO` (after its rows began: the client is
    /// in copy-out mode, which an `ErrorResponse` ends).
    async fn copy_failed(&mut self, e: WireError, _started: bool) -> Result<(), SessionEnd> {
        self.count_copy("statement_failed");
        self.answer_error(e, true).await
    }

    fn count_copy(&self, outcome: &'static str) {
        self.app
            .metrics
            .request("postgres", &self.keyspace, "copy", "", outcome);
    }

    async fn copy_in_start(
        &mut self,
        sql: &str,
        spec: &CopySpec,
        shards: Vec<String>,
    ) -> Result<(), SessionEnd> {
        let mut sessions: Vec<Opened> = Vec::with_capacity(shards.len());
        for shard in &shards {
            match self.open(shard, None, false, Some("BEGIN".into())).await {
                Ok(o) => sessions.push(o),
                Err(e) => {
                    end_all(sessions, "ROLLBACK").await;
                    return self.refuse(e, true).await;
                }
            }
        }
        let key_field = match key_field(spec, &mut sessions).await {
            Ok(k) => k,
            Err(frame) => {
                end_all(sessions, "ROLLBACK").await;
                self.count_copy("statement_failed");
                self.io.queue(&frame);
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
                return Ok(());
            }
        };
        let mut query = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut query)?;
        let mut response = None;
        let mut failure: Option<Result<Frame, WireError>> = None;
        let mut copying = Vec::with_capacity(sessions.len());
        for (i, o) in sessions.iter_mut().enumerate() {
            // The first session's injected answers were read with the
            // column look-up.
            let skip = if i == 0 { 0 } else { o.injected };
            match start_copy_in(o, &query, skip).await {
                Ok((started, Ok(g))) => {
                    copying.push(started);
                    response = response.or(Some(g));
                }
                Ok((started, Err(e))) => {
                    copying.push(started);
                    failure.get_or_insert(Ok(e));
                }
                Err(e) => {
                    copying.push(false);
                    failure.get_or_insert(Err(e));
                }
            }
        }
        let response = match (failure, response) {
            (None, Some(g)) => g,
            (failure, _) => {
                // Sessions in copy-in mode leave it with `CopyFail`.
                let all = sessions.into_iter().zip(copying).collect();
                abort_all(all, "another shard refused the COPY").await;
                self.count_copy("statement_failed");
                return match failure {
                    Some(Ok(frame)) => {
                        self.io.queue(&frame);
                        self.io.queue(&codec::ready(self.status()));
                        self.io.flush().await?;
                        Ok(())
                    }
                    Some(Err(e)) => self.refuse(e, true).await,
                    None => {
                        let e = WireError::error("08P01", "no shard started the COPY");
                        self.refuse(e, true).await
                    }
                };
            }
        };
        let n = sessions.len();
        self.copy_in = Some(CopyIn {
            sessions,
            splitter: RowSplitter::new(spec, key_field),
            buffers: vec![BytesMut::new(); n],
            rows: 0,
        });
        self.io.queue(&response);
        self.io.flush().await?;
        Ok(())
    }

    /// A `CopyData`, `CopyDone` or `CopyFail` of the client's `COPY FROM
    /// STDIN` under way.
    pub(super) async fn on_copy_in(&mut self, f: Frame) -> Result<(), SessionEnd> {
        let Some(mut copy) = self.copy_in.take() else {
            return Ok(());
        };
        let mut pieces = Vec::new();
        match f.tag {
            b'd' => copy.splitter.push(&f.body, &mut pieces),
            b'c' => copy.splitter.finish(&mut pieces),
            b'f' => {
                let why = String::from_utf8_lossy(f.body.strip_suffix(&[0]).unwrap_or(&f.body))
                    .into_owned();
                abort_all(copying(copy.sessions), &why).await;
                self.count_copy("statement_failed");
                let e = WireError::error("57014", format!("COPY from stdin failed: {why}"));
                return self.answer_error(e, true).await;
            }
            _ => {
                self.copy_in = Some(copy);
                return Ok(());
            }
        }
        if let Err(e) = self.place(&mut copy, pieces) {
            abort_all(copying(copy.sessions), &e.message).await;
            self.count_copy("statement_failed");
            return self.answer_error(e, true).await;
        }
        let done = f.tag == b'c';
        for i in 0..copy.sessions.len() {
            if copy.buffers[i].len() >= SEND_AT || (done && !copy.buffers[i].is_empty()) {
                let rows = copy.buffers[i].split().freeze();
                let mut out = BytesMut::with_capacity(rows.len() + 5);
                Frame::new(b'd', rows).encode(&mut out);
                if let Err(e) = copy.sessions[i].conn.conn.send(&out).await {
                    let e = WireError::error("57P03", format!("a shard is unavailable: {e}"));
                    abort_all(copying(copy.sessions), &e.message).await;
                    self.count_copy("statement_failed");
                    return self.answer_error(e, true).await;
                }
            }
        }
        if !done {
            self.copy_in = Some(copy);
            return Ok(());
        }
        self.copy_in_end(copy).await
    }

    /// Sends each piece's bytes to its shard's buffer.
    fn place(&self, copy: &mut CopyIn, pieces: Vec<Piece>) -> Result<(), WireError> {
        let routing = self.shared.routing.get();
        for p in pieces {
            match p {
                Piece::Header(b) => {
                    for buf in &mut copy.buffers {
                        buf.put_slice(&b);
                    }
                }
                Piece::Row { key, bytes } => {
                    copy.rows += 1;
                    let Some(key) = key else {
                        return Err(WireError::error(
                            "22004",
                            format!("row {} of the COPY has no shard key", copy.rows),
                        ));
                    };
                    let key = ShardKeyValue::Text(key);
                    check_prefix(&self.app, &key)?;
                    let route = routing
                        .route(&self.keyspace, &key)
                        .map_err(|e| WireError::from_router(&e))?;
                    let i = copy
                        .sessions
                        .iter()
                        .position(|o| o.shard == route.range.shard)
                        .ok_or_else(|| {
                            WireError::error("57P03", "the keyspace's shards changed; retry")
                        })?;
                    copy.buffers[i].put_slice(&bytes);
                }
            }
        }
        Ok(())
    }

    async fn copy_in_end(&mut self, copy: CopyIn) -> Result<(), SessionEnd> {
        let mut sessions = copy.sessions;
        let mut failure: Option<Result<Frame, String>> = None;
        let mut count = 0;
        let mut done_frame = BytesMut::new();
        codec::empty(b'c').encode(&mut done_frame);
        for o in &mut sessions {
            let answer = match o.conn.conn.send(&done_frame).await {
                Ok(()) => read_answers(o, 1).await,
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(a) => {
                    count += a.count;
                    if let Some(e) = a.error {
                        failure.get_or_insert(Ok(e));
                    }
                }
                Err(e) => {
                    failure.get_or_insert(Err(e));
                }
            }
        }
        if let Some(f) = failure {
            end_all(sessions, "ROLLBACK").await;
            self.count_copy("statement_failed");
            return match f {
                Ok(frame) => {
                    self.io.queue(&frame);
                    self.io.queue(&codec::ready(self.status()));
                    self.io.flush().await?;
                    Ok(())
                }
                Err(e) => {
                    let e = WireError::error("57P03", format!("a shard is unavailable: {e}"));
                    self.answer_error(e, true).await
                }
            };
        }
        let shards: Vec<String> = sessions.iter().map(|o| o.shard.clone()).collect();
        let committed = commit_all(sessions, &self.shared.ctx.contact).await;
        if committed.len() < shards.len() {
            self.count_copy("statement_failed");
            let e = super::split::partial_commit(&shards, &committed);
            return self.answer_error(e, true).await;
        }
        self.count_copy("ok");
        self.io
            .queue(&codec::command_complete(&format!("COPY {count}")));
        self.io.queue(&codec::ready(self.status()));
        self.io.flush().await?;
        Ok(())
    }
}

/// Where the key is in each row: its place in the column list, or in
/// the table's columns (asked of the first shard, whose injected
/// statements' answers are read here).
async fn key_field(spec: &CopySpec, sessions: &mut [Opened]) -> Result<usize, Frame> {
    let missing = || {
        WireError::error(
            "0A000",
            format!(
                "the COPY's columns leave out the shard-key column \"{}\"",
                spec.key_column
            ),
        )
        .with_hint("list the shard-key column, or SET shardline.shard_key = '...'")
    };
    let first = sessions
        .first_mut()
        .ok_or_else(|| WireError::error("57P03", "the keyspace has no shards").frame())?;
    let lookup = if spec.columns.is_empty() {
        format!(
            "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = '{}'::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            spec.table.replace('\'', "''")
        )
    } else {
        // Only the injected statements' answers to read.
        "SELECT NULL WHERE false".to_string()
    };
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(&lookup, &mut out)
        .map_err(|e| WireError::error("22023", e.to_string()).frame())?;
    let unavailable =
        |e: String| WireError::error("57P03", format!("a shard is unavailable: {e}")).frame();
    first
        .conn
        .conn
        .send(&out)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let ready = first.injected + 1;
    let answer = read_answers(first, ready).await.map_err(unavailable)?;
    if let Some(e) = answer.error {
        return Err(e);
    }
    if !spec.columns.is_empty() {
        return spec
            .columns
            .iter()
            .position(|c| *c == spec.key_column)
            .ok_or_else(|| missing().frame());
    }
    let mut names = Vec::new();
    for row in &answer.rows {
        let values = data_row(&row.body).map_err(|e| unavailable(e.to_string()))?;
        if let Some(Some(v)) = values.first() {
            names.push(String::from_utf8_lossy(v).into_owned());
        }
    }
    names
        .iter()
        .position(|c| *c == spec.key_column)
        .ok_or_else(|| missing().frame())
}

/// Sends the `COPY` on a session and reads to its `CopyInResponse`
/// (after `skip` answers of injected statements): whether the session is
/// in copy-in mode, and the response or the shard's error.
async fn start_copy_in(
    o: &mut Opened,
    query: &[u8],
    skip: usize,
) -> Result<(bool, Result<Frame, Frame>), WireError> {
    let unavailable = |e: String| WireError::error("57P03", format!("a shard is unavailable: {e}"));
    o.conn
        .conn
        .send(query)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut ready = 0;
    let mut error = None;
    loop {
        let f = o
            .conn
            .conn
            .read()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match f.tag {
            b'E' => error = error.or(Some(f)),
            b'Z' => {
                ready += 1;
                if ready > skip {
                    // The COPY itself failed before copy-in mode.
                    let e = error.unwrap_or_else(|| {
                        WireError::error("08P01", "the shard did not start the COPY").frame()
                    });
                    return Ok((false, Err(e)));
                }
            }
            // An injected statement's error: the COPY started all the
            // same, but must not go on.
            b'G' if ready == skip => return Ok((true, error.map_or(Ok(f), Err))),
            _ => {}
        }
    }
}

/// Every session of a `COPY` under way, all in copy-in mode.
fn copying(sessions: Vec<Opened>) -> Vec<(Opened, bool)> {
    sessions.into_iter().map(|o| (o, true)).collect()
}

/// Ends a `COPY FROM STDIN` with `CopyFail` on the sessions in copy-in
/// mode (each answers with the `COPY`'s error and `ReadyForQuery`), then
/// rolls every transaction back.
async fn abort_all(sessions: Vec<(Opened, bool)>, why: &str) {
    let mut fail = BytesMut::new();
    let mut body = BytesMut::new();
    crate::pg::frame::put_cstr(&mut body, why);
    Frame::new(b'f', body.freeze()).encode(&mut fail);
    let fail: Bytes = fail.freeze();
    let mut ready = Vec::with_capacity(sessions.len());
    for (mut o, copying) in sessions {
        if copying {
            let sent = o.conn.conn.send(&fail).await.is_ok();
            if !sent || read_answers(&mut o, 1).await.is_err() {
                // Closed, never reused.
                continue;
            }
        }
        ready.push(o);
    }
    end_all(ready, "ROLLBACK").await;
}
