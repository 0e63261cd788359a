//! Operator comforts, through the real `shardline` binary: settings from
//! `SHARDLINE_*` variables and secrets from files (a manager and a router
//! run that way), errors that say what was tried and what to do (a
//! closed port, a wrong token), shell completions that load in bash, and
//! progress drawn on a terminal but never into a pipe.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::procs::{free_port, Proc, BIN};
use common::{eventually, Stack, StackOptions, ADMIN_TOKEN, ROUTER_TOKEN};
use serde_json::Value;
use shardline_client::ManagerClient;

/// `shardline ARGS` with only the given `SHARDLINE_*` variables (none
/// inherited) and no dev.json to fall back on.
fn shardline(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHARDLINE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SHARDLINE_DATA_DIR", "/nonexistent/shardline-test")
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    shardline(args, env).output().await.expect("run shardline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `shardline` server process whose output goes to `log`.
fn serve(args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    let mut cmd = shardline(args, env).into_std();
    cmd.stdout(f.try_clone().unwrap()).stderr(f);
    Proc(cmd.spawn().expect("spawn shardline"))
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_and_verbs_take_settings_from_the_environment_and_secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mport, rport) = (free_port(), free_port());
    let manager_url = format!("http://127.0.0.1:{mport}");
    // A config file without tokens: they come from files named in the
    // environment, as Kubernetes mounts Secrets. Trailing newlines go.
    let config = write(
        &dir.path().join("manager.toml"),
        &format!(
            "listen = \"127.0.0.1:{mport}\"\ncatalog_path = \"{}\"\n",
            dir.path().join("catalog.json").display()
        ),
    );
    let admin_file = write(&dir.path().join("admin"), &format!("{ADMIN_TOKEN}\n"));
    let router_file = write(&dir.path().join("router"), &format!("{ROUTER_TOKEN}\n"));
    let wrong_file = write(&dir.path().join("wrong"), "wrong-token-0000000000\n");

    // Both a value and a file: refused, naming both, showing neither.
    let both = run(
        &["manager"],
        &[
            ("SHARDLINE_CONFIG", &config),
            ("SHARDLINE_ADMIN_TOKEN_FILE", &admin_file),
            ("SHARDLINE_ROUTER_TOKEN", ROUTER_TOKEN),
            ("SHARDLINE_ROUTER_TOKEN_FILE", &router_file),
        ],
    )
    .await;
    let err = text(&both.stderr);
    assert!(!both.status.success(), "{err}");
    assert!(err.contains("$SHARDLINE_ROUTER_TOKEN)"), "{err}");
    assert!(err.contains("$SHARDLINE_ROUTER_TOKEN_FILE)"), "{err}");
    assert!(!err.contains(ROUTER_TOKEN), "{err}");

    let _manager = serve(
        &["manager"],
        &[
            ("SHARDLINE_CONFIG", &config),
            ("SHARDLINE_ADMIN_TOKEN_FILE", &admin_file),
            ("SHARDLINE_ROUTER_TOKEN_FILE", &router_file),
        ],
        &dir.path().join("manager.log"),
    );
    let admin = ManagerClient::new(&manager_url, Some(ADMIN_TOKEN.into())).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || async {
            admin.status().await.is_ok()
        })
        .await,
        "the manager took its admin token from the file: {}",
        std::fs::read_to_string(dir.path().join("manager.log")).unwrap_or_default()
    );

    // A router with every setting from the environment.
    let _router = serve(
        &["router"],
        &[
            ("SHARDLINE_MANAGER_URL", &manager_url),
            ("SHARDLINE_ROUTER_TOKEN_FILE", &router_file),
            ("SHARDLINE_LISTEN", &format!("127.0.0.1:{rport}")),
            ("SHARDLINE_ID", "router-from-env"),
        ],
        &dir.path().join("router.log"),
    );
    let registered = eventually(Duration::from_secs(30), || async {
        admin.status().await.is_ok_and(|s| {
            s.routers
                .iter()
                .any(|r| r.id == "router-from-env" && r.address.ends_with(&format!(":{rport}")))
        })
    })
    .await;
    assert!(
        registered,
        "the router registered with its token file, id and address from the environment: {}",
        std::fs::read_to_string(dir.path().join("router.log")).unwrap_or_default()
    );

    // A verb: URL from the environment, token from a file, switch
    // from the environment (`1` reads as true).
    let verb_env = [
        ("SHARDLINE_MANAGER_URL", manager_url.as_str()),
        ("SHARDLINE_ADMIN_TOKEN_FILE", admin_file.as_str()),
        ("SHARDLINE_JSON", "1"),
    ];
    let out = run(&["status"], &verb_env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout).expect("SHARDLINE_JSON=1 prints JSON");
    assert!(st["routers"].as_array().is_some_and(|r| !r.is_empty()));
    // Control: the same with SHARDLINE_JSON=0 prints the table.
    let out = run(
        &["status"],
        &[verb_env[0], verb_env[1], ("SHARDLINE_JSON", "0")],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serde_json::from_slice::<Value>(&out.stdout).is_err());
    assert!(text(&out.stdout).starts_with("catalog version"));

    // A wrong token: which token, from where, and how to give another.
    let out = run(
        &["status"],
        &[
            ("SHARDLINE_MANAGER_URL", &manager_url),
            ("SHARDLINE_ADMIN_TOKEN", "wrong-token-0000000000"),
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "the manager at {manager_url} refused the admin token from $SHARDLINE_ADMIN_TOKEN"
        )),
        "{err}"
    );
    assert!(err.contains("--admin-token-file"), "{err}");
    assert!(
        !err.contains("wrong-token"),
        "the token is never shown: {err}"
    );
    let out = run(
        &[
            "status",
            "--manager",
            &manager_url,
            "--admin-token-file",
            &wrong_file,
        ],
        &[],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "refused the admin token from the file {wrong_file}"
        )),
        "{err}"
    );
    // The same token as a flag names the flag.
    let out = run(
        &[
            "status",
            "--manager",
            &manager_url,
            "--admin-token",
            "wrong-token-0000000000",
        ],
        &[],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains("refused the admin token from --admin-token:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_the_url_and_what_to_do() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");

    let out = run(&["status", "--manager", &url, "--admin-token", "t"], &[]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with(&format!(
            "error: cannot connect to the manager at {url} (URL from --manager): "
        )),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("client error (Connect)"), "{err}");
    assert!(err.contains("`shardline dev`"), "{err}");
    assert!(err.contains("--manager or $SHARDLINE_MANAGER_URL"), "{err}");

    // From the environment, the variable is named; a verb's own context
    // stays in front.
    let out = run(
        &["tenant", "delete", "acme"],
        &[
            ("SHARDLINE_MANAGER_URL", &url),
            ("SHARDLINE_ADMIN_TOKEN", "t"),
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to the manager at {url} (URL from $SHARDLINE_MANAGER_URL)"
        )),
        "{err}"
    );

    // The router, for `sql`.
    let out = run(
        &[
            "sql",
            "--key",
            "k",
            "SELECT 1",
            "--router",
            &url,
            "--app-token",
            "t",
        ],
        &[],
    )
    .await;
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to the router at {url} (URL from --router)"
        )),
        "{err}"
    );
    assert!(err.contains("--router or $SHARDLINE_ROUTER_URL"), "{err}");

    // Nothing given and no dev.json: where each could come from.
    let out = run(&["status"], &[]).await;
    let err = text(&out.stderr);
    assert!(
        err.contains("no manager URL: pass --manager or set $SHARDLINE_MANAGER_URL"),
        "{err}"
    );
    assert!(
        err.contains("/nonexistent/shardline-test/dev.json"),
        "{err}"
    );
}

