//! `shardline dev --managers 3 --replicas 1`: three manager processes on
//! a three-member etcd, as a newcomer starts them. With a writer through
//! the router: the leading manager is killed (`kill -9`) and writes go on
//! while another takes over; an etcd member is killed and the control
//! plane keeps working; then the shard's primary is killed and the new
//! leader fails it over.

mod common;
mod devproc;

use std::time::{Duration, Instant};

use devproc::{stop_dev, wait_dev_json};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{ManagerClient, RetryPolicy, RouterClient};
use tokio::sync::mpsc;

fn exec(key: &str, sql: &str) -> ExecuteRequest {
    ExecuteRequest {
        keyspace: None,
        shard_key: ShardKeyValue::Text(key.into()),
        sql: sql.into(),
        params: vec![],
        consistency: Default::default(),
    }
}

fn kill9(pid: u64) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) on a process this test's `dev` started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

/// The postmaster pid of the cluster in `data_dir`.
fn postmaster_pid(data_dir: &str) -> u64 {
    let text = std::fs::read_to_string(format!("{data_dir}/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// Shard `id`, asked until a manager answers (bounded): while leadership
/// settles after a fault an answer may be a retryable 503.
async fn shard_when_answered(admin: &ManagerClient, id: &str) -> shardline_api::manager::ShardInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.get_shard(id).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                println!("get shard {id}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("get shard {id}: {e}"),
        }
    }
}

/// The id of the manager every live one names as leader (bounded wait).
async fn agreed_leader(managers: &[(String, ManagerClient)], skip: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut named = Vec::new();
        for (id, m) in managers.iter().filter(|(id, _)| id != skip) {
            match m.leader().await {
                Ok(l) => named.push((id.clone(), l.leader.map(|m| m.id), l.is_leader)),
                Err(_) => named.push((id.clone(), None, false)),
            }
        }
        if let Some((_, Some(leader), _)) = named.first() {
            let agreed = named.iter().all(|(_, n, _)| n.as_ref() == Some(leader));
            let leads = named.iter().any(|(id, _, is)| id == leader && *is);
            if agreed && leads {
                return Some(leader.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_three_managers_survives_the_leader_and_an_etcd_member() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = devproc::start_dev(
        &dir,
        &[
            "--shards",
            "1",
            "--spare-shards",
            "0",
            "--replicas",
            "1",
            "--managers",
            "3",
        ],
    );
    let info = wait_dev_json(&dir, &mut child).await;
    let listed = info["managers"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 3, "dev.json managers: {info}");
    assert_eq!(info["etcd_endpoints"].as_array().map(Vec::len), Some(3));
    let token = info["admin_token"].as_str().unwrap().to_string();
    let managers: Vec<(String, ManagerClient)> = listed
        .iter()
        .map(|m| {
            let client = ManagerClient::new(m["url"].as_str().unwrap(), Some(token.clone()))
                .unwrap()
                .with_timeout(Duration::from_secs(2));
            (m["id"].as_str().unwrap().to_string(), client)
        })
        .collect();
    let urls: Vec<&str> = listed.iter().map(|m| m["url"].as_str().unwrap()).collect();
    assert!(
        urls.contains(&info["manager_url"].as_str().unwrap()),
        "manager_url is one of the managers"
    );
    let admin = ManagerClient::new(&urls.join(","), Some(token.clone()))
        .unwrap()
        .with_timeout(Duration::from_secs(2));

    // One writer through the router, every answer sent with its time.
    let router = RouterClient::new(
        info["router_url"].as_str().unwrap(),
        Some(info["app_token"].as_str().unwrap().into()),
    )
    .unwrap()
    .with_retry(RetryPolicy::none());
    router
        .execute(&exec(
            "k",
            "CREATE TABLE IF NOT EXISTS ha (n bigint PRIMARY KEY)",
        ))
        .await
        .unwrap();
    // Each write: its number, when it was answered, and the shard that
    // acknowledged it (or the error).
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant, Result<String, String>)>();
    let writer = {
        let router = router.clone();
        tokio::spawn(async move {
            // Bounded: 60 s or 200k writes.
            let started = Instant::now();
            for n in 0..200_000u64 {
                if started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let sql = format!("INSERT INTO ha VALUES ({n})");
                let got = match router.execute(&exec(&n.to_string(), &sql)).await {
                    Ok(r) if r.result.rows_affected == 1 => Ok(r.shard),
                    Ok(r) => Err(format!("{} rows", r.result.rows_affected)),
                    Err(e) => Err(e.to_string()),
                };
                if tx.send((n, Instant::now(), got)).is_err() {
                    break;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9 of the leading manager.
    let leader = agreed_leader(&managers, "").await.expect("no leader");
    // The CLI, pointed at the data dir, says who leads.
    let status = devproc::cli(&dir, &["status"]);
    assert!(
        status.contains(&format!("leader {leader} at ")),
        "shardline status does not name the leader {leader}:\n{status}"
    );
    let pid = listed.iter().find(|m| m["id"] == leader.as_str()).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let killed = Instant::now();
    kill9(pid);
    let next = agreed_leader(&managers, &leader)
        .await
        .expect("no new leader within 30 s");
    let led = killed.elapsed();
    let wrote = common::admin_write(&admin, "after-leader-kill")
        .await
        .expect("no admin write within 30 s")
        - killed;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9 of one etcd member: the control plane keeps working.
    let members = info["etcd_members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "dev.json etcd_members");
    let etcd_killed = Instant::now();
    kill9(members[0]["pid"].as_u64().unwrap());
    let wrote_etcd = common::admin_write(&admin, "after-etcd-kill")
        .await
        .expect("no admin write within 30 s of an etcd member's death")
        - etcd_killed;
    let leader_after_etcd = agreed_leader(&managers, &leader).await;

    // kill -9 of the shard's primary: the new leader fails it over.
    let shard = shard_when_answered(&admin, "shard-0").await;
    let primary = shard
        .instances
        .iter()
        .find(|i| i.role == "primary")
        .unwrap()
        .dsn
        .clone();
    let shards = info["shards"].as_array().unwrap();
    let clusters: Vec<(u64, String)> = std::iter::once(&shards[0])
        .chain(shards[0]["replicas"].as_array().unwrap().iter())
        .map(|c| {
            (
                c["port"].as_u64().unwrap(),
                c["data_dir"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (_, primary_dir) = clusters
        .iter()
        .find(|(port, _)| {
            primary.contains(&format!("port={port}")) || primary.contains(&format!(":{port}/"))
        })
        .unwrap_or_else(|| panic!("the primary {primary} is none of {clusters:?}"));
    let primary_killed = Instant::now();
    kill9(postmaster_pid(primary_dir));
    // Bounded wait for the failover: a write to the killed primary's
    // shard acknowledged by its new primary (writes to the other shards
    // go on regardless; one answered by a dying backend just after the
    // kill is not the new primary's, hence the failover's generation).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log: Vec<(u64, Instant, Result<String, String>)> = Vec::new();
    let mut failed_over_at: Option<Instant> = None;
    let first_after_primary = loop {
        while let Ok(entry) = rx.try_recv() {
            log.push(entry);
        }
        if failed_over_at.is_none() {
            let now = shard_when_answered(&admin, "shard-0").await;
            if now.generation > shard.generation {
                failed_over_at = Some(Instant::now());
            }
        }
        // Only answers after the failover was seen count: a backend of
        // the killed postmaster can still acknowledge a write for a while.
        let first = failed_over_at.and_then(|seen| {
            log.iter()
                .find(|(_, at, got)| *at > seen && got.as_ref().is_ok_and(|s| s == "shard-0"))
                .map(|(_, at, _)| *at - primary_killed)
        });
        if first.is_some() || Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    writer.abort();
    while let Ok(entry) = rx.try_recv() {
        log.push(entry);
    }
    let before_primary: Vec<&(u64, Instant, Result<String, String>)> = log
        .iter()
        .filter(|(_, at, _)| *at < primary_killed)
        .collect();
    let failed_before: Vec<String> = before_primary
        .iter()
        .filter_map(|(n, _, got)| got.as_ref().err().map(|e| format!("{n}: {e}")))
        .collect();
    let acked = log.iter().filter(|(_, _, got)| got.is_ok()).count();
    println!(
        "dev --managers 3 --replicas 1: leader {leader} killed; {next} led after {led:?}, first \
         admin write after {wrote:?}; an etcd member killed, first admin write after \
         {wrote_etcd:?} (leader then {leader_after_etcd:?}); writes through the router until \
         the primary's kill: {} sent, {} failed; primary killed, failed over after \
         {:?}, first write to its shard acknowledged {first_after_primary:?} later; {acked} \
         acknowledged in all",
        before_primary.len(),
        failed_before.len(),
        failed_over_at.map(|t| t - primary_killed),
    );
    assert!(
        failed_before.is_empty(),
        "writes failed while managers and an etcd member died: {failed_before:?}"
    );
    assert!(before_primary.len() > 100, "the writer hardly wrote");
    assert!(
        first_after_primary.is_some(),
        "no write acknowledged within 30 s of the primary's kill"
    );
    let failed_over = shard_when_answered(&admin, "shard-0").await;
    assert!(failed_over.generation > shard.generation, "no failover");
    assert!(
        leader_after_etcd.is_some(),
        "no leader after an etcd member died"
    );
    stop_dev(&mut child);
}
