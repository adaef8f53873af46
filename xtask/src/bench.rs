//! Overhead benchmarks: each workload runs untraced, under memtrace, and under the peer tools,
//! **interleaved** round by round (A B C A B C …, rotating the order), so that drift in the
//! machine's speed hits every mode alike. Reports medians, min–max and the ratio to untraced.
//!
//! The workload times only its own work section: it starts, says "ready", waits until the
//! tracer is attached, works, and prints how long the work took, so tracer start-up is excluded.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup,
    shell::{Cmd, workspace_root},
};

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (under two minutes): smaller workloads, three rounds
    #[arg(long)]
    pub quick: bool,

    /// Rounds per workload (default: 3 with --quick, else 7)
    #[arg(long)]
    pub rounds: Option<usize>,
}

/// Debian packages providing the peers: bpftrace, and perf (in linux-perf).
const PEER_PACKAGES: [(&str, &str); 2] = [("bpftrace", "bpftrace"), ("perf", "linux-perf")];

/// How a tracer is started against the workload's pid, and how we know it is attached.
#[derive(Clone)]
struct Mode {
    label: &'static str,
    /// The command, with `{pid}` replaced by the workload's pid; `None` for untraced.
    command: Option<Vec<String>>,
    ready: Ready,
}

#[derive(Clone, Copy)]
enum Ready {
    Immediately,
    /// A line on stderr starting with this text.
    StderrLine(&'static str),
    /// A line on stdout starting with this text.
    StdoutLine(&'static str),
    /// No signal exists: wait this long.
    After(Duration),
}

struct Workload {
    title: String,
    binary: PathBuf,
    args: Vec<String>,
    modes: Vec<Mode>,
}

/// One run's result: seconds of work.
type Sample = f64;

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::ensure_packages(&PEER_PACKAGES)?;
    Cmd::new("cargo")
        .args(["build", "--release", "--package", "memtrace"])
        .run()?;
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let fault_loop = compile(&dir, "fault_loop")?;
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 });
    let faults: u64 = if args.quick { 400_000 } else { 1_000_000 };

    let workloads = [
        Workload {
            title: format!("{faults} minor faults, 1 thread — memtrace faults --pid"),
            binary: fault_loop.clone(),
            args: vec![faults.to_string(), "1".into()],
            modes: fault_modes(&["faults", "--pid", "{pid}"]),
        },
        Workload {
            title: format!("{faults} minor faults, 2 threads — memtrace faults (system-wide)"),
            binary: fault_loop,
            args: vec![faults.to_string(), "2".into()],
            modes: fault_modes(&["faults"]),
        },
    ];

    let mut report = String::new();
    for workload in &workloads {
        let table = measure(workload, rounds)?;
        println!("{table}");
        report.push_str(&table);
        report.push('\n');
    }
    let path = dir.join("results.md");
    fs::write(&path, &report)?;
    eprintln!("bench: results written to {}", path.display());
    Ok(())
}

/// Untraced, memtrace, and the peers that count or trace page faults.
fn fault_modes(memtrace_args: &[&str]) -> Vec<Mode> {
    let memtrace = workspace_root().join("target/release/memtrace");
    let memtrace = memtrace.to_string_lossy();
    let memtrace_cmd = [memtrace.as_ref()]
        .into_iter()
        .chain(memtrace_args.iter().copied())
        .chain(["-o", "/dev/null"]);
    vec![
        Mode {
            label: "untraced",
            command: None,
            ready: Ready::Immediately,
        },
        Mode {
            label: "memtrace",
            command: Some(words(memtrace_cmd)),
            ready: Ready::StderrLine("memtrace: counting"),
        },
        Mode {
            label: "perf stat -e minor-faults,major-faults (counting)",
            command: Some(words([
                "perf",
                "stat",
                "-e",
                "minor-faults,major-faults",
                "-p",
                "{pid}",
            ])),
            ready: Ready::After(Duration::from_millis(500)),
        },
        Mode {
            label: "bpftrace software:minor-faults:1 count",
            command: Some(words([
                "bpftrace",
                "-e",
                "BEGIN { printf(\"ready\\n\"); } software:minor-faults:1 /pid == {pid}/ { @[comm] = count(); }",
            ])),
            ready: Ready::StdoutLine("ready"),
        },
        Mode {
            label: "perf trace -F min",
            command: Some(words([
                "perf",
                "trace",
                "--no-syscalls",
                "-F",
                "min",
                "-p",
                "{pid}",
                "-o",
                "/dev/null",
            ])),
            ready: Ready::After(Duration::from_millis(1500)),
        },
    ]
}

