//! Who may send a request, and whether it is let in now: the token (401),
//! the tenant's state, keyspace and the app's key prefix (403), then the
//! concurrency and rate quotas of tenant and app (429). This is the
//! request path's hot spot: it allocates nothing unless it refuses.
//!
//! Tokens are looked up by their SHA-256 digest. The lookup compares
//! digests, not tokens, so its timing can at most tell an attacker how
//! much of SHA-256(guess) matches a stored digest; steering a digest to
//! match means inverting SHA-256, so this leaks nothing useful. The final
//! comparison is constant-time anyway ([`constant_time_eq`]), so the
//! check does not rest on the map's comparison.
//!
//! Clients of the PostgreSQL wire protocol log in with SCRAM-SHA-256
//! instead (user = app id, password = token): their apps' verifiers are
//! compiled here too ([`WireCredentials`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use shardline_api::router::ShardKeyValue;
use shardline_core::auth::constant_time_eq;
use shardline_core::catalog::{App, Limits, TenantConfig};
use shardline_core::scram::Verifier;

use crate::error::{QuotaHolder, Reason, RouterError};
use crate::metrics::PairMetrics;
use crate::quota::{QuotaCell, Quotas, RateLimits};

/// Where a tenant is, for the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    /// Serving.
    Active,
    /// Being deleted: refused.
    Deleting,
    /// An app names a tenant the catalog does not have: refused.
    Missing,
}

/// A tenant, compiled for the request path.
pub struct TenantAuth {
    pub id: String,
    /// The only keyspace its apps may use.
    pub keyspace: String,
    /// Its PostgreSQL role, database and schema on every shard
    /// ([`Tenant::pg_name`](shardline_core::catalog::Tenant::pg_name)).
    pub pg_user: String,
    /// The role's password.
    pub role_password: String,
    pub status: TenantStatus,
    pub config: TenantConfig,
    /// A tenant move is cutting over: its requests are held (see
    /// [`crate::reroute`]).
    pub moving: bool,
    /// The catalog version this was compiled from.
    pub version: u64,
    /// Its quota state on this router.
    pub quota: Arc<QuotaCell>,
    /// Its label in per-tenant gauges: its id, or `_other` when none of
    /// its apps has labels of its own.
    pub metric_label: String,
}

impl std::fmt::Debug for TenantAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs.
        f.debug_struct("TenantAuth")
            .field("id", &self.id)
            .field("keyspace", &self.keyspace)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A client app, compiled for the request path.
#[derive(Debug)]
pub struct AppAuth {
    pub id: String,
    pub tenant: Arc<TenantAuth>,
    /// Shard keys must start with this.
    pub key_prefix: Option<String>,
    pub limits: Limits,
    /// Its quota state on this router.
    pub quota: Arc<QuotaCell>,
    /// Its metric labels.
    pub metrics: Arc<PairMetrics>,
}

/// A token the router accepts.
#[derive(Debug)]
pub(crate) struct TokenEntry {
    pub(crate) digest: [u8; 32],
    /// For a rotated-out token: Unix milliseconds from which it is
    /// refused.
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) app: Arc<AppAuth>,
}

/// What a SCRAM-SHA-256 login as an app is checked against: the salt
/// and iteration count to send, and the verifiers of the tokens valid
/// now (the current one first, then the rotated-out one during its grace
/// period), all sharing that salt and count (see
/// [`shardline_core::scram`]).
#[derive(Debug, Clone)]
pub struct WireCredentials {
    pub app: Arc<AppAuth>,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub verifiers: Vec<Verifier>,
}

/// An app's SCRAM-SHA-256 verifiers, compiled.
#[derive(Debug)]
pub(crate) struct ScramEntry {
    app: Arc<AppAuth>,
    current: Verifier,
    /// The rotated-out token's, with the Unix milliseconds from which it
    /// is refused; only kept when it shares the current one's salt and
    /// iteration count, as one exchange offers only one.
    previous: Option<(Verifier, u64)>,
}

