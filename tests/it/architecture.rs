//! The layer rule of `src/lib.rs`, held as a test: a module may use the modules declared
//! above it in `lib.rs`, never one below. Reads the sources, so a backwards `use` fails here
//! the day it is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The modules of `lib.rs`, in declaration (layer) order.
fn layers(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
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

/// The top-level modules a source file names as `crate::<module>`, with the line.
fn crate_paths(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((name, number + 1));
            }
        }
    }
    found
}

/// Every backwards use under `src/`: (file, line, the module it is in, the later module).
fn backwards_uses(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let order: HashMap<String, usize> = layers(&lib)
        .into_iter()
        .enumerate()
        .map(|(i, m)| (m, i))
        .collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        let Some(&layer) = order.get(&module) else {
            continue; // lib.rs and the binary may use every module
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (used, line) in crate_paths(&text) {
            if let Some(&used_layer) = order.get(&used)
                && used_layer > layer
            {
                problems.push(format!(
                    "{}:{line}: {module} uses {used}, which comes after it in lib.rs",
                    file.display()
                ));
            }
        }
    }
    problems
}

#[test]
fn no_module_uses_one_later_in_the_layer_order() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(order.len() > 10 && order[0] == "cause", "{order:?}");
    let problems = backwards_uses(&src);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_backwards_use_is_found() {
    // a copy of src/ with one backwards use added: the check must catch it
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let copy = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in &files {
        let target = copy.path().join(file.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(file, &target).unwrap();
    }
    let store = copy.path().join("store").join("mod.rs");
    let text = std::fs::read_to_string(&store).unwrap();
    std::fs::write(&store, format!("{text}\nuse crate::nightly::Stage;\n")).unwrap();
    let problems = backwards_uses(copy.path());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("store uses nightly"), "{problems:?}");
}
