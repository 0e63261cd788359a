//! Three managers as separate processes on one etcd, a router and a
//! writer: one manager leads; a follower passes admin writes to it; the
//! leader is killed (`kill -9`) and another takes over while writes
//! through the router go on; a leader paused past its lease (SIGSTOP)
//! and resumed after another took over does not lead again.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{free_port, spawn, Proc};
use common::{eventually, ADMIN_TOKEN, ROUTER_TOKEN};
use shardline_api::manager::{ApplyMigrationRequest, RegisterShardRequest};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{ManagerClient, RetryPolicy, RouterClient};
use shardline_testkit::{EtcdServer, PgCluster};

/// A manager on etcd, with the default leader lease.
fn start_manager(dir: &std::path::Path, i: usize, port: u16, etcd: &str) -> Proc {
    let cfg = dir.join(format!("manager{i}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nid = \"m{i}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             router_token = \"{ROUTER_TOKEN}\"\nhealth_interval = \"200ms\"\n\
             [etcd]\nendpoints = [\"{etcd}\"]\n"
        ),
    )
    .unwrap();
    spawn(
        &["manager", "--config", cfg.to_str().unwrap()],
        &dir.join(format!("manager{i}.log")),
    )
}

fn exec(key: &str, sql: &str) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text(key.into()),
        sql: sql.into(),
        params: vec![],
        consistency: Default::default(),
    }
}

/// An admin client of each manager alone, with a short timeout.
fn each_manager(urls: &[String]) -> Vec<ManagerClient> {
    urls.iter()
        .map(|u| {
            ManagerClient::new(u, Some(ADMIN_TOKEN.into()))
                .unwrap()
                .with_timeout(Duration::from_secs(2))
        })
        .collect()
}

/// Which managers say they lead, asked one after another.
async fn leaders(managers: &[ManagerClient]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, m) in managers.iter().enumerate() {
        if m.leader().await.map(|l| l.is_leader).unwrap_or(false) {
            out.push(i);
        }
    }
    out
}

