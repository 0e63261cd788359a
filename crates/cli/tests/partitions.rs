//! Network partitions during a failover, in network namespaces the test
//! makes itself (`netlab`): hosts `client` (the writers and the test's
//! own requests), `mgr` (the manager), `r1` and `r2` (two routers) and
//! `db` (the shard's primary at `10.99.5.2` and its streaming replica at
//! `10.99.5.3`, replicating over the host's loopback). Each router has a
//! writer and a reader (see `common::load`); every acknowledged write is
//! recorded with its send and answer times and the server port that ran
//! it.
//!
//! - (a) The manager cannot reach the primary; the routers can. The
//!   manager fails the shard over: every router holds, the old primary,
//!   unreachable, cannot be fenced in PostgreSQL, and the replica is
//!   promoted. Nothing may reach the old primary, still writable and
//!   reachable by the routers, after that.
//! - (b) Router `r1` cannot reach the manager while that failover
//!   happens. It cannot hold on the intent; the manager waits for its
//!   lease to run out, by when `r1` has stopped its writes.
//!
//! Must hold, for synchronous and asynchronous replication: no write
//! acknowledged after the fault began is lost (with synchronous
//! replication none at all); the two instances never both acknowledge
//! writes (every write the old primary acknowledged was answered before
//! the first one the new primary acknowledged); and no row appears in
//! the old primary's own table after the failover that the new primary
//! lacks (a row it also has is the same history made visible late: with
//! synchronous replication a commit is invisible until its wait for the
//! standby ends, and that wait may end after the promotion; and a write
//! never acknowledged, sent before the promotion's intent, may have
//! committed on the old primary alone while it waited for a standby
//! promoted without it — counted and printed, as no client was told it
//! succeeded). The counts and timings are printed (docs/benchmarks.md,
//! "Failover"); nothing asserts a duration.

mod common;
mod netlab;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::load::{
    first_ack_after, longest_pause, lost_after, missing, mode, watch_failover, Load, TABLE,
};
use common::{eventually, StackOptions, ADMIN_TOKEN};
use netlab::Lab;
use shardline_api::manager::{ApplyMigrationRequest, RegisterShardRequest};
use shardline_client::{ManagerClient, RouterClient};
use shardline_testkit::PgCluster;

/// Which partition.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Case {
    /// (a) The manager cannot reach the primary.
    ManagerCutFromPrimary,
    /// (b) Router `r1` cannot reach the manager, then (a) happens.
    RouterCutFromManager,
}

/// `pg_hba.conf` of the lab's servers: trust loopback and the lab's
/// network (throwaway clusters; the tenant roles' passwords are checked
/// by the router, not here).
const HBA: &str = "local all all trust\n\
                   host all all 127.0.0.1/32 trust\n\
                   host all all 10.99.0.0/16 trust\n\
                   host replication all 127.0.0.1/32 trust\n";

/// The superuser DSN of `pg` at `ip` (the lab's address it listens on).
fn dsn_at(pg: &PgCluster, ip: Ipv4Addr) -> String {
    pg.dsn().replace("host=127.0.0.1", &format!("host={ip}"))
}

