//! The source layout holds its shape: no file imports, directly or through others, a file
//! that imports it back (data flows one way: tensor -> backend/autograd -> ops -> model ->
//! train -> recipes -> CLI), and no source file is longer than 800 lines, not counting its
//! own `#[cfg(test)]` module.
//!
//! Every `crate::`, `super::` and `self::` path in a file's code counts, in `use` lines and
//! inline alike (`use` groups are expanded); module declarations and comments do not. A
//! path resolves to the deepest module that has a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: src/a/b.rs and src/a/b/mod.rs are ["a", "b"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file: its test module cut off, comments removed.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            // a comment, unless the `//` sits inside a string on this line
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines before the file's own test module.
fn code_lines(text: &str) -> usize {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].lines().count(),
        None => text.lines().count(),
    }
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    i
}

/// The paths a `use` tree or an inline path starting at `i` names: `a::b`,
/// `a::{b, c::{d, e}}`. Returns them (relative to what preceded) and where it ended.
fn paths_at(b: &[u8], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let end = ident_end(b, i);
        if end > i {
            prefix.push(String::from_utf8_lossy(&b[i..end]).into_owned());
            i = end;
        }
        if b[i..].starts_with(b"::{") {
            i += 3;
            let mut out = Vec::new();
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return (out, i + 1);
                }
                let (sub, next) = paths_at(b, i);
                for s in sub {
                    out.push(prefix.iter().cloned().chain(s).collect());
                }
                // skip `as alias` and anything up to the next separator
                i = next;
                while i < b.len() && b[i] != b',' && b[i] != b'}' {
                    i += 1;
                }
            }
        } else if b[i..].starts_with(b"::") && ident_end(b, i + 2) > i + 2 {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

#[test]
fn no_import_circles_and_no_overlong_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let resolve = |parts: &[String]| -> Option<&PathBuf> {
        (1..=parts.len())
            .rev()
            .find_map(|n| modules.get(&parts[..n]))
    };
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let n = code_lines(&text);
        if n > MAX_LINES {
            long.push(format!("{} ({n} lines)", f.display()));
        }
        let me = module_of(&src, f);
        let code = code(&text);
        let b = code.as_bytes();
        let mut deps = BTreeSet::new();
        for (base, skip) in [("crate::", 7), ("super::", 7), ("self::", 6)] {
            for (at, _) in code.match_indices(base) {
                if at > 0
                    && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'$')
                {
                    continue;
                }
                let root: Vec<String> = match base {
                    "crate::" => vec![],
                    // a file's `super` is its parent module (mod.rs files name their folder)
                    "super::" => me[..me.len().saturating_sub(1)].to_vec(),
                    _ => me.clone(),
                };
                let start = at + skip;
                let (paths, _) = if b[start..].starts_with(b"{") {
                    paths_at(b, start - 2)
                } else {
                    paths_at(b, start)
                };
                for p in paths {
                    let full: Vec<String> = root.iter().cloned().chain(p).collect();
                    if let Some(target) = resolve(&full) {
                        if target != f {
                            deps.insert(target.clone());
                        }
                    }
                }
            }
        }
        edges.insert(f.clone(), deps);
    }
    // every cycle: a file that reaches itself again (depth-first, from each file)
    let mut cycles = BTreeSet::new();
    for start in &files {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in &edges[&at] {
                if next == start {
                    let names: Vec<String> = path
                        .iter()
                        .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
                        .collect();
                    let mut key = names.clone();
                    key.sort();
                    if cycles.insert(key) {
                        eprintln!("import circle: {} -> (back)", names.join(" -> "));
                    }
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(
        cycles.is_empty() && long.is_empty(),
        "{} import circle(s) (listed above); files over {MAX_LINES} lines: {long:?}",
        cycles.len()
    );
}
