//! Issue 3's must-show through the real `shardline dev` and CLI: two
//! tenants in the shared keyspace and one dedicated tenant with its own 2
//! shards. All three write rows under the same shard keys; each reads back
//! only its own, and PostgreSQL holds the dedicated tenant's rows on its
//! shards alone (and the shared tenants' rows never there).

mod devproc;

use std::collections::BTreeMap;

use devproc::{cli, pg_connect, pg_name, start_dev, stop_dev, wait_dev_json};
use serde_json::{json, Value};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::RouterClient;

const ROWS: usize = 200;

fn key(i: usize) -> String {
    format!("customer:{i}")
}

async fn exec(router: &RouterClient, key: &str, sql: &str, params: Vec<Value>) -> Value {
    let r = router
        .execute(&ExecuteRequest {
            keyspace: None,
            shard_key: ShardKeyValue::Text(key.into()),
            sql: sql.into(),
            params,
            consistency: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{sql} for {key}: {e}"));
    json!({"shard": r.shard, "rows": r.result.rows})
}

/// Rows of the `notes` table in the tenant database `db` (the tenant's
/// `pg_name`) on the shard at `dsn`; `None` when it is not there.
async fn rows_on(dsn: &str, db: &str) -> Option<i64> {
    let admin = pg_connect(dsn).await.expect("connect to shard");
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    if !exists {
        return None;
    }
    let client = pg_connect(&format!("{dsn} dbname={db}")).await.unwrap();
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {db}.notes"), &[])
        .await
        .unwrap()
        .get(0);
    Some(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_dedicated_tenants_see_only_their_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = start_dev(&dir, &["--shards", "2", "--spare-shards", "2"]);
    let info = wait_dev_json(&dir, &mut child).await;
    let router_url = info["router_url"].as_str().unwrap().to_string();

    let schema = tmp.path().join("001_notes.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE notes (k text PRIMARY KEY, body text NOT NULL);",
    )
    .unwrap();
    let schema = schema.to_str().unwrap();
    cli(
        &dir,
        &[
            "schema",
            "apply",
            "--keyspace",
            "default",
            "001_notes",
            schema,
        ],
    );
    let created = cli(&dir, &["tenant", "create", "blue"]);
    cli(&dir, &["tenant", "create", "green"]);
    // The CLI shows the tenant's random PostgreSQL name.
    let blue_pg = pg_name(&dir, "blue");
    assert!(
        blue_pg.starts_with("t_") && !blue_pg.contains("blue"),
        "{blue_pg}"
    );
    assert!(
        created
            .lines()
            .any(|l| l.starts_with("pg role/db/schema") && l.ends_with(&blue_pg)),
        "{created}"
    );
    let acme = cli(
        &dir,
        &[
            "--json",
            "tenant",
            "create",
            "acme",
            "--dedicated",
            "--shards",
            "2",
        ],
    );
    let acme: Value = serde_json::from_str(&acme).unwrap();
    let acme_shards: Vec<String> = acme["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(acme_shards.len(), 2, "{acme}");
    cli(
        &dir,
        &["schema", "apply", "--keyspace", "acme", "001_notes", schema],
    );
    let listed = cli(&dir, &["tenant", "list"]);
    for t in ["default", "blue", "green", "acme"] {
        assert!(listed.contains(t), "{listed}");
    }

    let mut routers = BTreeMap::new();
    for tenant in ["blue", "green", "acme"] {
        let out = cli(
            &dir,
            &[
                "--json",
                "app",
                "create",
                &format!("{tenant}-web"),
                "--tenant",
                tenant,
            ],
        );
        let created: Value = serde_json::from_str(&out).unwrap();
        let token = created["token"].as_str().unwrap().to_string();
        routers.insert(tenant, RouterClient::new(&router_url, Some(token)).unwrap());
    }
    assert!(
        common_wait(&routers).await,
        "the router did not learn the new apps"
    );

    // Everyone writes under the same keys.
    let mut acme_on = BTreeMap::new();
    for i in 0..ROWS {
        for (tenant, router) in &routers {
            let r = exec(
                router,
                &key(i),
                "INSERT INTO notes (k, body) VALUES ($1, $2)",
                vec![json!(key(i)), json!(format!("{tenant}:{i}"))],
            )
            .await;
            let shard = r["shard"].as_str().unwrap().to_string();
            if *tenant == "acme" {
                assert!(acme_shards.contains(&shard), "acme's row went to {shard}");
                *acme_on.entry(shard).or_insert(0) += 1;
            } else {
                assert!(
                    !acme_shards.contains(&shard),
                    "{tenant}'s row went to {shard}"
                );
            }
        }
    }
    assert_eq!(acme_on.len(), 2, "acme's rows use both of its shards");

    // Each sees exactly its own rows, under every key.
    for i in 0..ROWS {
        for (tenant, router) in &routers {
            let r = exec(
                router,
                &key(i),
                "SELECT body FROM notes WHERE k = $1",
                vec![json!(key(i))],
            )
            .await;
            assert_eq!(
                r["rows"],
                json!([[format!("{tenant}:{i}")]]),
                "{tenant} reading {}",
                key(i)
            );
        }
    }
    for (tenant, router) in &routers {
        let r = exec(router, &key(0), "SELECT count(*) FROM notes", vec![]).await;
        let n = r["rows"][0][0].as_i64().unwrap();
        assert!(
            n > 0 && n < ROWS as i64,
            "{tenant} counts {n} rows on one shard"
        );
    }

    // What PostgreSQL holds, shard by shard.
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    let dbs: BTreeMap<&str, String> = ["blue", "green", "acme"]
        .into_iter()
        .map(|t| (t, pg_name(&dir, t)))
        .collect();
    for shard in info["shards"].as_array().unwrap() {
        let id = shard["id"].as_str().unwrap();
        let dsn = shard["dsn"].as_str().unwrap();
        let dedicated = acme_shards.iter().any(|s| s == id);
        for tenant in ["blue", "green", "acme"] {
            let n = rows_on(dsn, &dbs[tenant]).await;
            println!("{id}: {tenant} holds {n:?} rows");
            if dedicated == (tenant == "acme") {
                *totals.entry(tenant).or_default() += n.expect("tenant database on its shard");
            } else {
                assert_eq!(n, None, "{tenant} has a database on {id}");
            }
        }
    }
    for tenant in ["blue", "green", "acme"] {
        assert_eq!(totals[tenant], ROWS as i64, "{tenant}'s rows on its shards");
    }

    let status = cli(&dir, &["status"]);
    assert!(status.contains("acme"), "{status}");
    stop_dev(&mut child);
}

/// Waits until every router client's token is accepted.
async fn common_wait(routers: &BTreeMap<&str, RouterClient>) -> bool {
    for router in routers.values() {
        let mut ok = false;
        for _ in 0..200 {
            let r = router
                .execute(&ExecuteRequest {
                    keyspace: None,
                    shard_key: ShardKeyValue::Text("probe".into()),
                    sql: "SELECT 1".into(),
                    params: vec![],
                    consistency: Default::default(),
                })
                .await;
            if r.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if !ok {
            return false;
        }
    }
    true
}
