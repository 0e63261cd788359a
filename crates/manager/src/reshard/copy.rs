//! The phases every kind of job shares: change capture on the sources,
//! Copy (every row of the moving ranges, streamed), CatchUp and the
//! application of captured changes to the targets.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use shardline_core::catalog::Tenant;
use shardline_core::KeyRange;
use tokio_util::sync::CancellationToken;

use super::job::{check, db, Ctx, JobError, Plan, Session};
use super::sql::{self, TableMeta};
use crate::failpoints::{failpoint, FAILPOINT_DURING_CATCHUP, FAILPOINT_DURING_COPY};

/// Most catch-up rounds before the cutover drains the rest while frozen.
const MAX_CATCHUP_ROUNDS: usize = 10;

/// Change capture on every source, for the ranges leaving it
/// (idempotent).
pub(super) async fn install_capture(cx: &Ctx, plan: &Plan) -> Result<(), JobError> {
    for source in plan.sources() {
        let ranges = plan.moving_from(&source);
        for tenant in &plan.tenants {
            let client = cx.must_db(plan, &source, tenant).await?;
            for meta in cx.metas(plan, &client, &source, tenant, false).await? {
                sql::install_capture(
                    &client,
                    &plan.job.id,
                    &meta,
                    plan.keyspace.key_type,
                    &ranges,
                )
                .await
                .map_err(db(&source))?;
            }
        }
    }
    Ok(())
}

/// Copy: every row of the moving ranges, from one snapshot per table,
/// in batches (capture is on, so later changes are recorded). Up to
/// [`COPY_PARALLEL`] tables at once, each on sessions of its own: one
/// table's copy leaves a core idle (the source reads while the target
/// waits, and the other way round).
pub(super) async fn copy(cx: &Ctx, plan: &Plan, token: &CancellationToken) -> Result<(), JobError> {
    use futures_util::{StreamExt, TryStreamExt};

    // Again after a restart: capture must precede the snapshot.
    install_capture(cx, plan).await?;
    let id = &plan.job.id;
    let key_type = plan.keyspace.key_type;
    let started = Instant::now();
    cx.update_progress(id, |p| {
        p.rows_copied = 0;
        p.rows_estimated = 0;
        p.copy_ms = None;
    });
    let mut work = Vec::new();
    for source in plan.sources() {
        for tenant in &plan.tenants {
            let src = cx.must_db(plan, &source, tenant).await?;
            for meta in cx.metas(plan, &src, &source, tenant, false).await? {
                for (target, ranges) in plan.routes(&source) {
                    let n = sql::count_in(&src, &meta, key_type, &ranges)
                        .await
                        .map_err(db(&source))?;
                    cx.update_progress(id, |p| p.rows_estimated += n.max(0) as u64);
                    work.push(Part {
                        source: source.clone(),
                        tenant,
                        target,
                        ranges,
                        meta: meta.clone(),
                    });
                }
            }
        }
    }
    let parts: Vec<_> = work
        .into_iter()
        .map(|part| copy_part(cx, plan, token, part))
        .collect();
    futures_util::stream::iter(parts)
        .buffer_unordered(COPY_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    let ms = started.elapsed().as_millis() as u64;
    cx.update_progress(id, |p| p.copy_ms = Some(ms));
    Ok(())
}

/// Tables copied at once.
const COPY_PARALLEL: usize = 2;

/// One table of one tenant, from a source to one of its targets.
struct Part<'a> {
    source: String,
    tenant: &'a Tenant,
    target: String,
    ranges: Vec<KeyRange>,
    meta: TableMeta,
}

/// Copies one part in batches, in one snapshot of the source.
async fn copy_part(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
    part: Part<'_>,
) -> Result<(), JobError> {
    let Part {
        source,
        tenant,
        target,
        ranges,
        meta,
    } = part;
    let id = &plan.job.id;
    let key_type = plan.keyspace.key_type;
    let batch = cx.settings.batch_rows;
    check(token)?;
    let src = cx.must_db(plan, &source, tenant).await?;
    let tgt = cx.must_db(plan, &target, tenant).await?;
    sql::as_replica(&tgt).await.map_err(db(&target))?;
    src.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db(&source))?;
    // Batches cut by primary key in the snapshot, each streamed
    // with COPY straight into the table; a batch finding rows
    // there (copied by an earlier run) goes again through a
    // staging table, inserting only the missing ones.
    let bounds = sql::batch_bounds(&src, &meta, key_type, &ranges, batch)
        .await
        .map_err(db(&source))?;
    let format = sql::copy_format(&src, &tgt, &meta)
        .await
        .map_err(db(&target))?;
    let mut staging = false;
    let mut copied = 0u64;
    for i in 0..=bounds.len() {
        check(token)?;
        let after = i.checked_sub(1).and_then(|j| bounds.get(j));
        let span = (after.map(String::as_str), bounds.get(i).map(String::as_str));
        let copy = |into| sql::copy_batch(&src, &tgt, &meta, key_type, &ranges, span, format, into);
        let n = match copy(sql::CopyInto::Table).await {
            Err(e) if e.is_conflict() => {
                if !staging {
                    sql::create_staging(&tgt, &meta)
                        .await
                        .map_err(db(&target))?;
                    staging = true;
                }
                copy(sql::CopyInto::Staging).await
            }
            other => other,
        }
        .map_err(|e| match e {
            sql::CopyError::Source(e) => db(&source)(e),
            sql::CopyError::Target(e) => db(&target)(e),
        })?;
        copied += n;
        cx.metrics.rows_copied.with(&[id]).inc_by(n);
        cx.update_progress(id, |p| p.rows_copied += n);
        cx.progressed(id);
        // A crash with part of the range copied (test only).
        failpoint(FAILPOINT_DURING_COPY);
        if i < bounds.len() && !cx.settings.batch_pause.is_zero() {
            tokio::time::sleep(cx.settings.batch_pause).await;
        }
    }
    if staging {
        sql::drop_staging(&tgt, &meta).await.map_err(db(&target))?;
    }
    src.batch_execute("COMMIT").await.map_err(db(&source))?;
    tracing::info!(job = %id, tenant = %tenant.id, table = %meta.name, %source,
        %target, rows = copied, "table copied");
    Ok(())
}

