//! Overhead benchmarks against the untraced baseline and the peer tools (issue 6), every row in
//! one run so the figures are comparable: `cargo xtask bench [--quick] [--only ROW,...]`.
//!
//! `rows` says what each row runs, `measure` how (interleaved rounds, the event storm, launch
//! to ready), `stack_report` the time to symbolize a report of many stacks, `runner` the
//! mechanics of one run, `report` the statistics and markdown, `published` the blocks of
//! `docs/benchmarks.md` that a full run rewrites.

mod cgroup;
mod measure;
mod memory;
mod published;
mod report;
mod rows;
mod runner;
mod stack_report;
mod startup;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Result;
use clap::{Args, ValueEnum as _};

use crate::{
    setup,
    shell::{Cmd, workspace_root},
};

use self::rows::Row;

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (under two minutes): smaller workloads, three rounds, strace and perf trace
    /// once (else three rounds), two event-storm rates
    #[arg(long)]
    pub quick: bool,

    /// Rounds per workload (default: 3 with --quick, else 7)
    #[arg(long)]
    pub rounds: Option<usize>,

    /// Run only these rows (default: all)
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Row>,

    /// Leave memtrace's own modes out of the overhead and stack-report tables: only the untraced
    /// baseline and the peers run (to check a row's peers before memtrace has its flags)
    #[arg(long)]
    pub without_memtrace: bool,
}

/// Debian packages providing the peers (htop, and tmux to give it and `top` a terminal).
const PEER_PACKAGES: [(&str, &str); 8] = [
    ("bpftrace", "bpftrace"),
    ("drsnoop", "libbpf-tools"),
    ("perf", "linux-perf"),
    ("strace", "strace"),
    ("heaptrack", "heaptrack"),
    ("valgrind", "valgrind"),
    ("htop", "htop"),
    ("tmux", "tmux"),
];

/// What every row needs: where to build and write, how hard to measure.
pub struct Suite {
    /// `target/bench`: workload binaries, scratch tracer output, results.md.
    dir: PathBuf,
    memtrace: PathBuf,
    quick: bool,
    rounds: usize,
    /// Whether `perf stat -e instructions` counts on this machine.
    instructions: bool,
    /// `--without-memtrace`: run only the baseline and the peers.
    without_memtrace: bool,
}

impl Suite {
    /// The memtrace command with these arguments.
    fn memtrace(&self, args: &[&str]) -> Vec<String> {
        std::iter::once(self.memtrace.to_string_lossy().into_owned())
            .chain(args.iter().map(|&arg| arg.to_owned()))
            .collect()
    }

    /// Whether `command` is to run: any, unless it is memtrace's and `--without-memtrace` is set.
    fn runs(&self, command: Option<&[String]>) -> bool {
        let memtrace = self.memtrace.to_string_lossy();
        !(self.without_memtrace
            && command
                .and_then(<[String]>::first)
                .is_some_and(|program| *program == memtrace))
    }

    /// Rounds for the slow peers (strace, perf trace: 20–70× the untraced time), which would
    /// otherwise take most of the suite's time for figures that need no precision.
    fn slow_rounds(&self) -> usize {
        self.rounds.min(if self.quick { 1 } else { 3 })
    }

    /// Builds `workloads/NAME.c` into the bench directory.
    fn compile(&self, name: &str) -> Result<PathBuf> {
        compile(&self.dir, name, name, &[])
    }

    /// Builds `workloads/NAME.c` with extra compiler flags into the bench directory as
    /// `binary` (so that builds of one source with different flags do not overwrite each other).
    fn compile_with(&self, name: &str, binary: &str, flags: &[&str]) -> Result<PathBuf> {
        compile(&self.dir, name, binary, flags)
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    setup::ensure_packages(&PEER_PACKAGES)?;
    Cmd::new("cargo")
        .args(["build", "--release", "--package", "memtrace"])
        .run()?;
    let root = workspace_root();
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    let instructions = measure::instructions_supported();
    if !instructions {
        eprintln!("bench: instruction counts: not supported on this machine");
    }
    let suite = Suite {
        dir,
        memtrace: root.join("target/release/memtrace"),
        quick: args.quick,
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 7 }),
        instructions,
        without_memtrace: args.without_memtrace,
    };
    let selected: Vec<Row> = if args.only.is_empty() {
        Row::value_variants().to_vec()
    } else {
        args.only.clone()
    };

    let mut sections = Vec::new();
    for row in selected {
        let section = row.run(&suite)?;
        println!("{section}");
        let name = row.to_possible_value().map(|v| v.get_name().to_owned());
        sections.push((name.unwrap_or_default(), section));
    }
    let tables: Vec<&str> = sections
        .iter()
        .map(|(_, section)| section.as_str())
        .collect();
    let report = header(&suite, started.elapsed().as_secs_f64()) + &tables.join("\n");
    let path = suite.dir.join("results.md");
    fs::write(&path, report)?;
    eprintln!(
        "bench: results written to {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    if suite.quick || suite.without_memtrace || args.rounds.is_some_and(|r| r < 7) {
        eprintln!(
            "bench: docs/benchmarks.md left as it is: a --quick, --without-memtrace or short \
             run is not the published report"
        );
        return Ok(());
    }
    let docs = root.join("docs/benchmarks.md");
    published::write(&docs, &sections, &provenance(&suite))?;
    eprintln!(
        "bench: the blocks of these rows rewritten in {}",
        docs.display()
    );
    Ok(())
}

/// The line above a row's tables in `docs/benchmarks.md`: when and where they were measured.
fn provenance(suite: &Suite) -> String {
    let output = |program: &str, args: &[&str]| {
        Cmd::new(program)
            .args(args)
            .output()
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
    };
    format!(
        "_Written by `cargo xtask bench` on {}: Linux {}, {} CPUs, {} rounds._",
        output("date", &["-u", "+%Y-%m-%d"]),
        output("uname", &["-r"]),
        std::thread::available_parallelism().map_or(0, usize::from),
        suite.rounds
    )
}

/// The report's opening: the machine and the choices that shape the figures.
fn header(suite: &Suite, secs: f64) -> String {
    let kernel = Cmd::new("uname")
        .args(["-r"])
        .output()
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut out = format!(
        "## Benchmarks\n\n`cargo xtask bench{}`: Linux {kernel}, {cpus} CPUs, release build, \
         {secs:.0} s in all. Each workload times only its own work, after the tracer has \
         attached; modes run interleaved round by round, the order rotating.\n\n",
        if suite.quick { " --quick" } else { "" }
    );
    if suite.without_memtrace {
        out.push_str("**--without-memtrace**: memtrace's own modes left out.\n\n");
    }
    if suite.quick {
        out.push_str(
            "**--quick**: smaller workloads and 3 rounds; strace and perf trace run once; \
             the event storm has two rates. Indicative only.\n\n",
        );
    } else {
        out.push_str(&format!(
            "{} rounds; strace and perf trace (20–70× slower than untraced) {}.\n\n",
            suite.rounds,
            suite.slow_rounds()
        ));
    }
    if !suite.instructions {
        out.push_str(
            "Instruction counts: not supported on this machine (`perf stat -e instructions`).\n\n",
        );
    }
    out
}

fn compile(dir: &Path, name: &str, binary: &str, flags: &[&str]) -> Result<PathBuf> {
    let source = workspace_root().join(format!("workloads/{name}.c"));
    let binary = dir.join(binary);
    Cmd::new("cc")
        .args(["-O2", "-Wall", "-pthread"])
        .args(flags)
        .args(["-o"])
        .args([&binary, &source])
        .run()?;
    Ok(binary)
}
