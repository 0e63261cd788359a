//! Admin verbs: keyspaces, shards, schema, status.

use anyhow::{bail, Context};
use clap::Subcommand;
use shardline_api::manager::{
    AddReplicaRequest, ApplyMigrationRequest, CreateKeyspaceRequest, InitialMapRequest,
    KeyspaceInfo, RegisterShardRequest, StatusResponse, TableSpec,
};
use shardline_core::KeyType;

use crate::endpoints::Endpoints;
use crate::instances::{failovers_in_progress, shard_table};
use crate::progress::Spinner;
use crate::settings::{read_secret, read_secrets, secret};
use crate::table::render;
use crate::tenant::tenant_table;

/// `shardline keyspace ...`
#[derive(Debug, Subcommand)]
pub enum KeyspaceCmd {
    /// Create a keyspace, optionally split evenly over registered shards
    Create {
        name: String,
        /// text, bigint or uuid
        #[arg(long, default_value = "text", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Comma-separated shard ids
        #[arg(long, value_delimiter = ',')]
        shards: Vec<String>,
    },
    /// List keyspaces
    List,
    /// Show one keyspace
    Get { name: String },
    /// Give a keyspace without a map its initial map
    SetMap {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        shards: Vec<String>,
    },
    /// Record which column of a table holds each row's shard key (needed
    /// to reshard the keyspace)
    SetShardKey {
        keyspace: String,
        table: String,
        column: String,
    },
}

pub(crate) fn parse_key_type(s: &str) -> Result<KeyType, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown key type {s:?}: use text, bigint or uuid"))
}

/// `shardline shard ...`
#[derive(Debug, Subcommand)]
pub enum ShardCmd {
    /// Register a PostgreSQL server as a shard
    Register {
        id: String,
        /// DSN of the primary
        #[arg(long, required_unless_present = "primary_file")]
        primary: Option<String>,
        /// File holding the primary's DSN (it may carry a password)
        #[arg(long, value_name = "PATH", conflicts_with = "primary")]
        primary_file: Option<std::path::PathBuf>,
        /// DSN of a replica (repeatable)
        #[arg(long = "replica")]
        replicas: Vec<String>,
        /// File holding a replica's DSN (repeatable)
        #[arg(long = "replica-file", value_name = "PATH")]
        replica_files: Vec<std::path::PathBuf>,
        /// Reserve it for this tenant's dedicated keyspace
        #[arg(long)]
        tenant: Option<String>,
        /// Synchronous replication: commits wait for any one replica
        #[arg(long)]
        synchronous: bool,
    },
    /// Register a running streaming replica of a shard's primary
    AddReplica {
        shard: String,
        /// DSN of the replica
        #[arg(required_unless_present = "dsn_file")]
        dsn: Option<String>,
        /// File holding the replica's DSN (it may carry a password)
        #[arg(long, value_name = "PATH", conflicts_with = "dsn")]
        dsn_file: Option<std::path::PathBuf>,
    },
    /// List shards with each instance's role, health and lag
    List,
    /// Show one shard
    Get { id: String },
    /// Remove a shard that serves no keyspace
    Remove { id: String },
}

/// `shardline schema ...`
#[derive(Debug, Subcommand)]
pub enum SchemaCmd {
    /// Apply a named migration (a SQL file) to every shard of a keyspace
    Apply {
        #[arg(long, default_value = "default")]
        keyspace: String,
        /// Name of the migration; re-applying the same name and SQL is a no-op
        name: String,
        /// SQL file
        file: std::path::PathBuf,
    },
    /// List the migrations of a keyspace
    List {
        #[arg(long, default_value = "default")]
        keyspace: String,
    },
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn keyspace_table(list: &[KeyspaceInfo]) -> String {
    let rows = list
        .iter()
        .flat_map(|k| {
            let ranges: Vec<Vec<String>> = if k.map.is_empty() {
                vec![vec![
                    k.name.clone(),
                    format!("{:?}", k.key_type).to_lowercase(),
                    "(no map)".into(),
                    String::new(),
                ]]
            } else {
                k.map
                    .iter()
                    .map(|r| {
                        vec![
                            k.name.clone(),
                            format!("{:?}", k.key_type).to_lowercase(),
                            r.range.clone(),
                            r.shard.clone(),
                        ]
                    })
                    .collect()
            };
            ranges
        })
        .collect::<Vec<_>>();
    render(&["keyspace", "key type", "range", "shard"], &rows)
}

/// `shardline status`.
pub async fn status(ep: &Endpoints, json: bool) -> anyhow::Result<()> {
    let manager = ep.manager()?;
    let st: StatusResponse = manager.status().await?;
    if json {
        return print_json(&st);
    }
    println!("catalog version {}", st.catalog_version);
    // Which manager acts (the only one, or the elected one of several).
    match manager.leader().await {
        Ok(l) => match l.leader {
            Some(m) => println!("leader {} at {} (term {})\n", m.id, m.url, l.term),
            None => println!("leader none known (an election is under way)\n"),
        },
        Err(e) => println!("leader unknown: {e}\n"),
    }
    print!("{}", keyspace_table(&st.keyspaces));
    println!();
    print!("{}", shard_table(&st.shards));
    print!("{}", failovers_in_progress(&st.shards));
    println!();
    print!("{}", tenant_table(&st.tenants));
    println!();
    let rows: Vec<Vec<String>> = st
        .routers
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.address.clone(),
                r.applied_version.to_string(),
                format!("{} ms ago", r.last_seen_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["router", "address", "catalog version", "last seen"],
            &rows
        )
    );
    Ok(())
}

