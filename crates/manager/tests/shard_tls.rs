//! TLS from the manager to its shards (tokio-postgres with shardline's
//! rustls connector), as the DSN's `sslmode` says, on a real PostgreSQL
//! serving a certificate of a throwaway CA; a client certificate in the
//! DSN for a server that asks for one.

mod common;

use std::time::Duration;

use common::eventually;
use common::stack::Stack;
use shardline_manager::pg;
use shardline_testkit::{CertAuth, PgCluster, TlsFiles};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the server counts the session as TLS.
const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test]
async fn verify_full_connects_over_tls_and_another_name_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let pg = PgCluster::start_tls(&files.server_cert, &files.server_key, &[]).await?;
    let dsn = |mode: &str| {
        format!(
            "{} sslmode={mode} sslrootcert={}",
            pg.dsn(),
            files.ca.display()
        )
    };
    let client = pg::connect(&dsn("verify-full"), TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let ssl: bool = client.query_one(SSL_IN_USE, &[]).await?.get(0);
    assert!(ssl, "verify-full ran without TLS");
    // The control: without sslmode, as before, the session is plain.
    let client = pg::connect(&pg.dsn(), TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let ssl: bool = client.query_one(SSL_IN_USE, &[]).await?.get(0);
    assert!(!ssl, "a DSN without sslmode used TLS");

    // The same server by a name its certificate does not have
    // (`hostaddr` connects, `host` is the name checked): refused.
    let other = format!(
        "host=db.elsewhere.test hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
         sslmode=verify-full sslrootcert={}",
        pg.port(),
        files.ca.display()
    );
    let e = match pg::connect(&other, TIMEOUT).await {
        Ok(_) => anyhow::bail!("a certificate for 127.0.0.1 was taken for db.elsewhere.test"),
        Err(e) => e,
    };
    assert!(e.contains("certificate not valid for name"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_in_the_dsn_passes_cert_authentication() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let CertAuth {
        pg,
        cert,
        key,
        without_cert: verify,
        with_cert,
    } = PgCluster::start_cert_auth(dir.path()).await?;

    // A control-plane session, and the health check's probe on it.
    let client = pg::connect(&with_cert, TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    let dn: Option<String> = client
        .query_one(
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(dn.as_deref(), Some("/CN=postgres"));
    let probe = pg::probe(&client).await.map_err(anyhow::Error::msg)?;
    assert!(!probe.in_recovery && probe.lsn.is_some(), "{probe:?}");
    // The URL form says the same.
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require&sslcert={}&sslkey={}",
        pg.port(),
        cert.display(),
        key.display()
    );
    pg::connect(&url, TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;

    // The control: without the certificate the server refuses.
    let e = match pg::connect(&verify, TIMEOUT).await {
        Ok(_) => anyhow::bail!("a login without a client certificate passed `cert`"),
        Err(e) => e,
    };
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );

    // Registered, the shard answers the manager's health checks; the
    // same server registered without the certificate is down, and says
    // why.
    let mut st = Stack::new().await;
    st.start().await;
    for (id, dsn) in [("s1", &with_cert), ("s2", &verify)] {
        let body = serde_json::json!({ "id": id, "primary": dsn, "replicas": [] });
        let a = st
            .admin("POST", "/v1/shards", Some(&body.to_string()))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    st.wait_healthy("s1", 1).await;
    let down = eventually(Duration::from_secs(20), || async {
        st.health().await.instances.iter().any(|i| {
            i.shard == "s2"
                && !i.health.up
                && i.health
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains("valid client certificate"))
        })
    })
    .await;
    assert!(
        down,
        "s2 is down for want of a certificate: {:?}",
        st.health().await
    );
    // A certificate without its key is refused at registration.
    let body = serde_json::json!({
        "id": "s3",
        "primary": format!("{verify} sslcert={}", cert.display()),
        "replicas": [],
    });
    let a = st
        .admin("POST", "/v1/shards", Some(&body.to_string()))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("sslcert needs sslkey"), "{}", a.body);
    st.stop().await;
    Ok(())
}

/// Whether `primary` streams to the standby `name` over TLS, by its own
/// account (`None`: not streaming to it).
async fn streams_over_tls(primary: &PgCluster, name: &str) -> anyhow::Result<Option<bool>> {
    let c = primary.connect().await?;
    let row = c
        .query_opt(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = $1 AND r.state = 'streaming'",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Waits until `primary` streams to `name` with TLS `tls`.
async fn wait_stream_tls(primary: &PgCluster, name: &str, tls: bool) -> anyhow::Result<()> {
    let mut seen = None;
    for _ in 0..1000 {
        seen = streams_over_tls(primary, name).await?;
        if seen == Some(tls) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{name} streams with TLS {seen:?}, not {tls}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switchover_a_replica_streams_with_the_dsns_sslmode_and_its_own_cas(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    // Replicas clone the primary's certificate and `ssl = on`.
    let primary = PgCluster::start_tls(&files.server_cert, &files.server_key, &[]).await?;
    let r1 = PgCluster::start_replica_of(&primary).await?;
    let r2 = PgCluster::start_replica_of(&primary).await?;
    let r2_name = r2.name().unwrap_or_default().to_string();
    // r2's host has the CA in a place of its own, which its operator
    // names in its primary_conninfo; it streams in plain text so far.
    let r2_ca = r2.data_dir().join("stream_ca.crt");
    std::fs::copy(&files.ca, &r2_ca)?;
    let c2 = r2.connect().await?;
    let current: String = c2.query_one("SHOW primary_conninfo", &[]).await?.get(0);
    let conninfo = format!(
        "{current} sslmode=disable sslrootcert='{}'",
        r2_ca.display()
    );
    c2.batch_execute(&format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        shardline_core::catalog::quote_literal(&conninfo)
    ))
    .await?;
    c2.batch_execute("SELECT pg_reload_conf()").await?;
    wait_stream_tls(&primary, &r2_name, false).await?;

    // The DSNs ask for verify-full, with the CA file of the manager's
    // machine.
    let manager_ca = dir.path().join("manager_ca.crt");
    std::fs::copy(&files.ca, &manager_ca)?;
    let dsn = |pg: &PgCluster| {
        format!(
            "{} sslmode=verify-full sslrootcert={}",
            pg.dsn(),
            manager_ca.display()
        )
    };
    let mut st = Stack::new().await;
    st.start().await;
    let body = serde_json::json!({
        "id": "s1",
        "primary": dsn(&primary),
        "replicas": [dsn(&r1), dsn(&r2)],
    });
    let a = st
        .admin("POST", "/v1/shards", Some(&body.to_string()))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    st.wait_healthy("s1", 3).await;

    let a = st
        .admin("POST", "/v1/shards/s1/failover", Some(r#"{"to":"s1-1"}"#))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let result: shardline_api::manager::FailoverResult = serde_json::from_str(&a.body)?;
    // The replica's own log says why it does not stream, if it does not.
    let log = || std::fs::read_to_string(r2.log_path()).unwrap_or_default();
    assert_eq!(
        result.repointed,
        vec!["s1-2".to_string()],
        "{}\n{}",
        a.body,
        log()
    );

    // r2 follows r1 with the DSN's sslmode, its own CA file (not the
    // manager's path), over TLS by r1's account.
    let written: String = c2.query_one("SHOW primary_conninfo", &[]).await?.get(0);
    let value = |key: &str| shardline_manager::pg::conninfo_value(&written, key);
    assert_eq!(
        value("sslmode").as_deref(),
        Some("verify-full"),
        "{written}"
    );
    assert_eq!(
        value("sslrootcert"),
        Some(r2_ca.display().to_string()),
        "{written}"
    );
    assert!(!written.contains("manager_ca"), "{written}");
    assert_eq!(value("port"), Some(r1.port().to_string()), "{written}");
    wait_stream_tls(&r1, &r2_name, true).await?;
    st.stop().await;
    Ok(())
}
