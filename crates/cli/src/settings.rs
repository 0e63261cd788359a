//! Settings from the environment, and secrets from files.
//!
//! Every flag of the servers (`dev`, `manager`, `router`) and every
//! global flag (the endpoints and tokens the admin verbs use, `--json`,
//! `--log-json`) can also be set by an environment variable named after
//! it: `SHARDLINE_` and the flag in capitals with `_` for `-`
//! (`--pg-listen` is `SHARDLINE_PG_LISTEN`). The rule is applied here to
//! the clap command as a whole, not written on each flag, so a flag added
//! later follows it too; the few variables older than the rule keep
//! their names (`--manager` is `SHARDLINE_MANAGER_URL`, `--router` is
//! `SHARDLINE_ROUTER_URL`). The verbs' own flags (`--shard`, `--rps`,
//! ...) are left alone: one exported `SHARDLINE_SHARD` must not steer
//! every verb that has a `--shard`.
//!
//! Secrets (tokens, passwords, DSNs) can also come from a file, as
//! Kubernetes and Docker mount them: `--admin-token-file PATH` or
//! `SHARDLINE_ADMIN_TOKEN_FILE=PATH`. The file's trailing newline is
//! dropped; a value given both ways is refused, naming both.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Command};

/// The prefix of every environment variable shardline reads.
pub const PREFIX: &str = "SHARDLINE_";

/// The subcommands whose flags all have an environment variable.
const SERVERS: [&str; 3] = ["dev", "manager", "router"];

/// The environment variable of a long flag: `pg-listen` →
/// `SHARDLINE_PG_LISTEN`.
pub fn env_name(long: &str) -> String {
    format!("{PREFIX}{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// Gives every global flag and every flag of the server subcommands
/// its environment variable (see the module docs).
pub fn with_env(cmd: Command) -> Command {
    let mut cmd = cmd.mut_args(env_arg);
    for name in SERVERS {
        cmd = cmd.mut_subcommand(name, |sub| sub.mut_args(env_arg));
    }
    cmd
}

/// One flag with its environment variable, unless it has one already
/// (or is positional). A switch reads `1`/`0`, `true`/`false`,
/// `yes`/`no`, `on`/`off`; a secret's value is never shown in `--help`.
fn env_arg(arg: clap::Arg) -> clap::Arg {
    let Some(long) = arg.get_long() else {
        return arg;
    };
    let secret = is_secret(long);
    let mut arg = if arg.get_env().is_none() {
        let name = env_name(long);
        arg.env(name)
    } else {
        arg
    };
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        arg = arg.value_parser(BoolishValueParser::new());
    }
    if secret {
        arg = arg.hide_env_values(true);
    }
    arg
}

/// Whether a flag carries a secret (its value is hidden in `--help`).
fn is_secret(long: &str) -> bool {
    (long.contains("token") || long.contains("password") || long.contains("dsn"))
        && !long.ends_with("-file")
}

/// A secret given as a value (`--NAME` / `SHARDLINE_NAME`) or as a file
/// (`--NAME-file` / `SHARDLINE_NAME_FILE`), at most one of them. `name`
/// is the value's flag without dashes (`admin-token`).
pub fn secret(
    name: &str,
    value: Option<String>,
    file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!(
            "the {what} is given twice, as a value (--{name} or ${env}) and as a file \
             (--{name}-file or ${env}_FILE): keep one",
            what = name.replace('-', " "),
            env = env_name(name),
        ),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => read_secret(name, path).map(Some),
        (None, None) => Ok(None),
    }
}

/// A secret file's contents less its trailing newline; an empty one is
/// refused (an unfilled mount is more likely than an empty secret).
pub fn read_secret(name: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read the {} from {}",
            name.replace('-', " "),
            path.display()
        )
    })?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        bail!(
            "the {} file {} is empty",
            name.replace('-', " "),
            path.display()
        );
    }
    Ok(value.to_string())
}

/// Secrets given as files, one a flag, read in order: for the repeatable
/// `--replica-file` and the like.
pub fn read_secrets(name: &str, paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    paths.iter().map(|p| read_secret(name, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_flag() {
        assert_eq!(env_name("pg-listen"), "SHARDLINE_PG_LISTEN");
        assert_eq!(env_name("admin-token"), "SHARDLINE_ADMIN_TOKEN");
        assert!(is_secret("router-token"));
        assert!(is_secret("etcd-password"));
        assert!(!is_secret("router-token-file"));
        assert!(!is_secret("listen"));
    }

    #[test]
    fn a_secret_comes_from_one_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        assert_eq!(secret("admin-token", None, None).unwrap(), None);
        assert_eq!(
            secret("admin-token", Some("v".into()), None).unwrap(),
            Some("v".into())
        );
        assert_eq!(
            secret("admin-token", None, Some(&path)).unwrap(),
            Some("s3cret-value".into())
        );
        let both = secret("admin-token", Some("v".into()), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("--admin-token or $SHARDLINE_ADMIN_TOKEN)"),
            "{both}"
        );
        assert!(
            both.contains("--admin-token-file or $SHARDLINE_ADMIN_TOKEN_FILE)"),
            "{both}"
        );
        assert!(!both.contains("s3cret"), "{both}");

        // Only the newline goes: inner and leading spaces are the secret's.
        std::fs::write(&path, " a b\r\n").unwrap();
        assert_eq!(read_secret("x", &path).unwrap(), " a b");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret("x", &path).is_err());
        let missing = format!(
            "{:#}",
            read_secret("app-token", &dir.path().join("nope")).unwrap_err()
        );
        assert!(missing.starts_with("read the app token from "), "{missing}");
    }
}
