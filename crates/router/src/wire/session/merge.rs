//! Keyless reads of a wire session run on every shard and merged (see
//! [`crate::wire::fanout`]), in either protocol.

use std::time::Instant;

use shardline_api::router::ShardKeyValue;

use super::route::no_key_error;
use super::{Run, Session, SessionEnd};
use crate::auth::{admit_app, Admission};
use crate::pg::frame::Frame;
use crate::wire::analyze::{Analysis, FanOut};
use crate::wire::codec::{self, WireError};
use crate::wire::fanout;

impl Session {
    /// Counts a fan-out in `router_requests_total` (shard label empty:
    /// every shard ran it).
    fn count_fan_out(&self, frames: &[Frame]) {
        let failed = frames.iter().any(|f| f.tag == b'E');
        let outcome = if failed { "statement_failed" } else { "ok" };
        self.app
            .metrics
            .request("postgres", &self.keyspace, "fanout", "", outcome);
    }

    /// The merge shape of a keyless read, once it may run: it has one,
    /// the merge can do it, and the app's quotas let it in (the fan-out
    /// counts as one request in flight while the admission is held).
    fn admit_fan_out<'a>(
        &self,
        analysis: &'a Analysis,
    ) -> Result<(&'a FanOut, Admission), WireError> {
        let spec = analysis.fanout.as_ref().ok_or_else(no_key_error)?;
        fanout::check(spec)?;
        let admission = admit_app(
            &self.app,
            Some(&self.keyspace),
            &ShardKeyValue::Text(self.app.key_prefix.clone().unwrap_or_default()),
            &self.shared.ctx.quotas,
            Instant::now(),
        )
        .map_err(|r| WireError::from_router(&r.error))?;
        Ok((spec, admission))
    }

    /// Runs a keyless read on every shard and answers the merged rows.
    pub(super) async fn fan_out(
        &mut self,
        sql: &str,
        analysis: &Analysis,
    ) -> Result<(), SessionEnd> {
        let (spec, _admission) = match self.admit_fan_out(analysis) {
            Ok(admitted) => admitted,
            Err(e) => return self.refuse(e, true).await,
        };
        let routing = self.shared.routing.get();
        match fanout::run(&routing, &self.keyspace, &self.app.tenant, sql, spec).await {
            Ok(frames) => {
                self.count_fan_out(&frames);
                for f in &frames {
                    self.io.queue(f);
                }
                self.io.queue(&codec::ready(self.status()));
                self.io.flush().await?;
                Ok(())
            }
            Err(e) => self.refuse(e, true).await,
        }
    }

    /// Runs a keyless read of an extended batch (ended by `Sync`) on
    /// every shard, and answers each of the batch's messages as
    /// PostgreSQL would, with the merged rows.
    pub(super) async fn fan_out_batch(
        &mut self,
        batch: &[Frame],
        run: &Run,
    ) -> Result<(), SessionEnd> {
        let (spec, _admission) = match self.admit_fan_out(&run.analysis) {
            Ok(admitted) => admitted,
            Err(e) => return self.refuse_batch(e, true).await,
        };
        let routing = self.shared.routing.get();
        let ext = match fanout::run_extended(
            &routing,
            &self.keyspace,
            &self.app.tenant,
            &run.parse,
            &run.bind,
            &run.bind_body,
            spec,
        )
        .await
        {
            Ok(ext) => ext,
            Err(e) => return self.refuse_batch(e, true).await,
        };
        self.count_fan_out(&ext.result);
        let mut failed = false;
        for f in batch {
            if failed && f.tag != b'S' {
                continue;
            }
            match f.tag {
                b'P' => self.io.queue(&codec::empty(b'1')),
                b'B' => self.io.queue(&codec::empty(b'2')),
                b'C' => self.io.queue(&codec::empty(b'3')),
                b'D' if f.body.first() == Some(&b'S') => {
                    let params = ext
                        .parameters
                        .clone()
                        .unwrap_or_else(|| codec::parameter_description(&[]));
                    self.io.queue(&params);
                    self.io
                        .queue(ext.statement.as_ref().unwrap_or(&codec::empty(b'n')));
                }
                b'D' => self
                    .io
                    .queue(ext.portal.as_ref().unwrap_or(&codec::empty(b'n'))),
                b'E' => {
                    for r in &ext.result {
                        failed |= r.tag == b'E';
                        self.io.queue(r);
                    }
                }
                b'S' => self.io.queue(&codec::ready(self.status())),
                _ => {}
            }
        }
        self.io.flush().await?;
        Ok(())
    }
}
