//! Fresh-machine set-up: the nightly's `rust-src` (to build `core` for the BPF target) and
//! bpf-linker 0.13 built against the nightly's own libLLVM, into `.tools/` (git-ignored), plus
//! the Debian tools the tests compare against. Idempotent, and quick when all is in place.

use std::{fs, os::unix::fs::symlink, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::shell::{Cmd, workspace_root};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages the privileged tests use, by the binary that shows each is there: bpftool
/// lists loaded programs, strace is the reference for syscall tracing, Prometheus scrapes the
/// daemon (and its promtool checks the exposition), systemd-analyze verifies the unit,
/// bpftrace counts the same kernel events as `pressure` independently, heaptrack is the
/// reference for `leaks --malloc`, groff checks the generated man pages, and Go's `go tool
/// pprof` reads the `--pprof` profiles back (the reader Pyroscope and Parca share the format
/// with), so that what it totals is checked against memtrace's own report; tmux is the real
/// terminal `memtrace top` is driven and read in.
const PACKAGES: [(&str, &str); 11] = [
    ("bpftool", "bpftool"),
    ("strace", "strace"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("bpftrace", "bpftrace"),
    ("heaptrack", "heaptrack"),
    ("heaptrack_print", "heaptrack"),
    ("groff", "groff-base"),
    ("go", "golang-go"),
    ("tmux", "tmux"),
];

/// The Kubernetes schema validator the deployment test uses (schemas bundled: works offline).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn run() -> Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages(&PACKAGES)?;
    ensure_kubernetes_validate()
}

/// Installs kubernetes-validate from PyPI into `.tools/python` (tests find it there).
fn ensure_kubernetes_validate() -> Result<()> {
    let target = workspace_root().join(".tools/python");
    if target.join("kubernetes_validate").is_dir() {
        return Ok(());
    }
    if !Cmd::new("python3")
        .args(["-m", "pip", "--version"])
        .succeeds()
    {
        eprintln!(
            "xtask: no python3 pip, so no kubernetes-validate; the deployment test will skip it"
        );
        return Ok(());
    }
    Cmd::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .args([&target])
        .args([KUBERNETES_VALIDATE])
        .run()
}

fn ensure_nightly() -> Result<()> {
    let toolchains = Cmd::new("rustup").args(["toolchain", "list"]).output()?;
    if !toolchains.lines().any(|line| line.starts_with(NIGHTLY)) {
        bail!(
            "the `{NIGHTLY}` toolchain is missing: install it with `rustup toolchain install {NIGHTLY}`"
        );
    }
    Ok(())
}

fn ensure_rust_src() -> Result<()> {
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    Cmd::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .run()
}

/// bpf-linker must use exactly the nightly rustc's LLVM, so it is built against the libLLVM the
/// toolchain ships. A stamp records which one, and a new nightly triggers a rebuild.
fn ensure_bpf_linker() -> Result<()> {
    let tools = workspace_root().join(".tools");
    let linker = tools.join("bin/bpf-linker");
    let sysroot = Cmd::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&libdir)
        .with_context(|| format!("list {}", libdir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let stamp = tools.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} against {libllvm}\n");
    if linker.is_file()
        && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted)
        && Cmd::new(&linker).arg_version().succeeds()
    {
        return Ok(());
    }

    // A prefix whose lib/ holds the toolchain's libLLVM under the names llvm-sys looks for.
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(libdir.join(&libllvm), &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    let major = llvm_major(&libllvm).with_context(|| format!("LLVM version of {libllvm}"))?;
    Cmd::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .args([&tools])
        .env("LLVM_PREFIX", &prefix)
        .run()?;
    fs::write(&stamp, wanted)?;
    Ok(())
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn llvm_major(libllvm: &str) -> Option<u32> {
    libllvm
        .strip_prefix("libLLVM.so.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Installs missing Debian packages when root; otherwise says what the tests will skip.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(binary, _)| {
            !Cmd::new("sh")
                .args(["-c", &format!("command -v {binary}")])
                .succeeds()
        })
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::shell::is_root() {
        eprintln!(
            "xtask: not root, so not installing {}; tests that need them will skip",
            missing.join(", ")
        );
        return Ok(());
    }
    if !Cmd::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .succeeds()
    {
        Cmd::new("apt-get").args(["update", "-q"]).run()?;
        Cmd::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    }
    Ok(())
}

/// Lints the kernel programs for the target they are built for.
pub fn clippy_ebpf() -> Result<()> {
    Cmd::new("cargo")
        .args([
            &format!("+{NIGHTLY}"),
            "clippy",
            "--package",
            "memtrace-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/ebpf-clippy"),
        )
        .env("PATH", path_with_tools()?)
        .run()
}

fn path_with_tools() -> Result<std::ffi::OsString> {
    let mut dirs = vec![workspace_root().join(".tools/bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(dirs)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_soname() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22.so"), None);
    }
}
