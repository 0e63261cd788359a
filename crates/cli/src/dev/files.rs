//! Files and settings of a dev data dir that every part of `dev` uses:
//! the dev clusters' configuration and private files written atomically.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use shardline_localpg::ClusterConfig;

/// The configuration of a dev cluster on `port` in `data_dir`.
pub(super) fn cluster_config(port: u16, data_dir: &Path, password: &str) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(data_dir.to_path_buf(), port);
    cfg.password = Some(password.to_string());
    cfg.settings = shardline_localpg::DEV_SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cfg
}

/// Writes a file only its owner reads, atomically (a temporary file
/// renamed over it).
pub(super) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