/// Rows in the writers' table on the server at `dsn` (its tenant
/// database and schema are both `db`), read there directly: the
/// instance's own record of the writes it accepted. (Not its statistics
/// counters: an idle backend flushes them up to 10 s late. Not its
/// commit count: a router cut off from the manager goes on serving
/// reads, each a committed transaction.)
async fn rows_written(dsn: &str, db: &str) -> std::collections::BTreeSet<i64> {
    let dsn = dsn.replace("dbname=postgres", &format!("dbname={db}"));
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .expect("connect to the old primary");
    tokio::spawn(conn);
    c.query(&format!("SELECT n FROM \"{db}\".writes"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn partition_failover(case: Case, synchronous: bool) {
    let lab = std::sync::Arc::new(Lab::new(&["client", "mgr", "r1", "r2", "db"]));
    let (mgr_ip, r1_ip, r2_ip) = (lab.host("mgr").ip, lab.host("r1").ip, lab.host("r2").ip);
    let primary_ip = lab.host("db").ip;
    let replica_ip = lab.add_address("db", 3);
    let hba = tempfile::Builder::new()
        .prefix("shardline-lab-hba")
        .tempfile_in("/tmp")
        .unwrap();
    std::fs::write(hba.path(), HBA).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(hba.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let hba_path = hba.path().display().to_string();

    let body_lab = std::sync::Arc::clone(&lab);
    lab.host("client").block_on(async move {
        let lab = body_lab;
        // The shard: a primary and one streaming replica on the db host.
        let mut settings = vec![
            (
                "listen_addresses".to_string(),
                format!("127.0.0.1,{primary_ip}"),
            ),
            ("hba_file".to_string(), hba_path.clone()),
        ];
        if synchronous {
            for (k, v) in shardline_testkit::SYNC_REPLICATION {
                settings.push((k.to_string(), v.to_string()));
            }
        } else {
            settings.push(("synchronous_commit".into(), "local".into()));
        }
        let (primary, replica) = lab
            .host("db")
            .run(async move {
                let s: Vec<(&str, &str)> = settings
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let primary = PgCluster::start_with(&s).await.expect("start the primary");
                let listen = format!("127.0.0.1,{replica_ip}");
                let replica =
                    PgCluster::start_replica_of_with(&primary, &[("listen_addresses", &listen)])
                        .await
                        .expect("start the replica");
                (primary, replica)
            })
            .await;
        let old_dsn = dsn_at(&primary, primary_ip);
        let old_port = i64::from(primary.port());
        let new_port = i64::from(replica.port());

        // The manager, with its default health checks and lease.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = common::manager_config(dir.path());
        cfg.listen = std::net::SocketAddr::new(IpAddr::V4(mgr_ip), 0);
        cfg.health_interval =
            shardline_manager::ManagerConfig::new(dir.path().join("x.json"), "a", "b")
                .health_interval;
        let (manager_url, manager_stop, manager_task) =
            lab.host("mgr").run(common::start_manager(cfg)).await;
        let admin = ManagerClient::new(&manager_url, Some(ADMIN_TOKEN.into())).unwrap();
        admin
            .register_shard(&RegisterShardRequest {
                id: "s0".into(),
                primary: old_dsn.clone(),
                replicas: vec![dsn_at(&replica, replica_ip)],
                tenant: None,
                synchronous,
            })
            .await
            .unwrap();
        let token = common::default_keyspace(&admin, vec!["s0".into()]).await;

        // Two routers, each on its own host.
        let mut routers = Vec::new();
        for (host, ip) in [("r1", r1_ip), ("r2", r2_ip)] {
            let opts = StackOptions {
                router_ip: IpAddr::V4(ip),
                // Holds shorter than the failover (which waits out r1's
                // lease): held requests time out while the intent is
                // open, the case that once sent a write to the old
                // primary and lost it.
                tune_router: |cfg| cfg.failover_hold = Duration::from_secs(1),
                ..StackOptions::default()
            };
            let url = manager_url.clone();
            routers.push(
                lab.host(host)
                    .run(async move { common::start_router(&url, &opts).await })
                    .await,
            );
        }
        for (url, _, _) in &routers {
            let c = RouterClient::new(url, Some(token.clone())).unwrap();
            assert!(common::wait_for_token(&c).await, "router {url} not ready");
        }
        admin
            .apply_migration(
                "default",
                &ApplyMigrationRequest {
                    name: "001_writes".into(),
                    sql: TABLE.into(),
                },
            )
            .await
            .expect("migrate");
        let db = admin.get_tenant("default").await.unwrap().pg_name;
        let urls: Vec<&str> = routers.iter().map(|(u, _, _)| u.as_str()).collect();
        let load = Load::start(&urls, &token).await;
        tokio::time::sleep(Duration::from_secs(2)).await;

        let fault = Instant::now();
        if case == Case::RouterCutFromManager {
            // r1 misses a few heartbeats before the failover begins.
            lab.partition(r1_ip, mgr_ip);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let cut = Instant::now();
        lab.partition(mgr_ip, primary_ip);
        let w = watch_failover(&admin, "s0", 1, Duration::from_secs(60)).await;
        let (Some(intent), Some(committed)) = (w.intent, w.committed) else {
            panic!("no failover within 60 s of the partition");
        };
        // The old primary's own count: the replica was promoted before
        // the catalog named it, so nothing may land there from here on.
        let old_written_after_failover = rows_written(&old_dsn, &db).await;
        if case == Case::RouterCutFromManager {
            lab.heal();
            lab.partition(mgr_ip, primary_ip);
        }
        // Both writers get through to the new primary.
        assert!(
            eventually(Duration::from_secs(30), || async {
                (0..2).all(|writer| {
                    load.log
                        .acks()
                        .iter()
                        .any(|a| a.writer == writer && a.sent > committed)
                })
            })
            .await,
            "a writer did not resume after the failover"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log = load.finish().await;
        let reader = RouterClient::new(urls[1], Some(token.clone())).unwrap();
        let lost = missing(&reader, &log).await;
        let old_written_at_end = rows_written(&old_dsn, &db).await;
        let on_new_primary = rows_written(&dsn_at(&replica, replica_ip), &db).await;
        // Rows that appeared on the old primary after the failover: one
        // the new primary also has is the same history made visible late
        // (with synchronous replication a commit stays invisible until
        // its wait for the standby ends); one it lacks is a write the old
        // primary took after the promotion — two writable instances.
        let late: Vec<i64> = old_written_at_end
            .difference(&old_written_after_failover)
            .copied()
            .collect();
        let diverged: Vec<i64> = late
            .iter()
            .copied()
            .filter(|n| !on_new_primary.contains(n))
            .collect();

        let acks = log.acks();
        let lost_after = lost_after(&log, &lost, fault);
        let last_by_old = acks
            .iter()
            .filter(|a| a.port == Some(old_port))
            .map(|a| a.at)
            .max();
        let first_by_new = acks
            .iter()
            .filter(|a| a.port == Some(new_port))
            .map(|a| a.at)
            .min();
        let by_r1_late = acks
            .iter()
            .filter(|a| a.writer == 0 && a.port == Some(old_port) && a.at > intent)
            .count();
        // Writes a router that holds (every router but a cut-off r1) had
        // answered by the old primary well after the intent reached it:
        // none may be (it holds until the failover ends, then answers 503
        // if it has not; the manager may promote the target any moment).
        let holding_late: Vec<Duration> = acks
            .iter()
            .filter(|a| {
                a.port == Some(old_port)
                    && !(case == Case::RouterCutFromManager && a.writer == 0)
                    && a.at > intent + Duration::from_secs(1)
            })
            .map(|a| a.at - intent)
            .collect();
        let mode = mode(synchronous);
        println!(
            "{case:?} ({mode}): detection {:?} after the manager lost the primary, intent to \
             commit {:?}; first write acknowledged {:?} after the fault, {:?} after the intent \
             (sent after it); longest gap between \
             acknowledged writes {:?}; {} acknowledged, {} lost, {} of them acknowledged after \
             the fault began; writable instances overlapping: {}; r1 writes acknowledged by \
             the old primary after the intent: {by_r1_late}; rows on the old primary \
             at the failover {}, at the end {} ({} appeared late, {} of them not on the new \
             primary); {} write errors; eventual reads {} ok, {} failed",
            intent - cut,
            committed - intent,
            first_ack_after(&log, fault),
            first_ack_after(&log, intent),
            longest_pause(&log),
            acks.len(),
            lost.len(),
            lost_after.len(),
            u8::from(matches!((last_by_old, first_by_new), (Some(o), Some(n)) if o >= n)),
            old_written_after_failover.len(),
            old_written_at_end.len(),
            late.len(),
            diverged.len(),
            log.write_errors.load(Ordering::Relaxed),
            log.reads_ok.load(Ordering::Relaxed),
            log.read_errors.load(Ordering::Relaxed),
        );
        let lost_detail: Vec<String> = lost_after
            .iter()
            .map(|n| {
                let a = acks
                    .iter()
                    .find(|a| a.n == *n)
                    .expect("an acknowledged write");
                format!(
                    "{n} (writer {}, port {:?} ({}), sent {:?} and acknowledged {:?} after the \
                     fault; the intent came {:?}, the commit {:?} after it; on the old primary \
                     at the failover: {}, at the end: {})",
                    a.writer,
                    a.port,
                    match a.port {
                        Some(p) if p == old_port => "old primary",
                        Some(p) if p == new_port => "new primary",
                        _ => "?",
                    },
                    a.sent - fault,
                    a.at - fault,
                    intent - fault,
                    committed - fault,
                    old_written_after_failover.contains(n),
                    old_written_at_end.contains(n),
                )
            })
            .collect();
        assert!(
            holding_late.is_empty(),
            "a router that holds had writes answered by the old primary after the intent: \
             {holding_late:?}"
        );
        assert!(
            lost_after.is_empty(),
            "{} acknowledged after the fault began, then lost: {lost_detail:?}",
            lost_after.len(),
        );
        if synchronous {
            assert!(
                lost.is_empty(),
                "{} lost with synchronous replication (from {:?} to {:?})",
                lost.len(),
                lost.first(),
                lost.last()
            );
        }
        let (Some(last_by_old), Some(first_by_new)) = (last_by_old, first_by_new) else {
            panic!("writes on both instances expected: old {last_by_old:?}, new {first_by_new:?}");
        };
        assert!(
            last_by_old < first_by_new,
            "the old primary acknowledged a write {:?} after the new one's first",
            last_by_old - first_by_new
        );
        // A write sent before the promotion's intent and never
        // acknowledged may have committed on the old primary alone: with
        // synchronous replication its commit waits, invisible, for a
        // standby that is promoted without it, and becomes visible when
        // the wait is cancelled (PostgreSQL: "the transaction has already
        // committed locally"). The old primary took it before the new one
        // took anything, and no client was told it succeeded: one
        // history, not two writable instances. Counted, not a failure.
        let unacknowledged_before_intent = |n: &i64| {
            acks.iter().all(|a| a.n != *n)
                && log
                    .failed
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|f| f.0 == *n && f.1 < intent)
        };
        let local_only: Vec<i64> = diverged
            .iter()
            .copied()
            .filter(|n| unacknowledged_before_intent(n))
            .collect();
        if !local_only.is_empty() {
            println!(
                "{case:?} ({mode}): {} unacknowledged write(s) sent before the intent committed on \
                 the old primary alone: {local_only:?}",
                local_only.len()
            );
        }
        let diverged_detail: Vec<String> = diverged
            .iter()
            .filter(|n| !local_only.contains(n))
            .map(|n| {
                let ack = acks.iter().find(|a| a.n == *n);
                let failed = log.failed.lock().unwrap();
                let failed = failed.iter().find(|f| f.0 == *n);
                let outcome = match (ack, failed) {
                    (Some(a), _) => format!(
                        "sent {:?} after the fault, acknowledged {:?} after it",
                        a.sent - fault,
                        a.at - fault
                    ),
                    (None, Some((_, sent, at, e))) => format!(
                        "sent {:?} after the fault, answered {:?} after it: {e}",
                        *sent - fault,
                        *at - fault
                    ),
                    (None, None) => "no answer recorded".to_string(),
                };
                format!("{n} (writer {}, {outcome})", n / common::load::WRITER_SPAN)
            })
            .collect();
        assert!(
            diverged_detail.is_empty(),
            "rows written on the old primary after the failover that the new primary lacks \
             (failover committed {:?} after the fault): {diverged_detail:?}",
            committed - fault
        );
        assert_eq!(log.read_errors.load(Ordering::Relaxed), 0);

        for (_, stop, task) in routers {
            stop.cancel();
            task.await.unwrap().unwrap();
        }
        manager_stop.cancel();
        manager_task.await.unwrap().unwrap();
        lab.heal();
        // The servers stop on their own host's runtime.
        lab.host("db")
            .run(async move {
                drop(replica);
                drop(primary);
            })
            .await;
        drop(hba);
    });
}

#[test]
fn manager_cut_from_the_primary_with_synchronous_replication() {
    partition_failover(Case::ManagerCutFromPrimary, true);
}

#[test]
fn manager_cut_from_the_primary_with_asynchronous_replication() {
    partition_failover(Case::ManagerCutFromPrimary, false);
}

#[test]
fn router_cut_from_the_manager_during_a_failover_with_synchronous_replication() {
    partition_failover(Case::RouterCutFromManager, true);
}

#[test]
fn router_cut_from_the_manager_during_a_failover_with_asynchronous_replication() {
    partition_failover(Case::RouterCutFromManager, false);
}
