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

/// Functions longer than this are several named steps waiting to be split.
const MAX_FUNCTION_LINES: usize = 85;

/// `(file, line, name, length)` of every function under `src/` longer than the limit, found
/// by indentation: a `fn` line and the first later line that closes it at the same depth.
fn long_functions(src: &Path) -> Vec<(String, usize, String, usize)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut long = Vec::new();
    for file in files {
        // the synthetic world's generators are tables of effects, read top to bottom
        if file.strip_prefix(src).unwrap().starts_with("synth") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let indent = &line[..line.len() - code.len()];
            let signature = ["pub ", "pub(super) ", "pub(crate) ", "async ", "const "]
                .iter()
                .fold(code, |rest, prefix| {
                    rest.strip_prefix(prefix).unwrap_or(rest)
                });
            let signature = signature.strip_prefix("async ").unwrap_or(signature);
            let Some(name) = signature.strip_prefix("fn ") else {
                continue;
            };
            let closing = format!("{indent}}}");
            let Some(end) = lines[start + 1..].iter().position(|l| *l == closing) else {
                continue; // a declaration without a body
            };
            if end + 2 > MAX_FUNCTION_LINES {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                long.push((file.display().to_string(), start + 1, name, end + 2));
            }
        }
    }
    long
}

#[test]
fn no_function_outside_the_generator_is_longer_than_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long = long_functions(&src);
    assert!(long.is_empty(), "split these: {long:?}");
}
