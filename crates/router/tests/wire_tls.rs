//! TLS on the router's wire listener, with real clients: psql and
//! psycopg verify the router's certificate (`sslmode=verify-full`),
//! report the connection as TLS on their side and run a keyed statement
//! on a real shard through it; a certificate of another CA is refused,
//! a router without a certificate says it has no TLS, a router that
//! requires TLS refuses plain logins (`28000`), and bytes sent after an
//! `SSLRequest` before the answer are refused (`08P01`).
//!
//! The listener's Unix-domain socket (`pg_unix_dir`) is here too, for
//! what it shares with TLS: logins there are by SCRAM, `SSLRequest` is
//! answered `N` as PostgreSQL answers on its own socket, and a router
//! that requires TLS on TCP still takes local logins.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use common::{app, instance, migrate, provision, shard_catalog, tenant};
use shardline_core::catalog::{Limits, TableSpec};
use shardline_core::scram::Verifier;
use shardline_core::Catalog;
use shardline_router::state::{RouterContext, Routing, RoutingCell};
use shardline_router::wire::tls::WireTls;
use shardline_router::wire::{self, WireShared};
use shardline_router::RouterConfig;
use shardline_testkit::{PgCluster, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const APP: &str = "web";
const TOKEN: &str = "tok-web-0123456789abcdef";
const PASSWORD: &str = "role-pw-acme";

/// A wire listener on a free port, serving `catalog`.
struct Listener {
    addr: SocketAddr,
    stop: CancellationToken,
    /// With [`Listener::start_local`]: the socket's file.
    socket: Option<std::path::PathBuf>,
    /// Tells when both listeners have drained.
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Listener {
    async fn start(catalog: &Catalog, tls: Option<WireTls>) -> anyhow::Result<Listener> {
        Self::start_local(catalog, tls, None).await
    }

    /// [`Listener::start`], also on a Unix-domain socket in `dir`.
    async fn start_local(
        catalog: &Catalog,
        tls: Option<WireTls>,
        dir: Option<&Path>,
    ) -> anyhow::Result<Listener> {
        let ctx = Arc::new(RouterContext::new(&RouterConfig::new(
            "http://127.0.0.1:1",
            "t",
        )));
        let routing = Arc::new(RoutingCell::default());
        routing.set(Routing::build(catalog, &routing.get(), &ctx));
        ctx.contact.answered(60_000);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = WireShared::with_tls(routing, ctx, tls);
        let drain = std::time::Duration::from_secs(1);
        let local = match dir {
            Some(dir) => Some(wire::LocalListener::bind(dir, addr.port())?),
            None => None,
        };
        let socket = local.as_ref().map(|l| l.path().to_path_buf());
        let tcp = tokio::spawn(wire::serve(
            listener,
            Arc::clone(&shared),
            stop.clone(),
            drain,
            None,
        ));
        let local = local.map(|l| tokio::spawn(wire::serve(l, shared, stop.clone(), drain, None)));
        let done = tokio::spawn(async move {
            let _ = tcp.await;
            if let Some(l) = local {
                let _ = l.await;
            }
        });
        Ok(Listener {
            addr,
            stop,
            socket,
            done: Some(done),
        })
    }

    /// A libpq connection string as the app over the local socket.
    fn local_conninfo(&self, password: &str) -> String {
        let dir = self.socket.as_deref().and_then(Path::parent);
        format!(
            "host={} port={} user={APP} password={password} dbname=shared",
            dir.map(|d| d.display().to_string()).unwrap_or_default(),
            self.addr.port()
        )
    }

    /// A libpq connection string as the app, with `ssl` settings.
    fn conninfo(&self, ssl: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={APP} password={TOKEN} dbname=shared {ssl}",
            self.addr.port()
        )
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One shard with the tenant, its app (SCRAM verifier of `TOKEN`) and
/// table `items` keyed by `id`.
async fn shard() -> anyhow::Result<(PgCluster, Catalog)> {
    shard_at(PgCluster::start().await?, None).await
}

/// [`shard`] on `pg`, in the catalog by `dsn` (default: its TCP one).
async fn shard_at(pg: PgCluster, dsn: Option<String>) -> anyhow::Result<(PgCluster, Catalog)> {
    provision(&pg, &[("acme", PASSWORD)]).await?;
    migrate(
        &pg,
        "acme",
        PASSWORD,
        "CREATE TABLE items (id text PRIMARY KEY, v text)",
    )
    .await?;
    let mut a = app(APP, "acme", None, Limits::default());
    a.token_hash = shardline_core::auth::token_hash(TOKEN);
    a.token_scram = Some(Verifier::new(TOKEN, b"0123456789abcdef", 4096).to_string());
    let mut cat = shard_catalog(
        instance("s1-a", &dsn.unwrap_or_else(|| pg.dsn())),
        vec![],
        vec![tenant("acme", PASSWORD)],
        vec![a],
    );
    if let Some(ks) = cat.keyspaces.get_mut("shared") {
        ks.tables.insert(
            "items".into(),
            TableSpec {
                shard_key: "id".into(),
            },
        );
    }
    Ok((pg, cat))
}

fn certs(dir: &Path, required: bool) -> anyhow::Result<(TlsFiles, WireTls)> {
    let files = TlsFiles::make(dir)?;
    let tls = WireTls::load(&files.server_cert, &files.server_key, required)?;
    Ok((files, tls))
}

/// Runs a client program off the runtime's threads.
async fn run(mut cmd: Command) -> anyhow::Result<Output> {
    Ok(tokio::task::spawn_blocking(move || cmd.output()).await??)
}

fn psql(conninfo: &str, commands: &[&str]) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args([conninfo, "-X", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd
}

/// psycopg 3: prints whether libpq's connection uses TLS, then the
/// first value of `sql`.
fn psycopg(conninfo: &str, sql: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, psycopg\n\
         with psycopg.connect(sys.argv[1]) as c:\n\
         \x20   print('ssl_in_use', c.pgconn.ssl_in_use)\n\
         \x20   print('value', c.execute(sys.argv[2]).fetchone()[0])\n",
        conninfo,
        sql,
    ]);
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn psql_and_psycopg_verify_the_certificate_and_run_keyed_statements() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (files, tls) = certs(dir.path(), false)?;
    let (_pg, cat) = shard().await?;
    let router = Listener::start(&cat, Some(tls)).await?;
    let verify = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let out = run(psql(
        &router.conninfo(&verify),
        &[
            "\\conninfo",
            "INSERT INTO items (id, v) VALUES ('k1', 'over-tls')",
            "SELECT v FROM items WHERE id = 'k1'",
        ],
    ))
    .await?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    // psql's own view of its connection, not the server's.
    assert!(shown.contains("SSL connection (protocol: TLS"), "{shown}");
    assert!(shown.contains("over-tls"), "{shown}");

    let out = run(psycopg(
        &router.conninfo(&verify),
        "SELECT v FROM items WHERE id = 'k1'",
    ))
    .await?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("ssl_in_use True"), "{shown}");
    assert!(shown.contains("value over-tls"), "{shown}");

    // A result of many TLS records (800 kB) arrives whole.
    let out = run(psql(
        &router.conninfo(&verify),
        &["SELECT repeat(v, 100000) FROM items WHERE id = 'k1'"],
    ))
    .await?;
    assert!(out.status.success(), "{}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(body.matches("over-tls").count(), 100_000, "{}", body.len());

    // Offered, not required: a plain login still works.
    let out = run(psycopg(&router.conninfo("sslmode=disable"), "SELECT 1")).await?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("ssl_in_use False"), "{shown}");
    Ok(())
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_verification() -> anyhow::Result<()> {
    let (ours, theirs) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (_, tls) = certs(ours.path(), false)?;
    let other = TlsFiles::make(theirs.path())?;
    let router = Listener::start(&Catalog::default(), Some(tls)).await?;
    let out = run(psql(
        &router.conninfo(&format!(
            "sslmode=verify-full sslrootcert={}",
            other.ca.display()
        )),
        &["SELECT 1"],
    ))
    .await?;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("certificate verify failed"), "{shown}");
    Ok(())
}

#[tokio::test]
async fn without_a_certificate_ssl_is_answered_no() -> anyhow::Result<()> {
    let router = Listener::start(&Catalog::default(), None).await?;
    let out = run(psql(&router.conninfo("sslmode=require"), &["SELECT 1"])).await?;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("server does not support SSL, but SSL was required"),
        "{shown}"
    );
    Ok(())
}

