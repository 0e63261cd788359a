//! `shardline tenant ...`: tenants in the shared keyspace or in a
//! dedicated one, their quotas, and their deletion.

use anyhow::bail;
use clap::Subcommand;
use shardline_api::manager::{CreateTenantRequest, TenantConfig, TenantInfo, UpdateTenantRequest};
use shardline_core::KeyType;

use crate::admin::{parse_key_type, print_json};
use crate::endpoints::Endpoints;
use crate::limits::{limits_text, TenantFlags};
use crate::progress::Spinner;
use crate::table::{details, render};

/// `shardline tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant in a shared keyspace, or with a dedicated keyspace
    /// built from free shards
    Create {
        /// Tenant id: lowercase letters, digits, `_` and `-`
        id: String,
        /// Display name [default: the id]
        #[arg(long)]
        name: Option<String>,
        /// Shared keyspace to live in [default: default]
        #[arg(long, conflicts_with = "dedicated")]
        keyspace: Option<String>,
        /// Give the tenant a keyspace of its own, named after it, on shards
        /// no other keyspace uses (registered for it, or for no tenant)
        #[arg(long)]
        dedicated: bool,
        /// With --dedicated: how many shards
        #[arg(long, requires = "dedicated")]
        shards: Option<u32>,
        /// With --dedicated: text, bigint or uuid [default: text]
        #[arg(long, requires = "dedicated", value_parser = parse_key_type)]
        key_type: Option<KeyType>,
        #[command(flatten)]
        limits: TenantFlags,
    },
    /// List tenants
    List,
    /// Show one tenant
    Get { id: String },
    /// Change a tenant's name or limits; limits not given stay as they are
    Update {
        id: String,
        /// New display name
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: TenantFlags,
    },
    /// Delete a tenant and its apps; a tenant that may hold data needs
    /// --drop-data
    Delete {
        id: String,
        /// Drop its schema and role on every shard (its data is lost)
        #[arg(long)]
        drop_data: bool,
    },
}

/// `shardline tenant ...`.
pub async fn run(ep: &Endpoints, cmd: TenantCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    let (verb, tenant) = match cmd {
        TenantCmd::Create {
            id,
            name,
            keyspace,
            dedicated,
            shards,
            key_type,
            limits,
        } => {
            let mut config = TenantConfig::default();
            limits.apply(&mut config);
            let req = CreateTenantRequest {
                id,
                name,
                keyspace,
                dedicated,
                shards,
                key_type: key_type.unwrap_or_default(),
                config,
            };
            let _spinner = Spinner::start(if req.dedicated {
                format!(
                    "creating tenant {} with a keyspace of its own (role, schema and tables on each shard)",
                    req.id
                )
            } else {
                format!(
                    "creating tenant {} (its role and schema on every shard)",
                    req.id
                )
            });
            ("created", m.create_tenant(&req).await?)
        }
        TenantCmd::List => {
            let list = m.list_tenants().await?;
            if json {
                return print_json(&list);
            }
            print!("{}", tenant_table(&list));
            return Ok(());
        }
        TenantCmd::Get { id } => ("", m.get_tenant(&id).await?),
        TenantCmd::Update { id, name, limits } => {
            if name.is_none() && !limits.any() {
                bail!("nothing to change: give --name or a limit flag (see --help)");
            }
            // The API replaces the whole config: start from the current one
            // so flags not given keep their values.
            let config = if limits.any() {
                let mut config = m.get_tenant(&id).await?.config;
                limits.apply(&mut config);
                Some(config)
            } else {
                None
            };
            let req = UpdateTenantRequest { name, config };
            ("updated", m.update_tenant(&id, &req).await?)
        }
        TenantCmd::Delete { id, drop_data } => {
            let spinner = Spinner::start(if drop_data {
                format!("deleting tenant {id} and dropping its data on every shard")
            } else {
                format!("deleting tenant {id}")
            });
            let deleted = m.delete_tenant(&id, drop_data).await;
            drop(spinner);
            match deleted {
                Ok(()) => {}
                // The manager refuses a tenant whose tables hold rows.
                Err(e) if e.status() == Some(409) && !drop_data => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("tenant {id} has data: pass --drop-data to drop it")));
                }
                Err(e) => return Err(e.into()),
            }
            if json {
                return print_json(&serde_json::json!({
                    "tenant": id,
                    "deleted": true,
                    "drop_data": drop_data,
                }));
            }
            if drop_data {
                println!("deleted tenant {id}; its schema and role are dropped on every shard");
            } else {
                println!("deleted tenant {id}");
            }
            return Ok(());
        }
    };
    if json {
        return print_json(&tenant);
    }
    if !verb.is_empty() {
        println!("{verb} tenant {}", tenant.id);
    }
    print!("{}", tenant_details(&tenant));
    Ok(())
}

/// Tenants, one a row (for `tenant list` and `status`).
pub fn tenant_table(list: &[TenantInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                keyspace_text(t),
                t.shards.len().to_string(),
                t.apps.to_string(),
                state_text(t),
                limits_text(&t.config.limits, t.config.max_connections_per_shard),
            ]
        })
        .collect();
    render(
        &[
            "tenant", "name", "keyspace", "shards", "apps", "state", "limits",
        ],
        &rows,
    )
}

fn tenant_details(t: &TenantInfo) -> String {
    details(&[
        ("tenant", t.id.clone()),
        ("name", t.name.clone()),
        ("keyspace", keyspace_text(t)),
        ("shards", t.shards.join(" ")),
        ("pg role/db/schema", t.pg_name.clone()),
        ("state", state_text(t)),
        ("apps", t.apps.to_string()),
        (
            "limits",
            limits_text(&t.config.limits, t.config.max_connections_per_shard),
        ),
        ("created", t.created_at.clone()),
    ])
}

fn keyspace_text(t: &TenantInfo) -> String {
    if t.dedicated {
        format!("{} (dedicated)", t.keyspace)
    } else {
        t.keyspace.clone()
    }
}

fn state_text(t: &TenantInfo) -> String {
    serde_json::to_value(t.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
