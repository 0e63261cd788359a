//! TLS from the router to its shards, as the DSN's `sslmode` says, on a
//! real PostgreSQL serving a certificate of a throwaway CA (`ssl = on`):
//! `verify-full` connects over TLS (PostgreSQL's own `pg_stat_ssl` says
//! so), a certificate for another name fails `verify-full` (and passes
//! `verify-ca`), one of another CA fails both, `require` refuses a server
//! without TLS and `prefer` falls back to plain there.

use shardline_router::pg::{Pool, PoolConfig};
use shardline_testkit::{PgCluster, TlsFiles};

/// Fails unless the session runs over TLS, by the server's account.
const OVER_TLS: &str = "DO $$ BEGIN \
    IF NOT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) THEN \
        RAISE EXCEPTION 'not over TLS'; \
    END IF; END $$";

/// The error of a first connection through a pool for `dsn`.
async fn connect_error(dsn: &str) -> String {
    let pool = match Pool::new(dsn, PoolConfig::default()) {
        Ok(p) => p,
        Err(e) => return e.to_string(),
    };
    match pool.get().await {
        Ok(_) => String::from("connected"),
        Err(e) => format!("{e}: {:?}", e),
    }
}

#[tokio::test]
async fn verify_full_connects_over_tls_and_the_server_agrees() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let pg = PgCluster::start_tls(&files.server_cert, &files.server_key, &[]).await?;
    let verify = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.dsn(),
        files.ca.display()
    );
    let pool = Pool::new(&verify, PoolConfig::default())?;
    let mut conn = pool.get().await?;
    conn.batch_execute(OVER_TLS).await?;
    // The URL form says the same.
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        files.ca.display()
    );
    let pool = Pool::new(&url, PoolConfig::default())?;
    pool.get().await?.batch_execute(OVER_TLS).await?;

    // The control: the same server and check, without TLS, fails.
    let plain = Pool::new(
        &format!("{} sslmode=disable", pg.dsn()),
        PoolConfig::default(),
    )?;
    let e = plain
        .get()
        .await?
        .batch_execute(OVER_TLS)
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(e.contains("not over TLS"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_verify_full_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let (cert, key) = files.issue("elsewhere", "DNS:db.elsewhere.test")?;
    let pg = PgCluster::start_tls(&cert, &key, &[]).await?;
    let dsn = |mode: &str| {
        format!(
            "{} sslmode={mode} sslrootcert={}",
            pg.dsn(),
            files.ca.display()
        )
    };
    let e = connect_error(&dsn("verify-full")).await;
    assert!(e.contains("TLS handshake"), "{e}");
    assert!(e.contains("NotValidForName"), "{e}");
    // verify-ca checks the chain only: the same server is accepted.
    let pool = Pool::new(&dsn("verify-ca"), PoolConfig::default())?;
    pool.get().await?.batch_execute(OVER_TLS).await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_verification() -> anyhow::Result<()> {
    let (ours, theirs) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let files = TlsFiles::make(ours.path())?;
    let other = TlsFiles::make(theirs.path())?;
    let pg = PgCluster::start_tls(&files.server_cert, &files.server_key, &[]).await?;
    for mode in ["verify-full", "verify-ca", "require"] {
        let e = connect_error(&format!(
            "{} sslmode={mode} sslrootcert={}",
            pg.dsn(),
            other.ca.display()
        ))
        .await;
        // Both throwaway CAs have the same name, so webpki finds an
        // issuer by name whose signature does not match (BadSignature);
        // a CA of another name is UnknownIssuer.
        assert!(e.contains("invalid peer certificate"), "{mode}: {e}");
    }
    // require without a CA encrypts without verifying: connected.
    let pool = Pool::new(
        &format!("{} sslmode=require", pg.dsn()),
        PoolConfig::default(),
    )?;
    pool.get().await?.batch_execute(OVER_TLS).await?;
    Ok(())
}

#[tokio::test]
async fn a_server_without_tls_is_refused_by_require_and_used_plain_by_prefer() -> anyhow::Result<()>
{
    let pg = PgCluster::start().await?;
    let e = connect_error(&format!("{} sslmode=require", pg.dsn())).await;
    assert!(e.contains("does not accept TLS"), "{e}");
    let pool = Pool::new(
        &format!("{} sslmode=prefer", pg.dsn()),
        PoolConfig::default(),
    )?;
    pool.get().await?.batch_execute("SELECT 1").await?;
    // A verifying mode without a CA is a settings error, before any
    // connection.
    let e = connect_error(&format!("{} sslmode=verify-full", pg.dsn())).await;
    assert!(e.contains("needs sslrootcert"), "{e}");
    Ok(())
}
