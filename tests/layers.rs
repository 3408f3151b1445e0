//! The import graph of src/: every module imports only from layers below
//! its own (so the graph has no cycle), and the two transports never
//! import each other. The layers are written here, bottom first, and in
//! docs/architecture.md; a new module must be given one.
//!
//! References are found in the source text: `crate::name` anywhere
//! outside a comment, and the names in a `use crate::{...}` group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // leaves: no crate imports
    &[
        "clock",
        "denial",
        "log_format",
        "admin_client",
        "echo",
        "metrics",
        "router",
        "identity",
    ],
    &["assertion", "ratelimit", "revocation", "streams"],
    &["store"],
    &["auth"],
    &["upstream"],
    &["runtime"],
    &["config"],
    &["token"],
    &["state"],
    &["reload"],
    &["pipeline"],
    &["proxy"],
    &["admin", "watch"],
    &["server"],
    &["cli", "testing"],
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments (`//` to the end of a line, unless inside
/// a string such as `"http://"`).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            }
            if !in_str && c == '/' && prev == '/' {
                cut = i - 1;
                break;
            }
            prev = c;
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The top-level modules `code` refers to through `crate::`.
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the names at depth one
            let mut depth = 1;
            let mut name = String::new();
            let mut first = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        if !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                        }
                        first = true;
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 && first {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        name.push(c);
                    } else if !name.is_empty() {
                        found.insert(std::mem::take(&mut name));
                        first = false;
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The top-level module a file under src/ belongs to (`None`: lib.rs and
/// main.rs, the roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main" && name != "bin").then_some(name)
}

struct Graph {
    /// module -> (referenced module -> a file that refers to it)
    edges: BTreeMap<String, BTreeMap<String, String>>,
    files: Vec<(PathBuf, String)>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut all = Vec::new();
    for f in files {
        let Some(module) = module_of(&src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let code = code_of(&text);
        let e = edges.entry(module.clone()).or_default();
        for r in references(&code) {
            if r != module {
                e.entry(r).or_insert_with(|| f.display().to_string());
            }
        }
        all.push((f, code));
    }
    Graph { edges, files: all }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn every_module_is_given_a_layer() {
    let g = graph();
    let missing: Vec<&String> = g.edges.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/layers.rs: {missing:?}"
    );
}

#[test]
fn imports_only_point_down() {
    let g = graph();
    let mut wrong = Vec::new();
    for (module, refs) in &g.edges {
        let Some(own) = layer_of(module) else {
            continue;
        };
        for (target, file) in refs {
            match layer_of(target) {
                Some(l) if l < own => {}
                _ => wrong.push(format!("{module} -> {target} ({file})")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not point to a lower layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_transports_never_import_each_other() {
    let g = graph();
    let mut wrong = Vec::new();
    for (file, code) in &g.files {
        let path = file.display().to_string();
        if path.contains("/src/proxy/direct/") && code.contains("proxy::general") {
            wrong.push(format!("{path} uses proxy::general"));
        }
        if path.ends_with("/src/proxy/general.rs") && code.contains("proxy::direct") {
            wrong.push(format!("{path} uses proxy::direct"));
        }
        if path.contains("/src/pipeline/") && code.contains("proxy::") {
            wrong.push(format!("{path} uses the transports"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The checker itself finds what it must: a `use` group, a path in code,
/// nothing in a comment or a URL.
#[test]
fn references_are_found_where_they_are() {
    let code = code_of(
        "use crate::{a, b::c, d::{e, f}};\nlet x = crate::g::h();\n// crate::i\nlet u = \"http://crate::j\"; // crate::k\n",
    );
    let found: Vec<String> = references(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "d", "g", "j"]);
}
