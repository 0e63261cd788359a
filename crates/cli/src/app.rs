//! `shardline app ...`: client applications of tenants, their limits and
//! their tokens.

use anyhow::bail;
use clap::Subcommand;
use shardline_api::manager::{
    AppInfo, CreateAppRequest, CreateAppResponse, Limits, RotateTokenRequest, UpdateAppRequest,
};

use crate::admin::print_json;
use crate::endpoints::Endpoints;
use crate::limits::{limits_text, RateFlags};
use crate::table::{details, render};

/// `shardline app ...`
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// Create a client app; prints its token once
    Create {
        /// App name, also its id (unique across tenants)
        name: String,
        /// The tenant it belongs to [default: default]
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Refuse (403) shard keys that do not start with this
        #[arg(long)]
        key_prefix: Option<String>,
        #[command(flatten)]
        limits: RateFlags,
    },
    /// List apps
    List {
        /// Only this tenant's apps
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one app
    Get { id: String },
    /// Change an app; limits not given stay as they are
    Update {
        id: String,
        /// New display name
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// New key prefix; "" removes it
        #[arg(long)]
        key_prefix: Option<String>,
        #[command(flatten)]
        limits: RateFlags,
    },
    /// Give an app a new token (printed once); the old one keeps working
    /// for the grace period
    Rotate {
        id: String,
        /// How long the old token keeps working: seconds or a duration
        /// like 15m (0 ends it now) [default: the manager's, 900 s]
        #[arg(long, value_name = "SECONDS", value_parser = parse_grace)]
        grace: Option<u64>,
    },
    /// Delete an app (its token stops working)
    Delete { id: String },
}

/// Seconds, as a plain number or a humantime duration (`15m`).
fn parse_grace(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|e| format!("{s:?}: expected seconds or a duration like 15m ({e})"))
}

/// `shardline app ...`.
pub async fn run(ep: &Endpoints, cmd: AppCmd, json: bool) -> anyhow::Result<()> {
    let m = ep.manager()?;
    match cmd {
        AppCmd::Create {
            name,
            tenant,
            description,
            key_prefix,
            limits,
        } => {
            let mut l = Limits::default();
            limits.apply(&mut l);
            let req = CreateAppRequest {
                name,
                tenant,
                description,
                key_prefix,
                limits: l,
            };
            let created = m.create_app(&req).await?;
            if json {
                return print_json(&created);
            }
            println!(
                "created app {} (tenant {})",
                created.app.id, created.app.tenant
            );
            print_token(&created);
        }
        AppCmd::List { tenant } => {
            let apps = m.list_apps(tenant.as_deref()).await?;
            if json {
                return print_json(&apps);
            }
            print!("{}", app_table(&apps));
        }
        AppCmd::Get { id } => {
            let app = m.get_app(&id).await?;
            if json {
                return print_json(&app);
            }
            print!("{}", app_details(&app));
        }
        AppCmd::Update {
            id,
            name,
            description,
            key_prefix,
            limits,
        } => {
            if name.is_none() && description.is_none() && key_prefix.is_none() && !limits.any() {
                bail!("nothing to change: give --description, --key-prefix or a limit flag");
            }
            // The API replaces all the limits: start from the current ones
            // so flags not given keep their values.
            let limits = if limits.any() {
                let mut l = m.get_app(&id).await?.limits;
                limits.apply(&mut l);
                Some(l)
            } else {
                None
            };
            let req = UpdateAppRequest {
                name,
                description,
                key_prefix,
                limits,
            };
            let app = m.update_app(&id, &req).await?;
            if json {
                return print_json(&app);
            }
            println!("updated app {}", app.id);
            print!("{}", app_details(&app));
        }
        AppCmd::Rotate { id, grace } => {
            let req = RotateTokenRequest {
                grace_seconds: grace,
            };
            let rotated = m.rotate_app_token(&id, &req).await?;
            if json {
                return print_json(&rotated);
            }
            println!("rotated the token of app {}", rotated.app.id);
            print_token(&rotated);
            match &rotated.app.previous_token_expires_at {
                Some(until) => println!("the old token works until {until}"),
                None => println!("the old token no longer works"),
            }
        }
        AppCmd::Delete { id } => {
            m.delete_app(&id).await?;
            if json {
                return print_json(&serde_json::json!({"app": id, "deleted": true}));
            }
            println!("deleted app {id}");
        }
    }
    Ok(())
}

fn print_token(created: &CreateAppResponse) {
    println!("token (shown once): {}", created.token);
}

fn app_table(apps: &[AppInfo]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.tenant.clone(),
                a.key_prefix.clone().unwrap_or_default(),
                limits_text(&a.limits, None),
                a.created_at.clone(),
                a.description.clone(),
            ]
        })
        .collect();
    render(
        &[
            "app",
            "tenant",
            "key prefix",
            "limits",
            "created",
            "description",
        ],
        &rows,
    )
}

fn app_details(a: &AppInfo) -> String {
    let mut fields = vec![
        ("app", a.id.clone()),
        ("name", a.name.clone()),
        ("tenant", a.tenant.clone()),
        ("description", a.description.clone()),
        ("key prefix", a.key_prefix.clone().unwrap_or_default()),
        ("limits", limits_text(&a.limits, None)),
        ("created", a.created_at.clone()),
    ];
    if let Some(until) = &a.previous_token_expires_at {
        fields.push(("old token until", until.clone()));
    }
    details(&fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_takes_seconds_or_durations() {
        assert_eq!(parse_grace("0"), Ok(0));
        assert_eq!(parse_grace("90"), Ok(90));
        assert_eq!(parse_grace("15m"), Ok(900));
        assert_eq!(parse_grace("1h 30s"), Ok(3630));
        assert!(parse_grace("soon").is_err());
    }
}
