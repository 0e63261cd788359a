//! `shardline_localpg::create_replica` against a password-protected
//! primary, as `shardline dev` runs them.

use std::time::Duration;

use shardline_localpg::{
    create_replica, free_port, init_cluster, start_cluster, wait_streaming, ClusterConfig,
    PgBinaries, StopMode,
};

#[tokio::test]
async fn replica_of_a_password_protected_primary_streams() {
    let bins = PgBinaries::detect().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut pcfg = ClusterConfig::new(dir.path().join("pg").join("shard-0"), free_port().unwrap());
    pcfg.password = Some("s3cret-pw".into());
    pcfg.settings = vec![("fsync".into(), "off".into())];
    assert!(init_cluster(&bins, &pcfg).await.unwrap());
    let mut primary = start_cluster(&bins, &pcfg).await.unwrap();

    let mut rcfg = pcfg.clone();
    rcfg.data_dir = dir.path().join("pg").join("shard-0-r1");
    rcfg.port = free_port().unwrap();
    assert!(create_replica(&bins, &pcfg, &rcfg, "shard_0_r1")
        .await
        .unwrap());
    // A second call reuses the clone.
    assert!(!create_replica(&bins, &pcfg, &rcfg, "shard_0_r1")
        .await
        .unwrap());
    let auto = std::fs::read_to_string(rcfg.data_dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo"), "{auto}");
    assert!(auto.contains("password=''s3cret-pw''"), "{auto}");
    assert!(auto.contains("application_name=shard_0_r1"), "{auto}");
    assert!(auto.contains("cluster_name = 'shard_0_r1'"), "{auto}");
    assert!(rcfg.data_dir.join("standby.signal").exists());

    let mut replica = start_cluster(&bins, &rcfg).await.unwrap();
    wait_streaming(&rcfg, Duration::from_secs(60))
        .await
        .unwrap();
    let mut bad = rcfg.clone();
    bad.data_dir = dir.path().join("pg").join("bad");
    assert!(create_replica(&bins, &pcfg, &bad, "Bad-Name")
        .await
        .is_err());

    // The replica's settings show its own name and port.
    let (c, conn) = tokio_postgres::connect(&rcfg.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT current_setting('cluster_name'), current_setting('port')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "shard_0_r1");
    assert_eq!(row.get::<_, String>(1), rcfg.port.to_string());

    replica
        .stop(StopMode::Fast, Duration::from_secs(10))
        .await
        .unwrap();
    primary
        .stop(StopMode::Fast, Duration::from_secs(10))
        .await
        .unwrap();
}
