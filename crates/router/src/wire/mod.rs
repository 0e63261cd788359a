//! The PostgreSQL wire protocol (v3) front end: clients connect with any
//! PostgreSQL driver as user = app id, password = the app's token,
//! database = the tenant's keyspace; statements are routed by their
//! shard key and passed through unchanged on a pooled server session of
//! the tenant's role (transaction pooling: see [`session`]).
//!
//! # Layout
//! - [`codec`]: the startup packet and the messages the router itself
//!   sends.
//! - [`tls`]: the listener's certificate, and the plain-or-TLS client
//!   stream.
//! - [`startup`]: SCRAM-SHA-256 login and the keyspace check.
//! - [`messages`]: extended-protocol messages, read and renamed.
//! - [`analyze`]: what a statement is and which shard key it names.
//! - [`session`]: one client's session: routing, pooling, relaying.
//! - [`fanout`]: keyless reads run on every shard and merged.

pub mod analyze;
pub mod codec;
pub mod copy;
pub mod fanout;
pub mod messages;
pub mod session;
pub mod startup;
pub mod tls;

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use shardline_http::serve::{accept_next, hand_over, Accept, Movable};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::analyze::AnalysisCache;
use self::codec::{ClientIo, Opening, WireError};
use self::session::{Session, SessionEnd};
use self::startup::LoginError;
use self::tls::{ClientStream, WireTls};
use crate::lanes::Lanes;
use crate::pg::server::{send_cancel, CancelKey};
use crate::state::{RouterContext, RoutingCell};

/// Bytes of statement analyses kept (texts and their results).
const ANALYSIS_CACHE_BYTES: usize = 16 << 20;

/// Longest a client may take from connecting to being logged in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Startup parameters a client may set that are kept as session
/// settings (sent before each of its transactions when they differ from
/// the server's).
const KEPT_PARAMETERS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
    "application_name",
];

/// Where cancel requests for a session go now (`None` between its
/// transactions).
pub type CancelSlot = Arc<Mutex<Option<Arc<CancelKey>>>>;

