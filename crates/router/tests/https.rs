//! HTTPS on the manager's and the router's HTTP listeners, with a
//! throwaway CA: a real manager and router in-process, the router
//! following the manager over `https://`; the Rust client verifies both
//! against the CA file, refuses a certificate of another CA, and a plain
//! `http://` request to an HTTPS port gets no answer. Replacing the
//! certificate files changes what new connections are shown, and a
//! broken replacement keeps the old certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use shardline_client::{ClientError, HttpClient};
use shardline_testkit::TlsFiles;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "admin-token-0123456789";
const ROUTER: &str = "router-token-0123456789";

struct Servers {
    manager: SocketAddr,
    router: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A manager and a router serving HTTPS with `cert`/`key`, the router
/// trusting `ca` for the manager.
async fn start(dir: &Path, cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<Servers> {
    start_with_lanes(dir, cert, key, ca, 0).await
}

/// [`start`], the router serving its connections on `lanes` lanes.
async fn start_with_lanes(
    dir: &Path,
    cert: &Path,
    key: &Path,
    ca: &Path,
    lanes: u16,
) -> anyhow::Result<Servers> {
    let stop = CancellationToken::new();
    let mut mcfg = shardline_manager::ManagerConfig::new(dir.join("catalog.json"), ADMIN, ROUTER);
    mcfg.listen = "127.0.0.1:0".parse()?;
    mcfg.tls_cert = Some(cert.to_path_buf());
    mcfg.tls_key = Some(key.to_path_buf());
    let manager = shardline_manager::bind(mcfg).await?;
    let maddr = manager.local_addr();
    tokio::spawn(manager.run(stop.clone()));
    let mut rcfg = shardline_router::RouterConfig::new(&format!("https://{maddr}"), ROUTER);
    rcfg.listen = "127.0.0.1:0".parse()?;
    rcfg.tls_cert = Some(cert.to_path_buf());
    rcfg.tls_key = Some(key.to_path_buf());
    rcfg.manager_ca_file = Some(ca.to_path_buf());
    rcfg.lanes = lanes;
    let router = shardline_router::bind(rcfg).await?;
    let raddr = router.local_addr();
    tokio::spawn(router.run(stop.clone()));
    // A first catalog version for the router to load (an empty catalog
    // has none), written with the typed client over HTTPS.
    let admin = shardline_client::ManagerClient::with_ca_file(
        &format!("https://{maddr}"),
        Some(ADMIN.into()),
        Some(ca),
    )?;
    admin
        .create_keyspace(&shardline_api::manager::CreateKeyspaceRequest {
            name: "ks".into(),
            key_type: Default::default(),
            shards: vec![],
        })
        .await?;
    Ok(Servers {
        manager: maddr,
        router: raddr,
        stop,
    })
}

/// `GET path` with a new client (a new connection) trusting `ca`.
async fn get(addr: SocketAddr, path: &str, ca: &Path) -> Result<u16, ClientError> {
    let http = HttpClient::with_ca_file(&format!("https://{addr}"), None, Some(ca))?
        .with_timeout(Duration::from_secs(5));
    http.get_raw(path).await.map(|(status, _)| status)
}

/// Waits, boundedly, until the router has the catalog, which it can only
/// have fetched from the manager over HTTPS.
async fn router_ready(addr: SocketAddr, ca: &Path) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..100 {
        match get(addr, "/readyz", ca).await {
            Ok(200) => return Ok(()),
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the router never became ready: {last:?}")
}

#[tokio::test]
async fn manager_and_router_answer_https_verified_by_the_client() -> anyhow::Result<()> {
    answer_https_verified_by_the_client(0).await
}

/// The same with the router's connections on lanes: the handshake and
/// the requests run on a lane's thread.
#[tokio::test]
async fn a_router_on_lanes_answers_https_verified_by_the_client() -> anyhow::Result<()> {
    answer_https_verified_by_the_client(2).await
}

async fn answer_https_verified_by_the_client(lanes: u16) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::make(dir.path())?;
    let s = start_with_lanes(
        dir.path(),
        &files.server_cert,
        &files.server_key,
        &files.ca,
        lanes,
    )
    .await?;
    router_ready(s.router, &files.ca).await?;
    assert_eq!(get(s.manager, "/healthz", &files.ca).await?, 200);
    // The manager's typed client, with its admin token, over HTTPS.
    let admin = shardline_client::ManagerClient::with_ca_file(
        &format!("https://{}", s.manager),
        Some(ADMIN.into()),
        Some(&files.ca),
    )?;
    assert_eq!(admin.list_keyspaces().await?.len(), 1);

    // Another CA's certificate file: refused before any request is sent.
    let other_dir = tempfile::tempdir()?;
    let other = TlsFiles::make(other_dir.path())?;
    for addr in [s.manager, s.router] {
        let e = get(addr, "/healthz", &other.ca)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("cannot connect"), "{e}");
        assert!(e.contains("invalid peer certificate"), "{e}");
    }
    // Plain HTTP to the HTTPS port: no HTTP answer.
    let plain = HttpClient::new(&format!("http://{}", s.router), None)?
        .with_timeout(Duration::from_secs(5));
    assert!(plain.get_raw("/healthz").await.is_err());
    Ok(())
}

#[tokio::test]
async fn new_connections_see_a_replaced_certificate() -> anyhow::Result<()> {
    let (dir, next_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let files = TlsFiles::make(dir.path())?;
    // The files the servers read, copied so they can be replaced.
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&files.server_cert, &cert)?;
    std::fs::copy(&files.server_key, &key)?;
    let s = start(dir.path(), &cert, &key, &files.ca).await?;
    router_ready(s.router, &files.ca).await?;

    // A broken replacement (half a certificate): the old one is served.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n")?;
    for addr in [s.manager, s.router] {
        assert_eq!(get(addr, "/healthz", &files.ca).await?, 200);
    }

    // A certificate of another CA, written as a renewal would (new file,
    // renamed over the old): new connections are shown it at once.
    let next = TlsFiles::make(next_dir.path())?;
    for (from, to) in [(&next.server_cert, &cert), (&next.server_key, &key)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
    }
    for addr in [s.manager, s.router] {
        assert_eq!(get(addr, "/healthz", &next.ca).await?, 200, "{addr}");
        let e = get(addr, "/healthz", &files.ca).await.err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.to_string().contains("invalid peer certificate")),
            "{addr}: the old CA still verifies: {e:?}"
        );
    }
    Ok(())
}
