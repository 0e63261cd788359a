//! The cutover's baseline: source and target compared in full before
//! the freeze, so that only the rows changed since are compared while
//! writes are held (the argument: docs/architecture.md, "Online
//! resharding").
//!
//! Each side is read in a snapshot (exported by a REPEATABLE READ
//! transaction that touches no table and stays open until the cutover
//! ends; each read in it is a short transaction of another session, so
//! no table lock is held that the cutover's trigger changes would wait
//! for): first each source's, then the changes
//! visible in it are applied to the targets, then each target's. The
//! sums of every side are compared as the old verification compared
//! them. While held, a side's sums are its snapshot's, minus the rows
//! of the changed keys as the snapshot saw them, plus those rows now:
//! every change to a moving row of a source after its snapshot is
//! captured and applied after the baseline, so its key is among the
//! changed ones; targets are written only by applying changes (their
//! refuse trigger, installed first, keeps other writers out of the
//! moving ranges).

use std::collections::HashMap;

use shardline_core::catalog::{quote_literal, Tenant};
use shardline_core::{KeyRange, KeyType};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::copy::{self, Changed};
use super::job::{check, db, unreachable, Ctx, JobError, Plan, Session};
use super::sql::{self, TableMeta};
use crate::pg;

/// Which role a side plays (a shard could in principle be both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Role {
    Source,
    Target,
}

/// What the cutover compared before the freeze.
#[derive(Default)]
pub(super) struct Baseline {
    /// Per (shard, tenant id, role): the snapshot the sums were taken in.
    snapshots: HashMap<(String, String, Role), Snapshot>,
    /// "rows:checksum" per range, by [`sums_key`].
    sums: HashMap<String, Vec<String>>,
    /// Rows of the changes applied since the snapshots.
    pub(super) changed: Changed,
}

/// A snapshot of one side, exported by `holder`'s open transaction and
/// read by `reader` in transactions of its own.
pub(super) struct Snapshot {
    /// Kept for its transaction (the snapshot lives as long as it).
    _holder: Client,
    id: String,
    reader: Client,
}

impl Baseline {
    /// Keeps the sums a verification before the freeze found, which
    /// the verification while held starts from.
    pub(super) fn keep_sums(&mut self, seen: Verified) {
        self.sums = seen.sides.into_iter().collect();
    }
}

impl Snapshot {
    /// The changes of `job` in the change table as the snapshot sees
    /// them (none without the table), in `seq` order.
    async fn changes(&self, job: &str) -> Result<Vec<sql::Change>, tokio_postgres::Error> {
        self.reader
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&self.id)
            ))
            .await?;
        let changes = match sql::has_change_table(&self.reader).await {
            Ok(true) => sql::read_changes(&self.reader, job, usize::MAX).await,
            Ok(false) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        self.reader.batch_execute("ROLLBACK").await?;
        changes
    }
}

/// Which state a verification compares.
#[derive(Clone, Copy)]
pub(super) enum Stage<'a> {
    /// Before the freeze: each side's snapshot, whole ranges.
    Before(&'a Baseline),
    /// While writes are held: each side now, as its snapshot plus the
    /// changed rows.
    Held(&'a Baseline),
}

fn sums_key(shard: &str, tenant: &str, table: &str, role: Role, ranges: &[KeyRange]) -> String {
    let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    format!("{shard}/{tenant}/{table}/{role:?}/{}", ranges.join(","))
}

impl<'a> Stage<'a> {
    pub(super) fn is_held(self) -> bool {
        matches!(self, Stage::Held(_))
    }

    /// For messages: when the comparison ran.
    pub(super) fn when(self) -> &'static str {
        match self {
            Stage::Before(_) => " before the freeze",
            Stage::Held(_) => " while writes were held",
        }
    }

    /// One side of a verification of `meta` at this stage; `now` is the
    /// plan's session on `shard`.
    pub(super) fn side(
        self,
        (shard, role): (&'a str, Role),
        tenant: &Tenant,
        meta: &TableMeta,
        now: &'a Client,
        ranges: &'a [KeyRange],
    ) -> Result<Side<'a>, JobError> {
        let base = match self {
            Stage::Before(b) | Stage::Held(b) => b,
        };
        let missing = || {
            // Transient: the cutover goes back to catch-up and tries again.
            unreachable(
                shard,
                format!(
                    "no baseline of tenant {} table {} on shard {shard}",
                    tenant.id, meta.name
                ),
            )
        };
        let snapshot = base
            .snapshots
            .get(&(shard.to_string(), tenant.id.clone(), role))
            .ok_or_else(missing)?;
        let key = sums_key(shard, &tenant.id, &meta.name, role, ranges);
        Ok(match self {
            Stage::Before(_) => Side {
                shard,
                session: &snapshot.reader,
                at: Some(&snapshot.id),
                ranges,
                since: None,
                key,
            },
            Stage::Held(b) => Side {
                shard,
                session: now,
                at: None,
                ranges,
                since: Some(Since {
                    snapshot,
                    pre: b.sums.get(&key).ok_or_else(missing)?,
                    changed: b
                        .changed
                        .get(&(tenant.id.clone(), meta.name.clone()))
                        .map_or(&[], Vec::as_slice),
                }),
                key,
            },
        })
    }
}

/// One side of a verification: a shard's session and the ranges counted
/// there.
pub(super) struct Side<'a> {
    shard: &'a str,
    session: &'a Client,
    /// The snapshot `session` reads in, if not its own.
    at: Option<&'a str>,
    ranges: &'a [KeyRange],
    /// While held: the sums are the baseline's, corrected for the rows
    /// changed since.
    since: Option<Since<'a>>,
    /// Where the baseline keeps this side's sums.
    key: String,
}

