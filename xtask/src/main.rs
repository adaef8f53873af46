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

/// Everything CI checks, in order of cost.
fn test() -> Result<()> {
    setup::run()?;
    Cmd::new("cargo").args(["fmt", "--all", "--check"]).run()?;
    Cmd::new("cargo")
        .args(["clippy", "--all-targets", "--", "-D", "warnings"])
        .run()?;
    setup::clippy_ebpf()?;
    // One test at a time: the privileged tests compare the kernel's counters with ours, and
    // check that nothing of ours is left loaded, which concurrent tests would blur.
    Cmd::new("cargo")
        .args(["test", "--", "--test-threads=1"])
        .run()
}
