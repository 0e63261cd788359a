//! TLS from the manager to its shards (tokio-postgres with shardline's
//! rustls connector), as the DSN's `sslmode` says, on a real PostgreSQL
//! serving a certificate of a throwaway CA.

use std::time::Duration;

use shardline_manager::pg;
use shardline_testkit::{PgCluster, TlsFiles};

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