/// Waits (bounded) until exactly one of `alive` leads and every one of
/// them names it; its index.
async fn agreed_leader(managers: &[ManagerClient], alive: &[usize]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut named = Vec::new();
        for &i in alive {
            if let Ok(l) = managers[i].leader().await {
                named.push(l.leader.map(|m| m.id));
            }
        }
        if named.len() == alive.len() {
            if let Some(Some(id)) = named.first().cloned() {
                if named.iter().all(|n| n.as_deref() == Some(id.as_str())) {
                    let i: usize = id.trim_start_matches('m').parse().unwrap();
                    if alive.contains(&i) {
                        return Some(i);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_and_another_takes_over_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start().await.unwrap();
    let pg = PgCluster::start().await.unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut procs: Vec<Option<Proc>> = (0..3)
        .map(|i| Some(start_manager(dir.path(), i, ports[i], &etcd.endpoint())))
        .collect();
    let each = each_manager(&urls);
    let all_urls = urls.join(",");
    let admin = ManagerClient::new(&all_urls, Some(ADMIN_TOKEN.into())).unwrap();
    let first = agreed_leader(&each, &[0, 1, 2])
        .await
        .expect("no agreed leader among three managers");
    assert_eq!(leaders(&each).await, vec![first], "leaders at once");

    // Admin writes through a follower reach the leader.
    let follower = &each[(first + 1) % 3];
    follower
        .register_shard(&RegisterShardRequest {
            id: "s0".into(),
            primary: pg.dsn(),
            replicas: vec![],
            tenant: None,
            synchronous: false,
        })
        .await
        .expect("register a shard through a follower");
    let app_token = common::default_keyspace(follower, vec!["s0".into()]).await;
    follower
        .apply_migration(
            "default",
            &ApplyMigrationRequest {
                name: "001".into(),
                sql: "CREATE TABLE t (k text PRIMARY KEY)".into(),
            },
        )
        .await
        .unwrap();
    // Every manager serves the catalog the leader wrote.
    for m in &each {
        assert!(
            eventually(Duration::from_secs(10), || async {
                m.list_keyspaces()
                    .await
                    .map(|k| k.iter().any(|k| k.name == "default"))
                    .unwrap_or(false)
            })
            .await,
            "a manager does not serve the keyspace"
        );
    }

    // A router following all three, and a writer through it.
    let rport = free_port();
    let _router = spawn(
        &[
            "router",
            "--manager-url",
            &all_urls,
            "--router-token",
            ROUTER_TOKEN,
            "--listen",
            &format!("127.0.0.1:{rport}"),
            "--id",
            "r1",
        ],
        &dir.path().join("router.log"),
    );
    let router = RouterClient::new(&format!("http://127.0.0.1:{rport}"), Some(app_token))
        .unwrap()
        .with_retry(RetryPolicy::none());
    assert!(
        eventually(Duration::from_secs(20), || async {
            router.execute(&exec("probe", "SELECT 1")).await.is_ok()
        })
        .await,
        "router up"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, acked, failed, router) =
            (stop.clone(), acked.clone(), failed.clone(), router.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut errors = Vec::new();
            // Bounded: at most 100k writes.
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let key = format!("k{n}");
                let sql = format!("INSERT INTO t VALUES ('{key}')");
                match router.execute(&exec(&key, &sql)).await {
                    Ok(r) if r.result.rows_affected == 1 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{key}: {} rows", r.result.rows_affected));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{key}: {e}"));
                    }
                }
            }
            errors
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9 of the leader.
    let killed = Instant::now();
    drop(procs[first].take());
    let alive: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let next = agreed_leader(&each, &alive)
        .await
        .expect("no new leader within 30 s of the kill");
    let led = killed.elapsed();
    // Through the client of all three URLs: it moves past the dead one.
    let wrote = common::admin_write(&admin, "after-kill")
        .await
        .expect("no admin write within 30 s of the kill")
        - killed;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The new leader paused past its lease: a third one leads; resumed,
    // the paused one does not lead again.
    let paused_proc = procs[next].as_ref().unwrap();
    paused_proc.signal(libc::SIGSTOP);
    let paused = Instant::now();
    let third = alive.iter().copied().find(|i| *i != next).unwrap();
    let third_led = eventually(Duration::from_secs(30), || async {
        each[third]
            .leader()
            .await
            .map(|l| l.is_leader)
            .unwrap_or(false)
    })
    .await;
    let took_over = paused.elapsed();
    let wrote_paused = common::admin_write(&each[third], "while-paused").await;
    paused_proc.signal(libc::SIGCONT);
    let resumed = Instant::now();
    // Within the lease and a renewal it knows it lost: never two leaders.
    let mut both = Vec::new();
    while resumed.elapsed() < Duration::from_secs(5) {
        let now = leaders(&each).await;
        if now.len() > 1 {
            both.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_resume = leaders(&each).await;
    // The resumed manager passes admin writes to the leader.
    let via_resumed = common::admin_write(&each[next], "via-resumed").await;

    stop.store(true, Ordering::Relaxed);
    let errors = writer.await.unwrap();
    let stored = router
        .execute(&exec("probe", "SELECT count(*) FROM t"))
        .await
        .unwrap();
    println!(
        "managers on etcd: leader m{first} killed; m{next} led after {led:?}, first admin write \
         after {wrote:?}; m{next} paused, m{third} led after {took_over:?}; writes through the \
         router: {} acknowledged, {} failed; stored {:?}",
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        stored.result.rows,
    );
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    assert!(acked.load(Ordering::Relaxed) > 0, "nothing written");
    assert_eq!(
        stored.result.rows[0][0],
        serde_json::json!(acked.load(Ordering::Relaxed)),
        "acknowledged writes not all stored"
    );
    assert!(third_led, "no manager took over from the paused leader");
    assert!(
        wrote_paused.is_some(),
        "no admin write while the leader was paused"
    );
    assert!(
        both.is_empty(),
        "two leaders at once after the resume: {both:?}"
    );
    assert_eq!(after_resume, vec![third], "the resumed manager leads again");
    assert!(
        via_resumed.is_some(),
        "the resumed manager did not forward an admin write"
    );
    drop(procs);
}

/// etcd unreachable for every manager (all of etcd paused, SIGSTOP):
/// no manager leads within the lease, the primary killed meanwhile is
/// not replaced (its replica stays a replica, by PostgreSQL's own
/// account), reads through the router go on; when etcd is back a leader
/// is elected, fails the primary over and writes succeed again.
///
/// Control: with the leader's step-down on its own clock removed (it
/// renews forever, ignoring failures), the old leader kept answering
/// `is_leader` through the outage and the test failed at "a manager
/// still leads with etcd unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_stops_the_leader_and_nothing_is_promoted() {
    use common::{Stack, StackOptions};
    use shardline_api::router::Consistency;

    let mut stack = Stack::start(StackOptions {
        shards: 1,
        replicas: 1,
        etcd_managers: vec![None, None, None],
        ..StackOptions::default()
    })
    .await;
    stack.ha.as_ref().unwrap().start(1);
    stack.ha.as_ref().unwrap().start(2);
    let each = each_manager(&stack.ha.as_ref().unwrap().urls());
    stack
        .migrate("001", "CREATE TABLE t (k text PRIMARY KEY)")
        .await;
    let router = RouterClient::new(&stack.router_url, Some(stack.app_token.clone()))
        .unwrap()
        .with_retry(RetryPolicy::none());
    router
        .execute(&exec("a", "INSERT INTO t VALUES ('a')"))
        .await
        .expect("a write before the outage");
    let generation = stack.admin.get_shard("s0").await.unwrap().generation;

    // etcd goes away for everyone.
    stack.ha.as_ref().unwrap().etcd.pause().unwrap();
    let paused = Instant::now();
    let stepped_down = eventually(Duration::from_secs(10), || async {
        leaders(&each).await.is_empty()
    })
    .await;
    let no_leader_after = paused.elapsed();
    assert!(stepped_down, "a manager still leads with etcd unreachable");
    // The primary dies while no manager can act.
    stack.shards[0].kill9().await;
    let mut reads_ok = 0;
    let mut reads_failed = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let mut read = exec("a", "SELECT count(*) FROM t");
        read.consistency = Consistency::Eventual;
        match router.execute(&read).await {
            Ok(_) => reads_ok += 1,
            Err(e) => reads_failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replica = stack.replicas[0][0].connect().await.unwrap();
    let in_recovery: bool = replica
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        leaders(&each).await.is_empty(),
        "a manager led during the outage"
    );

    // etcd is back: a leader, the failover, writes.
    stack.ha.as_ref().unwrap().etcd.resume().unwrap();
    let resumed = Instant::now();
    let led = eventually(Duration::from_secs(30), || async {
        leaders(&each).await.len() == 1
    })
    .await;
    let leader_after = resumed.elapsed();
    let wrote = eventually(Duration::from_secs(30), || async {
        router
            .execute(&exec(
                "b",
                "INSERT INTO t VALUES ('b') ON CONFLICT DO NOTHING",
            ))
            .await
            .is_ok()
    })
    .await;
    let write_after = resumed.elapsed();
    // Asked until a manager answers and the failover is done (bounded).
    let mut failed_over = generation;
    let deadline = Instant::now() + Duration::from_secs(30);
    while failed_over <= generation && Instant::now() < deadline {
        if let Ok(s) = stack.admin.get_shard("s0").await {
            failed_over = s.generation;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "etcd unreachable: no leader {no_leader_after:?} after the pause; during the outage \
         (primary killed): {reads_ok} eventual reads ok, {} failed, replica in recovery: \
         {in_recovery}; etcd back: a leader after {leader_after:?}, a write after \
         {write_after:?}, generation {generation} -> {failed_over}",
        reads_failed.len()
    );
    assert!(
        in_recovery,
        "the replica was promoted while no manager could lead"
    );
    assert!(
        reads_ok > 0 && reads_failed.is_empty(),
        "reads failed: {reads_failed:?}"
    );
    assert!(led, "no leader after etcd came back");
    assert!(wrote, "no write after etcd came back");
    assert!(
        failed_over > generation,
        "the dead primary was not replaced"
    );
    stack.stop().await;
}

/// The leading manager partitioned from etcd (its packets to etcd dropped
/// silently: requests hang, nothing fails at once) while routers and
/// clients still reach it: it stops answering as leader (before its lease could let
/// another win), another leads, writes through the router go on, and
/// admin requests sent to it first reach the leader through the next
/// URL (it answers that it ran nothing). Joined again, it follows.
///
/// Controls: with `NO_LEADER_HEADER` ignored by the client, the admin
/// write through a client listing the cut-off manager first failed
/// (503) and the test failed at "no admin write through a client that
/// tries the cut-off manager first"; with the cut-off manager serving
/// the catalog watch as before, it failed at "served the catalog
/// watch".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_leading() {
    use common::{Stack, StackOptions};

    let stack = Stack::start(StackOptions {
        shards: 1,
        etcd_managers: vec![None, None, None],
        ..StackOptions::default()
    })
    .await;
    let ha = stack.ha.as_ref().unwrap();
    ha.start(1);
    ha.start(2);
    let urls = ha.urls();
    let each = each_manager(&urls);
    assert!(
        agreed_leader(&each, &[0, 1, 2]).await == Some(0),
        "m0 does not lead"
    );
    stack
        .migrate("001", "CREATE TABLE t (n bigint PRIMARY KEY)")
        .await;
    let router = RouterClient::new(&stack.router_url, Some(stack.app_token.clone()))
        .unwrap()
        .with_retry(RetryPolicy::none());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, router) = (stop.clone(), router.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (0u64, Vec::new());
            for n in 0..100_000i64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let sql = format!("INSERT INTO t VALUES ({n})");
                match router.execute(&exec(&n.to_string(), &sql)).await {
                    Ok(r) if r.result.rows_affected == 1 => acked += 1,
                    Ok(r) => failed.push(format!("{n}: {} rows", r.result.rows_affected)),
                    Err(e) => failed.push(format!("{n}: {e}")),
                }
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    ha.partition_from_etcd(0, true);
    let cut = Instant::now();
    let stepped_down = eventually(Duration::from_secs(10), || async {
        !each[0].leader().await.map(|l| l.is_leader).unwrap_or(true)
    })
    .await;
    let down_after = cut.elapsed();
    let next = agreed_leader(&each, &[1, 2]).await;
    let led_after = cut.elapsed();
    // Never two leaders from here on.
    let mut both = Vec::new();
    for _ in 0..20 {
        let now = leaders(&each).await;
        if now.len() > 1 {
            both.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It does not feed routers a catalog that may be behind.
    let feed = common::raw(
        &urls[0],
        "GET",
        "/v1/catalog?after_version=0&wait_ms=0",
        Some(ROUTER_TOKEN),
        b"",
        &[],
    )
    .await;
    // A client that tries the cut-off manager first.
    let m0_first = ManagerClient::new(&urls.join(","), Some(ADMIN_TOKEN.into()))
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let wrote = common::admin_write(&m0_first, "while-m0-is-cut-off").await;

    ha.partition_from_etcd(0, false);
    let rejoined = eventually(Duration::from_secs(10), || async {
        each[0]
            .leader()
            .await
            .ok()
            .and_then(|l| l.leader)
            .map(|m| m.id)
            == next.map(|n| format!("m{n}"))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();
    println!(
        "m0 cut off from etcd: stopped leading {down_after:?} after the cut, m{next:?} led \
         {led_after:?} after it; writes through the router: {acked} acknowledged, {} failed; \
         admin write through a client trying m0 first: {}; m0 follows m{next:?} again: \
         {rejoined}",
        failed.len(),
        wrote.is_some(),
    );
    assert!(stepped_down, "the cut-off manager still answers as leader");
    assert_eq!(
        feed.status, 503,
        "the cut-off manager served the catalog watch: {}",
        feed.text
    );
    assert!(next.is_some(), "no other manager took over");
    assert!(both.is_empty(), "two leaders at once: {both:?}");
    assert!(
        wrote.is_some(),
        "no admin write through a client that tries the cut-off manager first"
    );
    assert!(failed.is_empty(), "writes failed: {failed:?}");
    assert!(
        rejoined,
        "m0 did not follow the new leader after the cut healed"
    );
    stack.stop().await;
}

/// The leader dies in the middle of a failover — once after recording
/// its intent, once after promoting the replica — and the next leader
/// finishes it as a restarted manager would: the shard gets its new
/// primary, writes through the router succeed again, and no acknowledged
/// write is lost (synchronous replication).
///
/// Control: with no second manager started, nothing finished the
/// failover and the test failed (no write within 40 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_whose_leader_dies_is_finished_by_the_next() {
    use common::{Stack, StackOptions};
    use shardline_manager::failover::{FAILPOINT_AFTER_INTENT, FAILPOINT_AFTER_PROMOTE};

    for failpoint in [FAILPOINT_AFTER_INTENT, FAILPOINT_AFTER_PROMOTE] {
        let mut stack = Stack::start(StackOptions {
            shards: 1,
            replicas: 1,
            synchronous: true,
            etcd_managers: vec![Some(failpoint), None],
            ..StackOptions::default()
        })
        .await;
        stack.ha.as_ref().unwrap().start(1);
        stack
            .migrate("001", "CREATE TABLE t (n bigint PRIMARY KEY)")
            .await;
        let router = RouterClient::new(&stack.router_url, Some(stack.app_token.clone()))
            .unwrap()
            .with_retry(RetryPolicy::none());
        let mut acked = Vec::new();
        for n in 0..50i64 {
            let sql = format!("INSERT INTO t VALUES ({n})");
            router.execute(&exec(&n.to_string(), &sql)).await.unwrap();
            acked.push(n);
        }
        let generation = stack.admin.get_shard("s0").await.unwrap().generation;
        let killed = Instant::now();
        stack.shards[0].kill9().await;
        let ha = stack.ha.as_ref().unwrap();
        assert!(
            ha.wait_exit(0, Duration::from_secs(30)).await,
            "m0 did not reach {failpoint}"
        );
        let crashed = killed.elapsed();
        // Writes until one is acknowledged by the new primary (bounded).
        let mut n = 1000i64;
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut first = None;
        while Instant::now() < deadline {
            let sql = format!("INSERT INTO t VALUES ({n})");
            if router.execute(&exec(&n.to_string(), &sql)).await.is_ok() {
                acked.push(n);
                first = Some(killed.elapsed());
                break;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut after = generation;
        let deadline = Instant::now() + Duration::from_secs(30);
        while after <= generation && Instant::now() < deadline {
            if let Ok(s) = stack.admin.get_shard("s0").await {
                after = s.generation;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stored = router
            .execute(&exec("0", "SELECT n FROM t ORDER BY n"))
            .await
            .unwrap();
        let stored: Vec<i64> = stored
            .result
            .rows
            .iter()
            .map(|r| r[0].as_i64().unwrap())
            .collect();
        let lost: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|n| !stored.contains(n))
            .collect();
        println!(
            "leader aborted at {failpoint} {crashed:?} after the primary's kill; first write \
             acknowledged {first:?} after the kill; generation {generation} -> {after}; \
             {} acknowledged, {} lost",
            acked.len(),
            lost.len()
        );
        assert!(first.is_some(), "no write after the failover ({failpoint})");
        assert!(
            after > generation,
            "the failover was not finished ({failpoint})"
        );
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        stack.stop().await;
    }
}

/// A manager configured for an etcd that speaks only TLS and checks
/// client certificates (`[etcd] ca_file`, `cert_file`, `key_file`) leads
/// and writes the catalog; without the client certificate it cannot
/// load the catalog and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_on_tls_etcd_with_client_certificates() {
    let etcd = EtcdServer::start_tls().await.unwrap();
    let files = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let config = |with_cert: bool| {
        let mut cfg = common::manager_config(dir.path());
        cfg.etcd = Some(shardline_manager::config::EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: "shardline/".into(),
            leader_ttl: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            username: None,
            password: None,
            ca_file: Some(files.ca.clone()),
            cert_file: with_cert.then(|| files.client_cert.clone()),
            key_file: with_cert.then(|| files.client_key.clone()),
        });
        cfg
    };
    let (url, stop, task) = common::start_manager(config(true)).await;
    let m = ManagerClient::new(&url, Some(ADMIN_TOKEN.into())).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            m.leader().await.map(|l| l.is_leader).unwrap_or(false)
        })
        .await,
        "no leadership over TLS"
    );
    let pg = PgCluster::start().await.unwrap();
    m.register_shard(&RegisterShardRequest {
        id: "s0".into(),
        primary: pg.dsn(),
        replicas: vec![],
        tenant: None,
        synchronous: false,
    })
    .await
    .expect("a catalog write over TLS");
    assert_eq!(m.list_shards().await.unwrap().len(), 1);
    stop.cancel();
    task.await.unwrap().unwrap();

    // The control: without the client certificate etcd refuses it, and
    // the manager stops at its start, unable to load the catalog.
    let (_, _stop, task) = common::start_manager(config(false)).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("a manager without its client certificate went on running")
        .unwrap();
    let err = ended.expect_err("a manager without its client certificate ran");
    assert!(format!("{err:#}").contains("load the catalog"), "{err:#}");
}

/// A leader dies while a primary fails its checks: the next leader goes
/// on counting from the health book instead of from zero (its first
/// round shows more failed checks than rounds it ran) and knows the dead
/// primary's last WAL position (the replica's lag is known at once), so
/// the failover can come `failover_after` rounds sooner than without it
/// (asserted by the counts; the time to the failover is printed, not
/// asserted, as it moves with the machine's load).
///
/// Control: with the book's seeding removed from the checker, the new
/// leader's first round showed 1 failed check and no replica lag, and
/// the test failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_goes_on_counting_a_failing_primary() {
    use common::{Stack, StackOptions};

    let interval = Duration::from_millis(300);
    let mut stack = Stack::start(StackOptions {
        shards: 1,
        replicas: 1,
        health_interval: Some(interval),
        failover_after: Some(20),
        etcd_managers: vec![None, None],
        ..StackOptions::default()
    })
    .await;
    let ha = stack.ha.take().unwrap();
    ha.start(1);
    let urls = ha.urls();
    let admin = |i: usize| {
        ManagerClient::new(&urls[i], Some(common::ADMIN_TOKEN.into()))
            .unwrap()
            .with_timeout(Duration::from_secs(2))
    };
    let primary_failures = |snap: &shardline_api::manager::HealthSnapshot| {
        snap.instances
            .iter()
            .find(|i| i.shard == "s0" && i.role == "primary")
            .map(|i| i.health.consecutive_failures)
    };
    let generation = stack.admin.get_shard("s0").await.unwrap().generation;
    stack.shards[0].kill9().await;
    // The leader counts a few failed checks, far from failover_after.
    let m0 = admin(0);
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            m0.health()
                .await
                .ok()
                .and_then(|s| primary_failures(&s))
                .is_some_and(|n| n >= 8)
        })
        .await,
        "the leader did not count failed checks: {}",
        ha.log(0)
    );
    let counted = m0.health().await.ok().and_then(|s| primary_failures(&s));
    let killed = Instant::now();
    ha.kill(0);
    assert!(
        ha.wait_leader(1, Duration::from_secs(30)).await,
        "{}",
        ha.log(1)
    );
    let led = killed.elapsed();
    // The new leader's first published round.
    let m1 = admin(1);
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.is_none() && Instant::now() < deadline {
        if let Ok(s) = m1.health().await {
            if s.round >= 1 && primary_failures(&s).is_some() {
                first = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.expect("no health round from the new leader");
    let failures = primary_failures(&first).unwrap();
    let replica_lag = first
        .instances
        .iter()
        .find(|i| i.shard == "s0" && i.role == "replica")
        .and_then(|i| i.health.lag_bytes);
    // The failover, by the new leader.
    let mut after = generation;
    let deadline = Instant::now() + Duration::from_secs(40);
    while after <= generation && Instant::now() < deadline {
        if let Ok(s) = stack.admin.get_shard("s0").await {
            after = s.generation;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "old leader counted {counted:?} failed checks; killed; new leader after {led:?}, its \
         round {} shows {failures} failed checks and replica lag {replica_lag:?} bytes; \
         failover committed {:?} after the kill (generation {generation} -> {after})",
        first.round,
        killed.elapsed()
    );
    assert!(
        u64::from(failures) > first.round,
        "the new leader counted from zero: {failures} failures in round {}",
        first.round
    );
    assert!(
        replica_lag.is_some(),
        "the dead primary's position was not taken over"
    );
    assert!(after > generation, "no failover by the new leader");
    drop(ha);
    stack.stop().await;
}