/// CatchUp: applies captured changes until few are behind.
pub(super) async fn catch_up(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
) -> Result<(), JobError> {
    let threshold = cx.settings.catchup_threshold;
    for round in 0..MAX_CATCHUP_ROUNDS {
        let behind = apply_changes(cx, plan, token, false, None).await?;
        tracing::info!(job = %plan.job.id, round, behind, "catch-up round");
        if behind < threshold {
            break;
        }
    }
    Ok(())
}

/// Applies captured changes to the targets, batch by batch; with
/// `drain`, until none is left, else until fewer than the threshold.
/// With `changed`, records the row of every change applied (see
/// [`Changed`]). Returns how many are behind.
pub(super) async fn apply_changes(
    cx: &Ctx,
    plan: &Plan,
    token: &CancellationToken,
    drain: bool,
    mut changed: Option<&mut Changed>,
) -> Result<u64, JobError> {
    let id = &plan.job.id;
    let mut total = 0u64;
    for source in plan.sources() {
        for tenant in &plan.tenants {
            let src = cx.must_db(plan, &source, tenant).await?;
            if !sql::has_change_table(&src).await.map_err(db(&source))? {
                continue;
            }
            let metas = cx.metas_by_name(plan, &src, &source, tenant).await?;
            let mut targets: HashMap<String, Session> = HashMap::new();
            let behind = loop {
                check(token)?;
                let changes = sql::read_changes(&src, id, cx.settings.batch_rows)
                    .await
                    .map_err(db(&source))?;
                if changes.is_empty() {
                    break 0;
                }
                apply_batch(cx, plan, &source, tenant, &metas, &changes, &mut targets).await?;
                if let Some(changed) = changed.as_deref_mut() {
                    record_changed(changed, tenant, &changes);
                }
                if !drain {
                    failpoint(FAILPOINT_DURING_CATCHUP);
                }
                let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
                sql::forget_changes(&src, id, &seqs)
                    .await
                    .map_err(db(&source))?;
                cx.progressed(id);
                let behind = sql::changes_behind(&src, id)
                    .await
                    .map_err(db(&source))?
                    .max(0) as u64;
                cx.update_progress(id, |p| p.changes_behind = behind);
                if behind == 0 || (!drain && behind < cx.settings.catchup_threshold) {
                    break behind;
                }
            };
            total += behind;
        }
    }
    cx.update_progress(id, |p| p.changes_behind = total);
    Ok(total)
}

/// Applies one batch of a source's changes (in `seq` order) to the
/// targets of their keys, one transaction per target; `targets`
/// keeps the sessions (in replica mode) between batches. The changes
/// stay in the change table.
pub(super) async fn apply_batch(
    cx: &Ctx,
    plan: &Plan,
    source: &str,
    tenant: &Tenant,
    metas: &HashMap<String, TableMeta>,
    changes: &[sql::Change],
    targets: &mut HashMap<String, Session>,
) -> Result<(), JobError> {
    let moving = plan.moving_from(source);
    let net = sql::net_changes(changes, metas, plan.keyspace.key_type, |h| {
        moving
            .iter()
            .any(|r| r.contains(h))
            .then(|| plan.job.to_map.lookup(h).shard.clone())
    })
    .map_err(JobError::Impossible)?;
    let mut by_target: BTreeMap<String, Vec<(String, sql::Net)>> = BTreeMap::new();
    for ((target, table), n) in net {
        by_target.entry(target).or_default().push((table, n));
    }
    for (target, tables) in by_target {
        if !targets.contains_key(&target) {
            let c = cx.must_db(plan, &target, tenant).await?;
            sql::as_replica(&c).await.map_err(db(&target))?;
            targets.insert(target.clone(), c);
        }
        let Some(client) = targets.get_mut(&target) else {
            continue;
        };
        let tx = client.transaction().await.map_err(db(&target))?;
        for (table, n) in &tables {
            let Some(meta) = metas.get(table) else {
                continue;
            };
            sql::delete_keys(&tx, meta, &n.deletes)
                .await
                .map_err(db(&target))?;
            sql::upsert(&tx, meta, &n.upserts)
                .await
                .map_err(db(&target))?;
        }
        tx.commit().await.map_err(db(&target))?;
    }
    Ok(())
}

/// Rows (JSON) of the changes applied since a cutover's baseline, by
/// (tenant id, table): their primary keys name every moving row that may
/// differ from the baseline's snapshots.
pub(super) type Changed = HashMap<(String, String), Vec<String>>;

/// Adds the rows of `changes` to `changed`.
pub(super) fn record_changed(changed: &mut Changed, tenant: &Tenant, changes: &[sql::Change]) {
    for c in changes {
        changed
            .entry((tenant.id.clone(), c.table.clone()))
            .or_default()
            .push(c.row.clone());
    }
}
