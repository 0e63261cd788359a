//! Planning a job from a request: validation, the moves, and the map
//! before and after (computed with the shard map's split, merge and
//! reassign).

use std::collections::HashSet;

use shardline_api::manager::ReshardRequest;
use shardline_core::catalog::{RangeMove, ReshardJob, ReshardKind, ReshardPhase};
use shardline_core::{Catalog, KeyRange, ShardMap};

use super::plan_tenant;
use super::state::{idle_keyspace, not_taken};
use crate::error::ServiceError;

fn invalid_map(e: shardline_core::shardmap::ShardMapError) -> ServiceError {
    ServiceError::Invalid(e.to_string())
}

/// Turns a request into a job (phase Prepare) against `cat`: the moves,
/// the map before and after. Pure, so tests can plan a job too.
pub fn plan_job(cat: &Catalog, req: &ReshardRequest, id: &str) -> Result<ReshardJob, ServiceError> {
    if req.kind == ReshardKind::TenantMove {
        return plan_tenant::plan_tenant_move(cat, req, id);
    }
    let ks_name = &req.keyspace;
    let map = idle_keyspace(cat, ks_name)?;
    if req.targets.is_empty() {
        return Err(ServiceError::Invalid(
            "targets: name at least one shard".into(),
        ));
    }
    let source = &req.source;
    if !cat.shards.contains_key(source) {
        return Err(ServiceError::NotFound(format!("no shard {source}")));
    }
    let owned: Vec<KeyRange> = map.ranges_of(source).collect();
    if owned.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "shard {source} owns no range of keyspace {ks_name}"
        )));
    }
    let mut seen = HashSet::new();
    for t in &req.targets {
        if t == source || !seen.insert(t) {
            return Err(ServiceError::Invalid(format!(
                "targets: {t} is the source or listed twice"
            )));
        }
        check_target(cat, req.kind, ks_name, t)?;
    }
    if req.kind != ReshardKind::Split && req.targets.len() != 1 {
        return Err(ServiceError::Invalid(format!(
            "targets: a {:?} has exactly one target",
            req.kind
        )));
    }
    if req.kind != ReshardKind::Split && !req.at.is_empty() {
        return Err(ServiceError::Invalid(
            "at: only a split takes split points".into(),
        ));
    }
    let (moves, to_map) = match req.kind {
        ReshardKind::Split | ReshardKind::TenantMove => {
            plan_split(&map, source, &owned, &req.targets, &req.at)?
        }
        ReshardKind::Move => {
            let target = &req.targets[0];
            let mut to = map.clone();
            let mut moves = Vec::new();
            for r in &owned {
                to = to.reassign(*r, target).map_err(invalid_map)?;
                moves.push(RangeMove {
                    range: *r,
                    from: source.clone(),
                    to: target.clone(),
                });
            }
            (moves, to)
        }
        ReshardKind::Merge => {
            let target = &req.targets[0];
            if owned.len() != 1 {
                return Err(ServiceError::Conflict(format!(
                    "shard {source} owns {} ranges; a merge takes a shard owning one",
                    owned.len()
                )));
            }
            let r = owned[0];
            let ranges = map.ranges();
            let i = ranges.iter().position(|x| x.range == r).unwrap_or_default();
            let below = i.checked_sub(1).and_then(|j| ranges.get(j));
            let above = ranges.get(i + 1);
            let to = match (below, above) {
                (Some(b), _) if &b.shard == target => {
                    map.merge(b.range, r, target).map_err(invalid_map)?
                }
                (_, Some(a)) if &a.shard == target => {
                    map.merge(r, a.range, target).map_err(invalid_map)?
                }
                _ => {
                    return Err(ServiceError::Conflict(format!(
                        "range {r} of shard {source} is not adjacent to a range of shard {target}"
                    )))
                }
            };
            let moves = vec![RangeMove {
                range: r,
                from: source.clone(),
                to: target.clone(),
            }];
            (moves, to)
        }
    };
    Ok(ReshardJob {
        id: id.to_string(),
        kind: req.kind,
        keyspace: ks_name.clone(),
        moves,
        from_map: map,
        to_map,
        phase: ReshardPhase::Prepare,
        error: None,
        cutover_pause_ms: None,
        rows_copied: None,
        copy_ms: None,
        verified: Default::default(),
        tenant: None,
        to_keyspace: None,
        created_at: crate::time::now_rfc3339(),
    })
}

fn check_target(
    cat: &Catalog,
    kind: ReshardKind,
    keyspace: &str,
    id: &str,
) -> Result<(), ServiceError> {
    let Some(shard) = cat.shards.get(id) else {
        return Err(ServiceError::NotFound(format!(
            "no shard {id}; register it first"
        )));
    };
    match (&shard.keyspace, kind) {
        (None, ReshardKind::Merge) => {
            return Err(ServiceError::Conflict(format!(
                "shard {id} is not in keyspace {keyspace}; a merge target owns a range of it"
            )))
        }
        (Some(k), ReshardKind::Split) if k == keyspace => {
            return Err(ServiceError::Conflict(format!(
                "shard {id} is in keyspace {keyspace} already; split onto new shards, or move"
            )))
        }
        (Some(k), _) if k != keyspace => {
            return Err(ServiceError::Conflict(format!(
                "shard {id} serves keyspace {k}"
            )))
        }
        _ => {}
    }
    not_taken(cat, shard, keyspace)
}