struct Since<'a> {
    snapshot: &'a Snapshot,
    pre: &'a [String],
    changed: &'a [String],
}

/// Per side, "rows:checksum" of `meta` for each of its ranges: every side
/// at once.
pub(super) async fn side_sums(
    sides: &[Side<'_>],
    meta: &TableMeta,
    key_type: KeyType,
) -> Result<Vec<Vec<String>>, JobError> {
    futures_util::future::try_join_all(sides.iter().map(|s| async move {
        let Some(since) = &s.since else {
            return sql::checksums(s.session, meta, key_type, s.ranges, None, s.at)
                .await
                .map_err(db(s.shard));
        };
        if since.changed.is_empty() {
            return Ok(since.pre.to_vec());
        }
        let keys = Some(since.changed);
        let (now, then) = futures_util::future::try_join(
            sql::checksums(s.session, meta, key_type, s.ranges, keys, None),
            sql::checksums(
                &since.snapshot.reader,
                meta,
                key_type,
                s.ranges,
                keys,
                Some(&since.snapshot.id),
            ),
        )
        .await
        .map_err(db(s.shard))?;
        since
            .pre
            .iter()
            .zip(now.iter().zip(&then))
            .map(|(pre, (now, then))| {
                let (pre, now, then) = (parse_sum(pre)?, parse_sum(now)?, parse_sum(then)?);
                Ok(format!(
                    "{}:{}",
                    pre.0 - then.0 + now.0,
                    pre.1 - then.1 + now.1
                ))
            })
            .collect()
    }))
    .await
}

/// "rows:checksum" as numbers.
pub(super) fn parse_sum(s: &str) -> Result<(i64, i128), JobError> {
    let bad = || JobError::Impossible(format!("unreadable checksum {s:?}"));
    let (n, sum) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        n.parse().map_err(|_| bad())?,
        sum.parse().map_err(|_| bad())?,
    ))
}

/// What a verification found: the sums of each source's part of each
/// range, by verification key (for the job's record), and every side's
/// sums (kept by a baseline).
#[derive(Default)]
pub(super) struct Verified {
    pub(super) parts: std::collections::BTreeMap<String, String>,
    sides: Vec<(String, Vec<String>)>,
}

impl Verified {
    /// Notes the sums of `sides`.
    pub(super) fn note(&mut self, sides: &[Side<'_>], sums: &[Vec<String>]) {
        for (side, sums) in sides.iter().zip(sums) {
            self.sides.push((side.key.clone(), sums.clone()));
        }
    }
}

/// Takes the baseline (see the module's docs): targets guarded,
/// snapshots taken, the changes visible in the sources' snapshots
/// applied. The cutover then has the kind's strategy compare every side
/// in full ([`Stage::Before`]) and keeps the sums ([`Baseline::keep_sums`]);
/// a mismatch fails the job, as one while held does.
pub(super) async fn baseline(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
) -> Result<Baseline, JobError> {
    let id = &plan.job.id;
    let key_type = plan.keyspace.key_type;
    let mut base = Baseline::default();
    // Nothing but the engine (in replica mode) writes to the moving
    // ranges on a target from now on.
    for target in plan.targets() {
        let owned: Vec<KeyRange> = plan.job.from_map.ranges_of(&target).collect();
        for tenant in &plan.tenants {
            let tgt = cx.must_db(plan, &target, tenant).await?;
            for meta in cx.metas(plan, &tgt, &target, tenant, false).await? {
                sql::install_refuse(&tgt, &meta, key_type, &owned)
                    .await
                    .map_err(db(&target))?;
            }
        }
    }
    for source in plan.sources() {
        for tenant in &plan.tenants {
            check(token)?;
            let snap = snapshot(cx, plan, &source, tenant).await?;
            let changes = snap.changes(id).await.map_err(db(&source))?;
            if !changes.is_empty() {
                let src = cx.must_db(plan, &source, tenant).await?;
                let metas = cx.metas_by_name(plan, &src, &source, tenant).await?;
                let mut targets: HashMap<String, Session> = HashMap::new();
                for batch in changes.chunks(cx.settings.batch_rows) {
                    copy::apply_batch(cx, plan, &source, tenant, &metas, batch, &mut targets)
                        .await?;
                    let seqs: Vec<i64> = batch.iter().map(|c| c.seq).collect();
                    sql::forget_changes(&src, id, &seqs)
                        .await
                        .map_err(db(&source))?;
                }
            }
            base.snapshots
                .insert((source.clone(), tenant.id.clone(), Role::Source), snap);
        }
    }
    for target in plan.targets() {
        for tenant in &plan.tenants {
            let snap = snapshot(cx, plan, &target, tenant).await?;
            base.snapshots
                .insert((target.clone(), tenant.id.clone(), Role::Target), snap);
        }
    }
    Ok(base)
}

/// A snapshot of a tenant database on `shard`, taken now.
async fn snapshot(
    cx: &Ctx,
    plan: &Plan,
    shard: &str,
    tenant: &Tenant,
) -> Result<Snapshot, JobError> {
    let connect = || async {
        pg::connect_db(
            plan.dsn(shard)?,
            &tenant.pg_name(),
            cx.settings.connect_timeout,
        )
        .await
        .map_err(|e| unreachable(shard, e))
    };
    let (holder, reader) = (connect().await?, connect().await?);
    holder
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db(shard))?;
    let id: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(db(shard))?
        .get(0);
    Ok(Snapshot {
        _holder: holder,
        id,
        reader,
    })
}
