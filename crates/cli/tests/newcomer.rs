//! A newcomer's first run: the README's run command, `shardline dev` with
//! no flags and no `SHARDLINE_DATA_DIR`, `HOME` a fresh 0700 directory (as
//! root's home is), reaches a ready router that runs a statement for the
//! CLI, and stops cleanly on Ctrl-C. And a data dir PostgreSQL could not
//! reach is refused before any initdb, saying what to do.

mod fresh;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use fresh::{Fresh, BIN, DEV_FUNCTIONS};

/// Runs the README's command on a fresh machine (in its own namespaces
/// when root, see `fresh`), then the checks, all in one bash script:
/// `/readyz`, one statement through the CLI (which finds dev.json in the
/// same default place), the modes of what dev made, and Ctrl-C.
#[test]
fn readme_run_command_reaches_a_ready_router() {
    let fresh = Fresh::new();
    let script = format!(
        r#"{DEV_FUNCTIONS}
./target/release/shardline dev > dev.out 2>&1 &
__dev=$!
if __wait_banner dev.out; then echo "@@@ banner"; fi
echo "@@@ readyz $(curl -s -o /dev/null -m 5 -w '%{{http_code}}' http://127.0.0.1:8080/readyz)"
./target/release/shardline sql --key k 'SELECT 1'
echo "@@@ sql-exit $?"
d={data_dir}
stat -c '@@@ mode %a %U:%G %n' "$d" "$d/dev.json" "$d/pg-password" "$d/catalog.json" "$d/pg/shard-0"
__stop_dev
echo "@@@ dev output"
cat dev.out
"#,
        data_dir = fresh.default_data_dir().display(),
    );
    let ran = fresh.run(&script, Duration::from_secs(240));
    let out = &ran.output;
    println!("{out}");
    assert_eq!(ran.code, Some(0), "the script failed");
    assert!(out.contains("@@@ banner\n"), "no banner from shardline dev");
    assert!(out.contains("@@@ readyz 200\n"), "the router is not ready");
    // The statement ran through the router on a shard of keyspace default.
    assert!(
        out.contains("?column?\n--------\n1\n(1 row, shard shard-"),
        "SELECT 1 through the CLI"
    );
    assert!(out.contains("@@@ sql-exit 0\n"));
    assert!(out.contains("@@@ dev-exit 0\n"), "dev did not stop cleanly");
    let data_dir = fresh.default_data_dir();
    let banner_path = format!("  details:     {}/dev.json\n", data_dir.display());
    assert!(out.contains(&banner_path), "the banner names {banner_path}");
    assert!(out.contains(&format!(
        "shardline dev stopped; data kept in {}\n",
        data_dir.display()
    )));
    // What dev made, and who may read it.
    let d = data_dir.display();
    let modes: Vec<String> = if fresh.isolated {
        vec![
            format!("710 root:postgres {d}"),
            format!("600 root:root {d}/dev.json"),
            format!("600 root:root {d}/pg-password"),
            format!("700 postgres:postgres {d}/pg/shard-0"),
        ]
    } else {
        vec![
            format!("700 {d}"),
            format!("600 {d}/dev.json"),
            format!("600 {d}/pg-password"),
            format!("700 {d}/pg/shard-0"),
        ]
    };
    for m in modes {
        let found = out.lines().any(|l| {
            l.strip_prefix("@@@ mode ").is_some_and(|rest| {
                let (mode, rest) = rest.split_once(' ').unwrap_or_default();
                let (owner, path) = rest.split_once(' ').unwrap_or_default();
                let line = if fresh.isolated {
                    format!("{mode} {owner} {path}")
                } else {
                    format!("{mode} {path}")
                };
                line == m
            })
        });
        assert!(found, "expected {m:?}");
    }
    // The data landed where the script's /var/lib/shardline (or HOME) is.
    assert!(fresh
        .default_data_dir_on_host()
        .join("pg/shard-0/PG_VERSION")
        .exists());
}

/// As root, a data dir under a directory `postgres` cannot enter (a 0700
/// one of root, like /root) is refused before initdb, with the directory
/// named and what to do; nothing is created. Not root: PostgreSQL runs as
/// the same user, so there is nothing to refuse.
#[test]
fn unreachable_data_dir_is_refused_before_initdb() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: only root runs PostgreSQL as another user");
        return;
    }
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = closed.path().join("shardline/dev");
    let out = Command::new(BIN)
        .args([
            "dev",
            "--router-listen",
            "127.0.0.1:0",
            "--manager-listen",
            "127.0.0.1:0",
            "--pg-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("SHARDLINE_DATA_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(!out.status.success(), "dev must fail");
    let closed_name = closed.path().display().to_string();
    assert!(
        stderr.contains(&format!(
            "error: PostgreSQL runs as user `postgres`, which cannot enter {closed_name} (mode 0700, owner root)"
        )),
        "names the directory in the way"
    );
    assert!(stderr.contains(&format!("so it cannot reach {}.", data_dir.display())));
    assert!(stderr.contains("--data-dir"), "says what to do");
    assert!(stderr.contains(&format!("chmod o+x {closed_name}")));
    assert!(!stderr.contains("initdb"), "no initdb was tried");
    assert!(
        !closed.path().join("shardline").exists(),
        "nothing was created"
    );
}
