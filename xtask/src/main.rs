//! memtrace's developer tasks: `cargo xtask setup | run | test | bench | docs | install`.
//!
//! `setup` makes a fresh machine able to build the kernel programs; `run` and `test` call it
//! first, so a newcomer needs no other step. `test` runs everything on the host's kernel and
//! then on each kernel of the matrix (`matrix`), in QEMU guests.

mod bench;
mod docs;
mod layers;
mod matrix;
mod setup;
mod shell;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

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
    /// Install what building and testing memtrace needs: nightly rust-src, bpf-linker, the
    /// Debian tools the tests compare with, QEMU and the matrix's kernels
    Setup,
    /// Build memtrace (release) and run it: `cargo xtask run -- faults --pid 42`
    Run {
        /// Arguments for memtrace
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format and lint checks, unit tests, and the privileged tests against the running kernel
    /// and, in QEMU guests, against each kernel of the matrix (Debian's 5.10, 6.1, 6.12)
    Test(TestArgs),
    /// Overhead benchmarks against the untraced baseline and peer tools
    Bench(bench::BenchArgs),
    /// Rewrite the generated man pages (docs/man/) and shell completions (deploy/completions/)
    /// from memtrace's flags; `test` fails while they are stale
    Docs,
    /// Build the release binary and install it with its man pages and bash, zsh and fish
    /// completions: `sudo cargo xtask install` (into /usr/local)
    Install {
        /// Where to install: PREFIX/bin, PREFIX/share/man/man1, PREFIX/share/{bash-completion,zsh,fish}
        #[arg(long, value_name = "PREFIX", default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// Run inside a kernel-matrix guest: the job in DIR (the host starts it)
    #[command(hide = true)]
    GuestJob { dir: PathBuf },
}

#[derive(Args)]
struct TestArgs {
    /// Only on this kernel: `host`, or a series of the matrix (5.10, 6.1, 6.12); repeatable.
    /// Default: all of them, with the format and lint checks and the support table's check
    #[arg(long = "kernel", value_name = "KERNEL")]
    kernels: Vec<String>,

    /// Write the support table this run measured into the README (a full run only)
    #[arg(long)]
    bless: bool,

    /// Only the tests whose names contain one of these (in the guests, also as `file::test`,
    /// so `faults::` picks the tests of memtrace/tests/integration/faults.rs)
    filters: Vec<String>,
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
        Task::Setup => {
            setup::run()?;
            matrix::prepare_all()
        }
        Task::Run { args } => {
            setup::run()?;
            Cmd::new("cargo")
                .args(["build", "--release", "--package", "memtrace"])
                .run()?;
            let binary = workspace_root().join("target/release/memtrace");
            Cmd::new(binary).args(args).replace_process()
        }
        Task::Test(args) => test(&args),
        Task::Bench(args) => {
            setup::run()?;
            bench::run(&args)
        }
        Task::Docs => {
            setup::run()?;
            docs::write()
        }
        Task::Install { prefix } => {
            setup::run()?;
            docs::install(&prefix)
        }
        Task::GuestJob { dir } => matrix::job::run_in_guest(&dir),
    }
}

