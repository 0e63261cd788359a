//! Synchronous replication of a shard: the primary acknowledges a commit
//! once any one of its replicas has flushed it. PostgreSQL names standbys
//! by the `application_name` of their replication connection, so the
//! manager reads each replica's (from its `primary_conninfo`, giving it
//! the instance id when it has none) and sets the primary's
//! `synchronous_standby_names` to `ANY 1 ("a", "b")`. After a failover the
//! new primary gets the list of the replicas that follow it; with none
//! left it gets an empty list (a synchronous primary without standbys
//! would block every commit: the shard stays writable and the loss of
//! durability is logged, PostgreSQL's own trade when a standby list is
//! emptied).

use std::time::Duration;

use shardline_core::catalog::{quote_literal, Instance};

use crate::pg;

/// The application name `replica` streams under, set to its instance id
/// when its `primary_conninfo` names none.
pub async fn standby_name(replica: &Instance, timeout: Duration) -> Result<String, String> {
    let c = pg::connect(&replica.dsn, timeout).await?;
    let current: String = c
        .query_one("SHOW primary_conninfo", &[])
        .await
        .map_err(|e| pg::describe(&e))?
        .get(0);
    if let Some(name) = pg::conninfo_value(&current, "application_name") {
        return Ok(name);
    }
    let conninfo = format!(
        "{current} application_name={}",
        pg::conninfo_quote(&replica.id)
    );
    c.batch_execute(&format!(
        "ALTER SYSTEM SET primary_conninfo = {}",
        quote_literal(&conninfo)
    ))
    .await
    .map_err(|e| pg::describe(&e))?;
    pg::reload(&c).await?;
    Ok(replica.id.clone())
}

/// The `synchronous_standby_names` value for `names` (empty: none).
pub fn standby_list(names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = names
        .iter()
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect();
    format!("ANY 1 ({})", quoted.join(", "))
}

/// Sets `primary`'s `synchronous_standby_names`: with `synchronous`, any
/// one of `replicas` that answers (their names read or given, see
/// [`standby_name`]); otherwise none. Returns the value set.
pub async fn configure(
    primary: &Instance,
    replicas: &[Instance],
    synchronous: bool,
    timeout: Duration,
) -> Result<String, String> {
    let mut names = Vec::new();
    if synchronous {
        for r in replicas {
            match standby_name(r, timeout).await {
                Ok(n) => names.push(n),
                Err(e) => {
                    tracing::warn!(replica = %r.id, error = %e,
                        "cannot read the replica's standby name; it is left out of the synchronous list");
                }
            }
        }
        if names.is_empty() {
            tracing::warn!(primary = %primary.id,
                "no replica answers: the primary commits without a synchronous standby");
        }
    }
    let value = standby_list(&names);
    let c = pg::connect(&primary.dsn, timeout).await?;
    c.batch_execute(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = {}",
        quote_literal(&value)
    ))
    .await
    .map_err(|e| pg::describe(&e))?;
    pg::reload(&c).await?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_any_one_of_the_names() {
        assert_eq!(standby_list(&[]), "");
        assert_eq!(
            standby_list(&["s1-1".into(), "we\"ird".into()]),
            r#"ANY 1 ("s1-1", "we""ird")"#
        );
    }
}
