//! Client applications: create (under an active tenant), update, delete,
//! and token rotation with a grace period for the old token.
//!
//! Tokens are `sl_` and 256 random bits as hex, shown once (at creation
//! and rotation) and stored only as their SHA-256 and their SCRAM-SHA-256
//! verifier (for the routers' PostgreSQL wire protocol). A rotated token's
//! verifier keeps the salt and iteration count of the app's current one,
//! so routers can check either token of a grace period in one exchange
//! (see [`shardline_core::scram`]).

use shardline_api::manager::{CreateAppRequest, RotateTokenRequest, UpdateAppRequest};
use shardline_catalog::Op;
use shardline_core::auth::{hex, token_hash};
use shardline_core::catalog::{keys, App, PreviousToken, Tenant, TenantState};
use shardline_core::scram::{Verifier, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN};

use crate::error::ServiceError;
use crate::service::{decode, put, CatalogService};
use crate::tenants::DEFAULT_TENANT;
use crate::{checks, time};

/// Seconds a rotated-out token keeps working unless the request says
/// otherwise: long enough to roll a fleet of clients onto the new one.
pub const DEFAULT_GRACE_SECONDS: u64 = 900;
/// Longest grace period (7 days).
pub const MAX_GRACE_SECONDS: u64 = 604_800;
/// Longest key prefix, in bytes.
pub const MAX_KEY_PREFIX_LEN: usize = 255;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1000;

/// A new random token: `sl_` and 256 bits as hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("sl_{}", hex(&bytes))
}

pub use crate::time::now_ms;

/// The SCRAM-SHA-256 verifier of a token with a fresh random salt and
/// PostgreSQL's default iteration count.
pub fn new_verifier(token: &str) -> Verifier {
    let salt: [u8; DEFAULT_SALT_LEN] = rand::random();
    Verifier::new(token, &salt, DEFAULT_ITERATIONS)
}

/// The verifier of a new token for an app whose current verifier is
/// `current`: the same salt and iteration count, so routers can offer
/// one salt for both tokens during the grace period; a fresh salt when
/// the app has no usable verifier (it was created before verifiers
/// existed).
pub fn rotated_verifier(token: &str, current: Option<&str>) -> Verifier {
    match current.map(Verifier::parse) {
        Some(Ok(v)) => Verifier::new(token, &v.salt, v.iterations),
        Some(Err(_)) | None => new_verifier(token),
    }
}

