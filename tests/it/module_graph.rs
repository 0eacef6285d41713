//! No import circle between the modules of `src/`.
//!
//! Reads every file under `src/`, collects the paths it names (`use` statements with their brace
//! groups expanded, and inline `crate::…`, `super::…`, `self::…` paths) and resolves each to the
//! deepest module it names. An edge between two modules is lifted to the pair of siblings just
//! below their lowest common ancestor (a parent using its own children, or a child its parent, is
//! not a layering edge); any cycle among siblings fails the test with the references that make
//! it. Test modules (`#[cfg(test)]` to the end of a file) are not part of the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without comments, string and char literals (SQL in strings is full of `::`), and
/// without the trailing `#[cfg(test)]` part.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{0}'), or a lifetime ('a) left alone.
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// Expands one `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use(tree: &str) -> Vec<String> {
    // Drop renames (`x as y`) first: the whitespace that separates them goes next.
    let tokens: Vec<&str> = tree
        .split_whitespace()
        .flat_map(|t| t.split_inclusive([',', '{', '}']))
        .collect();
    let mut tree = String::new();
    let mut skip = false;
    for (i, t) in tokens.iter().enumerate() {
        if skip {
            skip = false;
            // The rename's punctuation (`,` or `}`) stays.
            tree.extend(t.chars().filter(|c| matches!(c, ',' | '}')));
        } else if *t == "as" && i > 0 {
            skip = true;
        } else {
            tree.push_str(t);
        }
    }
    fn go(prefix: &str, tree: &str, out: &mut Vec<String>) {
        if let Some(open) = tree.find('{') {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            let mut items = Vec::new();
            for (i, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&inner[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            items.push(&inner[start..]);
            for item in items.into_iter().filter(|s| !s.is_empty()) {
                go(&format!("{prefix}{head}"), item, out);
            }
        } else {
            out.push(format!("{prefix}{tree}"));
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names: `use` trees, and inline paths starting at crate/super/self.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    let mut without_uses = String::new();
    while let Some(pos) = find_use(rest) {
        without_uses.push_str(&rest[..pos]);
        let after = &rest[pos + 4..];
        let end = after.find(';').unwrap_or(after.len());
        paths.extend(expand_use(&after[..end]));
        rest = &after[(end + 1).min(after.len())..];
    }
    without_uses.push_str(rest);
    let chars: Vec<char> = without_uses.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':') && is_ident(chars[i]) {
            let mut j = i;
            while j < chars.len() && (is_ident(chars[j]) || chars[j] == ':') {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            if word.starts_with("crate::") || word.starts_with("super::") {
                paths.push(word.trim_end_matches(':').to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    paths
}

/// The byte offset of the next `use ` statement keyword.
fn find_use(code: &str) -> Option<usize> {
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(p) = code[from..].find("use ") {
        let at = from + p;
        if at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// The deepest known module a path names, seen from `here`; None for other crates.
fn resolve(path: &str, here: &ModPath, known: &BTreeSet<ModPath>) -> Option<ModPath> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (ModPath, &[&str]) = match segs.first().copied() {
        Some("crate") => (vec![], &segs[1..]),
        Some("super") => {
            let mut base = here.clone();
            let mut k = 0;
            while segs.get(k) == Some(&"super") {
                base.pop();
                k += 1;
            }
            (base, &segs[k..])
        }
        Some("self") => (here.clone(), &segs[1..]),
        Some(first) => {
            let mut child = here.clone();
            child.push(first.to_string());
            if known.contains(&child) {
                (here.clone(), &segs[..])
            } else {
                return None;
            }
        }
        None => return None,
    };
    let mut deepest = base.clone();
    for seg in rest {
        base.push(seg.to_string());
        if known.contains(&base) {
            deepest = base.clone();
        } else {
            break;
        }
    }
    Some(deepest)
}

#[test]
fn no_import_circle_between_modules() {
    // OLPS_MODULE_GRAPH_SRC points the check at another tree (to see it fail on an old one).
    let src = std::env::var_os("OLPS_MODULE_GRAPH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "main.rs"));
    let modules: BTreeMap<ModPath, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let known: BTreeSet<ModPath> = modules.keys().cloned().collect();
    assert!(
        known.len() > 10,
        "found only {} modules under src/",
        known.len()
    );

    // Lifted edges, each with one reference that makes it (for the failure message).
    let mut edges: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for path in named_paths(&code) {
            let Some(target) = resolve(&path, module, &known) else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // a module and its own ancestor or descendant
            }
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            edges.entry((from, to)).or_insert_with(|| {
                format!(
                    "{} names `{path}`",
                    file.strip_prefix(&src).unwrap().display()
                )
            });
        }
    }

    // Cycles: a depth-first search for a back edge in the lifted graph.
    let mut graph: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    fn dfs<'a>(
        node: &'a ModPath,
        graph: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        stack: &mut Vec<&'a ModPath>,
        done: &mut BTreeSet<&'a ModPath>,
    ) -> Option<Vec<&'a ModPath>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = dfs(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = dfs(node, &graph, &mut Vec::new(), &mut done) {
            let name = |m: &ModPath| format!("crate::{}", m.join("::"));
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    format!(
                        "  {} -> {}  ({})",
                        name(w[0]),
                        name(w[1]),
                        edges[&(w[0].clone(), w[1].clone())]
                    )
                })
                .collect();
            panic!("import circle between modules:\n{}", steps.join("\n"));
        }
    }
}

#[test]
fn the_check_sees_grouped_and_inline_paths() {
    // The parser must see through brace groups and ignore paths inside strings and comments, or
    // the check above could pass by not looking.
    let code = code_only(
        "use crate::{a::{b, c as d}, e};\n// crate::zzz\nlet s = \"crate::yyy\";\nlet x = super::f::g();\n#[cfg(test)]\nmod tests { use crate::t; }",
    );
    let paths = named_paths(&code);
    assert_eq!(
        paths,
        ["crate::a::b", "crate::a::c", "crate::e", "super::f::g"]
    );
}
