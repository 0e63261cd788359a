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
//!   ([`MOVED_SQLSTATE`](shardline_core::catalog::MOVED_SQLSTATE), read
//!   as [`Reason::Moved`]): the statement (or
//!   transaction) wrote nothing, so it is safe to run again. The request
//!   is held for a newer table in which the key is not frozen and run
//!   once more by that table's map. A second refusal, or no such table
//!   within the window, is answered 503 `shard_unavailable` (retryable),
//!   never as the client's error.
//!
//! - While a tenant move cuts over, the tenant's catalog entry is
//!   `moving`: its requests are held the same way until a table in which
//!   it no longer is, then routed in the tenant's keyspace by that table
//!   (a move changes the keyspace: shared -> the tenant's dedicated one).
//!
//! All holds count in `router_held_requests_total{shard,outcome}`, the
//! shard being the one the request was routed to before the hold.

use std::sync::Arc;

use shardline_api::router::ShardKeyValue;

use crate::auth::TenantAuth;
use crate::dispatch::{self, Job, Plan};
use crate::error::{Reason, RouterError};
use crate::pools::ShardTarget;
use crate::state::{RouterContext, Routing, RoutingCell};

/// Where a request for one key is sent.
pub struct Keyed<'a> {
    pub keyspace: &'a str,
    pub key: &'a ShardKeyValue,
}

/// Routes `job` by `routing` (the table the request was authenticated
/// with) and runs it (see [`dispatch::run`]), holding it while its key's
/// range is frozen or its tenant is moving, and retrying it once after
/// the shard refused it as moved (see the module docs). Returns the
/// shard it ran on.
pub async fn run<J: Job>(
    cell: &RoutingCell,
    ctx: &RouterContext,
    routing: Arc<Routing>,
    to: Keyed<'_>,
    tenant: &TenantAuth,
    job: &J,
    plan: Plan,
) -> Result<(String, J::Output), RouterError> {
    let first = match routing.route(to.keyspace, to.key) {
        Ok(route) => Some((route.range.shard.clone(), route.frozen)),
        // A moving tenant's old keyspace may be gone already; the hold
        // finds its new one.
        Err(_) if tenant.moving => None,
        Err(e) => return Err(e),
    };
    let (mut routing, mut keyspace) = match first {
        Some((_, false)) if !tenant.moving => (routing, to.keyspace.to_string()),
        Some((shard, _)) => hold(cell, ctx, &tenant.id, &to, &shard, None).await?,
        None => hold(cell, ctx, &tenant.id, &to, "", None).await?,
    };
    let mut retried = false;
    loop {
        let shard = routing.route(&keyspace, to.key)?.range.shard.clone();
        let target = target_of(&routing, &shard)?;
        // The tenant as this table compiled it (its pool settings may
        // have changed with a move); the admitted one if it is gone.
        let current = routing.tenants.get(&tenant.id).cloned();
        let auth = current.as_deref().unwrap_or(tenant);
        match dispatch::run(
            cell,
            ctx,
            target,
            routing.version,
            &keyspace,
            auth,
            job,
            plan,
        )
        .await
        {
            Ok(out) => return Ok((shard, out)),
            Err(e) if e.is_moved() && !retried => {
                tracing::debug!(shard = %shard, keyspace = %keyspace, "key moved; waiting for a newer routing table");
                retried = true;
                let newer_than = Some(routing.version);
                (routing, keyspace) = hold(cell, ctx, &tenant.id, &to, &shard, newer_than).await?;
            }
            Err(e) if e.is_moved() => return Err(unavailable(&shard)),
            Err(e) => return Err(e.or_shard(shard)),
        }
    }
}

fn target_of(routing: &Routing, shard: &str) -> Result<Arc<ShardTarget>, RouterError> {
    routing.shards.get(shard).cloned().ok_or_else(|| {
        Reason::ShardNotInCatalog {
            shard: shard.to_string(),
        }
        .into()
    })
}

fn unavailable(shard: &str) -> RouterError {
    let e = RouterError::from(Reason::RangeMoving {
        shard: shard.to_string(),
    });
    if shard.is_empty() {
        e
    } else {
        e.or_shard(shard)
    }
}

