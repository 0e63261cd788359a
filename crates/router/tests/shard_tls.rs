//! TLS from the router to its shards, as the DSN's `sslmode` says, on a
//! real PostgreSQL serving a certificate of a throwaway CA (`ssl = on`):
//! `verify-full` connects over TLS (PostgreSQL's own `pg_stat_ssl` says
//! so), a certificate for another name fails `verify-full` (and passes
//! `verify-ca`), one of another CA fails both, `require` refuses a server
//! without TLS and `prefer` falls back to plain there. Cancel requests
//! follow their session over TLS (a relay between the router and the
//! server reads the first bytes of every connection), and a client
//! certificate in the DSN passes a server's `cert` authentication.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline_router::pg::server::send_cancel;
use shardline_router::pg::{Pool, PoolConfig};
use shardline_testkit::{CertAuth, PgCluster, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// The code of a startup message (protocol 3.0), an `SSLRequest` and a
/// `CancelRequest`: bytes 4 to 8 of a connection's first message.
const STARTUP: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A TCP relay to a server on 127.0.0.1 that records the code of the
/// first message of every connection through it.
struct Relay {
    port: u16,
    codes: Arc<Mutex<Vec<u32>>>,
}

impl Relay {
    async fn start(target: u16) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let codes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&codes);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut head = [0u8; 8];
                    if client.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                    seen.lock().unwrap().push(code);
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Ok(Relay { port, codes })
    }

    /// The codes seen since the last call.
    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.codes.lock().unwrap())
    }
}

/// Waits until the server runs `sql` in some session (`running`), or
/// in none.
async fn wait_active(pg: &PgCluster, sql: &str, running: bool) -> anyhow::Result<()> {
    let c = pg.connect().await?;
    for _ in 0..500 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&sql],
            )
            .await?
            .get(0);
        if (n > 0) == running {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!(
        "{sql}: still not {}",
        if running { "running" } else { "stopped" }
    )
}

#[tokio::test]
async fn a_cancel_request_goes_over_tls_when_its_session_does() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let pg = PgCluster::start_tls(&files.server_cert, &files.server_key, &[]).await?;
    let relay = Relay::start(pg.port()).await?;
    let dsn = |mode: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={mode} sslrootcert={}",
            relay.port,
            files.ca.display()
        )
    };
    const SLEEP: &str = "SELECT pg_sleep(60)";
    // `prefer` got TLS from this server, so its cancel goes over TLS
    // too; the control, `disable`, sends its cancel in plain TCP, as
    // the relay sees.
    for (mode, first) in [
        ("verify-full", SSL_REQUEST),
        ("prefer", SSL_REQUEST),
        ("disable", STARTUP),
    ] {
        let pool = Pool::new(&dsn(mode), PoolConfig::default())?;
        let mut conn = pool.get().await?;
        let key = conn.cancel_key();
        let cancel = async {
            wait_active(&pg, SLEEP, true).await?;
            send_cancel(&key).await.map_err(anyhow::Error::from)
        };
        let (ran, cancelled) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(30), conn.batch_execute(SLEEP)),
            cancel
        );
        cancelled?;
        let e = ran
            .map_err(|_| anyhow::anyhow!("{mode}: the statement was not cancelled"))?
            .err()
            .ok_or_else(|| anyhow::anyhow!("{mode}: pg_sleep(60) succeeded"))?;
        assert_eq!(
            e.as_db_error().map(|db| db.code.as_str()),
            Some("57014"),
            "{mode}: {e}"
        );
        let cancel_first = if first == SSL_REQUEST {
            SSL_REQUEST
        } else {
            CANCEL_REQUEST
        };
        assert_eq!(
            relay.take(),
            vec![first, cancel_first],
            "{mode}: the session's, then the cancel's first message"
        );
    }

    // The router's own cancel: a session dropped while busy (an HTTP
    // request given up on) has its statement cancelled, over TLS.
    let pool = Pool::new(&dsn("verify-full"), PoolConfig::default())?;
    let mut conn = pool.get().await?;
    conn.set_busy(true);
    let given_up = tokio::time::timeout(Duration::from_millis(10), async {
        let _ = conn.batch_execute(SLEEP).await;
        // Never reached before the timeout: the statement sleeps.
        std::future::pending::<()>().await
    });
    let waited = tokio::join!(given_up, wait_active(&pg, SLEEP, true));
    waited.1?;
    drop(conn);
    wait_active(&pg, SLEEP, false).await?;
    assert_eq!(relay.take(), vec![SSL_REQUEST, SSL_REQUEST]);
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_in_the_dsn_passes_cert_authentication() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let CertAuth {
        pg,
        cert,
        key,
        without_cert: verify,
        with_cert,
    } = PgCluster::start_cert_auth(dir.path()).await?;
    let pool = Pool::new(&with_cert, PoolConfig::default())?;
    let mut conn = pool.get().await?;
    conn.batch_execute(OVER_TLS).await?;
    // The server saw the certificate.
    conn.batch_execute(
        "DO $$ BEGIN \
            IF (SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()) \
               IS DISTINCT FROM '/CN=postgres' THEN RAISE EXCEPTION 'no client certificate'; \
            END IF; END $$",
    )
    .await?;
    // The URL form says the same.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=require&sslcert={}&sslkey={}",
        pg.port(),
        cert.display(),
        key.display()
    );
    let pool = Pool::new(&url, PoolConfig::default())?;
    pool.get().await?.batch_execute(OVER_TLS).await?;

    // The control: without the certificate the server refuses, in its
    // own words.
    let e = connect_error(&verify).await;
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    // A certificate without its key is a settings error.
    let e = connect_error(&format!("{verify} sslcert={}", cert.display())).await;
    assert!(e.contains("sslcert needs sslkey"), "{e}");
    Ok(())
}
