//! The library's layers (ARCHITECTURE.md): each top-level module may name
//! only modules of a lower layer (and itself). Read from the sources, so a
//! new upward import or cycle fails here rather than in review.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each top-level module of `src/`; lower numbers are lower.
const LAYERS: &[(&str, u8)] = &[
    ("event", 0),
    ("config", 0),
    ("script", 0),
    ("generator", 1),
    ("bus", 1),
    ("store", 1),
    ("cache", 1),
    ("analytics", 2),
    ("pipeline", 2),
    ("api", 3),
    ("notebook", 3),
    ("alerts", 3),
    ("services", 4),
    ("ui", 5),
    ("bench", 6),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::<module>` named in code (comments left out) of `file`.
fn named_modules(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `$crate::` in macros is the crate root, not a layer.
            let macro_root = rest[..i].ends_with('$');
            if !name.is_empty() && !macro_root {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_names_one_above_it() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen_modules = std::collections::BTreeSet::new();
    let mut upward = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "bin" {
            continue;
        }
        let Some(&own) = layer.get(module.as_str()) else {
            panic!("src/{module} has no layer: add it to LAYERS and ARCHITECTURE.md");
        };
        seen_modules.insert(module.clone());
        for (line, named) in named_modules(f) {
            if named == module {
                continue;
            }
            let Some(&theirs) = layer.get(named.as_str()) else {
                panic!(
                    "{}:{line}: crate::{named} is not a known module",
                    rel.display()
                );
            };
            if theirs >= own {
                upward.push(format!(
                    "{}:{line}: {module} (layer {own}) names crate::{named} (layer {theirs})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up or sideways:\n{}",
        upward.join("\n")
    );
    // The list names exactly the modules there are.
    let listed: std::collections::BTreeSet<String> =
        LAYERS.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(listed, seen_modules);
}

#[test]
fn the_checker_sees_an_upward_import() {
    let dir = std::env::temp_dir().join(format!("salespulse-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("x.rs");
    std::fs::write(
        &f,
        "use crate::services::run; // crate::ui in a comment\nlet a = $crate::x;\n",
    )
    .unwrap();
    assert_eq!(named_modules(&f), vec![(1, "services".to_owned())]);
    std::fs::remove_dir_all(&dir).unwrap();
}
