//! The arrows between the rooms of the code run one way: no module of
//! pgwarden-core or pgwarden-daemon reaches, through `crate::` paths in its
//! non-test code, back to one that reaches it; the daemon's lib.rs is
//! imported by nobody; `ops` never uses `http`; `effects` never uses `ops`
//! or `http`. Read from the source files, so a new import that closes a
//! circle fails here, by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's name as `crate::` paths spell it (`ops::steps::failover`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// module -> the modules its non-test code names with `crate::`, and
/// whether it names an item of the crate root itself.
fn arrows(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut out = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        // Test code may reach anywhere: only what ships counts; comments
        // (doc links) are no imports.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut to = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // The longest module that prefixes the path.
            let mut best = String::new();
            let mut prefix = String::new();
            for seg in path.split("::").filter(|s| !s.is_empty()) {
                if !prefix.is_empty() {
                    prefix.push_str("::");
                }
                prefix.push_str(seg);
                if modules.contains(&prefix) {
                    best = prefix.clone();
                }
            }
            to.insert(best); // "" is the crate root
        }
        // `super::` from a child names its parent.
        if code.contains("super::") {
            if let Some((parent, _)) = me.rsplit_once("::") {
                to.insert(parent.to_owned());
            } else if !me.is_empty() {
                to.insert(String::new());
            }
        }
        to.remove(&me);
        out.insert(me, to);
    }
    out
}

/// Whether `to` reaches `from` through the arrows, ignoring a module's
/// arrows to its own descendants (a parent declares and re-exports them).
fn path_back(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut stack = vec![vec![to.to_owned()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let at = path.last().unwrap().clone();
        if at == from {
            return Some(path);
        }
        if !seen.insert(at.clone()) {
            continue;
        }
        for next in graph.get(&at).into_iter().flatten() {
            if is_descendant(next, &at) {
                continue;
            }
            let mut p = path.clone();
            p.push(next.clone());
            stack.push(p);
        }
    }
    None
}

fn is_descendant(child: &str, parent: &str) -> bool {
    parent.is_empty() || child.starts_with(&format!("{parent}::"))
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates")
        .join(name)
        .join("src")
}

/// The graph between rooms: each module counted as its top-level one
/// (`ops::steps::failover` is `ops`), arrows within a room dropped.
fn rooms(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let room = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph {
        let entry = out.entry(room(from)).or_default();
        for to in tos {
            if room(to) != room(from) {
                entry.insert(room(to));
            }
        }
    }
    out
}

fn assert_no_circle(name: &str) {
    let graph = rooms(&arrows(&crate_src(name)));
    let mut circles = Vec::new();
    for (from, tos) in &graph {
        for to in tos.iter().filter(|t| !t.is_empty()) {
            if let Some(path) = path_back(&graph, from, to) {
                circles.push(format!("{from} -> {}", path.join(" -> ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "{name}: import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_core_has_no_import_circle() {
    assert_no_circle("pgwarden-core");
}

#[test]
fn the_daemon_has_no_import_circle_and_its_rooms_point_one_way() {
    assert_no_circle("pgwarden-daemon");
    let graph = arrows(&crate_src("pgwarden-daemon"));
    let mut wrong = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            let bad = (to.is_empty() && !from.is_empty())
                || (from.starts_with("ops") && to.starts_with("http"))
                || (from.starts_with("effects")
                    && (to.starts_with("ops") || to.starts_with("http")));
            if bad {
                wrong.push(format!(
                    "{from} -> {}",
                    if to.is_empty() { "lib.rs" } else { to }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that run back:\n{}",
        wrong.join("\n")
    );
}

/// The check can fail: a circle drawn by hand is found.
#[test]
fn a_circle_is_found() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(path_back(&g, "a", "b").is_some());
    g.insert("b".to_owned(), BTreeSet::new());
    assert!(path_back(&g, "a", "b").is_none());
}