/// Everything CI checks, in order of cost; ends by saying which tests could not run, and why.
fn test(args: &TestArgs) -> Result<()> {
    let selection = matrix::Selection::parse(&args.kernels)?;
    let everything = selection.is_everything() && args.filters.is_empty();
    if args.bless && !everything {
        bail!("--bless needs a full run: every kernel, no test filter");
    }
    setup::run()?;
    if selection.host && args.filters.is_empty() {
        layers::check(&workspace_root().join("memtrace/src"))?;
        Cmd::new("cargo").args(["fmt", "--all", "--check"]).run()?;
        Cmd::new("cargo")
            .args(["clippy", "--all-targets", "--", "-D", "warnings"])
            .run()?;
        setup::clippy_ebpf()?;
    }
    let mut failures = Vec::new();
    let mut host_probes = Vec::new();
    if selection.host {
        if let Err(err) = host_tests(&args.filters) {
            failures.push(format!("the host's tests: {err:#}"));
        }
        if args.filters.is_empty()
            && let Err(err) = docs::check(&matrix::job::memtrace_binary())
        {
            failures.push(format!("{err:#}"));
        }
        if everything && shell::is_root() {
            eprintln!("xtask: support probes on the host");
            let series = matrix::host_series().unwrap_or_else(|_| "host".to_owned());
            host_probes = matrix::support::probe_all(&matrix::job::memtrace_binary(), 1, &series);
        }
    }
    let mut runs = Vec::new();
    if !selection.series.is_empty() {
        if shell::is_root() {
            runs = matrix::run_guests(&selection.series, &args.filters, everything)?;
            failures.extend(matrix::report(&runs));
        } else {
            eprintln!(
                "xtask: not root, so the kernel matrix's guests did not run (`sudo cargo xtask test`)"
            );
        }
    }
    if everything && shell::is_root() {
        let table = matrix::support::render(&matrix::support_columns(host_probes, &runs));
        if let Err(err) = matrix::support::check_readme(&matrix::readme(), &table, args.bless) {
            failures.push(format!("{err:#}"));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    bail!("{} failed:\n  {}", failures.len(), failures.join("\n  "))
}

/// The unit tests and the privileged tests against the running kernel, one at a time: they
/// compare the kernel's counters with ours, and check that nothing of ours is left loaded,
/// which concurrent tests would blur. As root (as CI runs), every test that needs root or a
/// tool the set-up installs must run.
fn host_tests(filters: &[String]) -> Result<()> {
    let skips = workspace_root().join("target/test-skips.tsv");
    let _ = std::fs::remove_file(&skips);
    // The privileged tests are `#[ignore]`d for a plain `cargo test`; here they run.
    let mut tests = Cmd::new("cargo")
        .args(["test", "--", "--include-ignored", "--test-threads=1"])
        .args(filters)
        .env("MEMTRACE_TEST_SKIPS", &skips);
    if shell::is_root() {
        tests = tests.env("MEMTRACE_TEST_MUST_RUN", "1");
    }
    let mut result = tests.run();
    // The older kernels' way of taking stacks, which only 5.10 would otherwise run, on this
    // kernel too: the same tests must hold either way.
    if result.is_ok() {
        let names = stack_tests(filters)?;
        if !names.is_empty() {
            let mut reads = Cmd::new("cargo")
                .args(["test", "--test", "integration", "--"])
                .args(["--exact", "--include-ignored", "--test-threads=1"])
                .args(&names)
                .env("MEMTRACE_STACK_WAY", "reads")
                .env("MEMTRACE_TEST_SKIPS", &skips);
            if shell::is_root() {
                reads = reads.env("MEMTRACE_TEST_MUST_RUN", "1");
            }
            result = reads.run();
        }
    }
    report_skips(&skips)?;
    result
}

/// The tests of the commands that take user stacks (those that contain one of the filters).
fn stack_tests(filters: &[String]) -> Result<Vec<String>> {
    let mut tests = matrix::job::list_tests(&matrix::test_binary()?, filters)?;
    tests.retain(|test| STACK_MODULES.iter().any(|module| test.starts_with(module)));
    Ok(tests)
}

/// The test modules of the commands that take user stacks.
const STACK_MODULES: [&str; 4] = ["stacks::", "trace_stacks::", "leaks::", "leaks_malloc::"];

/// The host's tests that recorded a skip, counted by reason.
fn report_skips(path: &std::path::Path) -> Result<()> {
    let skips = matrix::job::read_skips(path)?;
    if skips.is_empty() {
        eprintln!("xtask: every test ran on the host");
        return Ok(());
    }
    let tests = if skips.len() == 1 { "test" } else { "tests" };
    eprintln!(
        "xtask: {} {tests} skipped on the host, so not checked there:",
        skips.len()
    );
    for (reason, tests) in matrix::job::by_reason(&skips) {
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