/// A split of the source's only range: the source keeps the lowest part,
/// target i the part i + 1 (even parts unless `at` gives the points).
fn plan_split(
    map: &ShardMap,
    source: &str,
    owned: &[KeyRange],
    targets: &[String],
    at: &[String],
) -> Result<(Vec<RangeMove>, ShardMap), ServiceError> {
    if owned.len() != 1 {
        return Err(ServiceError::Conflict(format!(
            "shard {source} owns {} ranges; split a shard owning one (or move its ranges)",
            owned.len()
        )));
    }
    let range = owned[0];
    let parts: Vec<KeyRange> = if at.is_empty() {
        range.split_even(targets.len() + 1)
    } else {
        if at.len() != targets.len() {
            return Err(ServiceError::Invalid(format!(
                "at: give one split point per target ({} targets, {} points)",
                targets.len(),
                at.len()
            )));
        }
        let mut points = Vec::with_capacity(at.len());
        for p in at {
            let v = (p.len() == 16)
                .then(|| u64::from_str_radix(p, 16).ok())
                .flatten()
                .ok_or_else(|| ServiceError::Invalid(format!("at: {p:?} is not 16 hex digits")))?;
            points.push(v);
        }
        let mut parts = Vec::new();
        let mut rest = range;
        for v in points {
            let (lo, hi) = rest
                .split_at(v)
                .map_err(|e| ServiceError::Invalid(format!("at: {e} (range {rest})")))?;
            parts.push(lo);
            rest = hi;
        }
        parts.push(rest);
        parts
    };
    if parts.len() != targets.len() + 1 {
        return Err(ServiceError::Invalid(format!(
            "range {range} is too small to split {} ways",
            targets.len() + 1
        )));
    }
    let mut to = map.clone();
    // From the top: each split takes the source's remaining lower range.
    for i in (1..parts.len()).rev() {
        let current = KeyRange {
            start: range.start,
            end: parts[i].end,
        };
        to = to
            .split(current, parts[i].start, &targets[i - 1])
            .map_err(invalid_map)?;
    }
    let moves = parts[1..]
        .iter()
        .zip(targets)
        .map(|(r, t)| RangeMove {
            range: *r,
            from: source.to_string(),
            to: t.clone(),
        })
        .collect();
    Ok((moves, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::state::fixtures::catalog_of;

    fn catalog() -> Catalog {
        catalog_of(&[
            ("s0", Some("ks"), None),
            ("s1", Some("ks"), None),
            ("s2", None, None),
        ])
    }

    fn req(kind: ReshardKind, source: &str, targets: &[&str]) -> ReshardRequest {
        ReshardRequest {
            keyspace: "ks".into(),
            kind,
            source: source.into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            at: vec![],
            tenant: None,
            to_keyspace: None,
        }
    }

    #[test]
    fn plans_split_merge_move() {
        let cat = catalog();
        let job = plan_job(&cat, &req(ReshardKind::Split, "s1", &["s2"]), "j").unwrap();
        assert_eq!(job.moves.len(), 1);
        assert_eq!(job.moves[0].range.to_string(), "c0-");
        assert_eq!(job.to_map.ranges().len(), 3);
        assert_eq!(job.to_map.lookup(u64::MAX).shard, "s2");
        let job = plan_job(&cat, &req(ReshardKind::Merge, "s1", &["s0"]), "j").unwrap();
        assert_eq!(job.to_map.ranges().len(), 1);
        let job = plan_job(&cat, &req(ReshardKind::Move, "s1", &["s2"]), "j").unwrap();
        assert_eq!(job.to_map.ranges()[1].shard, "s2");
        let mut three = req(ReshardKind::Split, "s1", &["s2"]);
        three.at = vec!["9000000000000000".into()];
        let job = plan_job(&cat, &three, "j").unwrap();
        assert_eq!(job.moves[0].range.to_string(), "90-");
    }

    #[test]
    fn refuses_bad_requests() {
        let cat = catalog();
        let e = plan_job(&cat, &req(ReshardKind::Split, "s1", &["s0"]), "j").unwrap_err();
        assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
        let e = plan_job(&cat, &req(ReshardKind::Merge, "s1", &["s2"]), "j").unwrap_err();
        assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
        let e = plan_job(&cat, &req(ReshardKind::Split, "nope", &["s2"]), "j").unwrap_err();
        assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
        let e = plan_job(&cat, &req(ReshardKind::Split, "s1", &[]), "j").unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
        let mut bad = req(ReshardKind::Split, "s1", &["s2"]);
        bad.at = vec!["zz".into()];
        assert!(matches!(
            plan_job(&cat, &bad, "j").unwrap_err(),
            ServiceError::Invalid(_)
        ));
        bad.at = vec!["1000000000000000".into()];
        assert!(matches!(
            plan_job(&cat, &bad, "j").unwrap_err(),
            ServiceError::Invalid(_)
        ));
    }
}
