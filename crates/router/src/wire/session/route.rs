//! Where a wire statement goes: its keys (comment, key columns, `INSERT`
//! rows, `SET [LOCAL] shardline.shard_key`), the shard they route to, and
//! attaching a server session there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardline_api::router::ShardKeyValue;
use shardline_core::fence::{claim, claim_key, CLAIM_SETTING};
use shardline_core::KeyType;
use tokio_util::sync::CancellationToken;

use super::{fence_watch, Attached, Choice, Exec, Pending, Session};
use crate::auth::{admit_app, key_has_prefix, Admission, AppAuth};
use crate::error::{Reason, RouterError};
use crate::pg::rawpool::{RawConn, RawPool};
use crate::wire::analyze::{comment_key, Analysis, KeyRef, Kind};
use crate::wire::codec::WireError;

impl Session {
    /// Where statements go (see the module docs).
    pub(super) fn choose(&self, execs: &[Exec<'_>]) -> Result<Choice, WireError> {
        if self.local_failed {
            // A transaction the router failed before any server took part.
            return Err(WireError::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let routing = self.shared.routing.get();
        let ks = routing.keyspaces.get(&self.keyspace).ok_or_else(|| {
            WireError::error("3D000", format!("keyspace \"{}\" is gone", self.keyspace))
        })?;
        let fallback = self.local_key.as_ref().or(self.session_key.as_ref());
        let mut shards: Vec<(String, ShardKeyValue)> = Vec::new();
        let mut keyless_data = false;
        let mut keyless_sharded = false;
        for e in execs {
            let mut keys = statement_keys(e, ks.key_type);
            if keys.is_empty() {
                if let Some(k) = fallback {
                    keys.push(k.clone());
                }
            }
            if keys.is_empty() {
                keyless_data |= !e.analysis.catalog_only;
                keyless_sharded |= e.analysis.touches_sharded;
                continue;
            }
            for k in keys {
                let key = ShardKeyValue::Text(k);
                check_prefix(&self.app, &key)?;
                let route = routing
                    .route(&self.keyspace, &key)
                    .map_err(|e| WireError::from_router(&e))?;
                let shard = route.range.shard.clone();
                if !shards.iter().any(|(s, _)| *s == shard) {
                    shards.push((shard, key));
                }
            }
        }
        if shards.len() > 1 {
            if let Some(parts) = self.split_plan(execs, &routing)? {
                return Ok(Choice::Split(parts));
            }
            return Err(WireError::error(
                "0A000",
                format!(
                    "the statements name keys on {} shards; one shard at a time",
                    shards.len()
                ),
            )
            .with_hint("send statements for one shard key at a time, or SET shardline.shard_key"));
        }
        match (shards.pop(), &self.attached) {
            (Some((shard, _)), Some(a)) if a.shard == shard => Ok(Choice::Here),
            (Some((shard, _)), Some(a)) if a.status != b'I' => Err(WireError::error(
                "0A000",
                format!(
                    "this transaction runs on shard {}; a statement for shard {shard} cannot join it",
                    a.shard
                ),
            )
            .with_hint("cross-shard transactions are not supported; commit first")),
            (Some((shard, key)), _) => Ok(Choice::Shard {
                shard,
                key: Some(key),
            }),
            // A sharded table without a key where a server session is
            // attached (a transaction, or statements still unanswered):
            // run there, it would see that shard's rows only.
            (None, Some(a)) if keyless_sharded => Err(WireError::error(
                "0A000",
                format!(
                    "this session's statements run on shard {} until its transaction ends; a \
                     statement without a shard key there would see only that shard's rows",
                    a.shard
                ),
            )
            .with_hint(
                "name the key (WHERE key = ..., /* shardline.shard_key='...' */ or SET LOCAL \
                 shardline.shard_key), or run the statement outside the transaction",
            )),
            (None, Some(_)) => Ok(Choice::Here),
            (None, None) if keyless_data => match execs {
                // Also in a transaction no server has joined yet (drivers
                // that are not in autocommit open one before every
                // statement): the read leaves it unpinned, each shard
                // reading in its own snapshot, as it would outside one.
                [e] if e.analysis.kind == Kind::Read && e.analysis.fanout.is_some() =>
                {
                    Ok(Choice::FanOut)
                }
                [e] if e.analysis.copy.is_some() && !self.in_transaction() => Ok(Choice::Copy),
                _ => Err(no_key_error()),
            },
            (None, None) => {
                // Catalogs only: any shard of the keyspace.
                let shard = routing
                    .any_shard(&self.keyspace)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        WireError::error("57P03", format!("keyspace \"{}\" has no shards yet", self.keyspace))
                    })?;
                Ok(Choice::Shard { shard, key: None })
            }
        }
    }

    /// Attaches a server session of `choice`'s shard (waiting out a
    /// failover or a cutover of its range within the hold), first giving
    /// back the one attached to another shard.
    pub(super) async fn go_to(&mut self, choice: Choice, read: bool) -> Result<(), WireError> {
        let (shard, key) = match choice {
            Choice::Here => {
                if !read {
                    if self.shared.ctx.contact.cut_off() {
                        return Err(lease_ran_out());
                    }
                    if let Some(a) = self.attached.as_mut() {
                        a.writes = true;
                    }
                }
                return Ok(());
            }
            Choice::FanOut | Choice::Split(_) | Choice::Copy => return Ok(()),
            Choice::Shard { shard, key } => (shard, key),
        };
        if self.attached.is_some() {
            self.drain().await.map_err(|e| {
                WireError::error("08006", format!("lost the server connection: {e}"))
            })?;
            self.release_if_idle();
        }
        let begin = self.pending_begin.take();
        let opened = self.open(&shard, key, read, begin).await?;
        self.set_cancel(Some(opened.conn.conn.cancel.clone()));
        let mut pending = std::mem::take(&mut self.spare_pending);
        for _ in 0..opened.injected {
            pending.push_back(Pending {
                injected: true,
                closed: true,
                ..Pending::default()
            });
        }
        self.attached = Some(Attached {
            conn: opened.conn,
            pool: opened.pool,
            shard: opened.shard,
            primary: opened.primary,
            fence: fence_watch(&opened.fence),
            lease: None,
            writes: !read,
            status: b'I',
            pending,
            dirty: opened.dirty,
            cancelled: None,
            _admission: opened.admission,
        });
        Ok(())
    }

    /// A server session of `shard` for the client, once the shard is not
    /// held (a failover, or a cutover of `key`'s range, waited out within
    /// the hold) and the app's quotas let it in. Statements the router
    /// puts first — the resharding claim, the client's session settings,
    /// `begin` — are sent, their answers still to be read
    /// ([`Opened::injected`]).
    pub(super) async fn open(
        &mut self,
        shard: &str,
        key: Option<ShardKeyValue>,
        read: bool,
        begin: Option<String>,
    ) -> Result<Opened, WireError> {
        let ctx = Arc::clone(&self.shared.ctx);
        if !read && ctx.contact.cut_off() {
            return Err(lease_ran_out());
        }
        let deadline = Instant::now() + ctx.failover_hold;
        let (routing, target) = loop {
            let routing = self.shared.routing.get();
            let (id, frozen) = match &key {
                Some(key) => {
                    let route = routing
                        .route(&self.keyspace, key)
                        .map_err(|e| WireError::from_router(&e))?;
                    (route.range.shard.clone(), route.frozen)
                }
                None => (shard.to_string(), false),
            };
            let target = routing.shards.get(&id).cloned();
            let held = frozen || target.as_ref().is_none_or(|t| t.failover.is_some());
            if !held {
                if let Some(t) = target {
                    break (routing, t);
                }
            }
            if Instant::now() >= deadline {
                return Err(WireError::error(
                    "57P03",
                    format!("shard {shard} is failing over or its keys are being moved; retry"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Keyless statements (catalogs only) pass the prefix check.
        let key = key.unwrap_or_else(|| {
            ShardKeyValue::Text(self.app.key_prefix.clone().unwrap_or_default())
        });
        let admission = admit_app(
            &self.app,
            Some(&self.keyspace),
            &key,
            &ctx.quotas,
            Instant::now(),
        )
        .map_err(|r| WireError::from_router(&r.error))?;
        let tenant = &self.app.tenant;
        let pool = target.primary.raw_pool_for(tenant);
        let mut conn = pool.get().await.map_err(|e| {
            tracing::warn!(shard = %target.id, error = %e, "no server session for a wire client");
            WireError::error(
                "57P03",
                format!("shard {} is unavailable; retry", target.id),
            )
        })?;
        // Injected before the client's statements, in the same write.
        let mut injected = Vec::new();
        if conn.conn.map_version != routing.version {
            let value = claim(
                &claim_key(&tenant.role_password),
                conn.conn.cancel.pid,
                routing.version,
            );
            injected.push(format!("SET {CLAIM_SETTING} = '{value}'"));
            conn.conn.map_version = routing.version;
            // What the HTTP front end's reset restores.
            conn.conn.claim = Some(value);
        }
        let dirty = !self.sets.is_empty();
        if dirty {
            injected.push(self.sets.join("; "));
        }
        if let Some(begin) = begin {
            injected.push(begin);
        }
        if !injected.is_empty() {
            let mut out = BytesMut::new();
            for sql in &injected {
                // Each its own query, so one failing cannot skip the rest.
                postgres_protocol::message::frontend::query(sql, &mut out)
                    .map_err(|e| WireError::error("22023", e.to_string()))?;
            }
            if let Err(e) = conn.conn.send(&out).await {
                return Err(WireError::error(
                    "57P03",
                    format!("shard {} is unavailable: {e}", target.id),
                ));
            }
        }
        Ok(Opened {
            conn,
            pool,
            shard: target.id.clone(),
            primary: target.primary.id.clone(),
            fence: target.primary.fence_token(),
            injected: injected.len(),
            dirty,
            admission,
        })
    }
}

/// A write refused while the router counts itself cut off from the
/// manager (see [`crate::state::Contact::cut_off`]).
fn lease_ran_out() -> WireError {
    WireError::from_router(&RouterError::from(Reason::CutOff))
}

/// A server session [`Session::open`] got for the client.
pub(super) struct Opened {
    pub conn: RawConn,
    pub pool: RawPool,
    pub shard: String,
    /// The primary's instance id.
    pub primary: String,
    /// Cancelled when a failover begins to replace that primary: nothing
    /// the session runs from then on may be answered as a success.
    pub fence: CancellationToken,
    /// Statements the router sent first, each answered up to its own
    /// `ReadyForQuery`.
    pub injected: usize,
    /// The client's session settings were applied: reset before reuse.
    pub dirty: bool,
    pub admission: Admission,
}

/// The keys one statement names, in precedence order: its comment, the
/// key columns it compares, its `INSERT` rows.
pub(super) fn statement_keys(e: &Exec<'_>, key_type: KeyType) -> Vec<String> {
    if e.sql.contains("shardline.shard_key") {
        if let Some(k) = comment_key(e.sql) {
            return vec![k];
        }
    }
    let resolve = |r: &KeyRef| resolve_key(r, e.params, key_type);
    if e.analysis.unkeyed {
        // Some table is read or written without a key: the keys found
        // do not cover every row the statement needs.
        return Vec::new();
    }
    let mut out: Vec<String> = e.analysis.keys.iter().filter_map(resolve).collect();
    if out.is_empty() {
        out = e
            .analysis
            .insert_row_keys
            .iter()
            .filter_map(resolve)
            .collect();
    }
    out.sort();
    out.dedup();
    out
}

/// A key's text: a literal's, or a bound parameter's (text, or binary
/// read by the keyspace's key type).
pub(super) fn resolve_key(
    r: &KeyRef,
    params: Option<&[(i16, Option<bytes::Bytes>)]>,
    key_type: KeyType,
) -> Option<String> {
    match r {
        KeyRef::Literal(s) => Some(s.clone()),
        KeyRef::Param(n) => {
            let (fmt, value) = params?.get(n.checked_sub(1)?)?;
            let v = value.as_ref()?;
            if *fmt == 0 {
                return String::from_utf8(v.to_vec()).ok();
            }
            binary_key(v, key_type)
        }
    }
}

/// A binary parameter as key text, by the keyspace's key type.
pub(super) fn binary_key(v: &[u8], key_type: KeyType) -> Option<String> {
    match key_type {
        KeyType::Bigint => match v.len() {
            8 => Some(i64::from_be_bytes(v.try_into().ok()?).to_string()),
            4 => Some(i32::from_be_bytes(v.try_into().ok()?).to_string()),
            2 => Some(i16::from_be_bytes(v.try_into().ok()?).to_string()),
            _ => None,
        },
        KeyType::Text => String::from_utf8(v.to_vec()).ok(),
        KeyType::Uuid => {
            if v.len() != 16 {
                return None;
            }
            let h: String = v.iter().map(|b| format!("{b:02x}")).collect();
            Some(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
    }
}

pub(super) fn is_read(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Read | Kind::Begin | Kind::Commit | Kind::Rollback | Kind::SetShardKey { .. }
    )
}

/// Whether a statement may leave state in the server session: by its
/// kind, by what the HTTP path's keyword guard sees in its text
/// (`set_config`, `DO`, ...), or because the keyspace may hold code that
/// changes sessions (then every transaction is followed by a reset).
pub(super) fn changes_session(a: &Analysis, code_possible: bool) -> bool {
    code_possible
        || a.parse_error.is_some()
        || a.parts
            .iter()
            .any(|k| matches!(k, Kind::Session | Kind::Other))
        || a.guard_changes_session
}

/// Refuses a key outside the app's key prefix (every key a statement
/// names, not only the one it is routed by).
pub(super) fn check_prefix(app: &AppAuth, key: &ShardKeyValue) -> Result<(), WireError> {
    match &app.key_prefix {
        Some(prefix) if !key_has_prefix(key, prefix) => Err(WireError::error(
            "42501",
            format!("this app's shard keys must start with {prefix:?}"),
        )),
        _ => Ok(()),
    }
}

pub(super) fn no_key_error() -> WireError {
    WireError::error("0A000", "this statement names no shard key").with_hint(
        "compare the table's shard-key column to a value (WHERE key = ...), \
             add /* shardline.shard_key='...' */, or SET shardline.shard_key = '...'",
    )
}

/// A statement that fails with `e`'s SQLSTATE and message.
pub(super) fn raise_sql(e: &WireError) -> String {
    let q = |s: &str| s.replace('\'', "''");
    let hint = e
        .hint
        .as_deref()
        .map(|h| format!(", HINT = '{}'", q(h)))
        .unwrap_or_default();
    format!(
        "DO $shardline$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'{hint}; END$shardline$",
        e.code,
        q(&e.message)
    )
}