impl ScramEntry {
    /// Compiles an app's verifiers; `None` when it has no usable current
    /// one (apps from before verifiers existed have none until their
    /// next rotation).
    pub(crate) fn compile(app: &App, auth: &Arc<AppAuth>) -> Option<ScramEntry> {
        let current = match app.token_scram.as_deref().map(Verifier::parse)? {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(app = %app.id, error = %e, "app with a malformed SCRAM verifier");
                return None;
            }
        };
        let previous = app.previous_token.as_ref().and_then(|p| {
            match p.token_scram.as_deref().map(Verifier::parse)? {
                Ok(v) if v.salt == current.salt && v.iterations == current.iterations => {
                    Some((v, p.expires_at_ms))
                }
                Ok(_) => {
                    // The manager never makes such a pair: the old token
                    // cannot log in over the wire protocol.
                    tracing::warn!(
                        app = %app.id,
                        "previous SCRAM verifier with another salt than the current one"
                    );
                    None
                }
                Err(e) => {
                    tracing::error!(
                        app = %app.id,
                        error = %e,
                        "app with a malformed previous SCRAM verifier"
                    );
                    None
                }
            }
        });
        Some(ScramEntry {
            app: Arc::clone(auth),
            current,
            previous,
        })
    }

    /// The credentials valid at the wall-clock time `unix_ms`.
    pub(crate) fn credentials(&self, unix_ms: u64) -> WireCredentials {
        let mut verifiers = vec![self.current.clone()];
        if let Some((v, expires_at_ms)) = &self.previous {
            if unix_ms < *expires_at_ms {
                verifiers.push(v.clone());
            }
        }
        WireCredentials {
            app: Arc::clone(&self.app),
            salt: self.current.salt.clone(),
            iterations: self.current.iterations,
            verifiers,
        }
    }
}

/// The time of a request: monotonic for quotas, wall clock for token
/// expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_ms: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }
}

/// Why a request was refused before routing (the `reason` label of
/// `router_rejected_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No, an unknown or an expired token (401).
    Unauthorized,
    /// The app's tenant is not in the catalog (403).
    UnknownTenant,
    /// The tenant is being deleted (403).
    TenantDeleting,
    /// A keyspace other than the tenant's (403).
    ForbiddenKeyspace,
    /// A shard key outside the app's prefix (403).
    ForbiddenKeyPrefix,
    /// Too many requests in flight (429).
    ConcurrencyLimited,
    /// Over the request rate (429).
    RateLimited,
}

impl RejectReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::UnknownTenant => "unknown_tenant",
            RejectReason::TenantDeleting => "tenant_deleting",
            RejectReason::ForbiddenKeyspace => "forbidden_keyspace",
            RejectReason::ForbiddenKeyPrefix => "forbidden_key_prefix",
            RejectReason::ConcurrencyLimited => "concurrency_limited",
            RejectReason::RateLimited => "rate_limited",
        }
    }
}

/// A refused request: the answer, the reason and, once authenticated,
/// the app.
#[derive(Debug)]
pub struct Rejection {
    pub error: RouterError,
    pub reason: RejectReason,
    pub app: Option<Arc<AppAuth>>,
}

impl Rejection {
    fn new(app: &Arc<AppAuth>, reason: RejectReason, error: Reason) -> Self {
        Self {
            error: error.into(),
            reason,
            app: Some(Arc::clone(app)),
        }
    }
}

/// A request let in: it counts as in flight for its tenant and app until
/// dropped (also when the request's future is cancelled).
#[derive(Debug)]
pub struct Admission {
    app: Arc<AppAuth>,
}

impl Admission {
    /// The app.
    pub fn app(&self) -> &Arc<AppAuth> {
        &self.app
    }

    /// The app's tenant.
    pub fn tenant(&self) -> &TenantAuth {
        &self.app.tenant
    }

    /// The keyspace the request runs in: its tenant's.
    pub fn keyspace(&self) -> &str {
        &self.app.tenant.keyspace
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.app.quota.exit();
        self.app.tenant.quota.exit();
    }
}

/// The app whose token this is; the same refusal for unknown and
/// expired tokens, so a client cannot tell which.
pub(crate) fn authenticate<'a, S: std::hash::BuildHasher>(
    tokens: &'a HashMap<[u8; 32], TokenEntry, S>,
    token: &str,
    unix_ms: u64,
) -> Result<&'a Arc<AppAuth>, Rejection> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    match tokens.get(&digest) {
        Some(e)
            if constant_time_eq(&e.digest, &digest)
                && e.expires_at_ms.is_none_or(|exp| unix_ms < exp) =>
        {
            Ok(&e.app)
        }
        _ => Err(Rejection {
            error: Reason::InvalidToken.into(),
            reason: RejectReason::Unauthorized,
            app: None,
        }),
    }
}

