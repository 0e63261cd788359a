//! A manager and two routers as separate processes, as on Kubernetes:
//! both routers serve the same map, follow a change, and keep serving
//! when the manager is killed.

mod common;

use std::time::{Duration, Instant};

use common::procs::{free_port, spawn, Proc};
use common::{eventually, ADMIN_TOKEN, ROUTER_TOKEN};
use serde_json::json;
use shardline_api::manager::{
    ApplyMigrationRequest, CreateAppRequest, CreateKeyspaceRequest, CreateTenantRequest,
    RegisterShardRequest,
};
use shardline_api::router::{ExecuteRequest, ShardKeyValue};
use shardline_client::{ManagerClient, RouterClient};
use shardline_testkit::PgCluster;

fn start_manager(dir: &std::path::Path, port: u16) -> Proc {
    let cfg = dir.join("manager.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncatalog_path = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\nrouter_token = \"{ROUTER_TOKEN}\"\nhealth_interval = \"200ms\"\n",
            dir.join("catalog.json").display()
        ),
    )
    .unwrap();
    spawn(
        &["manager", "--config", cfg.to_str().unwrap()],
        &dir.join("manager.log"),
    )
}

fn start_router(dir: &std::path::Path, manager_url: &str, port: u16, id: &str) -> Proc {
    spawn(
        &[
            "router",
            "--manager-url",
            manager_url,
            "--router-token",
            ROUTER_TOKEN,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--id",
            id,
        ],
        &dir.join(format!("{id}.log")),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_as_processes_share_and_follow_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let pgs = [
        PgCluster::start().await.unwrap(),
        PgCluster::start().await.unwrap(),
        PgCluster::start().await.unwrap(),
    ];
    let mport = free_port();
    let manager_url = format!("http://127.0.0.1:{mport}");
    let mut manager = start_manager(dir.path(), mport);
    let admin = ManagerClient::new(&manager_url, Some(ADMIN_TOKEN.into())).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            admin.status().await.is_ok()
        })
        .await,
        "manager up"
    );
    for (i, pg) in pgs.iter().enumerate() {
        admin
            .register_shard(&RegisterShardRequest {
                id: format!("s{i}"),
                primary: pg.dsn(),
                replicas: vec![],
                tenant: None,
                synchronous: false,
            })
            .await
            .unwrap();
    }
    admin
        .create_keyspace(&CreateKeyspaceRequest {
            name: "default".into(),
            key_type: Default::default(),
            shards: vec!["s0".into(), "s1".into()],
        })
        .await
        .unwrap();
    admin
        .apply_migration(
            "default",
            &ApplyMigrationRequest {
                name: "001".into(),
                sql: "CREATE TABLE t (k text PRIMARY KEY)".into(),
            },
        )
        .await
        .unwrap();
    admin
        .create_tenant(&CreateTenantRequest {
            id: "default".into(),
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap();
    let app = admin
        .create_app(&CreateAppRequest {
            name: "app".into(),
            ..CreateAppRequest::default()
        })
        .await
        .unwrap();

    let ports = [free_port(), free_port()];
    let _r1 = start_router(dir.path(), &manager_url, ports[0], "r1");
    let _r2 = start_router(dir.path(), &manager_url, ports[1], "r2");
    let routers: Vec<RouterClient> = ports
        .iter()
        .map(|p| {
            RouterClient::new(&format!("http://127.0.0.1:{p}"), Some(app.token.clone())).unwrap()
        })
        .collect();
    for r in &routers {
        assert!(
            eventually(Duration::from_secs(20), || async {
                r.route("default", "x").await.is_ok()
            })
            .await,
            "router up"
        );
    }
    // Same map, same version.
    for i in 0..100 {
        let key = format!("k{i}");
        let a = routers[0].route("default", &key).await.unwrap();
        let b = routers[1].route("default", &key).await.unwrap();
        assert_eq!(a, b, "routers disagree on {key}");
    }
    // Both register with the manager.
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin
                .list_routers()
                .await
                .map(|l| l.len() == 2)
                .unwrap_or(false)
        })
        .await,
        "both routers heartbeat"
    );

    // A change: a new keyspace on the third shard, and a tenant in it
    // with an app; both routers serve the new app there.
    let changed = Instant::now();
    let created = admin
        .create_keyspace(&CreateKeyspaceRequest {
            name: "other".into(),
            key_type: Default::default(),
            shards: vec!["s2".into()],
        })
        .await
        .unwrap();
    assert_eq!(created.map.len(), 1);
    admin
        .create_tenant(&CreateTenantRequest {
            id: "other".into(),
            keyspace: Some("other".into()),
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap();
    let other_app = admin
        .create_app(&CreateAppRequest {
            name: "other-app".into(),
            tenant: Some("other".into()),
            ..CreateAppRequest::default()
        })
        .await
        .unwrap();
    for (i, p) in ports.iter().enumerate() {
        let r = RouterClient::new(
            &format!("http://127.0.0.1:{p}"),
            Some(other_app.token.clone()),
        )
        .unwrap();
        let seen = eventually(Duration::from_secs(5), || async {
            r.route("other", "x")
                .await
                .map(|a| a.shard == "s2")
                .unwrap_or(false)
        })
        .await;
        assert!(seen, "router {i} did not follow the change");
        println!(
            "router {i} followed the change after {:?}",
            changed.elapsed()
        );
    }
    let v = admin.status().await.unwrap().catalog_version;
    for r in &routers {
        assert_eq!(r.route("default", "x").await.unwrap().catalog_version, v);
    }

    // The manager dies: routers keep serving from their last catalog.
    let _ = manager.0.kill();
    let _ = manager.0.wait();
    for (i, r) in routers.iter().enumerate() {
        let key = format!("after-kill-{i}");
        r.execute(&ExecuteRequest {
            params: vec![json!(key)],
            ..exec(&key, "INSERT INTO t (k) VALUES ($1)")
        })
        .await
        .unwrap();
        let got = r
            .execute(&ExecuteRequest {
                params: vec![json!(key)],
                ..exec(&key, "SELECT k FROM t WHERE k = $1")
            })
            .await
            .unwrap();
        assert_eq!(got.result.rows.len(), 1);
    }
    // It comes back on the same catalog file; routers reconnect.
    manager = start_manager(dir.path(), mport);
    assert!(
        eventually(Duration::from_secs(20), || async {
            admin.status().await.is_ok()
        })
        .await
    );
    assert_eq!(
        admin.status().await.unwrap().catalog_version,
        v,
        "catalog survived the kill"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            admin
                .list_routers()
                .await
                .map(|l| l.len() == 2)
                .unwrap_or(false)
        })
        .await,
        "routers heartbeat again"
    );
    drop(manager);
}