/// What every wire session shares.
pub struct WireShared {
    pub routing: Arc<RoutingCell>,
    pub ctx: Arc<RouterContext>,
    pub analyses: AnalysisCache,
    /// With a certificate: `SSLRequest` is answered `S`.
    tls: Option<WireTls>,
    cancels: Mutex<HashMap<(i32, i32), CancelSlot>>,
    /// The parameters servers report at login, by keyspace.
    server_params: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl WireShared {
    /// Without TLS: `SSLRequest` is answered `N`.
    pub fn new(routing: Arc<RoutingCell>, ctx: Arc<RouterContext>) -> Arc<Self> {
        Self::with_tls(routing, ctx, None)
    }

    pub fn with_tls(
        routing: Arc<RoutingCell>,
        ctx: Arc<RouterContext>,
        tls: Option<WireTls>,
    ) -> Arc<Self> {
        Arc::new(Self {
            routing,
            ctx,
            analyses: AnalysisCache::new(ANALYSIS_CACHE_BYTES),
            tls,
            cancels: Mutex::new(HashMap::new()),
            server_params: Mutex::new(HashMap::new()),
        })
    }

    fn cancels(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelSlot>> {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts wire clients on `listener` (TCP, or the Unix-domain socket
/// of [`LocalListener`]) until `shutdown`, then waits up to `drain` for
/// their sessions to end. With `lanes`, each session runs on the lane
/// with the fewest connections (see [`crate::lanes`]), else on the
/// caller's runtime.
pub async fn serve<L>(
    listener: L,
    shared: Arc<WireShared>,
    shutdown: CancellationToken,
    drain: Duration,
    lanes: Option<Arc<Lanes>>,
) -> std::io::Result<()>
where
    L: Accept,
    L::Stream: Movable + Into<ClientStream> + NoDelay,
{
    let tracker = TaskTracker::new();
    while let Some((stream, peer)) = accept_next(&listener, &shutdown, "a wire client").await {
        stream.no_delay();
        let shared = Arc::clone(&shared);
        let stop = shutdown.clone();
        let who = peer.clone();
        let session = move |stream: L::Stream| async move {
            tokio::select! {
                () = handle(stream.into(), shared) => {}
                () = async { stop.cancelled().await; tokio::time::sleep(drain).await } => {
                    tracing::debug!(peer = %who, "wire session cut at shutdown");
                }
            }
        };
        match &lanes {
            None => {
                tracker.spawn(session(stream));
            }
            Some(lanes) => {
                let what = "a wire client";
                hand_over(&**lanes, &tracker, stream, peer, what, session);
            }
        }
    }
    // Closed now, not when the drain ends: a new client is refused at
    // once (and can go to another router) instead of completing a
    // handshake nobody will accept.
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(drain, tracker.wait()).await;
    Ok(())
}

/// Small messages go out at once: a client waits for each answer.
pub trait NoDelay {
    fn no_delay(&self);
}

impl NoDelay for tokio::net::TcpStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl NoDelay for tokio::net::UnixStream {
    /// A Unix-domain socket does not hold small writes back.
    fn no_delay(&self) {}
}

/// The wire listener's Unix-domain socket: bound in `dir` as
/// `.s.PGSQL.<port>`, open to every local user as PostgreSQL's (the
/// login decides, and `dir`'s own mode can narrow it), and removed when
/// dropped.
pub struct LocalListener {
    listener: UnixListener,
    path: PathBuf,
}

impl LocalListener {
    /// Binds the socket for `port` in `dir`. A socket file left by a
    /// router that died is replaced; one that still answers, or a file
    /// that is not a socket, is an error, as is a path too long for a
    /// socket address.
    pub fn bind(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        // sun_path holds 108 bytes with its terminating zero.
        if path.as_os_str().len() > 107 {
            bail!(
                "pg_unix_dir is too long for a Unix socket: {} is {} bytes, at most 107",
                path.display(),
                path.as_os_str().len()
            );
        }
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                bail!("{} exists and is not a socket", path.display());
            }
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                bail!("another server listens on {}", path.display());
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("remove the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listen for PostgreSQL clients on {}", path.display()))?;
        let socket = Self { listener, path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o777))
            .with_context(|| format!("open {} to local users", socket.path.display()))?;
        Ok(socket)
    }

    /// The socket's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Accept for LocalListener {
    type Stream = tokio::net::UnixStream;
    type Peer = shardline_http::serve::LocalPeer;
    fn accept_one(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        self.listener.accept_one()
    }
}

async fn handle(stream: ClientStream, shared: Arc<WireShared>) {
    let mut io = ClientIo::new(stream);
    // PostgreSQL offers no TLS on its local socket, and `hostssl` rules
    // do not apply there: nor here.
    let tls = shared.tls.as_ref().filter(|_| !io.stream.is_local());
    let opening = match tokio::time::timeout(LOGIN_TIMEOUT, io.read_opening(tls)).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            let _ = send_fatal(&mut io, WireError::fatal("08P01", e.to_string())).await;
            return;
        }
        Err(_) => return,
    };
    let params = match opening {
        Opening::Cancel { pid, secret } => {
            let slot = shared.cancels().get(&(pid, secret)).cloned();
            let key = slot.and_then(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone());
            if let Some(key) = key {
                if let Err(e) = send_cancel(&key).await {
                    tracing::debug!(error = %e, "forward a cancel request");
                }
            }
            return;
        }
        Opening::Session { params, .. } => params,
    };
    if tls.is_some_and(WireTls::required) && !io.is_tls() {
        let refused = WireError::fatal("28000", "this router accepts logins over TLS only")
            .with_hint("connect with sslmode=require, or verify-full with the router's CA");
        let _ = send_fatal(&mut io, refused).await;
        return;
    }
    if params
        .iter()
        .any(|(k, v)| k == "replication" && v != "false" && v != "0")
    {
        let _ = send_fatal(
            &mut io,
            WireError::fatal("0A000", "replication connections are not supported"),
        )
        .await;
        return;
    }
    let routing = Arc::clone(&shared.routing);
    let login =
        match tokio::time::timeout(LOGIN_TIMEOUT, startup::login(&mut io, &routing, &params)).await
        {
            Ok(Ok(l)) => l,
            Ok(Err(LoginError::Refused(e))) => {
                let _ = send_fatal(&mut io, e).await;
                return;
            }
            Ok(Err(LoginError::Io(_))) | Err(_) => return,
        };
    let server = match server_params(&shared, &login).await {
        Ok(p) => p,
        Err(e) => {
            let _ = send_fatal(&mut io, e).await;
            return;
        }
    };
    // The client's own values of the settings it may choose.
    let mut sets = Vec::new();
    let mut shown: Vec<(String, String)> = server.clone();
    for (name, value) in &params {
        let Some(kept) = KEPT_PARAMETERS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let same = server
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(value));
        if same || (*kept == "application_name") {
            continue;
        }
        sets.push(format!("SET {kept} = '{}'", value.replace('\'', "''")));
        match shown.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(e) => e.1 = value.clone(),
            None => shown.push((kept.to_string(), value.clone())),
        }
    }
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    for (n, v) in &shown {
        let v = match n.as_str() {
            "session_authorization" => user.as_str(),
            "is_superuser" => "off",
            _ => v.as_str(),
        };
        io.queue(&codec::parameter_status(n, v));
    }
    let cancel = Arc::new(Mutex::new(None));
    let mut key = (0, 0);
    {
        let mut cancels = shared.cancels();
        for _ in 0..16 {
            let k = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(e) = cancels.entry(k) {
                e.insert(Arc::clone(&cancel));
                key = k;
                break;
            }
        }
    }
    io.queue(&codec::backend_key_data(key.0, key.1));
    io.queue(&codec::ready(b'I'));
    if io.flush().await.is_ok() {
        let session = Session::new(
            Arc::clone(&shared),
            io,
            login.app,
            login.keyspace,
            cancel,
            sets,
        );
        match session.run().await {
            Ok(()) => {}
            Err(SessionEnd::Fatal(e)) => tracing::debug!(error = %e.message, "wire session ended"),
            Err(e) => tracing::debug!(error = %e, "wire session ended"),
        }
    }
    shared.cancels().remove(&key);
}