#[tokio::test]
async fn required_tls_refuses_plain_logins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (files, tls) = certs(dir.path(), true)?;
    let router = Listener::start(&Catalog::default(), Some(tls)).await?;
    let err =
        match tokio_postgres::connect(&router.conninfo("sslmode=disable"), tokio_postgres::NoTls)
            .await
        {
            Ok(_) => anyhow::bail!("a plain login was let in"),
            Err(e) => e,
        };
    let db = err.as_db_error();
    assert_eq!(
        db.map(|d| d.code()),
        Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{err:?}"
    );
    assert!(
        db.is_some_and(|d| d.message().contains("TLS only")),
        "{err:?}"
    );
    // Over TLS the same login reaches authentication (and fails there:
    // this catalog has no apps).
    let out = run(psql(
        &router.conninfo(&format!(
            "sslmode=verify-full sslrootcert={}",
            files.ca.display()
        )),
        &["SELECT 1"],
    ))
    .await?;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    Ok(())
}

#[tokio::test]
async fn bytes_after_an_ssl_request_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, tls) = certs(dir.path(), false)?;
    let router = Listener::start(&Catalog::default(), Some(tls)).await?;
    let mut s = tokio::net::TcpStream::connect(router.addr).await?;
    // SSLRequest, then (unencrypted, before the answer) a startup packet
    // an attacker would want taken as sent over TLS.
    let mut packet = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let startup = b"\0\x03\0\0user\0web\0database\0shared\0\0";
    packet.extend_from_slice(&(startup.len() as i32 + 4).to_be_bytes());
    packet.extend_from_slice(startup);
    s.write_all(&packet).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(common::TIMEOUT, s.read_to_end(&mut answer)).await??;
    assert_eq!(answer.first(), Some(&b'E'), "answer: {answer:?}");
    let shown = String::from_utf8_lossy(&answer);
    assert!(shown.contains("08P01"), "{shown}");
    assert!(
        shown.contains("unencrypted data after SSL request"),
        "{shown}"
    );
    Ok(())
}

