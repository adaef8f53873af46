//! memtrace's developer tasks: `cargo xtask setup | run | test | bench`.
//!
//! `setup` makes a fresh machine able to build the kernel programs; `run` and `test` call it
//! first, so a newcomer needs no other step.

mod bench;
mod setup;
mod shell;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::shell::{Cmd, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "memtrace's set-up, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building memtrace needs: nightly rust-src, bpf-linker, Debian test tools
    Setup,
    /// Build memtrace (release) and run it: `cargo xtask run -- faults --pid 42`
    Run {
        /// Arguments for memtrace
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format and lint checks, unit tests, and the privileged tests against the running kernel
    Test,
    /// Overhead benchmarks against the untraced baseline and peer tools
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => {
            setup::run()?;
            Cmd::new("cargo")
                .args(["build", "--release", "--package", "memtrace"])
                .run()?;
            let binary = workspace_root().join("target/release/memtrace");
            Cmd::new(binary).args(args).replace_process()
        }
        Task::Test => test(),
        Task::Bench(args) => {
            setup::run()?;
            bench::run(&args)
        }
    }
}

/// Everything CI checks, in order of cost; ends by saying which tests could not run, and why.
fn test() -> Result<()> {
    setup::run()?;
    Cmd::new("cargo").args(["fmt", "--all", "--check"]).run()?;
    Cmd::new("cargo")
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .run()?;
    setup::clippy_ebpf()?;
    let skips = workspace_root().join("target/test-skips.tsv");
    let _ = std::fs::remove_file(&skips);
    // One test at a time: the privileged tests compare the kernel's counters with ours, and
    // check that nothing of ours is left loaded, which concurrent tests would blur. As root
    // (as CI runs), every test that needs root or a tool the set-up installs must run.
    let mut tests = Cmd::new("cargo")
        .args(["test", "--", "--test-threads=1"])
        .env("MEMTRACE_TEST_SKIPS", &skips);
    if shell::is_root() {
        tests = tests.env("MEMTRACE_TEST_MUST_RUN", "1");
    }
    let result = tests.run();
    report_skips(&skips)?;
    result
}

/// The tests that recorded a skip, counted by reason.
fn report_skips(path: &std::path::Path) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("xtask: every test ran");
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    };
    let mut by_reason: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in text.lines() {
        let (test, reason) = line.split_once('\t').unwrap_or((line, "no reason given"));
        by_reason.entry(reason).or_default().push(test);
    }
    let total: usize = by_reason.values().map(Vec::len).sum();
    let tests = if total == 1 { "test" } else { "tests" };
    eprintln!("xtask: {total} {tests} skipped, so not checked:");
    for (reason, tests) in &by_reason {
        eprintln!("  {} ({reason}):", tests.len());
        for test in tests {
            eprintln!("    {test}");
        }
    }
    if !shell::is_root() {
        eprintln!("xtask: run `sudo cargo xtask test` (as CI does) to run them");
    }
    Ok(())
}
