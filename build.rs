//! Captures the git commit the binary is built from, for the lineage every published version
//! records (`REDFLOWER_GIT_COMMIT`; `+dirty` when tracked files differ from it). A build outside
//! a git checkout (a source tarball) says `unknown` unless the variable is set by the builder.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for watched in [
        ".git/HEAD",
        ".git/index",
        "src",
        "pipelines",
        "schemas",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    println!("cargo:rerun-if-env-changed=REDFLOWER_GIT_COMMIT");
    let commit = std::env::var("REDFLOWER_GIT_COMMIT").ok().or_else(|| {
        let head = git(&["rev-parse", "HEAD"])?;
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|changes| !changes.is_empty());
        Some(if dirty { format!("{head}+dirty") } else { head })
    });
    println!(
        "cargo:rustc-env=REDFLOWER_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