#[tokio::test]
async fn bash_completion_loads_and_completes_subcommands() {
    let out = run(&["completions", "bash"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("shardline.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let syntax = tokio::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .await
        .expect("run bash");
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));

    // What bash offers after `shardline <words...>` (the last one being
    // completed), as programmable completion would call the function.
    let complete = |words: &'static str| {
        let script = script.clone();
        async move {
            let body = format!(
                "source '{}'\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
                 COMP_LINE='{words}'\nCOMP_POINT=${{#COMP_LINE}}\n\
                 _shardline shardline \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
                script.display()
            );
            let out = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(body)
                .output()
                .await
                .expect("run bash");
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(complete("shardline ten").await, ["tenant"]);
    assert_eq!(complete("shardline tenant cr").await, ["create"]);
    let flags = complete("shardline router --router-tok").await;
    assert!(flags.contains(&"--router-token".to_string()), "{flags:?}");
    assert!(
        flags.contains(&"--router-token-file".to_string()),
        "{flags:?}"
    );
    // Control: a word no subcommand starts with completes to nothing.
    assert!(complete("shardline zzz").await.is_empty());

    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell], &[]).await;
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("reshard"), "{shell}");
    }
    let out = run(&["completions", "tcsh"], &[]).await;
    assert!(!out.status.success());
}

