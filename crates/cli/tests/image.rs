//! The image recipe, `deploy/Dockerfile`, checked where it can be here
//! (no base images can be pulled, so it is not built): the built
//! `shardline` binary links only the libraries the recipe declares its
//! final stage carries; the recipe builds with the toolchain of
//! `rust-toolchain.toml`; its final stage has no shell, runs as the
//! non-root user the Kubernetes manifests run it as, and leaves health to
//! the probes. Each check is also shown failing on a changed input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dockerfile() -> String {
    std::fs::read_to_string(workspace().join("deploy/Dockerfile")).expect("deploy/Dockerfile")
}

/// The libraries the recipe says its final stage provides.
fn declared(recipe: &str) -> BTreeSet<String> {
    recipe
        .lines()
        .find_map(|l| l.strip_prefix("# runtime-libraries:"))
        .expect("a `# runtime-libraries:` line")
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The shared libraries `binary` loads, by file name, from `ldd`
/// (the kernel's vDSO left out: it is no file).
fn linked(binary: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !name.starts_with("linux-vdso"))
        .map(|name| name.rsplit('/').next().unwrap_or(name).to_string())
        .collect()
}

/// What the binary needs that the image lacks.
fn missing(needed: &BTreeSet<String>, provided: &BTreeSet<String>) -> Vec<String> {
    needed.difference(provided).cloned().collect()
}

/// The instructions of the recipe's last stage, upper-cased keywords.
fn final_stage(recipe: &str) -> Vec<String> {
    let lines: Vec<&str> = recipe
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    lines[from..].iter().map(|l| l.to_string()).collect()
}

#[test]
fn the_binary_links_only_what_the_image_carries() {
    let needed = linked(Path::new(env!("CARGO_BIN_EXE_shardline")));
    assert!(needed.contains("libc.so.6"), "ldd saw no libc: {needed:?}");
    let provided = declared(&dockerfile());
    assert_eq!(
        missing(&needed, &provided),
        Vec::<String>::new(),
        "the binary links {needed:?}; deploy/Dockerfile declares {provided:?}"
    );
    // Control: an image declared without libgcc_s (what a static-only
    // base would give) is found wanting.
    let mut less = provided.clone();
    less.remove("libgcc_s.so.1");
    assert_eq!(missing(&needed, &less), ["libgcc_s.so.1"]);
    // Nor does OpenSSL sneak in (TLS is rustls).
    assert!(
        !needed
            .iter()
            .any(|l| l.starts_with("libssl") || l.starts_with("libcrypto")),
        "{needed:?}"
    );
}

#[test]
fn the_recipe_builds_with_the_pinned_toolchain_in_two_stages() {
    let recipe = dockerfile();
    let toolchain = std::fs::read_to_string(workspace().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .expect("a channel")
        .trim_matches('"')
        .to_string();
    // One check, run on the recipe and on a stale copy of it.
    let pinned = |r: &str| {
        r.lines()
            .find(|l| l.starts_with("FROM ") && l.contains(" AS build"))
            .is_some_and(|from| from.contains(&format!("rust:{channel}-")))
    };
    assert!(
        pinned(&recipe),
        "the build stage is not rust-toolchain.toml's {channel}"
    );
    assert_eq!(recipe.matches("\nFROM ").count(), 2, "two stages");
    assert!(recipe.contains("--locked"), "builds from Cargo.lock");
    // Control: a toolchain bump without the recipe is caught.
    let stale = recipe.replace(&format!("rust:{channel}-"), "rust:1.80.0-");
    assert_ne!(stale, recipe);
    assert!(!pinned(&stale));
}

#[test]
fn the_final_stage_has_no_shell_runs_as_non_root_and_no_healthcheck() {
    let recipe = dockerfile();
    let stage = final_stage(&recipe);
    let check = |stage: &[String]| -> Result<(), String> {
        let from = &stage[0];
        // distroless: no shell, no package manager; `:nonroot` too.
        if !from.contains("distroless/cc-debian12") {
            return Err(format!("final base {from} is not distroless cc"));
        }
        if stage.iter().any(|l| l.starts_with("RUN ")) {
            return Err("a RUN in the final stage needs a shell".into());
        }
        // The user the manifests run as (runAsUser/runAsGroup 65532).
        if !stage.iter().any(|l| l == "USER 65532:65532") {
            return Err("no USER 65532:65532".into());
        }
        if stage.iter().any(|l| l.starts_with("HEALTHCHECK")) {
            return Err("HEALTHCHECK: Kubernetes probes instead".into());
        }
        let entry = stage
            .iter()
            .find(|l| l.starts_with("ENTRYPOINT "))
            .ok_or("no ENTRYPOINT")?;
        if !entry.contains("[\"/usr/local/bin/shardline\"]") {
            return Err(format!("{entry} is not the exec form of the binary"));
        }
        Ok(())
    };
    assert_eq!(check(&stage), Ok(()));
    let manifests =
        std::fs::read_to_string(workspace().join("deploy/kubernetes/shardline.yaml")).unwrap();
    assert!(manifests.contains("runAsUser: 65532") && manifests.contains("runAsGroup: 65532"));
    // Controls: each rule fails on a recipe that breaks it.
    let broken = |from: &str, to: &str| {
        let s: Vec<String> = stage.iter().map(|l| l.replace(from, to)).collect();
        check(&s)
    };
    assert!(broken("USER 65532:65532", "USER root").is_err());
    assert!(broken("distroless/cc-debian12:nonroot", "debian:12").is_err());
    let mut with_health = stage.clone();
    with_health.push("HEALTHCHECK CMD curl -f http://localhost:8080/healthz".into());
    assert!(check(&with_health).is_err());
    let mut with_run = stage.clone();
    with_run.insert(1, "RUN chmod +x /usr/local/bin/shardline".into());
    assert!(check(&with_run).is_err());
}