/// Waits, up to `failover_hold`, for a routing table newer than
/// `newer_than` (any, if `None`) in which tenant `tenant` is not moving
/// and the key is not frozen, and returns it with the keyspace to route
/// in; 503 after the window. `shard` labels the metric.
async fn hold(
    cell: &RoutingCell,
    ctx: &RouterContext,
    tenant: &str,
    to: &Keyed<'_>,
    shard: &str,
    newer_than: Option<u64>,
) -> Result<(Arc<Routing>, String), RouterError> {
    let deadline = tokio::time::Instant::now() + ctx.failover_hold;
    let mut tables = cell.subscribe();
    let mut waited = false;
    loop {
        let routing = Arc::clone(&tables.borrow_and_update());
        if let Some(keyspace) = usable(&routing, tenant, to, newer_than)? {
            if waited {
                ctx.metrics.held.with(&[shard, "resumed"]).inc();
            }
            return Ok((routing, keyspace));
        }
        if !waited {
            tracing::debug!(
                shard,
                tenant,
                keyspace = to.keyspace,
                version = routing.version,
                "holding a request for a key range or tenant being moved"
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

/// The keyspace a held request may be routed in by `routing`, if it may:
/// the table is newer than `newer_than`, the tenant is not moving and
/// the key is not frozen. A keyspace gone or without a map is the
/// request's answer.
fn usable(
    routing: &Routing,
    tenant: &str,
    to: &Keyed<'_>,
    newer_than: Option<u64>,
) -> Result<Option<String>, RouterError> {
    if newer_than.is_some_and(|v| routing.version <= v) {
        return Ok(None);
    }
    // The keyspace comes from the tenant's entry in this table, not from
    // the request: a tenant move changes it (shared -> the tenant's
    // dedicated keyspace). The request's keyspace, even one the client
    // named, was admitted as "the tenant's keyspace" by an older table;
    // after the move the old keyspace no longer holds the tenant's rows,
    // so routing there would read stale data or write where nobody
    // looks.
    let keyspace = match routing.tenants.get(tenant) {
        Some(t) if t.moving => return Ok(None),
        Some(t) if !t.keyspace.is_empty() => t.keyspace.as_str(),
        _ => to.keyspace,
    };
    if routing.route(keyspace, to.key)?.frozen {
        return Ok(None);
    }
    Ok(Some(keyspace.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shardline_api::ErrorCode;
    use shardline_core::catalog::{Keyspace, Tenant, TenantState, MOVED_SQLSTATE};
    use shardline_core::hash::routing_hash;
    use shardline_core::shardmap::ShardRange;
    use shardline_core::{Catalog, KeyRange, KeyType, ShardKey, ShardMap};

    use super::*;
    use crate::config::RouterConfig;
    use crate::error::PgError;
    use crate::pg::error::classify;

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
                tenant_code: false,
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
        let pg = |sqlstate: &str| PgError {
            sqlstate: sqlstate.into(),
            message: "refused".into(),
            detail: None,
            hint: None,
            position: None,
        };
        // Another shard_unavailable is not a move; SLM01 is, and so is
        // our own fence check.
        let e = RouterError::from(classify(pg("57P01")));
        assert_eq!(e.code(), ErrorCode::ShardUnavailable);
        assert!(!e.is_moved());
        assert!(RouterError::from(classify(pg(MOVED_SQLSTATE))).is_moved());
        assert!(RouterError::from(Reason::Resharded {
            fence: 2,
            version: 1
        })
        .is_moved());
        let u = unavailable("s1");
        assert_eq!(
            (u.http_status(), u.retry_after(), u.retryable(), u.shard()),
            (503, Some(1), true, Some("s1"))
        );
        assert_eq!(unavailable("").shard(), None);
    }

    #[tokio::test]
    async fn holds_resume_on_an_unfrozen_table_or_time_out() {
        let ctx = Arc::new(ctx(Duration::from_secs(30)));
        let cell = Arc::new(RoutingCell::default());
        let upper = ShardKeyValue::Int(key(true));
        cell.set(Routing::build(
            &catalog(1, &["80-"], "s2"),
            &Routing::default(),
            &ctx,
        ));
        let waiter = {
            let (cell, ctx, upper) = (Arc::clone(&cell), Arc::clone(&ctx), upper.clone());
            tokio::spawn(async move {
                let to = Keyed {
                    keyspace: "ks",
                    key: &upper,
                };
                hold(&cell, &ctx, "acme", &to, "s2", None).await
            })
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
        let (routing, keyspace) = waiter.await.unwrap().unwrap();
        assert_eq!((routing.version, keyspace.as_str()), (3, "ks"));
        assert_eq!(routing.route("ks", &upper).unwrap().range.shard, "s3");
        assert_eq!(ctx.metrics.held.with(&["s2", "resumed"]).get(), 1);

        // After a refusal: the same version is not enough, a newer one
        // is.
        let to = Keyed {
            keyspace: "ks",
            key: &upper,
        };
        assert!(usable(&cell.get(), "acme", &to, Some(3)).unwrap().is_none());
        assert!(usable(&cell.get(), "acme", &to, Some(2)).unwrap().is_some());
        // A keyspace gone is the request's answer.
        assert!(usable(&Routing::default(), "acme", &to, None).is_err());

        let short = ctx_with_short_hold();
        cell.set(Routing::build(
            &catalog(4, &["80-"], "s3"),
            &cell.get(),
            &short,
        ));
        let Err(e) = hold(&cell, &short, "acme", &to, "s3", None).await else {
            panic!("held past the window");
        };
        assert_eq!(e.code(), ErrorCode::ShardUnavailable);
        assert_eq!(e.retry_after(), Some(1));
        assert_eq!(short.metrics.held.with(&["s3", "timed_out"]).get(), 1);
    }

    /// `catalog` plus tenant acme in keyspace `ks` (moving or not), or in
    /// its own keyspace `acme` (all keys on s9) once moved.
    fn tenant_catalog(version: u64, moving: bool, moved: bool) -> Catalog {
        let mut cat = catalog(version, &[], "s2");
        let keyspace = if moved { "acme" } else { "ks" };
        if moved {
            let mut ks = cat.keyspaces["ks"].clone();
            ks.name = "acme".into();
            ks.map = Some(
                ShardMap::new(vec![ShardRange {
                    range: KeyRange::parse("-").unwrap(),
                    shard: "s9".into(),
                }])
                .unwrap(),
            );
            cat.keyspaces.insert("acme".into(), ks);
        }
        cat.tenants.insert(
            "acme".into(),
            Tenant {
                id: "acme".into(),
                name: "acme".into(),
                keyspace: keyspace.into(),
                dedicated: moved,
                config: Default::default(),
                role_password: "pw".into(),
                pg_name: None,
                state: TenantState::Active,
                moving,
                created_at: String::new(),
            },
        );
        cat
    }

    #[tokio::test]
    async fn moving_tenants_are_held_then_routed_in_their_new_keyspace() {
        let ctx = Arc::new(ctx(Duration::from_secs(30)));
        let cell = Arc::new(RoutingCell::default());
        let low = ShardKeyValue::Int(key(false));
        cell.set(Routing::build(
            &tenant_catalog(1, true, false),
            &Routing::default(),
            &ctx,
        ));
        assert!(cell.get().tenants["acme"].moving);
        let waiter = {
            let (cell, ctx, low) = (Arc::clone(&cell), Arc::clone(&ctx), low.clone());
            tokio::spawn(async move {
                // The client named the old keyspace explicitly.
                let to = Keyed {
                    keyspace: "ks",
                    key: &low,
                };
                hold(&cell, &ctx, "acme", &to, "s1", None).await
            })
        };
        // Another tenant's entry changing is not enough: acme still moves.
        cell.set(Routing::build(
            &tenant_catalog(2, true, false),
            &cell.get(),
            &ctx,
        ));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cell.set(Routing::build(
            &tenant_catalog(3, false, true),
            &cell.get(),
            &ctx,
        ));
        let (routing, keyspace) = waiter.await.unwrap().unwrap();
        assert_eq!((routing.version, keyspace.as_str()), (3, "acme"));
        assert_eq!(routing.route(&keyspace, &low).unwrap().range.shard, "s9");
        assert_eq!(ctx.metrics.held.with(&["s1", "resumed"]).get(), 1);

        // Still moving after the window: 503, retryable.
        let short = ctx_with_short_hold();
        cell.set(Routing::build(
            &tenant_catalog(4, true, false),
            &cell.get(),
            &short,
        ));
        let to = Keyed {
            keyspace: "ks",
            key: &low,
        };
        let Err(e) = hold(&cell, &short, "acme", &to, "s1", None).await else {
            panic!("held past the window");
        };
        assert_eq!(
            (e.code(), e.retry_after()),
            (ErrorCode::ShardUnavailable, Some(1))
        );
        assert_eq!(short.metrics.held.with(&["s1", "timed_out"]).get(), 1);
    }

    fn ctx_with_short_hold() -> RouterContext {
        ctx(Duration::from_millis(50))
    }
}