fn check_key_prefix(prefix: &str) -> Result<(), ServiceError> {
    if prefix.is_empty() || prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(ServiceError::Invalid(format!(
            "key_prefix must be 1-{MAX_KEY_PREFIX_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), ServiceError> {
    if d.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ServiceError::Invalid(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    Ok(())
}

/// Creates a client app of an active tenant (`default` when none is
/// given); returns it and its token (shown only now).
pub async fn create_app(
    svc: &CatalogService,
    req: &CreateAppRequest,
) -> Result<(App, String), ServiceError> {
    checks::name("app", &req.name)?;
    let tenant = req.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into());
    checks::tenant_id(&tenant)?;
    check_description(&req.description)?;
    if let Some(p) = &req.key_prefix {
        check_key_prefix(p)?;
    }
    checks::app_limits(&req.limits)?;
    let token = new_token();
    let app = App {
        id: req.name.clone(),
        name: req.name.clone(),
        tenant,
        description: req.description.clone(),
        key_prefix: req.key_prefix.clone(),
        limits: req.limits,
        token_hash: token_hash(&token),
        token_scram: Some(new_verifier(&token).to_string()),
        previous_token: None,
        created_at: time::now_rfc3339(),
    };
    let key = keys::app(&app.id);
    let t_key = keys::tenant(&app.tenant);
    // Reading the tenant too: a tenant being deleted gets no new apps.
    svc.update(&[key.clone(), t_key.clone()], |seen| {
        let Some(entry) = &seen[&t_key] else {
            return Err(ServiceError::NotFound(format!(
                "no tenant {}; create it first",
                app.tenant
            )));
        };
        let t: Tenant = decode(entry)?;
        if t.state != TenantState::Active {
            return Err(ServiceError::Conflict(format!(
                "tenant {} is being deleted",
                t.id
            )));
        }
        if seen[&key].is_some() {
            return Err(ServiceError::Conflict(format!(
                "app {} exists already",
                app.id
            )));
        }
        Ok(vec![put(key.clone(), &app)])
    })
    .await?;
    Ok((app, token))
}

/// Read-modify-write of one app.
async fn change_app<F>(svc: &CatalogService, id: &str, mut change: F) -> Result<App, ServiceError>
where
    F: FnMut(&mut App) -> Result<(), ServiceError>,
{
    let key = keys::app(id);
    let mut out = None;
    svc.update(std::slice::from_ref(&key), |seen| {
        let Some(entry) = &seen[&key] else {
            return Err(ServiceError::NotFound(format!("no app {id}")));
        };
        let mut app: App = decode(entry)?;
        change(&mut app)?;
        out = Some(app.clone());
        Ok(vec![put(key.clone(), &app)])
    })
    .await?;
    out.ok_or_else(|| ServiceError::NotFound(format!("no app {id}")))
}

/// Changes an app's display name, description, key prefix (`""` removes
/// it) or limits (replaced whole). Its id and token stay.
pub async fn update_app(
    svc: &CatalogService,
    id: &str,
    req: &UpdateAppRequest,
) -> Result<App, ServiceError> {
    if let Some(n) = &req.name {
        checks::display_name("app", n)?;
    }
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    if let Some(p) = req.key_prefix.as_deref().filter(|p| !p.is_empty()) {
        check_key_prefix(p)?;
    }
    if let Some(l) = &req.limits {
        checks::app_limits(l)?;
    }
    change_app(svc, id, |app| {
        if let Some(n) = &req.name {
            app.name = n.clone();
        }
        if let Some(d) = &req.description {
            app.description = d.clone();
        }
        if let Some(p) = &req.key_prefix {
            app.key_prefix = (!p.is_empty()).then(|| p.clone());
        }
        if let Some(l) = req.limits {
            app.limits = l;
        }
        Ok(())
    })
    .await
}

/// Gives an app a new token; the current one keeps working for the grace
/// period (default [`DEFAULT_GRACE_SECONDS`], 0 ends it now). A token
/// rotated out earlier stops at once. Returns the app and the new token.
pub async fn rotate_token(
    svc: &CatalogService,
    id: &str,
    req: &RotateTokenRequest,
) -> Result<(App, String), ServiceError> {
    let grace = req.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace > MAX_GRACE_SECONDS {
        return Err(ServiceError::Invalid(format!(
            "grace_seconds must be at most {MAX_GRACE_SECONDS} (7 days)"
        )));
    }
    let token = new_token();
    let new_hash = token_hash(&token);
    let app = change_app(svc, id, |app| {
        // Made here, from the app as read: it takes the current
        // verifier's salt (a few milliseconds, again on a retry).
        let scram = rotated_verifier(&token, app.token_scram.as_deref()).to_string();
        let old = std::mem::replace(&mut app.token_hash, new_hash.clone());
        let old_scram = app.token_scram.replace(scram);
        app.previous_token = (grace > 0).then(|| PreviousToken {
            token_hash: old,
            token_scram: old_scram,
            expires_at_ms: now_ms().saturating_add(grace * 1000),
        });
        Ok(())
    })
    .await?;
    Ok((app, token))
}

/// Deletes a client app; its tokens stop working at once.
pub async fn delete_app(svc: &CatalogService, id: &str) -> Result<(), ServiceError> {
    let key = keys::app(id);
    svc.update(std::slice::from_ref(&key), |seen| {
        if seen[&key].is_none() {
            return Err(ServiceError::NotFound(format!("no app {id}")));
        }
        Ok(vec![Op::Delete { key: key.clone() }])
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_verifier_keeps_a_usable_salt() {
        let current = Verifier::new("old", b"salt", 7).to_string();
        let v = rotated_verifier("new", Some(&current));
        assert_eq!(v, Verifier::new("new", b"salt", 7));
        for unusable in [None, Some("md5abc")] {
            let v = rotated_verifier("new", unusable);
            assert_eq!(v.salt.len(), DEFAULT_SALT_LEN);
            assert_eq!(v.iterations, DEFAULT_ITERATIONS);
            assert_eq!(v, Verifier::new("new", &v.salt, v.iterations));
        }
    }
}
