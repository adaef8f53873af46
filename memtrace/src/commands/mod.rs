//! One module per subcommand, each with an `execute` that returns the process exit code: it
//! validates its flags, opens the session (`crate::session`), and runs its job in it.

pub mod faults;
mod generate;
pub mod leaks;
pub mod oom;
pub mod pressure;
pub mod serve;
pub mod top;
pub mod trace;

use crate::{
    cli::{Cli, Command, Report, StackFiles, Targets},
    error::Failure,
    output::Format,
    session::{self, Target},
};

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Faults(args) => faults::execute(args).await,
        Command::Trace(args) => trace::execute(args).await,
        Command::Oom(args) => oom::execute(args).await,
        Command::Pressure(args) => pressure::execute(args).await,
        Command::Serve(args) => serve::execute(args).await,
        Command::Leaks(args) => leaks::execute(args).await,
        Command::Top(args) => top::execute(args).await,
        Command::Generate(args) => generate::execute(&args),
    }
}

/// The session a tracing command's shared flags describe: what it traces (`comm`: `--comm`,
/// for the commands that have it), for how long, and where its report goes in `format`.
fn session_options(
    targets: Targets,
    comm: Option<String>,
    format: Format,
    report: Report,
) -> Result<session::Options, Failure> {
    Ok(session::Options {
        target: Target::from_flags(targets.command, comm, targets.pids)?,
        format,
        output: report.output,
        duration: targets.duration,
    })
}

/// The format of a report of stacks: `--folded`, `--json`, else tables (checking that the
/// files it also writes can be created).
fn stacks_format(files: &StackFiles, report: &Report) -> Result<Format, Failure> {
    Format::of_stacks(
        files.folded,
        report.json,
        &[files.flamegraph.as_deref(), files.pprof.as_deref()],
    )
}

/// `--cgroup PATH` as a path in the memory hierarchy: a usage error (exit 2) when there is no
/// such cgroup, found before anything needs privileges.
fn cgroup_filter(
    path: Option<&std::path::Path>,
    hierarchy: Option<&crate::sys::cgroup::MemoryHierarchy>,
) -> Result<Option<String>, Failure> {
    match (path, hierarchy) {
        (Some(path), Some(hierarchy)) => Ok(Some(hierarchy.resolve(path)?)),
        (Some(path), None) => Err(Failure::Usage(format!(
            "no such cgroup: {} (no memory cgroup hierarchy is mounted)",
            path.display()
        ))),
        (None, _) => Ok(None),
    }
}

/// `--top N` as a row count (every row, should N not fit).
fn rows(top: Option<u64>, default: usize) -> usize {
    top.map_or(default, |top| usize::try_from(top).unwrap_or(usize::MAX))
}