/// `shardline keyspace ...`.
pub async fn keyspace(ep: &Endpoints, cmd: KeyspaceCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    let list = match cmd {
        KeyspaceCmd::Create {
            name,
            key_type,
            shards,
        } => vec![
            m.create_keyspace(&CreateKeyspaceRequest {
                name,
                key_type,
                shards,
            })
            .await?,
        ],
        KeyspaceCmd::List => m.list_keyspaces().await?,
        KeyspaceCmd::Get { name } => vec![m.get_keyspace(&name).await?],
        KeyspaceCmd::SetMap { name, shards } => {
            vec![
                m.set_initial_map(&name, &InitialMapRequest { shards })
                    .await?,
            ]
        }
        KeyspaceCmd::SetShardKey {
            keyspace,
            table,
            column,
        } => vec![
            m.set_table(&keyspace, &table, &TableSpec { shard_key: column })
                .await?,
        ],
    };
    if json {
        return print_json(&list);
    }
    print!("{}", keyspace_table(&list));
    if let [one] = list.as_slice() {
        print!("{}", keyspace_extras(one));
    }
    Ok(())
}

/// The tables (with their shard-key columns) and frozen ranges of one
/// keyspace, under its map.
fn keyspace_extras(k: &KeyspaceInfo) -> String {
    let mut out = String::new();
    if !k.tables.is_empty() {
        let rows: Vec<Vec<String>> = k
            .tables
            .iter()
            .map(|(table, spec)| vec![table.clone(), spec.shard_key.clone()])
            .collect();
        out.push('\n');
        out.push_str(&render(&["table", "shard key"], &rows));
    }
    if !k.frozen.is_empty() {
        out.push_str(&format!(
            "\nfrozen for a resharding cutover: {}\n",
            k.frozen.join(", ")
        ));
    }
    out
}

/// `shardline shard ...`.
pub async fn shard(ep: &Endpoints, cmd: ShardCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    let list = match cmd {
        ShardCmd::Register {
            id,
            primary,
            primary_file,
            mut replicas,
            replica_files,
            tenant,
            synchronous,
        } => {
            let primary = secret("primary", primary, primary_file.as_deref())?
                .context("give the primary's DSN: --primary or --primary-file")?;
            replicas.extend(read_secrets("replica", &replica_files)?);
            if synchronous && replicas.is_empty() {
                bail!("--synchronous needs a replica: --replica or --replica-file");
            }
            vec![
                m.register_shard(&RegisterShardRequest {
                    id,
                    primary,
                    replicas,
                    tenant,
                    synchronous,
                })
                .await?,
            ]
        }
        ShardCmd::AddReplica {
            shard,
            dsn,
            dsn_file,
        } => {
            let dsn = match (dsn, dsn_file) {
                (Some(dsn), _) => dsn,
                (None, Some(path)) => read_secret("dsn", &path)?,
                (None, None) => bail!("give the replica's DSN, or --dsn-file"),
            };
            vec![m.add_replica(&shard, &AddReplicaRequest { dsn }).await?]
        }
        ShardCmd::List => m.list_shards().await?,
        ShardCmd::Get { id } => vec![m.get_shard(&id).await?],
        ShardCmd::Remove { id } => {
            m.delete_shard(&id).await?;
            println!("removed shard {id}");
            return Ok(());
        }
    };
    if json {
        return print_json(&list);
    }
    print!("{}", shard_table(&list));
    print!("{}", failovers_in_progress(&list));
    Ok(())
}

/// `shardline schema ...`.
pub async fn schema(ep: &Endpoints, cmd: SchemaCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    match cmd {
        SchemaCmd::Apply {
            keyspace,
            name,
            file,
        } => {
            let sql = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            let spinner = Spinner::start(format!(
                "applying migration {name} to every shard of keyspace {keyspace}"
            ));
            let res = m
                .apply_migration(&keyspace, &ApplyMigrationRequest { name, sql })
                .await;
            drop(spinner);
            let res = res?;
            if json {
                return print_json(&res);
            }
            println!(
                "migration {} (checksum {})",
                res.name,
                &res.checksum[..12.min(res.checksum.len())]
            );
            let rows: Vec<Vec<String>> = res
                .shards
                .iter()
                .map(|s| {
                    vec![
                        s.shard.clone(),
                        serde_json::to_value(s.outcome)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            print!("{}", render(&["shard", "outcome"], &rows));
        }
        SchemaCmd::List { keyspace } => {
            let list = m.list_migrations(&keyspace).await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|mi| vec![mi.name.clone(), mi.checksum.clone()])
                .collect();
            print!("{}", render(&["migration", "checksum"], &rows));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_extras_show_tables_and_frozen_ranges() {
        let mut k = KeyspaceInfo {
            name: "default".into(),
            key_type: KeyType::Text,
            map: vec![],
            migrations: vec![],
            tables: Default::default(),
            frozen: vec![],
        };
        assert_eq!(keyspace_extras(&k), "");
        k.tables.insert(
            "events".into(),
            TableSpec {
                shard_key: "account".into(),
            },
        );
        k.frozen = vec!["80-c0".into()];
        let text = keyspace_extras(&k);
        assert!(text.contains("events | account"), "{text}");
        assert!(
            text.ends_with("frozen for a resharding cutover: 80-c0\n"),
            "{text}"
        );
    }
}
