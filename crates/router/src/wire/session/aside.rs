//! An extended-protocol batch that runs nothing (`Parse`, `Describe`,
//! `Close`: drivers describe a statement before its first use) sent
//! while the client's `BEGIN` waits for its first statement: answered on
//! a server session of any shard, apart, so the transaction is not
//! pinned to that shard before a statement names its key.

use bytes::BytesMut;

use super::relay::give_back;
use super::route::Opened;
use super::{Session, SessionEnd, NO_PORTAL};
use crate::pg::frame::Frame;
use crate::wire::codec::{self, WireError};
use crate::wire::messages::{self, Parse};

impl Session {
    /// Whether `batch` only prepares, describes and closes statements.
    pub(super) fn describes_only(batch: &[Frame]) -> bool {
        batch.iter().all(|f| {
            matches!(f.tag, b'P' | b'C' | b'S' | b'H')
                || (f.tag == b'D' && f.body.first() == Some(&b'S'))
        })
    }

    /// Answers a describe-only batch on a server session of any shard,
    /// statements as the unnamed one there.
    pub(super) async fn describe_aside(
        &mut self,
        batch: &[Frame],
        sync: bool,
    ) -> Result<(), SessionEnd> {
        let shard = match self.shared.routing.get().any_shard(&self.keyspace) {
            Some(s) => s.to_string(),
            None => {
                let e = WireError::error(
                    "57P03",
                    format!("keyspace \"{}\" has no shards yet", self.keyspace),
                );
                return self.refuse_batch(e, sync).await;
            }
        };
        let mut out = BytesMut::new();
        for f in batch {
            match f.tag {
                b'P' => match Parse::read(&f.body) {
                    Ok(p) => p.frame_as("").encode(&mut out),
                    Err(e) => {
                        return Err(SessionEnd::Fatal(WireError::fatal("08P01", e.to_string())))
                    }
                },
                b'D' => messages::target_frame(b'D', b'S', "").encode(&mut out),
                b'C' => {
                    if let Ok((b'S', name)) = messages::target(&f.body) {
                        self.statements.remove(&name);
                    }
                    // The server's statements are the router's: a no-op.
                    messages::target_frame(b'C', b'P', NO_PORTAL).encode(&mut out);
                }
                _ => {}
            }
        }
        Frame::new(b'S', bytes::Bytes::new()).encode(&mut out);
        let mut o = match self.open(&shard, None, true, None).await {
            Ok(o) => o,
            Err(e) => return self.refuse_batch(e, sync).await,
        };
        let answers = match ask(&mut o, &out).await {
            Ok(a) => a,
            Err(e) => {
                let e = WireError::error("57P03", format!("shard {shard} is unavailable: {e}"));
                return self.refuse_batch(e, sync).await;
            }
        };
        let Opened {
            conn, pool, dirty, ..
        } = o;
        give_back(conn, pool, dirty);
        let mut failed = false;
        for f in answers {
            failed |= f.tag == b'E';
            self.io.queue(&f);
        }
        if failed {
            // As PostgreSQL: the rest of the batch is skipped to `Sync`,
            // and the transaction block is failed.
            self.local_failed = true;
            if !sync {
                self.skip_to_sync = true;
            }
        }
        if sync {
            self.io.queue(&codec::ready(self.status()));
        }
        self.io.flush().await?;
        Ok(())
    }
}

/// Reads the injected statements' answers, sends `out`, and returns
/// the answers to it up to (without) its `ReadyForQuery`.
async fn ask(o: &mut Opened, out: &[u8]) -> Result<Vec<Frame>, crate::pg::server::ServerError> {
    o.conn.conn.send(out).await?;
    let mut ready = 0;
    let mut answers = Vec::new();
    loop {
        let f = o.conn.conn.read().await?;
        if f.tag == b'Z' {
            ready += 1;
            if ready > o.injected {
                return Ok(answers);
            }
            continue;
        }
        if ready == o.injected && !matches!(f.tag, b'N' | b'S') {
            answers.push(f);
        }
    }
}
