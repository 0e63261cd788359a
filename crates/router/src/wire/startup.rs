//! A wire session's opening: the startup packet, SCRAM-SHA-256 login of
//! a client app (user = app id, password = its token; both a current
//! and, during a rotation's grace period, the previous token log in),
//! the keyspace check (database = the tenant's keyspace), then the
//! parameters and key a client expects before its first query.
//!
//! An unknown app goes through the same exchange with a made-up salt and
//! fails at the proof, as PostgreSQL does, so a client cannot tell
//! unknown apps from wrong tokens.

use std::sync::Arc;

use rand::Rng;
use sha2::{Digest, Sha256};
use shardline_core::scram;

use super::codec::{auth, ClientIo, WireError};
use crate::auth::{AppAuth, Now, TenantStatus};
use crate::pg::frame::Fields;
use crate::state::RoutingCell;

/// PostgreSQL's iteration count, for the made-up exchange.
const DUMMY_ITERATIONS: u32 = 4096;

/// A logged-in client.
pub struct Login {
    pub app: Arc<AppAuth>,
    pub keyspace: String,
}

/// Logs the client in; the error is sent as a `FATAL` by the caller.
pub async fn login(
    io: &mut ClientIo,
    routing: &RoutingCell,
    params: &[(String, String)],
) -> Result<Login, LoginError> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let user = get("user").ok_or_else(|| {
        LoginError::Refused(WireError::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        ))
    })?;
    let table = routing.get();
    let creds = table.wire_credentials(user, Now::current().unix_ms);
    let (salt, iterations) = match &creds {
        Some(c) => (c.salt.clone(), c.iterations),
        None => (
            Sha256::digest(format!("shardline-unknown-app:{user}").as_bytes())[..16].to_vec(),
            DUMMY_ITERATIONS,
        ),
    };
    io.queue(&auth(10, b"SCRAM-SHA-256\0\0"));
    io.flush().await?;
    let first = read_password(io).await?;
    let mut f = Fields::new(&first);
    let mechanism = f
        .cstr()
        .map_err(|_| protocol("malformed SASLInitialResponse"))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(LoginError::Refused(WireError::fatal(
            "28000",
            format!("SASL mechanism {mechanism:?} is not supported; use SCRAM-SHA-256"),
        )));
    }
    let len = f
        .i32()
        .map_err(|_| protocol("malformed SASLInitialResponse"))?;
    let data = match usize::try_from(len) {
        Ok(n) => f
            .bytes(n)
            .map_err(|_| protocol("malformed SASLInitialResponse"))?,
        Err(_) => &[][..],
    };
    let nonce = server_nonce();
    let failed = || {
        LoginError::Refused(WireError::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        ))
    };
    let (exchange, server_first) =
        scram::server_first(data, &salt, iterations, &nonce).map_err(|_| failed())?;
    io.queue(&auth(11, server_first.as_bytes()));
    io.flush().await?;
    let last = read_password(io).await?;
    let verifiers = creds
        .as_ref()
        .map(|c| c.verifiers.as_slice())
        .unwrap_or(&[]);
    let (_, server_final) = exchange
        .client_final(&last, verifiers)
        .map_err(|_| failed())?;
    let Some(creds) = creds else {
        return Err(failed());
    };
    io.queue(&auth(12, server_final.as_bytes()));
    io.queue(&auth(0, &[]));
    let app = creds.app;
    let tenant = &app.tenant;
    if tenant.status != TenantStatus::Active {
        return Err(LoginError::Refused(WireError::fatal(
            "28000",
            "this app's tenant is being deleted or unknown",
        )));
    }
    // The database names the keyspace; left out, clients send the user
    // name, which then means the tenant's keyspace too.
    let keyspace = match get("database") {
        Some(db) if db == tenant.keyspace || db == user || db.is_empty() => tenant.keyspace.clone(),
        None => tenant.keyspace.clone(),
        Some(db) => {
            return Err(LoginError::Refused(WireError::fatal(
                "3D000",
                format!(
                    "database \"{db}\" does not exist for this app; connect to its keyspace \"{}\"",
                    tenant.keyspace
                ),
            )))
        }
    };
    Ok(Login { app, keyspace })
}

/// Why a login ended.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{}", .0.message)]
    Refused(WireError),
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
}

fn protocol(msg: &str) -> LoginError {
    LoginError::Refused(WireError::fatal("08P01", msg))
}

/// Reads a `p` (password/SASL) message's body.
async fn read_password(io: &mut ClientIo) -> Result<bytes::Bytes, LoginError> {
    match io.read().await? {
        Some(f) if f.tag == b'p' => Ok(f.body),
        Some(_) => Err(protocol("expected a SASL response")),
        None => Err(LoginError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "client left during login",
        ))),
    }
}

/// 18 random bytes, base64 (printable, no comma: a valid SCRAM nonce).
fn server_nonce() -> String {
    use base64::Engine;
    let bytes: [u8; 18] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
