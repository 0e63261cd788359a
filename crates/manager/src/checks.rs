//! Validation of request fields, each failure a 400 naming the field.

use shardline_core::catalog::{valid_name, Limits, TenantConfig, MAX_TENANT_ID_LEN};
use shardline_core::Catalog;

use crate::error::ServiceError;

/// Longest display name of a tenant or app.
pub const MAX_DISPLAY_NAME_LEN: usize = 200;

/// An identifier (keyspace, shard, app, migration).
pub fn name(kind: &str, name: &str) -> Result<(), ServiceError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1-63 characters of a-z, 0-9, '_' and '-', \
             starting with a letter or digit"
        )))
    }
}

/// A tenant id: a name short enough for its PostgreSQL role and schema.
pub fn tenant_id(id: &str) -> Result<(), ServiceError> {
    if valid_name(id) && id.len() <= MAX_TENANT_ID_LEN {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "invalid tenant id {id:?}: use 1-{MAX_TENANT_ID_LEN} characters of a-z, 0-9, '_' \
             and '-', starting with a letter or digit"
        )))
    }
}

/// A free-text display name: 1-200 characters, no control characters.
pub fn display_name(kind: &str, name: &str) -> Result<(), ServiceError> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_DISPLAY_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(ServiceError::Invalid(format!(
            "invalid {kind} name: use 1-{MAX_DISPLAY_NAME_LEN} characters, not only spaces, \
             without control characters"
        )));
    }
    Ok(())
}

/// A PostgreSQL DSN (key/value or URL). Its settings travel to
/// PostgreSQL as NUL-terminated strings, so a NUL in any of them (also
/// written `%00` in a URL) could never connect: refused here rather than
/// found later as an unreachable shard.
pub fn dsn(dsn: &str) -> Result<(), ServiceError> {
    let (cfg, _) = shardline_tls::pg::split_dsn(dsn).map_err(|e| match e {
        // Our own words about sslmode, sslcert and sslkey;
        // tokio-postgres's might quote a setting.
        shardline_tls::TlsError::Dsn(m)
            if ["sslmode", "sslcert", "sslkey"]
                .iter()
                .any(|k| m.starts_with(k)) =>
        {
            ServiceError::Invalid(format!("invalid PostgreSQL DSN: {m}"))
        }
        _ => ServiceError::Invalid("invalid PostgreSQL DSN".to_string()),
    })?;
    let hosts = cfg.get_hosts().iter().map(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => name.as_bytes(),
        tokio_postgres::config::Host::Unix(path) => path.as_os_str().as_encoded_bytes(),
    });
    let settings = [
        cfg.get_user().map(str::as_bytes),
        cfg.get_password(),
        cfg.get_dbname().map(str::as_bytes),
        cfg.get_options().map(str::as_bytes),
        cfg.get_application_name().map(str::as_bytes),
    ];
    if settings
        .into_iter()
        .flatten()
        .chain(hosts)
        .any(|v| v.contains(&0))
    {
        return Err(ServiceError::Invalid(
            "invalid PostgreSQL DSN: a setting contains a NUL character".to_string(),
        ));
    }
    Ok(())
}

fn at_least_one(field: &str, value: Option<u32>) -> Result<(), ServiceError> {
    match value {
        Some(0) => Err(ServiceError::Invalid(format!(
            "{field} must be at least 1 (leave it out for no limit)"
        ))),
        _ => Ok(()),
    }
}

/// Limits: every given value at least 1.
pub fn limits(prefix: &str, l: &Limits) -> Result<(), ServiceError> {
    at_least_one(
        &format!("{prefix}requests_per_second"),
        l.requests_per_second,
    )?;
    at_least_one(&format!("{prefix}burst"), l.burst)?;
    at_least_one(&format!("{prefix}max_concurrent"), l.max_concurrent)?;
    at_least_one(&format!("{prefix}max_shards"), l.max_shards)
}

/// An app's limits: as a tenant's, without `max_shards`.
pub fn app_limits(l: &Limits) -> Result<(), ServiceError> {
    if l.max_shards.is_some() {
        return Err(ServiceError::Invalid(
            "limits.max_shards applies to tenants only, not to apps".into(),
        ));
    }
    limits("limits.", l)
}

/// A tenant's config.
pub fn tenant_config(c: &TenantConfig) -> Result<(), ServiceError> {
    limits("config.limits.", &c.limits)?;
    at_least_one(
        "config.max_connections_per_shard",
        c.max_connections_per_shard,
    )
}

/// The shards a keyspace's map spans, sorted, each once.
pub fn keyspace_shards(cat: &Catalog, keyspace: &str) -> Vec<String> {
    let mut ids: Vec<String> = cat
        .keyspaces
        .get(keyspace)
        .and_then(|k| k.map.as_ref())
        .iter()
        .flat_map(|m| m.ranges().iter().map(|r| r.shard.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(tenant_id("acme").is_ok());
        assert!(tenant_id(&"a".repeat(48)).is_ok());
        assert!(tenant_id(&"a".repeat(49)).is_err());
        assert!(tenant_id("Acme").is_err());
        assert!(display_name("tenant", "Acme Corp.").is_ok());
        assert!(display_name("tenant", "  ").is_err());
        assert!(display_name("tenant", "a\nb").is_err());
        assert!(dsn("host=127.0.0.1 user=postgres password=x").is_ok());
        assert!(dsn("postgresql://u:p@localhost:5432/db").is_ok());
        for bad in [
            "host=127.0.0.1 password=a\0b",
            "host=127.0.0.1 user='a\0'",
            "postgresql://u%00@localhost/db",
            "postgresql://u:p%00@localhost/db",
            "postgresql://u@localhost/d%00b",
            "host=a\0b",
        ] {
            let e = dsn(bad).unwrap_err().to_string();
            assert!(e.contains("invalid PostgreSQL DSN"), "{bad}: {e}");
        }
        let mut l = Limits {
            requests_per_second: Some(10),
            ..Limits::default()
        };
        assert!(app_limits(&l).is_ok());
        l.burst = Some(0);
        let e = app_limits(&l).unwrap_err().to_string();
        assert!(e.contains("limits.burst"), "{e}");
        l.burst = None;
        l.max_shards = Some(2);
        assert!(app_limits(&l).is_err());
        assert!(limits("", &l).is_ok());
    }
}
