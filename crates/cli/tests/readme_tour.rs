//! The README's tour, run as written: every `$ ` command of its
//! ```` ```console ```` blocks (with `\` continuations), in order, in one
//! bash session on a fresh machine (see `fresh`: as root in namespaces of
//! its own, so the README's default ports and data dir are the tour's
//! alone). Each command's output (stdout and stderr) must be what the
//! README shows after normalising what varies from run to run: tokens,
//! PostgreSQL's ports, timestamps, durations in ms and the temp paths
//! standing in for the README's. A README line `...` stands for any
//! number of lines.
//!
//! A `shardline dev` command runs in the background, as in its own
//! terminal: its output is what it printed up to "Press Ctrl-C to stop.";
//! the next `shardline dev` command first stops it with SIGINT (Ctrl-C),
//! as the README tells the reader to, and so does the end of the tour.
//! Each must exit 0.

mod fresh;

use std::time::Duration;

use fresh::{Fresh, DEV_FUNCTIONS};

const README: &str = include_str!("../../../README.md");

/// The data dir the README's replica part uses; the test gives it a new
/// one in its place.
const README_REPLICA_DIR: &str = "/tmp/shardline-replicas";

/// The README's data dir as root.
const README_DATA_DIR: &str = "/var/lib/shardline/dev";

/// One `$ ` command of the README and the output it shows.
#[derive(Debug)]
struct Step {
    /// 1-based line of the `$ ` in README.md.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The commands of the README's console blocks, in order.
fn steps(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut continuing = false;
    for (i, line) in readme.lines().enumerate() {
        if !in_console {
            in_console = line.trim_end() == "```console";
            continue;
        }
        if line.trim_end() == "```" {
            in_console = false;
            continue;
        }
        if continuing {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(line);
            continuing = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: i + 1,
                command: cmd.to_string(),
                expected: Vec::new(),
            });
            continuing = cmd.ends_with('\\');
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.to_string());
        }
    }
    steps
}

/// Whether the command starts `shardline dev` (by any path).
fn is_dev(command: &str) -> bool {
    let mut words = command.split_whitespace();
    words.next().is_some_and(|w| w.ends_with("shardline")) && words.next() == Some("dev")
}

/// The bash script: the commands between markers, each `dev` in the
/// background.
fn script(steps: &[Step]) -> String {
    let mut s = String::from("exec 2>&1\n");
    s.push_str(DEV_FUNCTIONS);
    for (i, step) in steps.iter().enumerate() {
        s.push_str(&format!("printf '\\n@@@ step {i}\\n'\n"));
        if is_dev(&step.command) {
            s.push_str("__stop_dev\n__devs=$((__devs + 1))\n");
            s.push_str(&format!("{} > dev$__devs.out 2>&1 &\n", step.command));
            s.push_str("__dev=$!\n");
            s.push_str("__wait_banner dev$__devs.out || echo '@@@ no-banner'\n");
            s.push_str("sed '/^Press Ctrl-C to stop\\./q' dev$__devs.out\n");
        } else {
            s.push_str(&step.command);
            s.push('\n');
        }
    }
    s.push_str("printf '\\n@@@ end\\n'\n__stop_dev\n");
    s.push_str("for f in dev*.out; do echo \"@@@ log $f\"; cat \"$f\"; done\n");
    s
}

/// A rule of [`replace_with`]: at the start of `rest`, how many bytes to
/// replace and with what, if it matches there.
type Rule = fn(rest: &str) -> Option<(usize, String)>;