#[tokio::test]
async fn gss_encryption_is_answered_no_and_tls_may_follow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_, tls) = certs(dir.path(), false)?;
    let router = Listener::start(&Catalog::default(), Some(tls)).await?;
    let mut s = tokio::net::TcpStream::connect(router.addr).await?;
    let mut answer = [0u8; 1];
    for (request, expected) in [
        ([0x04, 0xd2, 0x16, 0x30], b'N'),
        ([0x04, 0xd2, 0x16, 0x2f], b'S'),
    ] {
        s.write_all(&[&[0, 0, 0, 8][..], &request[..]].concat())
            .await?;
        tokio::time::timeout(common::TIMEOUT, s.read_exact(&mut answer)).await??;
        assert_eq!(answer[0], expected, "answer to {request:?}");
    }
    Ok(())
}

#[test]
fn unusable_key_files_are_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let missing = dir.path().join("missing.key");
    let e = WireTls::load(&files.server_cert, &missing, false)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("missing.key"), "{e}");
    // A key that is not the certificate's.
    let e = WireTls::load(&files.server_cert, &dir.path().join("ca.key"), false)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("server.crt") && e.contains("ca.key"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections() -> anyhow::Result<()> {
    let (dir, next_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let files = TlsFiles::make(dir.path())?;
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&files.server_cert, &cert)?;
    std::fs::copy(&files.server_key, &key)?;
    let router = Listener::start(
        &Catalog::default(),
        Some(WireTls::load(&cert, &key, false)?),
    )
    .await?;
    // Verification passes or fails before the login, which fails with
    // this catalog (no apps): that is how each connection is judged.
    let verified_by = |ca: &Path| {
        psql(
            &router.conninfo(&format!("sslmode=verify-full sslrootcert={}", ca.display())),
            &["SELECT 1"],
        )
    };
    let out = run(verified_by(&files.ca)).await?;
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    // A broken replacement keeps the old certificate.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n")?;
    let out = run(verified_by(&files.ca)).await?;
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    // Another CA's pair, renamed into place: the next connection gets it.
    let next = TlsFiles::make(next_dir.path())?;
    for (from, to) in [(&next.server_cert, &cert), (&next.server_key, &key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
    }
    let out = run(verified_by(&next.ca)).await?;
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    let out = run(verified_by(&files.ca)).await?;
    assert!(
        text(&out).contains("certificate verify failed"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[tokio::test]
async fn the_local_socket_takes_scram_logins_without_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (files, tls) = certs(dir.path(), true)?;
    let (_pg, cat) = shard().await?;
    let sockets = tempfile::tempdir()?;
    let mut router = Listener::start_local(&cat, Some(tls), Some(sockets.path())).await?;
    let socket = router.socket.clone().expect("a socket");
    assert_eq!(
        socket.file_name().and_then(|n| n.to_str()),
        Some(format!(".s.PGSQL.{}", router.addr.port()).as_str())
    );

    // psql over the socket: TLS required on TCP does not apply here, and
    // psql says where it connected.
    let out = run(psql(
        &router.local_conninfo(TOKEN),
        &[
            "\\conninfo",
            "INSERT INTO items (id, v) VALUES ('k1', 'over-a-socket')",
            "SELECT v FROM items WHERE id = 'k1'",
        ],
    ))
    .await?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("via socket in"), "{shown}");
    assert!(shown.contains("over-a-socket"), "{shown}");
    assert!(!shown.contains("SSL connection"), "{shown}");
    // Control: the same plain login over TCP is refused.
    let out = run(psql(&router.conninfo("sslmode=disable"), &["SELECT 1"])).await?;
    assert!(text(&out).contains("TLS only"), "{}", text(&out));
    // The login is checked there as on TCP: a wrong token is refused.
    let out = run(psql(&router.local_conninfo("not-the-token"), &["SELECT 1"])).await?;
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    // psycopg (libpq) over the socket.
    let out = run(psycopg(
        &router.local_conninfo(TOKEN),
        "SELECT v FROM items WHERE id = 'k1'",
    ))
    .await?;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("ssl_in_use False"), "{shown}");
    assert!(shown.contains("value over-a-socket"), "{shown}");

    // SSLRequest on the socket is answered N; on TCP, S (the control:
    // the same router has a certificate).
    let ssl_request = [0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut answer = [0u8; 1];
    let mut local = tokio::net::UnixStream::connect(&socket).await?;
    local.write_all(&ssl_request).await?;
    tokio::time::timeout(common::TIMEOUT, local.read_exact(&mut answer)).await??;
    assert_eq!(answer[0], b'N');
    let mut tcp = tokio::net::TcpStream::connect(router.addr).await?;
    tcp.write_all(&ssl_request).await?;
    tokio::time::timeout(common::TIMEOUT, tcp.read_exact(&mut answer)).await??;
    assert_eq!(answer[0], b'S');
    let _ = files;

    // At shutdown the socket file goes with the listener.
    router.stop.cancel();
    if let Some(done) = router.done.take() {
        tokio::time::timeout(common::TIMEOUT, done).await??;
    }
    assert!(!socket.exists(), "{} is left behind", socket.display());
    Ok(())
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    let dir = tempfile::tempdir()?;
    let first = wire::LocalListener::bind(dir.path(), 7001)?;
    let e = wire::LocalListener::bind(dir.path(), 7001)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("another server listens"), "{e}");
    drop(first);
    assert!(!dir.path().join(".s.PGSQL.7001").exists());
    // A socket file nobody listens on: a router that died.
    let stale = dir.path().join(".s.PGSQL.7002");
    drop(std::os::unix::net::UnixListener::bind(&stale)?);
    assert!(stale.exists());
    let second = wire::LocalListener::bind(dir.path(), 7002)?;
    assert!(std::os::unix::net::UnixStream::connect(second.path()).is_ok());
    // Not a socket: left alone.
    std::fs::write(dir.path().join(".s.PGSQL.7003"), "data")?;
    let e = wire::LocalListener::bind(dir.path(), 7003)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(dir.path().join(".s.PGSQL.7003"))?, b"data");
    // Too long for a socket address.
    let long = dir.path().join("d".repeat(100));
    std::fs::create_dir(&long)?;
    let e = wire::LocalListener::bind(&long, 7004)
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("too long"), "{e}");
    Ok(())
}

#[tokio::test]
async fn a_shard_is_reached_over_its_socket() -> anyhow::Result<()> {
    let sockets = tempfile::tempdir()?;
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o777))?;
    let dir = sockets.path().display().to_string();
    let pg = PgCluster::start_with(&[("unix_socket_directories", dir.as_str())]).await?;
    let by_socket = format!(
        "host={dir} port={} user=postgres dbname=postgres",
        pg.port()
    );
    let (_pg, cat) = shard_at(pg, Some(by_socket)).await?;
    let router = Listener::start(&cat, None).await?;
    let (client, conn) =
        tokio_postgres::connect(&router.conninfo("sslmode=disable"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // PostgreSQL has no address for a session that came over its socket.
    let row = client
        .query_one(
            "/* shardline.shard_key='k' */ SELECT inet_server_addr() IS NULL",
            &[],
        )
        .await?;
    assert!(
        row.get::<_, bool>(0),
        "the router reached the shard over TCP"
    );
    Ok(())
}
