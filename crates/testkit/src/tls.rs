//! Throwaway TLS certificates, made with `openssl`, for servers under
//! test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// PEM files: a CA, and a server certificate it signed for IP
/// `127.0.0.1` and DNS `localhost` with its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// Makes them in `dir` (EC P-256, valid one day).
    pub fn make(dir: &Path) -> anyhow::Result<TlsFiles> {
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .context("run openssl (is it installed?)")?;
            if !out.status.success() {
                bail!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_args = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=shardline-test-ca",
        ];
        openssl(&[&["req", "-x509"], &new_key[..], &ca_args[..]].concat())?;
        let csr_args = ["-keyout", "server.key", "-out", "server.csr"];
        openssl(
            &[
                &["req"],
                &new_key[..],
                &csr_args[..],
                &["-subj", "/CN=localhost"],
            ]
            .concat(),
        )?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .context("write server.ext")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ])?;
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        })
    }
}