/// Replaces, at each position, the first `rule` that matches there.
fn replace_with(text: &str, rules: &[Rule]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match rules.iter().find_map(|r| r(rest)) {
            Some((len, with)) => {
                out.push_str(&with);
                rest = &rest[len..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

fn digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

/// A token: `adm_`, `rtr_` or `sl_` and 16 or more hex digits.
fn token(s: &str) -> Option<(usize, String)> {
    let prefix = ["adm_", "rtr_", "sl_"]
        .into_iter()
        .find(|p| s.starts_with(p))?;
    let hex = s[prefix.len()..]
        .bytes()
        .take_while(u8::is_ascii_hexdigit)
        .count();
    (hex >= 16).then(|| (prefix.len() + hex, format!("{prefix}<token>")))
}

/// `2026-11-29T20:22:03.316Z` and the like.
fn timestamp(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if b.len() < shape.len() {
        return None;
    }
    let fits = shape.iter().zip(b).all(|(want, got)| match want {
        b'd' => got.is_ascii_digit(),
        other => other == got,
    });
    if !fits {
        return None;
    }
    let mut len = shape.len();
    if b.get(len) == Some(&b'.') {
        len += 1 + digits(&s[len + 1..]);
    }
    (b.get(len) == Some(&b'Z')).then(|| (len + 1, "<time>".into()))
}

/// A PostgreSQL port: after `127.0.0.1:` (but the router's and manager's
/// default 8080 and 8081) or `port=`.
fn port(s: &str) -> Option<(usize, String)> {
    for prefix in ["127.0.0.1:", "port="] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let n = digits(rest);
            let fixed = prefix == "127.0.0.1:" && matches!(&rest[..n], "8080" | "8081");
            if n > 0 && !fixed {
                return Some((prefix.len() + n, format!("{prefix}<port>")));
            }
        }
    }
    None
}

/// A tenant's PostgreSQL name: `t_` and 24 hex digits, random.
fn pg_name(s: &str) -> Option<(usize, String)> {
    let hex = s
        .strip_prefix("t_")?
        .bytes()
        .take_while(u8::is_ascii_hexdigit)
        .count();
    (hex == 24).then(|| (2 + hex, "t_<name>".into()))
}

/// A duration in milliseconds: `351 ms`.
fn millis(s: &str) -> Option<(usize, String)> {
    let n = digits(s);
    (n > 0 && s[n..].starts_with(" ms")).then(|| (n + 3, "<n> ms".into()))
}

/// Drops terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let code = after
            .strip_prefix('[')
            .map(|a| {
                1 + a
                    .find(|c: char| c.is_ascii_alphabetic())
                    .map_or(a.len(), |e| e + 1)
            })
            .unwrap_or(0);
        rest = &after[code..];
    }
    out.push_str(rest);
    out
}

/// The lines as compared: what varies replaced, trailing blanks dropped.
fn normalise(text: &str) -> Vec<String> {
    let text = strip_ansi(&text.replace('\r', ""));
    let text = replace_with(&text, &[token, timestamp, port, millis, pg_name]);
    let mut lines: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    lines
}

/// Whether `actual` is `expected`, a `...` line standing for any lines.
fn fits(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|k| fits(rest, &actual[k..])),
        Some((e, rest)) => actual.first() == Some(e) && fits(rest, &actual[1..]),
    }
}

