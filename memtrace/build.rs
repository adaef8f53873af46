//! Builds memtrace's kernel programs (the `memtrace-ebpf` crate) for the BPF target with the
//! nightly toolchain and bpf-linker, so that `memtrace` embeds them and ships as one file.
//!
//! bpf-linker is looked for first in the project's own tool directory (`.tools/bin`, filled by
//! `cargo xtask setup`), then on PATH.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("memtrace has no parent directory")?;
    let tools_bin = workspace.join(".tools").join("bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools_bin.join("bpf-linker").display()
    );

    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tools_bin];
    dirs.extend(env::split_paths(&path));
    if !dirs.iter().any(|dir| is_file(&dir.join("bpf-linker")))
        && env::var_os("AYA_BUILD_SKIP").is_none()
    {
        bail!("bpf-linker not found in .tools/bin or on PATH: run `cargo xtask setup` once");
    }
    let path = env::join_paths(dirs).context("PATH with .tools/bin")?;
    // SAFETY: build scripts are single-threaded; the nested cargo inherits these.
    unsafe {
        env::set_var("PATH", path);
        // aya-build turns every line the nested cargo prints into a `warning:`; progress lines
        // are noise there. Compiler diagnostics still arrive through its JSON messages.
        env::set_var("CARGO_TERM_QUIET", "true");
    }

    let ebpf_dir = workspace.join("memtrace-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("memtrace-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "memtrace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|meta| meta.is_file())
}
