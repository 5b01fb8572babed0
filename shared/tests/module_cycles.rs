//! No import cycle between the modules of any crate of the workspace.
//!
//! Every `.rs` file under a crate's `src/` is a module (`lib.rs` and
//! `main.rs` the crate root, `a/mod.rs` and `a.rs` the module `a`). A
//! module depends on another when it names it: `crate::a::b::Item`,
//! `super::Item`, `self::child::Item`, in a `use` or in code. Test modules
//! (from `#[cfg(test)]` on) are left out: they are not the architecture.
//! Each strongly connected set of two or more modules is a cycle, reported
//! with the references that make it.
//!
//! Run it alone: `cargo test -p pantry-shared --test module_cycles`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 7] = ["shared", "server", "client", "admin", "integration", "bench", "fuzz"];

/// A module path within its crate: `[]` is the root, `["dispatch", "gate"]`.
type ModPath = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file is, relative to its crate's `src/`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The file's text without its test module and its comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every path the code names starting at `crate::`, `super::` or `self::`,
/// `use` groups (`crate::a::{b, c::d}`) expanded one level.
fn references(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            from = begin + start.len();
            // A whole word: not `foo_crate::`.
            if begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_') {
                continue;
            }
            let rest = &code[begin..];
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let head: Vec<String> = rest[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if rest[end..].starts_with('{') {
                let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |i| end + i)];
                for item in group.split(',') {
                    let item: Vec<String> = item
                        .trim()
                        .split("::")
                        .map(|s| s.trim().trim_start_matches('{').to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    let mut path = head.clone();
                    path.extend(item);
                    out.push(path);
                }
            } else {
                out.push(head);
            }
        }
    }
    out
}

/// The module a reference lands in: the longest known module prefix.
fn resolve(from: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut base: ModPath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut up = from.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                up.pop();
                rest = &rest[1..];
            }
            return longest(up, rest, modules);
        }
        Some("self") => from.clone(),
        _ => return None,
    };
    base.truncate(base.len());
    longest(base, &path[1..], modules)
}

fn longest(mut base: ModPath, rest: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut found = modules.contains(&base).then(|| base.clone());
    for part in rest {
        if part == "self" {
            break;
        }
        base.push(part.clone());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

/// Tarjan's strongly connected components of two or more modules.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<ModPath, usize>,
        low: BTreeMap<ModPath, usize>,
        stack: Vec<ModPath>,
        on_stack: BTreeSet<ModPath>,
        next: usize,
        out: Vec<Vec<ModPath>>,
    }
    fn visit(s: &mut State, v: &ModPath) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on_stack.insert(v.clone());
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(&w);
                let done = &w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_itself_back() {
    let mut report = String::new();
    for krate in CRATES {
        let src = workspace().join(krate).join(if krate == "fuzz" { "fuzz_targets" } else { "src" });
        if krate == "fuzz" {
            continue; // one file per target: no modules to loop
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(&src, f)).collect();
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for file in &files {
            let from = module_of(&src, file);
            let text = std::fs::read_to_string(file).expect("readable source");
            for path in references(&code(&text)) {
                if let Some(to) = resolve(&from, &path, &modules).filter(|to| *to != from) {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
            edges.entry(from).or_default();
        }
        for component in cycles(&edges) {
            let members: BTreeSet<&ModPath> = component.iter().collect();
            report.push_str(&format!(
                "{krate}: a cycle between {}\n",
                component.iter().map(name).collect::<Vec<_>>().join(", ")
            ));
            for m in &component {
                for to in edges[m].iter().filter(|t| members.contains(t)) {
                    report.push_str(&format!("    {} -> {}\n", name(m), name(to)));
                }
            }
        }
    }
    assert!(report.is_empty(), "module import cycles:\n{report}");
}

#[test]
fn the_checker_sees_a_cycle() {
    let m = |s: &str| -> ModPath { s.split("::").filter(|p| !p.is_empty()).map(str::to_owned).collect() };
    let modules: BTreeSet<ModPath> = [m(""), m("a"), m("a::b"), m("c")].into_iter().collect();
    let refs = references("use crate::a::{b::X, Y};\nfn f() { super::Z; }");
    let resolved: BTreeSet<ModPath> = refs.iter().filter_map(|p| resolve(&m("a::b"), p, &modules)).collect();
    assert_eq!(resolved, [m("a"), m("a::b")].into_iter().collect());
    let mut edges = BTreeMap::new();
    edges.insert(m("a"), [m("c")].into_iter().collect::<BTreeSet<_>>());
    edges.insert(m("c"), [m("a")].into_iter().collect());
    assert_eq!(cycles(&edges).len(), 1);
}