fn words<'a>(words: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    words.into_iter().map(str::to_owned).collect()
}

fn compile(dir: &Path, name: &str) -> Result<PathBuf> {
    let source = workspace_root().join(format!("xtask/workloads/{name}.c"));
    let binary = dir.join(name);
    Cmd::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .args([&binary, &source])
        .run()?;
    Ok(binary)
}

/// Runs every mode `rounds` times, interleaved, and renders a table.
fn measure(workload: &Workload, rounds: usize) -> Result<String> {
    eprintln!("bench: {} ({rounds} rounds)", workload.title);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); workload.modes.len()];
    for round in 0..rounds {
        for i in 0..workload.modes.len() {
            // Rotate the order each round so no mode always runs right after another.
            let index = (i + round) % workload.modes.len();
            let mode = &workload.modes[index];
            let secs = run_once(workload, mode)
                .with_context(|| format!("{} under {}", workload.title, mode.label))?;
            eprintln!(
                "bench:   round {} {:<50} {secs:.3} s",
                round + 1,
                mode.label
            );
            samples[index].push(secs);
        }
    }
    let baseline = median(&samples[0]);
    let mut table = format!(
        "### {}\n\n{rounds} rounds, interleaved; seconds of work (median, min–max), ratio to untraced\n\n\
         | mode | median s | min–max s | ratio |\n|---|---|---|---|\n",
        workload.title
    );
    for (mode, samples) in workload.modes.iter().zip(&samples) {
        let (min, max) = min_max(samples);
        table.push_str(&format!(
            "| {} | {:.3} | {:.3}–{:.3} | {:.3}× |\n",
            mode.label,
            median(samples),
            min,
            max,
            median(samples) / baseline
        ));
    }
    Ok(table)
}

fn run_once(workload: &Workload, mode: &Mode) -> Result<Sample> {
    let mut work = Command::new(&workload.binary)
        .args(&workload.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start the workload")?;
    let mut work_out = BufReader::new(work.stdout.take().context("workload stdout")?);
    let mut line = String::new();
    work_out.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("workload said {line:?} instead of ready");
    }

    let tracer = match &mode.command {
        Some(command) => Some(start_tracer(command, mode.ready, work.id())?),
        None => None,
    };
    writeln!(work.stdin.as_mut().context("workload stdin")?, "go")?;
    line.clear();
    work_out.read_line(&mut line)?;
    let elapsed_ns: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("workload said {line:?}"))?;
    work.wait()?;
    if let Some(tracer) = tracer {
        stop(tracer)?;
    }
    Ok(elapsed_ns / 1e9)
}

fn start_tracer(command: &[String], ready: Ready, pid: u32) -> Result<Child> {
    let pid = pid.to_string();
    let argv: Vec<String> = command
        .iter()
        .map(|arg| arg.replace("{pid}", &pid))
        .collect();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", argv[0]))?;
    let wait_line = |stream: Box<dyn std::io::Read + Send>, prefix: &str| -> Result<()> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("{} exited before it was ready", argv[0]);
            }
            if line.starts_with(prefix) {
                // Keep draining so the tracer never blocks on a full pipe.
                thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
                return Ok(());
            }
        }
    };
    let stdout = child.stdout.take().context("tracer stdout")?;
    let stderr = child.stderr.take().context("tracer stderr")?;
    match ready {
        Ready::Immediately => {}
        Ready::StderrLine(prefix) => {
            drain(stdout);
            wait_line(Box::new(stderr), prefix)?;
        }
        Ready::StdoutLine(prefix) => {
            drain(stderr);
            wait_line(Box::new(stdout), prefix)?;
        }
        Ready::After(delay) => {
            drain(stdout);
            drain(stderr);
            thread::sleep(delay);
        }
    }
    Ok(child)
}

fn drain(mut stream: impl std::io::Read + Send + 'static) {
    thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
}

/// Ctrl-C, as a user would, and wait (a tracer that ignores it is killed after 30 s).
fn stop(mut tracer: Child) -> Result<()> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc_kill(tracer.id() as i32, 2) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracer.try_wait()?.is_none() {
        if Instant::now() > deadline {
            tracer.kill()?;
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

fn median(samples: &[Sample]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn min_max(samples: &[Sample]) -> (f64, f64) {
    samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn min_max_spans_the_samples() {
        assert_eq!(min_max(&[2.0, 0.5, 1.5]), (0.5, 2.0));
    }
}
