//! The layer rules of docs/architecture.md, checked on the source: each layer imports only
//! the layers it may. A violation names the file and the import.

use std::path::{Path, PathBuf};

/// (layer, the crate modules it may import besides itself)
const RULES: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("api", &["core"]),
    ("runtime", &["core"]),
    ("persist", &["core", "api"]),
    ("control", &["core", "api", "runtime", "persist", "tls"]),
    ("edge", &["core", "runtime"]),
    ("tls", &["core", "api", "runtime", "persist"]),
    ("admin", &["core", "api", "runtime", "persist", "control"]),
];

fn rust_files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            rust_files(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|x| x == "rs") {
        out.push(p.to_path_buf());
    }
}

#[test]
fn layers_import_only_what_they_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (layer, allowed) in RULES {
        let mut files = Vec::new();
        let dir = src.join(layer);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{layer}.rs")));
        }
        assert!(!files.is_empty(), "layer {layer} has no source");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let module: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if module != *layer && !allowed.contains(&module.as_str()) {
                        violations.push(format!(
                            "{}:{}: {layer} imports crate::{module}",
                            f.strip_prefix(&src).unwrap().display(),
                            i + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer rules broken:\n{}",
        violations.join("\n")
    );
}
