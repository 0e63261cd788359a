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
        make_ca(dir)?;
        sign(
            dir,
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        })
    }

    /// Signs another certificate with the same CA: `{who}.crt` and
    /// `{who}.key` beside it, for the subject alternative names `san`
    /// (openssl's syntax, such as `DNS:db.example,IP:127.0.0.2`).
    /// Returns the certificate's and the key's paths.
    pub fn issue(&self, who: &str, san: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.ca.parent().context("the CA file has a directory")?;
        sign(
            dir,
            who,
            who,
            &format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
        )?;
        Ok((
            dir.join(format!("{who}.crt")),
            dir.join(format!("{who}.key")),
        ))
    }

    /// Signs a client certificate with the same CA for the user `user`
    /// (its common name, which PostgreSQL's `cert` authentication
    /// compares with the user name): `client-{user}.crt` and
    /// `client-{user}.key` beside the CA. Returns the certificate's and
    /// the key's paths.
    pub fn issue_client(&self, user: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.ca.parent().context("the CA file has a directory")?;
        let who = format!("client-{user}");
        sign(dir, &who, user, "extendedKeyUsage=clientAuth\n")?;
        Ok((
            dir.join(format!("{who}.crt")),
            dir.join(format!("{who}.key")),
        ))
    }
}

/// A new EC P-256 key, unencrypted (`openssl req` arguments).
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs `openssl` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
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
}

/// Makes a CA in `dir`: `ca.crt` and `ca.key`, valid one day.
pub(crate) fn make_ca(dir: &Path) -> anyhow::Result<()> {
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=shardline-test-ca",
    ];
    openssl(dir, &[&["req", "-x509"], &NEW_KEY[..], &ca[..]].concat())
}

/// Makes `{who}.key` and `{who}.crt` in `dir`, signed by its CA for
/// common name `cn` with the extensions `ext` (openssl's extfile
/// syntax), valid one day.
pub(crate) fn sign(dir: &Path, who: &str, cn: &str, ext: &str) -> anyhow::Result<()> {
    let (key, csr, crt, ext_file) = (
        format!("{who}.key"),
        format!("{who}.csr"),
        format!("{who}.crt"),
        format!("{who}.ext"),
    );
    std::fs::write(dir.join(&ext_file), ext).with_context(|| format!("write {ext_file}"))?;
    let subject = format!("/CN={cn}");
    let req = ["-keyout", &key, "-out", &csr, "-subj", &subject];
    openssl(dir, &[&["req"], &NEW_KEY[..], &req[..]].concat())?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "1",
            "-extfile",
            &ext_file,
        ],
    )
}