/// The output of each step, and the `@@@` notes, from the script's output.
fn split_output(output: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let mut outputs = vec![String::new(); n];
    let mut notes = Vec::new();
    let mut current: Option<usize> = None;
    for line in output.lines() {
        if let Some(note) = line.strip_prefix("@@@ ") {
            if let Some(i) = note.strip_prefix("step ") {
                current = i.parse().ok();
            } else if note == "end" {
                current = None;
            }
            notes.push(note.to_string());
            continue;
        }
        if let Some(out) = current.and_then(|i| outputs.get_mut(i)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    (outputs, notes)
}

#[test]
fn the_tour_prints_what_the_readme_shows() {
    let fresh = Fresh::new();
    let replica_dir = fresh.scratch("replicas");
    let data_dir = fresh.default_data_dir();
    // README path -> this machine's, for the commands; back for outputs.
    let paths = [
        (
            README_REPLICA_DIR.to_string(),
            replica_dir.display().to_string(),
        ),
        (README_DATA_DIR.to_string(), data_dir.display().to_string()),
    ];
    let mut steps = steps(README);
    assert!(steps.len() >= 25, "found only {} commands", steps.len());
    assert_eq!(steps.iter().filter(|s| is_dev(&s.command)).count(), 2);
    for step in &mut steps {
        for (readme, here) in &paths {
            step.command = step.command.replace(readme, here);
        }
    }
    let ran = fresh.run(&script(&steps), Duration::from_secs(400));
    let mut output = ran.output.clone();
    for (readme, here) in &paths {
        output = output.replace(here, readme);
    }
    let (outputs, notes) = split_output(&output, steps.len());

    let mut wrong = Vec::new();
    for (step, actual) in steps.iter().zip(&outputs) {
        let expected = normalise(&step.expected.join("\n"));
        let actual = normalise(actual);
        if !fits(&expected, &actual) {
            wrong.push(format!(
                "README.md:{} $ {}\n--- README shows (normalised)\n{}\n--- the run printed (normalised)\n{}\n",
                step.line,
                step.command,
                expected.join("\n"),
                actual.join("\n"),
            ));
        }
    }
    println!("the whole run:\n{}", ran.output);
    if ran.code.is_none() {
        wrong.push("the tour did not end within its limit".into());
    }
    if notes.iter().any(|n| n == "no-banner") {
        wrong.push("a shardline dev did not come up (see the run above)".into());
    }
    let exits: Vec<&String> = notes.iter().filter(|n| n.starts_with("dev-exit")).collect();
    if exits != ["dev-exit 0", "dev-exit 0"] {
        wrong.push(format!(
            "each shardline dev must stop cleanly on Ctrl-C: {exits:?}"
        ));
    }
    assert!(
        wrong.is_empty(),
        "{} problems in {} commands:\n\n{}",
        wrong.len(),
        steps.len(),
        wrong.join("\n")
    );
}

/// The comparison itself: what varies is normalised away, nothing else.
#[test]
fn comparison_ignores_only_what_varies() {
    let shown = normalise(
        "created 2026-11-29T20:22:03.316Z\n  shard-0: postgresql on 127.0.0.1:45995\n  \
         router:      http://127.0.0.1:8080\n  app token:   sl_843c85ec4ef7809e6581459899fdb885 (tenant default)\n\
         write pause     351 ms\n",
    );
    let printed = normalise(
        "created 2027-01-02T03:04:05.6Z\r\n  shard-0: postgresql on 127.0.0.1:33001\n  \
         router:      http://127.0.0.1:8080\n  app token:   \x1b[1msl_0123456789abcdef0123456789abcdef\x1b[0m (tenant default)\n\
         write pause     12 ms\n\n",
    );
    assert!(fits(&shown, &printed), "{shown:?}\n{printed:?}");
    // The router's port is not normalised, a shard name is not, a row is not.
    for (a, b) in [
        ("http://127.0.0.1:8080", "http://127.0.0.1:9090"),
        ("(1 row, shard shard-0)", "(1 row, shard shard-1)"),
        ("      5 200", "      6 200"),
    ] {
        assert!(!fits(&normalise(a), &normalise(b)), "{a} vs {b}");
    }
    // `...` stands for any lines, but the lines around it still count.
    let with_gap = normalise("HTTP/1.1 429 Too Many Requests\n...\n{\"error\":1}");
    assert!(fits(
        &with_gap,
        &normalise("HTTP/1.1 429 Too Many Requests\n{\"error\":1}")
    ));
    assert!(fits(
        &with_gap,
        &normalise("HTTP/1.1 429 Too Many Requests\na: 1\nb: 2\n{\"error\":1}")
    ));
    assert!(!fits(
        &with_gap,
        &normalise("HTTP/1.1 200 OK\na: 1\n{\"error\":1}")
    ));
    // Commands and continuations come out of console blocks only.
    let parsed = steps("```sh\n$ not this\n```\n```console\n$ a \\\n  b\nout\n$ c\n```\n");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].command, "a \\\n  b");
    assert_eq!(parsed[0].expected, ["out"]);
    assert_eq!((parsed[1].line, parsed[1].command.as_str()), (8, "c"));
}
