//! The manager's modules form no cycle: neither its top-level modules
//! nor the submodules of any directory module (a submodule naming an item
//! of its parent's `mod.rs` counts as using the parent, which uses it).
//! Read from the sources: every `crate::` and `super::` path outside the
//! `#[cfg(test)]` part and the comments of each file. Prints the layers
//! it finds; the layering is described in docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, like `["reshard", "copy"]`; the crate root is empty.
type ModPath = Vec<String>;

/// Every module of the crate, by path, with its source.
fn modules(src: &Path) -> BTreeMap<ModPath, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from(src)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the source tree") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            out.insert(parts, text);
        }
    }
    out
}

/// The code of a source: without its tests (test modules end each file
/// here) and without comments (a doc link is no use of a module).
fn code_of(text: &str) -> String {
    let code = text.find("#[cfg(test)]").map_or(text, |i| &text[..i]);
    code.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths that follow `prefix` (`crate::` or `super::`) in `text`, each as
/// its segments up to the first that is not an identifier; a braced group
/// (`super::{a, b::c}`) gives one path per member.
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for member in group[..end].split(',') {
                out.push(segments(member.trim()));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(r) if !r.starts_with('{') => rest = r,
            _ => break,
        }
    }
    out
}

/// The deepest module named by `base` + `segs`.
fn resolve(mods: &BTreeMap<ModPath, String>, base: &[String], segs: &[String]) -> ModPath {
    let mut at: ModPath = base.to_vec();
    for s in segs {
        let mut next = at.clone();
        next.push(s.clone());
        if !mods.contains_key(&next) {
            break;
        }
        at = next;
    }
    at
}

/// Edges between modules: who uses whom.
fn uses(mods: &BTreeMap<ModPath, String>) -> BTreeSet<(ModPath, ModPath)> {
    let mut edges = BTreeSet::new();
    for (path, text) in mods {
        let code = &code_of(text);
        let parent: ModPath = path[..path.len().saturating_sub(1)].to_vec();
        let mut targets = Vec::new();
        for segs in paths_after(code, "crate::") {
            targets.push(resolve(mods, &[], &segs));
        }
        for segs in paths_after(code, "super::") {
            targets.push(resolve(mods, &parent, &segs));
        }
        // A directory module's own children, named bare (`copy::run`).
        for (m, _) in mods.range(path.clone()..) {
            if !m.starts_with(path) {
                break;
            }
            if m.len() == path.len() + 1 {
                let name = &m[path.len()];
                if code.contains(&format!("{name}::")) {
                    targets.push(m.clone());
                }
            }
        }
        for t in targets {
            if t != *path {
                edges.insert((path.clone(), t));
            }
        }
    }
    edges
}

/// Layers of `nodes` under `edges` (a node's layer is one more than the
/// highest it uses), or the nodes left on cycles.
fn layers(
    nodes: &BTreeSet<String>,
    edges: &BTreeSet<(String, String)>,
) -> Result<Vec<Vec<String>>, BTreeSet<String>> {
    let mut left = nodes.clone();
    let mut out = Vec::new();
    while !left.is_empty() {
        let layer: Vec<String> = left
            .iter()
            .filter(|n| {
                !edges
                    .iter()
                    .any(|(a, b)| a == *n && b != *n && left.contains(b))
            })
            .cloned()
            .collect();
        if layer.is_empty() {
            return Err(left);
        }
        for n in &layer {
            left.remove(n);
        }
        out.push(layer);
    }
    Ok(out)
}

/// Checks one level: the children of `parent` and `parent` itself (its
/// own file), each use collapsed onto the child it is in.
fn check_level(
    mods: &BTreeMap<ModPath, String>,
    edges: &BTreeSet<(ModPath, ModPath)>,
    parent: &[String],
) -> Result<Vec<Vec<String>>, String> {
    let name = |m: &ModPath| -> Option<String> {
        if !m.starts_with(parent) {
            return None;
        }
        Some(match m.get(parent.len()) {
            Some(child) => child.clone(),
            None => "(self)".to_string(),
        })
    };
    let nodes: BTreeSet<String> = mods.keys().filter_map(name).collect();
    let mut level = BTreeSet::new();
    for (a, b) in edges {
        if let (Some(x), Some(y)) = (name(a), name(b)) {
            if x != y {
                level.insert((x, y));
            }
        }
    }
    // The crate root wires everything: it is not a layer of its own.
    let (nodes, level) = if parent.is_empty() {
        let nodes = nodes.into_iter().filter(|n| n != "(self)").collect();
        let level = level
            .into_iter()
            .filter(|(a, b)| a != "(self)" && b != "(self)")
            .collect();
        (nodes, level)
    } else {
        (nodes, level)
    };
    layers(&nodes, &level).map_err(|cycle| {
        let on: Vec<String> = level
            .iter()
            .filter(|(a, b)| cycle.contains(a) && cycle.contains(b))
            .map(|(a, b)| format!("{a} -> {b}"))
            .collect();
        format!(
            "modules of {:?} form a cycle among {cycle:?}: {}",
            parent.join("::"),
            on.join(", ")
        )
    })
}

/// The levels to check: the crate root and every directory module.
fn levels(mods: &BTreeMap<ModPath, String>) -> Vec<ModPath> {
    mods.keys()
        .filter(|m| {
            mods.keys()
                .any(|c| c.len() == m.len() + 1 && c.starts_with(m))
        })
        .cloned()
        .collect()
}

fn check(src: &Path) -> Result<(), String> {
    let mods = modules(src);
    let edges = uses(&mods);
    let mut errors = Vec::new();
    for parent in levels(&mods) {
        match check_level(&mods, &edges, &parent) {
            Ok(layers) => {
                let at = if parent.is_empty() {
                    "crate".to_string()
                } else {
                    parent.join("::")
                };
                println!("{at}, from the bottom:");
                for (i, l) in layers.iter().enumerate() {
                    println!("  {i}: {}", l.join(", "));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

#[test]
fn the_manager_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if let Err(e) = check(&src) {
        panic!("{e}");
    }
}

/// The control: a source tree with a cycle (a submodule using an item of
/// its parent, which uses it) is refused, and so is one between two
/// top-level modules.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let src = dir.path();
    let write = |p: &str, text: &str| {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write("a/mod.rs", "pub mod x;\npub fn f() { x::g() }\n");
    write("a/x.rs", "pub fn g() {}\n");
    write("b.rs", "pub fn h() { crate::a::f() }\n");
    check(src).expect("no cycle yet");
    write("a/x.rs", "pub fn g() { super::f() }\n");
    let e = check(src).expect_err("the child uses its parent");
    assert!(e.contains("\"a\""), "{e}");
    write("a/x.rs", "pub fn g() {}\n");
    write("a/mod.rs", "pub mod x;\npub fn f() { crate::b::h() }\n");
    let e = check(src).expect_err("a and b use each other");
    assert!(e.contains("a -> b") && e.contains("b -> a"), "{e}");
}