/// `shardline ARGS` on a pseudo-terminal (util-linux `script`): what it
/// drew there.
async fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = tokio::process::Command::new("script");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHARDLINE_") {
            script.env_remove(key);
        }
    }
    let out = script
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env("SHARDLINE_DATA_DIR", "/nonexistent/shardline-test")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run script (util-linux)");
    (out.status.success(), text(&out.stdout))
}

/// A router that cannot reach its manager: it logs at once (its address,
/// then warnings) and runs until `timeout` stops it.
const LOGGING_ROUTER: &str = "timeout 2 {BIN} router --router-token x \
     --manager-url http://127.0.0.1:1 --listen 127.0.0.1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_coloured_only_on_a_terminal() {
    let line = LOGGING_ROUTER.replace("{BIN}", BIN);
    let clean = |cmd: &mut tokio::process::Command| {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHARDLINE_") {
                cmd.env_remove(key);
            }
        }
    };
    // Into a file or a pipe (a collector, `kubectl logs`): plain lines.
    let mut piped = tokio::process::Command::new("sh");
    clean(&mut piped);
    let out = piped
        .args(["-c", &line])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let log = text(&out.stderr);
    assert!(log.contains("router listening"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape sequences in a piped log: {log:?}"
    );

    // Control: on a terminal the same lines are coloured, so the check
    // above can tell.
    let mut script = tokio::process::Command::new("script");
    clean(&mut script);
    let out = script
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run script (util-linux)");
    let screen = text(&out.stdout);
    assert!(screen.contains("router listening"), "{screen}");
    assert!(
        screen.contains('\x1b'),
        "no colours on a terminal: {screen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_drawn_on_a_terminal_and_never_into_a_pipe() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let env = [
        ("SHARDLINE_MANAGER_URL", stack.manager_url.as_str()),
        ("SHARDLINE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("slow.sql");
    // Long enough for a spinner to be drawn however fast the machine.
    std::fs::write(&sql, "SELECT pg_sleep(0.3)").unwrap();
    let sql = sql.to_str().unwrap();

    // Piped: exactly the verbs' own lines, and nothing on stderr.
    let out = run(&["tenant", "create", "piped"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("created tenant piped\n"));
    assert_eq!(text(&out.stderr), "");
    let out = run(&["schema", "apply", "001_slow", sql], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("migration 001_slow"));
    assert_eq!(text(&out.stderr), "");
    let out = run(&["tenant", "delete", "piped"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "deleted tenant piped\n");
    assert_eq!(text(&out.stderr), "");

    // On a terminal the spinner says what is under way.
    let (ok, screen) = on_terminal(&["tenant", "create", "tty"], &env).await;
    assert!(ok, "{screen}");
    assert!(screen.contains("creating tenant tty"), "{screen}");
    assert!(screen.contains("created tenant tty"), "{screen}");
    let (ok, screen) = on_terminal(&["schema", "apply", "002_slow", sql], &env).await;
    assert!(ok, "{screen}");
    assert!(
        screen.contains("applying migration 002_slow to every shard of keyspace default"),
        "{screen}"
    );
    let (ok, screen) = on_terminal(&["tenant", "delete", "tty"], &env).await;
    assert!(ok, "{screen}");
    assert!(screen.contains("deleting tenant tty"), "{screen}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_dsns_come_from_files() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        ..Default::default()
    })
    .await;
    let pg = shardline_testkit::PgCluster::start()
        .await
        .expect("start PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let dsn_file = write(&dir.path().join("s-file"), &format!("{}\n", pg.dsn()));
    let env = [
        ("SHARDLINE_MANAGER_URL", stack.manager_url.as_str()),
        ("SHARDLINE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    // Both the DSN and its file (each good alone): refused before
    // anything is sent.
    let out = run(
        &[
            "shard",
            "register",
            "s-file",
            "--primary",
            &pg.dsn(),
            "--primary-file",
            &dsn_file,
        ],
        &env,
    )
    .await;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--primary") && err.contains("--primary-file"),
        "{err}"
    );
    assert!(
        stack.admin.get_shard("s-file").await.is_err(),
        "registered despite the refusal"
    );
    let out = run(
        &["shard", "register", "s-file", "--primary-file", &dsn_file],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shard = stack.admin.get_shard("s-file").await.expect("registered");
    let port = format!("port={}", pg.port());
    assert!(
        shard.instances.iter().any(|i| i.dsn.contains(&port)),
        "{shard:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_draws_a_bar_on_a_terminal_and_plain_lines_into_a_pipe() {
    let stack = Stack::start(StackOptions {
        shards: 1,
        spare: 1,
        ..Default::default()
    })
    .await;
    stack
        .migrate(
            "001_items",
            "CREATE TABLE items (id text PRIMARY KEY, n int NOT NULL)",
        )
        .await;
    stack
        .admin
        .set_table(
            "default",
            "items",
            &shardline_api::manager::TableSpec {
                shard_key: "id".into(),
            },
        )
        .await
        .unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        stack
            .router
            .execute(&shardline_api::router::ExecuteRequest {
                keyspace: None,
                shard_key: shardline_api::router::ShardKeyValue::Text(key.clone()),
                sql: "INSERT INTO items VALUES ($1, 1)".into(),
                params: vec![Value::String(key)],
                consistency: Default::default(),
            })
            .await
            .expect("insert");
    }
    let env = [
        ("SHARDLINE_MANAGER_URL", stack.manager_url.as_str()),
        ("SHARDLINE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];

    // Piped: the job and its outcome on stdout, plain progress lines
    // (no carriage returns, no escape sequences) on stderr.
    let out = run(
        &["reshard", "move", "--shard", "s0", "--to", "spare0"],
        &env,
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(" done: 20 rows copied"), "{stdout}");
    assert!(stderr.lines().count() >= 1, "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );

    // On a terminal: the bar, with the rows it copied.
    let (ok, screen) = on_terminal(
        &["reshard", "move", "--shard", "spare0", "--to", "s0"],
        &env,
    )
    .await;
    assert!(ok, "{screen}");
    assert!(screen.contains("20/20 rows"), "{screen}");
    assert!(screen.contains(" done: 20 rows copied"), "{screen}");
    stack.stop().await;
}

/// The number of threads named `name` in process `pid` (`comm` is cut
/// to 15 bytes: tokio's workers are `tokio-rt-worker`).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_follow_the_flag_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    // A manager that is not there: the router runs (and retries) anyway.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let router = |flags: &[&str], env: &[(&str, &str)], log: &str| {
        let mut args = vec![
            "router",
            "--listen",
            "127.0.0.1:0",
            "--manager-url",
            &closed,
            "--router-token",
            "t",
        ];
        args.extend_from_slice(flags);
        serve(&args, env, &dir.path().join(log))
    };
    let workers = |p: &Proc| {
        let pid = p.0.id();
        // The runtime starts its workers before anything else runs; wait
        // for them to be there, not for a count.
        let mut n = 0;
        for _ in 0..100 {
            n = threads_named(pid, "tokio-rt-worker");
            if n > 0 {
                std::thread::sleep(Duration::from_millis(200));
                return threads_named(pid, "tokio-rt-worker");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let one = router(&["--worker-threads", "1"], &[], "one.log");
    assert_eq!(workers(&one), 1);
    let three = router(&[], &[("SHARDLINE_WORKER_THREADS", "3")], "three.log");
    assert_eq!(workers(&three), 3);
    // Control: without either, one per CPU (so the two above changed
    // something, unless this machine has 1 or 3 of them).
    let default = router(&[], &[], "default.log");
    assert_eq!(workers(&default), cpus);

    // Lanes: threads of their own, `lane-N`, started when the router
    // serves (after the workers), by flag or environment.
    let lanes = |p: &Proc, want: usize| {
        let pid = p.0.id();
        let count = || {
            (0..8)
                .map(|i| threads_named(pid, &format!("lane-{i}")))
                .sum::<usize>()
        };
        for _ in 0..100 {
            if count() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        count()
    };
    let two = router(&["--lanes", "2"], &[], "lanes.log");
    assert_eq!(lanes(&two, 2), 2);
    let lane = router(&[], &[("SHARDLINE_LANES", "1")], "lane.log");
    assert_eq!(lanes(&lane, 1), 1);
    // Control: none unless asked for (the routers above did start them).
    assert_eq!(lanes(&default, 1), 0);

    let out = run(&["router", "--lanes", "1025"], &[]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid value '1025' for '--lanes <N>'"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["router", "--worker-threads", "0"], &[]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid value '0' for '--worker-threads <N>'"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_socket_follows_the_flag_and_is_open_to_local_users() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("run");
    std::fs::create_dir(&sockets).unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let base = [
        "router",
        "--listen",
        "127.0.0.1:0",
        "--manager-url",
        closed.as_str(),
        "--router-token",
        "t",
    ];
    let socket_dir = sockets.to_str().unwrap();
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }

    // Without --pg-listen there is no port to name the socket after.
    // (Bounded: a router that took the flag would run, retrying the
    // manager, until killed.)
    let args = with(&base, &["--pg-unix-dir", socket_dir]);
    let out = tokio::time::timeout(Duration::from_secs(30), run(&args, &[]))
        .await
        .expect("a socket without --pg-listen is refused at start");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pg_unix_dir needs pg_listen"),
        "{}",
        text(&out.stderr)
    );

    let _router = serve(
        &with(
            &base,
            &["--pg-listen", "127.0.0.1:0", "--pg-unix-dir", socket_dir],
        ),
        &[],
        &dir.path().join("router.log"),
    );
    let find = || {
        std::fs::read_dir(&sockets)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL."))
            .map(|e| e.path())
    };
    let mut socket = None;
    for _ in 0..200 {
        socket = find();
        if socket.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let socket = socket.unwrap_or_else(|| {
        panic!(
            "no socket in {}; log:\n{}",
            sockets.display(),
            std::fs::read_to_string(dir.path().join("router.log")).unwrap_or_default()
        )
    });
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    // Any local user may connect (the login decides), as to PostgreSQL's.
    assert_eq!(meta.permissions().mode() & 0o777, 0o777);
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
}
