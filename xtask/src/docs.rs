//! The generated documentation: man pages (`docs/man/`) and shell completions
//! (`deploy/completions/`), written by memtrace itself from its clap definitions
//! (`memtrace generate`). `cargo xtask docs` rewrites the committed copies, `cargo xtask test`
//! fails when they are stale, and `cargo xtask install` puts them where man and the shells look.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{Cmd, workspace_root};

/// What `memtrace generate` writes, and where the repository keeps it.
const GENERATED: [(&str, &str); 2] = [("man", "docs/man"), ("completions", "deploy/completions")];

/// `cargo xtask docs`: the committed copies, from the debug build.
pub fn write() -> Result<()> {
    let memtrace = build_debug()?;
    for (what, dir) in GENERATED {
        let dir = workspace_root().join(dir);
        let _ = fs::remove_dir_all(&dir);
        generate(&memtrace, what, &dir)?;
        eprintln!("xtask: wrote {}", dir.display());
    }
    Ok(())
}

/// Fails, naming the files, when the committed copies differ from what `memtrace` generates.
pub fn check(memtrace: &Path) -> Result<()> {
    let mut stale = Vec::new();
    for (what, dir) in GENERATED {
        let fresh = workspace_root().join("target/generated").join(what);
        let _ = fs::remove_dir_all(&fresh);
        generate(memtrace, what, &fresh)?;
        let committed = workspace_root().join(dir);
        for name in file_names(&fresh)?.union(&file_names(&committed).unwrap_or_default()) {
            let same = matches!(
                (fs::read(fresh.join(name)), fs::read(committed.join(name))),
                (Ok(a), Ok(b)) if a == b
            );
            if !same {
                stale.push(format!("{dir}/{name}"));
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "generated files differ from memtrace's flags: {} (`cargo xtask docs` rewrites them)",
            stale.join(", ")
        );
    }
    Ok(())
}

/// `cargo xtask install`: the release binary, the man pages and the completions under `prefix`.
pub fn install(prefix: &Path) -> Result<()> {
    Cmd::new("cargo")
        .args(["build", "--release", "--package", "memtrace"])
        .run()?;
    let memtrace = workspace_root().join("target/release/memtrace");
    let generated = workspace_root().join("target/generated/install");
    let _ = fs::remove_dir_all(&generated);
    generate(&memtrace, "man", &generated.join("man"))?;
    generate(&memtrace, "completions", &generated.join("completions"))?;
    let mut copies: Vec<(PathBuf, PathBuf)> = vec![(memtrace, prefix.join("bin/memtrace"))];
    for page in file_names(&generated.join("man"))? {
        copies.push((
            generated.join("man").join(&page),
            prefix.join("share/man/man1").join(&page),
        ));
    }
    let completions = generated.join("completions");
    copies.extend([
        (
            completions.join("memtrace.bash"),
            prefix.join("share/bash-completion/completions/memtrace"),
        ),
        (
            completions.join("_memtrace"),
            prefix.join("share/zsh/site-functions/_memtrace"),
        ),
        (
            completions.join("memtrace.fish"),
            prefix.join("share/fish/vendor_completions.d/memtrace.fish"),
        ),
    ]);
    for (from, to) in copies {
        fs::create_dir_all(to.parent().expect("an install path has a parent"))?;
        fs::copy(&from, &to).with_context(|| format!("install {}", to.display()))?;
        eprintln!("xtask: installed {}", to.display());
    }
    Ok(())
}

fn build_debug() -> Result<PathBuf> {
    Cmd::new("cargo")
        .args(["build", "--package", "memtrace"])
        .run()?;
    Ok(workspace_root().join("target/debug/memtrace"))
}

fn generate(memtrace: &Path, what: &str, dir: &Path) -> Result<()> {
    Cmd::new(memtrace)
        .args(["generate", what])
        .args([dir])
        .run()
}

fn file_names(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let mut names = std::collections::BTreeSet::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}
