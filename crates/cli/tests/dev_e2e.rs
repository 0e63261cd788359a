//! The foundation's end-to-end proof, through the real `shardline dev`
//! process: 2,000 keys inserted through the router land on the shard that
//! PostgreSQL itself computes for each key, spread 15-35% per shard, and
//! survive a restart of `shardline dev`; SIGTERM stops everything within
//! 10 s with no PostgreSQL left running.

mod devproc;

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use devproc::{cli, pg_connect, pg_name, stop_dev, wait_dev_json};

use serde_json::{json, Value};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::RouterClient;
use shardline_core::hash::sql_routing_hash;
use shardline_core::{KeyRange, KeyType};

const KEYS: usize = 2000;

fn start_dev(dir: &Path) -> Child {
    devproc::start_dev(dir, &["--shards", "4", "--spare-shards", "0"])
}

fn key(i: usize) -> String {
    format!("user:{i}")
}

/// Reads the map from `shardline keyspace get default --json`.
fn shard_map(dir: &Path) -> Vec<(KeyRange, String)> {
    let out = cli(dir, &["--json", "keyspace", "get", "default"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["map"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                KeyRange::parse(r["range"].as_str().unwrap()).unwrap(),
                r["shard"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// For every shard, the keys PostgreSQL holds there and, for each, the
/// shard its own hash computation assigns it to.
/// `db` is the default tenant's database (its `pg_name`).
async fn placement(info: &Value, map: &[(KeyRange, String)], db: &str) -> HashMap<String, String> {
    let hash_sql = sql_routing_hash(KeyType::Text, "k");
    let mut at = HashMap::new();
    for shard in info["shards"].as_array().unwrap() {
        let id = shard["id"].as_str().unwrap();
        // The default tenant's rows live in its own database and schema.
        let dsn = format!("{} dbname={db}", shard["dsn"].as_str().unwrap());
        let client = pg_connect(&dsn).await.expect("connect to shard");
        let rows = client
            .query(&format!("SELECT k, ({hash_sql})::text FROM {db}.kv"), &[])
            .await
            .unwrap();
        for row in rows {
            let k: String = row.get(0);
            let h: u64 = row.get::<_, String>(1).parse().unwrap();
            let owner = &map.iter().find(|(r, _)| r.contains(h)).unwrap().1;
            assert_eq!(
                owner, id,
                "key {k} is on {id} but PostgreSQL's hash {h:016x} puts it on {owner}"
            );
            assert!(
                at.insert(k.clone(), id.to_string()).is_none(),
                "key {k} is on two shards"
            );
        }
    }
    at
}

async fn read_back(router: &RouterClient, placed: &HashMap<String, String>) {
    for i in 0..KEYS {
        let k = key(i);
        let resp = router
            .execute(&ExecuteRequest {
                keyspace: None,
                shard_key: ShardKeyValue::Text(k.clone()),
                sql: "SELECT v FROM kv WHERE k = $1".into(),
                params: vec![json!(k)],
                consistency: Default::default(),
            })
            .await
            .unwrap();
        assert_eq!(resp.result.rows, vec![vec![json!(i as i64)]], "row of {k}");
        assert_eq!(resp.shard, placed[&k], "router read {k} from another shard");
    }
}

fn assert_postgres_gone(info: &Value) {
    for shard in info["shards"].as_array().unwrap() {
        let port = shard["port"].as_u64().unwrap();
        let up = std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_millis(300),
        )
        .is_ok();
        assert!(
            !up,
            "PostgreSQL on port {port} still accepts connections after dev stopped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_routes_by_postgres_hash_and_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = start_dev(&dir);
    let info = wait_dev_json(&dir, &mut child).await;

    let schema = tmp.path().join("001_kv.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE kv (k text PRIMARY KEY, v bigint NOT NULL);",
    )
    .unwrap();
    let out = cli(
        &dir,
        &[
            "schema",
            "apply",
            "--keyspace",
            "default",
            "001_kv",
            schema.to_str().unwrap(),
        ],
    );
    assert_eq!(out.matches("applied").count(), 4, "{out}");

    let router = RouterClient::new(
        info["router_url"].as_str().unwrap(),
        Some(info["app_token"].as_str().unwrap().into()),
    )
    .unwrap();
    let mut affected = 0;
    // 16 at a time: enough to exercise the pools, without making a
    // shared CI machine take seconds to open each PostgreSQL session.
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(16) {
        let results = futures_util::future::join_all(batch.iter().map(|&i| {
            let router = router.clone();
            async move {
                let k = key(i);
                router
                    .execute(&ExecuteRequest {
                        keyspace: None,
                        shard_key: ShardKeyValue::Text(k.clone()),
                        sql: "INSERT INTO kv (k, v) VALUES ($1, $2)".into(),
                        params: vec![json!(k), json!(i)],
                        consistency: Default::default(),
                    })
                    .await
                    .map(|r| r.result.rows_affected)
            }
        }))
        .await;
        for r in results {
            affected += r.unwrap();
        }
    }
    assert_eq!(affected, KEYS as u64);

    let map = shard_map(&dir);
    assert_eq!(map.len(), 4);
    let db = pg_name(&dir, "default");
    let placed = placement(&info, &map, &db).await;
    assert_eq!(placed.len(), KEYS, "every key is on exactly one shard");
    let mut per_shard: HashMap<&str, usize> = HashMap::new();
    for s in placed.values() {
        *per_shard.entry(s).or_default() += 1;
    }
    for (shard, n) in &per_shard {
        let share = *n as f64 / KEYS as f64;
        println!("{shard}: {n} keys ({:.1}%)", share * 100.0);
        assert!(
            (0.15..=0.35).contains(&share),
            "{shard} holds {:.1}%",
            share * 100.0
        );
    }
    assert_eq!(per_shard.len(), 4);
    read_back(&router, &placed).await;

    let sql_out = cli(
        &dir,
        &[
            "--json",
            "sql",
            "--key",
            "user:42",
            "SELECT k, v FROM kv WHERE k = $1",
            "--param",
            "\"user:42\"",
        ],
    );
    // The row itself: its key and the value written with it.
    let answer: serde_json::Value = serde_json::from_str(&sql_out).expect("JSON from --json");
    assert_eq!(answer["rows"], json!([["user:42", 42]]), "{sql_out}");
    let status = cli(&dir, &["status"]);
    for i in 0..4 {
        assert!(status.contains(&format!("shard-{i}")), "{status}");
    }
    assert!(status.contains(" up "), "{status}");
    // The one manager of a file catalog leads.
    assert!(status.contains("leader manager-"), "{status}");

    let took = stop_dev(&mut child);
    println!("dev stopped in {took:?}");
    assert_postgres_gone(&info);

    // Same data dir: the same shards, catalog, tokens and rows.
    let mut child = start_dev(&dir);
    let info2 = wait_dev_json(&dir, &mut child).await;
    assert_eq!(info2["app_token"], info["app_token"]);
    let router = RouterClient::new(
        info2["router_url"].as_str().unwrap(),
        Some(info2["app_token"].as_str().unwrap().into()),
    )
    .unwrap();
    let placed_again = placement(&info2, &shard_map(&dir), &db).await;
    assert_eq!(placed_again, placed, "rows moved across the restart");
    read_back(&router, &placed).await;
    stop_dev(&mut child);
    assert_postgres_gone(&info2);
}

/// `SHOW synchronous_standby_names` and the number of replicas streaming
/// as quorum standbys, on shard-0's primary of the dev behind `info`.
async fn synchronous_state(info: &Value) -> (String, i64) {
    let dsn = format!(
        "{} dbname=postgres",
        info["shards"][0]["dsn"].as_str().unwrap()
    );
    let c = pg_connect(&dsn).await.expect("connect to shard-0");
    let names: String = c
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    let quorum: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (names, quorum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_synchronous_makes_each_primary_wait_for_a_replica() {
    for synchronous in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let mut args = vec!["--shards", "1", "--spare-shards", "0", "--replicas", "1"];
        if synchronous {
            args.push("--synchronous");
        }
        let mut child = devproc::start_dev(&dir, &args);
        let info = wait_dev_json(&dir, &mut child).await;
        let mut state = synchronous_state(&info).await;
        for _ in 0..100 {
            if state.1 == i64::from(synchronous) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = synchronous_state(&info).await;
        }
        let (names, quorum) = state;
        println!(
            "dev --replicas 1{}: synchronous_standby_names = {names:?}, {quorum} quorum standby(s)",
            if synchronous { " --synchronous" } else { "" }
        );
        if synchronous {
            assert!(names.starts_with("ANY 1 (\""), "{names}");
            assert_eq!(quorum, 1, "the replica is a synchronous standby");
        } else {
            // The control: without the flag, no standby is waited for.
            assert_eq!(names, "");
            assert_eq!(quorum, 0);
        }
        stop_dev(&mut child);
    }
}
