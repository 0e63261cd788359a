//! `shardline dev` with TLS, through the real processes: with
//! `--tls-cert`, `--tls-key` and `--tls-ca` (a throwaway CA) dev.json's
//! URLs are `https://` and its `postgres_url` asks for `verify-full`;
//! the CLI's verbs verify the servers with dev.json's CA (and refuse
//! them with another CA), and psql logs in over the wire with
//! `sslmode=verify-full`.

mod devproc;

use std::process::{Child, Command};

use devproc::{cli, stop_dev, wait_dev_json, BIN};
use shardline_testkit::TlsFiles;

/// Stops dev when an assertion fails before [`stop_dev`].
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGTERM);
            }
            let _ = self.0.wait();
        }
    }
}

/// A `shardline dev` with one shard, a certificate of a throwaway CA
/// and that CA, and `extra` flags; its dev.json.
struct TlsDev {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    files: TlsFiles,
    dev: Running,
    info: serde_json::Value,
}

impl TlsDev {
    async fn start(extra: &[&str]) -> TlsDev {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dev");
        let certs = tmp.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let files = TlsFiles::make(&certs).unwrap();
        let (cert, key, ca) = (
            files.server_cert.to_string_lossy().into_owned(),
            files.server_key.to_string_lossy().into_owned(),
            files.ca.to_string_lossy().into_owned(),
        );
        let mut args = extra.to_vec();
        args.extend_from_slice(&[
            "--shards",
            "1",
            "--spare-shards",
            "0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca,
        ]);
        let mut dev = Running(devproc::start_dev(&dir, &args));
        let info = wait_dev_json(&dir, &mut dev.0).await;
        TlsDev {
            _tmp: tmp,
            dir,
            files,
            dev,
            info,
        }
    }
}

#[tokio::test]
async fn dev_serves_https_and_verified_tls_on_the_wire() {
    let mut tls = TlsDev::start(&[]).await;
    let (dir, files, info) = (&tls.dir, &tls.files, &tls.info);
    for url in ["router_url", "manager_url"] {
        let u = info[url].as_str().unwrap_or_default();
        assert!(u.starts_with("https://127.0.0.1:"), "{url}: {u}");
    }
    assert_eq!(info["ca_file"].as_str(), files.ca.to_str());
    let pg_url = info["postgres_url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        pg_url.contains("sslmode=verify-full&sslrootcert=/"),
        "{pg_url}"
    );

    // The verbs verify both servers with dev.json's CA.
    let status = cli(dir, &["status"]);
    assert!(status.contains("https://"), "{status}");
    let answer = cli(dir, &["sql", "--key", "k1", "SELECT 41 + 1 AS answer"]);
    assert!(answer.contains("42"), "{answer}");
    // Another CA's file: refused, saying why.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TlsFiles::make(other_dir.path()).unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("--ca-file")
        .arg(&other.ca)
        .arg("status")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");

    // psql over the wire, as dev.json says.
    let out = Command::new("psql")
        .args([&pg_url, "-X", "-c", "\\conninfo", "-c", "SELECT 1"])
        .output()
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("SSL connection (protocol: TLS"), "{shown}");

    stop_dev(&mut tls.dev.0);
}

/// `dev --managers 3` with TLS: the three manager processes serve HTTPS
/// and advertise `https://` URLs; a write sent to each of them (two are
/// followers, which forward it to the leader over HTTPS, trusting the
/// CA) lands; the router follows them over HTTPS and serves a
/// statement.
#[tokio::test]
async fn dev_with_three_managers_serves_https_between_them() {
    let mut tls = TlsDev::start(&["--managers", "3"]).await;
    let (dir, info) = (&tls.dir, &tls.info);
    let managers: Vec<String> = info["managers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["url"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(managers.len(), 3, "{info}");
    for u in managers.iter().chain([
        &info["manager_url"].as_str().unwrap_or_default().to_string(),
        &info["router_url"].as_str().unwrap_or_default().to_string(),
    ]) {
        assert!(u.starts_with("https://127.0.0.1:"), "{u}: {info}");
    }
    // Each manager's own config advertises itself over HTTPS.
    let configs = std::fs::read_dir(dir.join("managers"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(configs.len(), 3);
    for c in &configs {
        assert!(c.contains("advertise_url = \"https://127.0.0.1:"), "{c}");
    }
    // A write through each manager: followers forward to the leader.
    for (i, url) in managers.iter().enumerate() {
        let name = format!("tls-ks-{i}");
        cli(dir, &["--manager", url, "keyspace", "create", &name]);
        let listed = cli(dir, &["--manager", url, "keyspace", "list"]);
        assert!(listed.contains(&name), "{listed}");
    }
    let answer = cli(dir, &["sql", "--key", "k1", "SELECT 41 + 1 AS answer"]);
    assert!(answer.contains("42"), "{answer}");
    // Control: plain HTTP to a manager's port gets no answer (with the
    // dev admin token, so a refusal of the token cannot stand in for it).
    let plain = managers[0].replacen("https://", "http://", 1);
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["--manager", &plain, "keyspace", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "plain HTTP answered: {err}");
    assert!(
        !err.contains("401") && !err.to_lowercase().contains("token"),
        "refused for its token, not for plain HTTP: {err}"
    );
    println!("plain HTTP to an HTTPS manager: {}", err.trim());

    stop_dev(&mut tls.dev.0);
}