/// Checks what `app` may do with this request, then takes its quotas:
/// tenant state, keyspace, key prefix (403), concurrency of tenant and
/// app, then their rates (429). Concurrency comes first so a request
/// refused for it takes no token; a token taken from the app is given
/// back when the tenant's rate refuses.
pub fn admit_app(
    app: &Arc<AppAuth>,
    keyspace: Option<&str>,
    key: &ShardKeyValue,
    quotas: &Quotas,
    now: Instant,
) -> Result<Admission, Rejection> {
    let tenant = &app.tenant;
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Deleting => {
            return Err(Rejection::new(
                app,
                RejectReason::TenantDeleting,
                Reason::TenantDeleting,
            ))
        }
        TenantStatus::Missing => {
            return Err(Rejection::new(
                app,
                RejectReason::UnknownTenant,
                Reason::TenantUnknown,
            ))
        }
    }
    if let Some(ks) = keyspace {
        if ks != tenant.keyspace {
            return Err(Rejection::new(
                app,
                RejectReason::ForbiddenKeyspace,
                Reason::ForbiddenKeyspace {
                    allowed: tenant.keyspace.clone(),
                },
            ));
        }
    }
    if let Some(prefix) = &app.key_prefix {
        if !key_has_prefix(key, prefix) {
            return Err(Rejection::new(
                app,
                RejectReason::ForbiddenKeyPrefix,
                Reason::ForbiddenKeyPrefix {
                    prefix: prefix.clone(),
                },
            ));
        }
    }
    let concurrency = |holder| {
        Rejection::new(
            app,
            RejectReason::ConcurrencyLimited,
            Reason::ConcurrencyLimited(holder),
        )
    };
    if !tenant.quota.try_enter(tenant.config.limits.max_concurrent) {
        return Err(concurrency(QuotaHolder::Tenant));
    }
    if !app.quota.try_enter(app.limits.max_concurrent) {
        tenant.quota.exit();
        return Err(concurrency(QuotaHolder::App));
    }
    // From here on, dropping the admission leaves the in-flight counts.
    let admission = Admission {
        app: Arc::clone(app),
    };
    let rate = |holder, retry_after| {
        Rejection::new(
            app,
            RejectReason::RateLimited,
            Reason::RateLimited {
                holder,
                retry_after,
            },
        )
    };
    let taken = quotas
        .take(&app.quota, RateLimits::of(&app.limits), now)
        .map_err(|wait| rate(QuotaHolder::App, wait))?;
    if let Err(wait) = quotas.take(&tenant.quota, RateLimits::of(&tenant.config.limits), now) {
        app.quota.refund(taken);
        return Err(rate(QuotaHolder::Tenant, wait));
    }
    Ok(admission)
}

/// Whether the key starts with `prefix`; integers are compared by their
/// decimal text.
pub fn key_has_prefix(key: &ShardKeyValue, prefix: &str) -> bool {
    match key {
        ShardKeyValue::Text(s) => s.starts_with(prefix),
        ShardKeyValue::Int(i) => {
            // Decimal text on the stack: the longest i64 is 20 bytes.
            let mut buf = [0u8; 20];
            let mut pos = buf.len();
            let mut n = i.unsigned_abs();
            loop {
                pos -= 1;
                buf[pos] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            if *i < 0 {
                pos -= 1;
                buf[pos] = b'-';
            }
            buf[pos..].starts_with(prefix.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_prefixes_use_decimal_text() {
        let int = |i| ShardKeyValue::Int(i);
        assert!(key_has_prefix(&int(4217), "42"));
        assert!(!key_has_prefix(&int(4217), "43"));
        assert!(key_has_prefix(&int(-5), "-"));
        assert!(key_has_prefix(&int(i64::MIN), "-9223372036854775808"));
        assert!(key_has_prefix(&int(i64::MAX), "9223372036854775807"));
        assert!(!key_has_prefix(&int(1), "10"));
        assert!(key_has_prefix(&int(0), "0"));
        assert!(key_has_prefix(&int(7), ""));
        let text = |s: &str| ShardKeyValue::Text(s.into());
        assert!(key_has_prefix(&text("acme:1"), "acme:"));
        assert!(!key_has_prefix(&text("acm"), "acme:"));
    }
}
