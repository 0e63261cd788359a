//! Keys whose range is moving to another shard (online resharding).
//!
//! - At cutover the manager freezes the moving ranges in the catalog
//!   (`Keyspace.frozen`). A request whose key hashes into a frozen range
//!   is held, at no cost, for a routing table in which it no longer is,
//!   up to `failover_hold`; then it is routed by that table's map, which
//!   usually names the new owner. Still frozen after the window: 503
//!   `shard_unavailable` with `Retry-After`.
//! - Before freezing, the manager makes the source refuse writes to the
//!   moving keys with SQLSTATE `SLM01`
//!   ([`MOVED_SQLSTATE`]): the statement (or
//!   transaction) wrote nothing, so it is safe to run again. The request
//!   is held for a newer table in which the key is not frozen and run
//!   once more by that table's map. A second refusal, or no such table
//!   within the window, is answered 503 `shard_unavailable` (retryable),
//!   never as the client's error.
//!
//! Both holds count in `router_held_requests_total{shard,outcome}`, the
//! shard being the one the request was routed to before the hold.

use std::sync::Arc;

use shardline_api::router::ShardKeyValue;
use shardline_api::{ApiError, ErrorCode};
use shardline_core::catalog::MOVED_SQLSTATE;

use crate::auth::TenantAuth;
use crate::dispatch::{self, Job, Plan};
use crate::pools::ShardTarget;
use crate::state::{RouterContext, Routing, RoutingCell};

/// Seconds a client is told to wait when a range stays frozen.
const RETRY_AFTER_SECS: u64 = 1;

/// Where a request for one key is sent.
pub struct Keyed<'a> {
    pub keyspace: &'a str,
    pub key: &'a ShardKeyValue,
}

/// Routes `job` by `routing` (the table the request was authenticated
/// with) and runs it (see [`dispatch::run`]), holding it while its key's
/// range is frozen and retrying it once after the shard refused it as
/// moved (see the module docs). Returns the shard it ran on.
pub async fn run<J: Job>(
    cell: &RoutingCell,
    ctx: &RouterContext,
    routing: Arc<Routing>,
    to: Keyed<'_>,
    tenant: &TenantAuth,
    job: &J,
    plan: Plan,
) -> Result<(String, J::Output), ApiError> {
    let route = routing.route(to.keyspace, to.key)?;
    let hash = route.hash;
    let first = route.range.shard.clone();
    let mut routing = if route.frozen {
        hold(cell, ctx, to.keyspace, hash, &first, None).await?
    } else {
        routing
    };
    let mut retried = false;
    loop {
        let shard = routing.route_hash(to.keyspace, hash)?.range.shard.clone();
        let target = target_of(&routing, &shard)?;
        match dispatch::run(cell, ctx, target, tenant, job, plan).await {
            Ok(out) => return Ok((shard, out)),
            Err(e) if is_moved(&e) && !retried => {
                tracing::debug!(shard = %shard, keyspace = to.keyspace, "key moved; waiting for a newer routing table");
                retried = true;
                routing = hold(cell, ctx, to.keyspace, hash, &shard, Some(routing.version)).await?;
            }
            Err(e) if is_moved(&e) => return Err(unavailable(&shard)),
            Err(mut e) => {
                e.shard.get_or_insert(shard);
                return Err(e);
            }
        }
    }
}

/// Whether a shard refused the statement because its key moved away.
pub fn is_moved(e: &ApiError) -> bool {
    e.sqlstate.as_deref() == Some(MOVED_SQLSTATE)
}

fn target_of(routing: &Routing, shard: &str) -> Result<Arc<ShardTarget>, ApiError> {
    routing.shards.get(shard).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ShardUnavailable,
            format!("shard {shard} is not in the catalog"),
        )
        .with_retry_after(RETRY_AFTER_SECS)
    })
}

fn unavailable(shard: &str) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::ShardUnavailable,
        format!("the key's range on shard {shard} is moving to another shard; retry shortly"),
    )
    .with_retry_after(RETRY_AFTER_SECS);
    e.shard = Some(shard.to_string());
    e
}

/// Waits, up to `failover_hold`, for a routing table newer than
/// `newer_than` (any, if `None`) in which `hash` is not frozen, and
/// returns it; 503 after the window. `shard` labels the metric.
async fn hold(
    cell: &RoutingCell,
    ctx: &RouterContext,
    keyspace: &str,
    hash: u64,
    shard: &str,
    newer_than: Option<u64>,
) -> Result<Arc<Routing>, ApiError> {
    let deadline = tokio::time::Instant::now() + ctx.failover_hold;
    let mut tables = cell.subscribe();
    let mut waited = false;
    loop {
        let routing = Arc::clone(&tables.borrow_and_update());
        if usable(&routing, keyspace, hash, newer_than)? {
            if waited {
                ctx.metrics.held.with(&[shard, "resumed"]).inc();
            }
            return Ok(routing);
        }
        if !waited {
            tracing::debug!(
                shard,
                keyspace,
                version = routing.version,
                "holding a request for a key range being moved"
            );
            waited = true;
        }
        match tokio::time::timeout_at(deadline, tables.changed()).await {
            Ok(Ok(())) => {}
            // Out of time, or the table is never changing again.
            Ok(Err(_)) | Err(_) => {
                ctx.metrics.held.with(&[shard, "timed_out"]).inc();
                return Err(unavailable(shard));
            }
        }
    }
}

