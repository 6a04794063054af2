//! The module graph of `builder/src`: no file may import, through any chain, a file that imports
//! it back, and no top-level module (a folder counts as one) either. Read from the sources:
//! every `crate::…`, `super::…` and child-module path outside comments is an edge to the
//! module file it names (a file's use of its own folder's `mod.rs`, which declares it, is not).
//!
//! `cargo test -p airlock --test layers -- --nocapture` prints the layers: each module on the
//! floor above everything it imports, the foundations on floor 0.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`mirror::pypi`, `plan`), one per source file.
type Module = String;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            source_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `mirror/pypi.rs` → `mirror::pypi`, `plan/mod.rs` → `plan`; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        return None;
    }
    Some(parts.join("::"))
}

/// The text without `//` comments (doc links name modules without importing them).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| {
            // A `//` inside a string is rare in this code base and would only hide an edge.
            match l.find("//") {
                Some(i) if !l[..i].contains('"') => &l[..i],
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path expression `a::b::c` (identifiers joined by `::`) in the code, with `use` groups
/// (`a::{b, c::d}`) expanded.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let (segments, end) = read_path(&bytes, i);
        out.extend(segments);
        i = end.max(i + 1);
    }
    out.into_iter().filter(|p| p.len() > 1).collect()
}

/// Reads a path starting at `i`; returns its expansions and where it ends.
fn read_path(b: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut prefix = Vec::new();
    loop {
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        prefix.push(b[start..i].iter().collect::<String>());
        if i + 2 < b.len() && b[i] == ':' && b[i + 1] == ':' {
            i += 2;
            while i < b.len() && b[i].is_whitespace() {
                i += 1;
            }
            if i < b.len() && b[i] == '{' {
                // A group: each member is a path below the prefix.
                let mut all = Vec::new();
                i += 1;
                loop {
                    while i < b.len() && (b[i].is_whitespace() || b[i] == ',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == '}' {
                        return (all, i + 1);
                    }
                    if ident(b[i]) {
                        let (members, end) = read_path(b, i);
                        for m in members {
                            all.push(prefix.iter().cloned().chain(m).collect());
                        }
                        all.push(prefix.clone());
                        i = end;
                    } else {
                        i += 1;
                    }
                }
            }
            if i < b.len() && ident(b[i]) {
                continue;
            }
        }
        return (vec![prefix], i);
    }
}

/// The module file a path names, seen from `from`: the longest known module it starts with.
fn target(
    path: &[String],
    from: &str,
    modules: &BTreeSet<Module>,
    children: &BTreeMap<Module, Vec<String>>,
) -> Option<Module> {
    let here: Vec<&str> = if from.is_empty() { Vec::new() } else { from.split("::").collect() };
    // The module a file's own `mod.rs`-level items live in: `super` of `a::b` is `a`.
    let mut base: Vec<String> = match path[0].as_str() {
        "crate" => Vec::new(),
        "super" => here[..here.len().saturating_sub(1)].iter().map(|s| s.to_string()).collect(),
        "self" => here.iter().map(|s| s.to_string()).collect(),
        first if children.get(from).is_some_and(|c| c.iter().any(|x| x == first)) => {
            let mut b: Vec<String> = here.iter().map(|s| s.to_string()).collect();
            b.push(first.to_string());
            return longest(&b, &path[1..], modules);
        }
        _ => return None,
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    longest(&base, rest, modules)
}

fn longest(base: &[String], rest: &[String], modules: &BTreeSet<Module>) -> Option<Module> {
    let mut best = None;
    let mut cur: Vec<String> = base.to_vec();
    if !cur.is_empty() && modules.contains(&cur.join("::")) {
        best = Some(cur.join("::"));
    }
    for seg in rest {
        cur.push(seg.clone());
        let m = cur.join("::");
        if modules.contains(&m) {
            best = Some(m);
        }
    }
    best
}

/// The module graph: every module and the modules it imports.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let texts: BTreeMap<Module, String> = files
        .iter()
        .filter_map(|f| Some((module_of(&src, f)?, code_of(&std::fs::read_to_string(f).unwrap()))))
        .collect();
    let modules: BTreeSet<Module> = texts.keys().cloned().collect();
    let mut children: BTreeMap<Module, Vec<String>> = BTreeMap::new();
    for m in &modules {
        if let Some((parent, name)) = m.rsplit_once("::") {
            children.entry(parent.to_string()).or_default().push(name.to_string());
        }
    }
    let mut g = BTreeMap::new();
    for (m, code) in &texts {
        let mut deps = BTreeSet::new();
        for p in paths_in(code) {
            // A folder is one module: its files may use what its `mod.rs` declares, which is
            // no circle between folders.
            if let Some(t) = target(&p, m, &modules, &children)
                && &t != m
                && !m.starts_with(&format!("{t}::"))
            {
                deps.insert(t);
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// Strongly connected components with more than one member (Tarjan).
fn circles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let l = s.low[w].min(s.low[v]);
                s.low.insert(v, l);
            } else if s.on.contains(w) {
                let l = s.index[w].min(s.low[v]);
                s.low.insert(v, l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The same graph between top-level modules (a folder is one).
fn top_level(g: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeMap<Module, BTreeSet<Module>> {
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut out: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, deps) in g {
        let entry = out.entry(top(m)).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != top(m)));
    }
    out
}

/// Floor of each module: 0 for one that imports nothing, else one above its highest import.
fn floors(g: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeMap<Module, usize> {
    fn floor(g: &BTreeMap<Module, BTreeSet<Module>>, m: &str, memo: &mut BTreeMap<Module, usize>) -> usize {
        if let Some(&f) = memo.get(m) {
            return f;
        }
        let f = g.get(m).into_iter().flatten().map(|d| floor(g, d, memo) + 1).max().unwrap_or(0);
        memo.insert(m.to_string(), f);
        f
    }
    let mut memo = BTreeMap::new();
    for m in g.keys() {
        floor(g, m, &mut memo);
    }
    memo
}

#[test]
fn the_reader_finds_the_edges_it_must() {
    let g = graph();
    // Known imports of several shapes: `use crate::…`, `super::…`, a group, a child module.
    for (from, to) in [
        ("pipeline", "plan"),
        ("mirror::pypi", "mirror::ecosystem"),
        ("mirror::pypi", "mirror::download"),
        ("mirror", "mirror::pypi"),
        ("plan", "plan::policy"),
        ("lock_check", "oci::image"),
    ] {
        assert!(g[from].contains(to), "{from} -> {to} not found; {from} imports {:?}", g[from]);
    }
    assert!(!g["spec"].contains("plan"), "doc comments are not imports: {:?}", g["spec"]);
}

#[test]
fn no_module_imports_its_way_back() {
    let g = graph();
    assert!(g.len() > 50, "the sources were not found: {g:?}");
    let files = circles(&g);
    assert!(files.is_empty(), "import circles between files of builder/src: {files:#?}");
    let tops = top_level(&g);
    let folders = circles(&tops);
    assert!(folders.is_empty(), "import circles between top-level modules of builder/src: {folders:#?}");

    let floors = floors(&tops);
    let mut by_floor: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (m, f) in &floors {
        by_floor.entry(*f).or_default().push(m);
    }
    println!("builder/src, top-level modules by floor (each imports only from floors below it):");
    for (f, ms) in by_floor.iter().rev() {
        println!("  {f:>2}: {}", ms.join(", "));
    }
}