/// What servers of the keyspace report at login (`server_version`,
/// encodings, date style, ...): asked of one shard once per keyspace.
async fn server_params(
    shared: &WireShared,
    login: &startup::Login,
) -> Result<Vec<(String, String)>, WireError> {
    if let Some(p) = shared
        .server_params
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&login.keyspace)
    {
        return Ok(p.clone());
    }
    let routing = shared.routing.get();
    let unavailable = || {
        WireError::fatal(
            "57P03",
            format!("no shard of keyspace \"{}\" answers", login.keyspace),
        )
    };
    let target = routing
        .any_shard(&login.keyspace)
        .and_then(|id| routing.shards.get(id))
        .cloned()
        .ok_or_else(unavailable)?;
    let pool = target.primary.raw_pool_for(&login.app.tenant);
    let conn = pool.get().await.map_err(|e| {
        tracing::warn!(error = %e, "read server parameters for a wire client");
        unavailable()
    })?;
    let params: Vec<(String, String)> = conn
        .conn
        .params
        .iter()
        .filter(|(n, _)| n != "application_name")
        .cloned()
        .collect();
    pool.put(conn);
    shared
        .server_params
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(login.keyspace.clone(), params.clone());
    Ok(params)
}

async fn send_fatal(io: &mut ClientIo, e: WireError) -> std::io::Result<()> {
    io.queue(&e.frame());
    io.flush().await
}
