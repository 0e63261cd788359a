//! `shardline sql`: one statement through the router.

use clap::Args;
use shardline_api::router::{Consistency, ExecuteRequest, ShardKeyValue};

use crate::endpoints::Endpoints;
use crate::table::{cell, render};

/// Options of `shardline sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The shard key
    #[arg(long)]
    key: String,
    /// Keyspace (default: the app's tenant's keyspace)
    #[arg(long)]
    keyspace: Option<String>,
    /// A parameter as JSON ($1, $2, ... in order; repeatable), e.g. --param 42 --param '"text"'
    #[arg(long = "param")]
    params: Vec<String>,
    /// Allow a replica to answer
    #[arg(long)]
    eventual: bool,
    /// The statement
    sql: String,
}

/// Runs the statement and prints its result.
pub async fn run(ep: &Endpoints, args: SqlArgs, json: bool) -> anyhow::Result<()> {
    let params = args
        .params
        .iter()
        .map(|p| {
            // A bare word that is not JSON is taken as a string.
            serde_json::from_str(p).unwrap_or_else(|_| serde_json::Value::String(p.clone()))
        })
        .collect();
    let req = ExecuteRequest {
        keyspace: args.keyspace,
        shard_key: ShardKeyValue::Text(args.key),
        sql: args.sql,
        params,
        consistency: if args.eventual {
            Consistency::Eventual
        } else {
            Consistency::Strong
        },
    };
    let resp = ep.router()?.execute(&req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    if !resp.result.columns.is_empty() {
        let headers: Vec<&str> = resp
            .result
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let rows: Vec<Vec<String>> = resp
            .result
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        print!("{}", render(&headers, &rows));
        println!(
            "({} row{}, shard {})",
            resp.result.rows.len(),
            if resp.result.rows.len() == 1 { "" } else { "s" },
            resp.shard
        );
    } else {
        println!(
            "{} row(s) affected (shard {})",
            resp.result.rows_affected, resp.shard
        );
    }
    Ok(())
}