/// Whether a held request may be routed by `routing`: newer than
/// `newer_than`, and its key not frozen. A keyspace gone or without a
/// map is the request's answer.
fn usable(
    routing: &Routing,
    keyspace: &str,
    hash: u64,
    newer_than: Option<u64>,
) -> Result<bool, ApiError> {
    if newer_than.is_some_and(|v| routing.version <= v) {
        return Ok(false);
    }
    Ok(!routing.route_hash(keyspace, hash)?.frozen)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shardline_core::catalog::Keyspace;
    use shardline_core::hash::routing_hash;
    use shardline_core::shardmap::ShardRange;
    use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};

    use super::*;
    use crate::config::RouterConfig;

    /// Keyspace `ks` (bigint): `-80` on s1, `80-` on s2; `frozen` frozen.
    fn catalog(version: u64, frozen: &[&str], upper: &str) -> Catalog {
        let map = ShardMap::new(vec![
            ShardRange {
                range: KeyRange::parse("-80").unwrap(),
                shard: "s1".into(),
            },
            ShardRange {
                range: KeyRange::parse("80-").unwrap(),
                shard: upper.into(),
            },
        ])
        .unwrap();
        let mut cat = Catalog {
            version,
            ..Catalog::default()
        };
        cat.keyspaces.insert(
            "ks".into(),
            Keyspace {
                name: "ks".into(),
                key_type: KeyType::Bigint,
                map: Some(map),
                migrations: vec![],
                tables: Default::default(),
                frozen: frozen.iter().map(|r| KeyRange::parse(r).unwrap()).collect(),
            },
        );
        cat
    }

    fn ctx(hold: Duration) -> RouterContext {
        let mut cfg = RouterConfig::new("http://m", "t");
        cfg.failover_hold = hold;
        RouterContext::new(&cfg)
    }

    /// A bigint key whose routing hash is at or above 2^63 (`upper`) or
    /// below it.
    fn key(upper: bool) -> i64 {
        (0..1000)
            .find(|k| (routing_hash(ShardKey::Bigint(*k)) >> 63 == 1) == upper)
            .unwrap()
    }

    #[test]
    fn frozen_ranges_mark_their_keys() {
        let ctx = ctx(Duration::from_secs(1));
        let r = Routing::build(&catalog(1, &["80-c0"], "s2"), &Routing::default(), &ctx);
        let ks = &r.keyspaces["ks"];
        assert!(ks.is_frozen(0x8000_0000_0000_0000));
        assert!(ks.is_frozen(0xbfff_ffff_ffff_ffff));
        assert!(!ks.is_frozen(0xc000_0000_0000_0000));
        assert!(!ks.is_frozen(0x7fff_ffff_ffff_ffff));
        let route = r.route_hash("ks", 0x9000_0000_0000_0000).unwrap();
        assert!(route.frozen);
        assert_eq!(route.range.shard, "s2");
        assert!(!r.route_hash("ks", 0xd000_0000_0000_0000).unwrap().frozen);
        let low = ShardKeyValue::Int(key(false));
        let route = r.route("ks", &low).unwrap();
        assert!(!route.frozen);
        assert_eq!(route.range.shard, "s1");
        // Nothing frozen: nothing held.
        let r = Routing::build(&catalog(2, &[], "s2"), &r, &ctx);
        assert!(!r.route_hash("ks", 0x9000_0000_0000_0000).unwrap().frozen);
    }

    #[test]
    fn moved_is_the_sqlstate() {
        let mut e = ApiError::new(ErrorCode::ShardUnavailable, "moved");
        assert!(!is_moved(&e));
        e.sqlstate = Some(MOVED_SQLSTATE.into());
        assert!(is_moved(&e));
        let u = unavailable("s1");
        assert_eq!(
            (u.http_status(), u.retry_after, u.retryable),
            (503, Some(1), true)
        );
    }

    #[tokio::test]
    async fn holds_resume_on_an_unfrozen_table_or_time_out() {
        let ctx = Arc::new(ctx(Duration::from_secs(30)));
        let cell = Arc::new(RoutingCell::default());
        let hash = 0x9000_0000_0000_0000;
        cell.set(Routing::build(
            &catalog(1, &["80-"], "s2"),
            &Routing::default(),
            &ctx,
        ));
        let waiter = {
            let (cell, ctx) = (Arc::clone(&cell), Arc::clone(&ctx));
            tokio::spawn(async move { hold(&cell, &ctx, "ks", hash, "s2", None).await })
        };
        // Still frozen in the next version: still held.
        cell.set(Routing::build(
            &catalog(2, &["80-"], "s2"),
            &cell.get(),
            &ctx,
        ));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cell.set(Routing::build(&catalog(3, &[], "s3"), &cell.get(), &ctx));
        let routing = waiter.await.unwrap().unwrap();
        assert_eq!(routing.version, 3);
        assert_eq!(routing.route_hash("ks", hash).unwrap().range.shard, "s3");
        assert_eq!(ctx.metrics.held.with(&["s2", "resumed"]).get(), 1);

        // After a refusal: the same version is not enough, a newer one
        // is.
        assert!(!usable(&cell.get(), "ks", hash, Some(3)).unwrap());
        assert!(usable(&cell.get(), "ks", hash, Some(2)).unwrap());
        // A keyspace gone is the request's answer.
        assert!(usable(&Routing::default(), "ks", hash, None).is_err());

        let short = ctx_with_short_hold();
        cell.set(Routing::build(
            &catalog(4, &["80-"], "s3"),
            &cell.get(),
            &short,
        ));
        let Err(e) = hold(&cell, &short, "ks", hash, "s3", None).await else {
            panic!("held past the window");
        };
        assert_eq!(e.code, ErrorCode::ShardUnavailable);
        assert_eq!(e.retry_after, Some(1));
        assert_eq!(short.metrics.held.with(&["s3", "timed_out"]).get(), 1);
    }

    fn ctx_with_short_hold() -> RouterContext {
        ctx(Duration::from_millis(50))
    }
}
