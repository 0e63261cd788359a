//! The attached server session: the client's batches rewritten for it,
//! its answers relayed (the router's own dropped), and its return to the
//! pool, reset when the client changed it.

use std::collections::HashMap;

use bytes::BytesMut;

use super::{
    Attached, ClientStatement, Pending, Rewrite, Session, SessionEnd, NO_PORTAL, RESET,
    STATEMENTS_PER_SERVER,
};
use crate::pg::frame::Frame;
use crate::pg::rawpool::{RawConn, RawPool};
use crate::pg::server::ServerError;
use crate::wire::codec;
use crate::wire::messages::{self, Bind};

impl Session {
    /// Relays the server's answers until it has answered everything.
    pub(super) async fn drain(&mut self) -> Result<(), SessionEnd> {
        while let Some(a) = self.attached.as_mut() {
            if a.pending.is_empty() {
                break;
            }
            if a.pending.back().is_some_and(|p| !p.closed) {
                // Waiting on a batch the client has not ended: nothing
                // more will come before it does.
                break;
            }
            let f = a.conn.conn.read().await?;
            self.on_server(f).await?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Gives the server session back once it is idle with nothing owed.
    pub(super) fn release_if_idle(&mut self) {
        let idle = self
            .attached
            .as_ref()
            .is_some_and(|a| a.pending.is_empty() && a.status == b'I');
        if !idle {
            return;
        }
        let Some(a) = self.attached.take() else {
            return;
        };
        self.set_cancel(None);
        self.local_key = None;
        let Attached {
            conn,
            pool,
            dirty,
            pending,
            ..
        } = a;
        self.spare_pending = pending;
        give_back(conn, pool, dirty);
    }

    /// One message from the attached server.
    pub(super) async fn on_server(&mut self, f: Frame) -> Result<(), SessionEnd> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(());
        };
        let mut forward = Some(f);
        if let Some(p) = a.pending.front_mut() {
            let f = forward.as_ref().map(|f| f.tag).unwrap_or(0);
            if p.injected {
                if f == b'E' {
                    if let Some(fr) = &forward {
                        tracing::warn!(error = %crate::pg::server::error_message(&fr.body),
                            "a statement the router sent before the client's failed");
                    }
                }
                if f == b'Z' {
                    if let Some(fr) = &forward {
                        a.status = fr.body.first().copied().unwrap_or(b'I');
                    }
                    a.pending.pop_front();
                }
                // Notices and parameter changes of the router's own
                // statements are not the client's.
                return Ok(());
            }
            match f {
                b'C' if p.drop_tags > 0 => {
                    p.drop_tags -= 1;
                    forward = None;
                    if p.drop_tags == 0 {
                        if let Some(name) = p.confirm_on_tag.take() {
                            p.unconfirmed.retain(|n| *n != name);
                        }
                    }
                }
                b'1' | b'3' => match p.rewrites.pop_front() {
                    None | Some(Rewrite::Keep) => {}
                    Some(Rewrite::Confirm(name)) => p.unconfirmed.retain(|n| *n != name),
                    Some(Rewrite::Drop(name)) => {
                        if let Some(name) = name {
                            p.unconfirmed.retain(|n| *n != name);
                        }
                        forward = None;
                    }
                    Some(Rewrite::AsParseComplete) => forward = Some(codec::empty(b'1')),
                },
                b'E' => {
                    p.failed = true;
                    for n in p.unconfirmed.drain(..) {
                        a.conn.conn.prepared.remove(&n);
                    }
                    if let Some(e) = &p.raised {
                        forward = Some(e.frame());
                    }
                }
                b'Z' => {
                    if let Some(fr) = &forward {
                        a.status = fr.body.first().copied().unwrap_or(b'I');
                    }
                    if let Some(done) = a.pending.pop_front() {
                        let m = &self.app.metrics;
                        let outcome = if done.failed {
                            "statement_failed"
                        } else {
                            "ok"
                        };
                        m.request("postgres", &self.keyspace, "statement", &a.shard, outcome);
                        if let Some(t) = done.started {
                            m.duration(&a.shard, t.elapsed().as_secs_f64());
                        }
                        if !done.failed {
                            if done.clears_sets {
                                self.sets.clear();
                            }
                            self.sets.extend(done.sets);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(f) = forward {
            self.io.queue(&f);
        }
        let more = self
            .attached
            .as_ref()
            .is_some_and(|a| codec::peek_complete(&a.conn.conn.rbuf));
        if !more || self.io.wbuf.len() > 64 * 1024 {
            self.io.flush().await?;
        }
        Ok(())
    }
}

/// Puts a server session back in its pool, reset first when `dirty`
/// (closed if the reset fails).
pub(super) fn give_back(mut conn: RawConn, pool: RawPool, dirty: bool) {
    if !dirty {
        pool.put(conn);
        return;
    }
    tokio::spawn(async move {
        match conn.conn.simple(RESET).await {
            Ok(Ok(b'I')) => {
                // `RESET ALL` dropped the version claim too, and
                // `DEALLOCATE ALL` every prepared statement, the HTTP
                // front end's as well.
                conn.conn.forget_session();
                pool.put(conn);
            }
            Ok(other) => {
                tracing::warn!(?other, "a server session did not reset; closed");
            }
            Err(e) => tracing::debug!(error = %e, "a server session closed while resetting"),
        }
    });
}

pub(super) async fn read_server(server: Option<&mut RawConn>) -> Result<Frame, ServerError> {
    match server {
        Some(c) => c.conn.read().await,
        None => std::future::pending().await,
    }
}

/// The client's batch as the server must see it: prepared statements
/// renamed, and prepared first where the server session lacks them.
pub(super) fn rewrite_batch(
    batch: &[Frame],
    statements: &mut HashMap<String, ClientStatement>,
    a: &mut Attached,
    p: &mut Pending,
) -> std::io::Result<BytesMut> {
    // Sized for the batch as it came (a rewrite changes a name or two):
    // one allocation, no growing.
    let size: usize = batch.iter().map(|f| f.body.len() + 5).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    for f in batch {
        match f.tag {
            b'P' => {
                let name = messages::parse_name(&f.body)?;
                match statements.get(name).filter(|_| !name.is_empty()) {
                    Some(s) => {
                        if a.conn.conn.prepared.touch(&s.server_name) {
                            messages::target_frame(b'C', b'P', NO_PORTAL).encode(&mut out);
                            p.rewrites.push_back(Rewrite::AsParseComplete);
                        } else {
                            if let Some(evicted) = a
                                .conn
                                .conn
                                .prepared
                                .insert(s.server_name.clone(), STATEMENTS_PER_SERVER)
                            {
                                messages::target_frame(b'C', b'S', &evicted).encode(&mut out);
                                p.rewrites.push_back(Rewrite::Drop(None));
                            }
                            s.parse.frame_as(&s.server_name).encode(&mut out);
                            p.rewrites
                                .push_back(Rewrite::Confirm(s.server_name.clone()));
                            p.unconfirmed.push(s.server_name.clone());
                        }
                    }
                    None => {
                        f.encode(&mut out);
                        p.rewrites.push_back(Rewrite::Keep);
                    }
                }
            }
            b'B' => {
                let name = messages::bind_statement(&f.body)?;
                match statements.get(name).filter(|_| !name.is_empty()) {
                    Some(s) => {
                        ensure_on(&mut a.conn.conn.prepared, s, &mut out, p);
                        let b = Bind::read(&f.body)?;
                        b.frame_for(&f.body, &s.server_name).encode(&mut out);
                    }
                    None => f.encode(&mut out),
                }
            }
            b'D' => {
                let (kind, name) = messages::target(&f.body)?;
                match statements
                    .get(&name)
                    .filter(|_| kind == b'S' && !name.is_empty())
                {
                    Some(s) => {
                        ensure_on(&mut a.conn.conn.prepared, s, &mut out, p);
                        messages::target_frame(b'D', b'S', &s.server_name).encode(&mut out);
                    }
                    None => f.encode(&mut out),
                }
            }
            b'C' => {
                let (kind, name) = messages::target(&f.body)?;
                if kind == b'S' && !name.is_empty() {
                    // The server keeps it for other clients: a no-op close.
                    statements.remove(&name);
                    messages::target_frame(b'C', b'P', NO_PORTAL).encode(&mut out);
                } else {
                    f.encode(&mut out);
                }
                p.rewrites.push_back(Rewrite::Keep);
            }
            _ => f.encode(&mut out),
        }
    }
    Ok(out)
}

/// Prepares `s` on the server unless it has it (the answer dropped).
pub(super) fn ensure_on(
    prepared: &mut crate::pg::server::Prepared,
    s: &ClientStatement,
    out: &mut BytesMut,
    p: &mut Pending,
) {
    if prepared.touch(&s.server_name) {
        return;
    }
    if let Some(evicted) = prepared.insert(s.server_name.clone(), STATEMENTS_PER_SERVER) {
        messages::target_frame(b'C', b'S', &evicted).encode(out);
        p.rewrites.push_back(Rewrite::Drop(None));
    }
    s.parse.frame_as(&s.server_name).encode(out);
    p.rewrites
        .push_back(Rewrite::Drop(Some(s.server_name.clone())));
    p.unconfirmed.push(s.server_name.clone());
}
