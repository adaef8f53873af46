//! Start-up and teardown: whole runs of each command on `/bin/true` (or a 50 ms wait), side by
//! side with the peers, and until when the kernel has released what each attached; plus the time
//! from exec to ready, the measure that matters for a tool started to catch something.
//!
//! memtrace returns at once and leaves the kernel's release of its tracepoint events (~40 ms
//! each, one at a time under the kernel's `event_mutex`) to a helper: the "released" column
//! shows when that was done, and the back-to-back row what a second run started meanwhile
//! pays, waiting for that mutex at its attach.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    report::{median, min_max},
    runner::{self, dies_with_bench},
};

/// One tool, run to its end.
pub struct Whole {
    pub label: String,
    pub argv: Vec<String>,
}

/// Per tool: whole-run seconds and seconds until released, per run.
struct Timings {
    whole: Vec<f64>,
    released: Vec<f64>,
}

/// Runs each tool `runs` times, interleaved, each run to its end, waiting between runs until
/// the kernel has released everything (so no run pays for another's release).
pub fn whole_runs(title: &str, note: &str, tools: &[Whole], runs: usize) -> Result<String> {
    eprintln!("bench: {title} ({runs} runs)");
    runner::wait_for_release()?;
    let mut timings: Vec<Timings> = tools
        .iter()
        .map(|_| Timings {
            whole: Vec::new(),
            released: Vec::new(),
        })
        .collect();
    for run in 0..runs {
        for (tool, timing) in tools.iter().zip(&mut timings) {
            let started = Instant::now();
            run_to_end(&tool.argv).with_context(|| format!("run {}", tool.label))?;
            let whole = started.elapsed().as_secs_f64();
            runner::wait_for_release()?;
            let released = started.elapsed().as_secs_f64();
            eprintln!(
                "bench:   run {} {:<60} {:7.1} ms, released at {:7.1} ms",
                run + 1,
                tool.label,
                whole * 1e3,
                released * 1e3
            );
            timing.whole.push(whole);
            timing.released.push(released);
            thread::sleep(Duration::from_millis(50));
        }
    }
    let mut out = format!(
        "### {title}\n\n{note}\n\n| command | whole run, median ms | min–max ms | everything released, median ms |\n|---|---|---|---|\n"
    );
    for (tool, timing) in tools.iter().zip(&timings) {
        let (min, max) = min_max(&timing.whole);
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1}–{:.1} | {:.1} |",
            tool.label,
            median(&timing.whole) * 1e3,
            min * 1e3,
            max * 1e3,
            median(&timing.released) * 1e3
        );
    }
    Ok(out)
}

/// Runs `tool` `times` times back to back, as a script would, without waiting for the kernel's
/// release in between; returns the mean whole run and the time until everything was released.
pub fn back_to_back(tool: &Whole, times: usize) -> Result<String> {
    runner::wait_for_release()?;
    let started = Instant::now();
    let mut whole = Vec::new();
    for _ in 0..times {
        let run = Instant::now();
        run_to_end(&tool.argv).with_context(|| format!("run {}", tool.label))?;
        whole.push(run.elapsed().as_secs_f64());
    }
    runner::wait_for_release()?;
    let released = started.elapsed().as_secs_f64();
    eprintln!(
        "bench:   {times} back to back: {:?} ms, all released at {:.1} ms",
        whole.iter().map(|s| (s * 1e3).round()).collect::<Vec<_>>(),
        released * 1e3
    );
    let (min, max) = min_max(&whole);
    Ok(format!(
        "| {}, {times} runs back to back (per run) | {:.1} | {:.1}–{:.1} | {:.1} (all {times}) |\n",
        tool.label,
        median(&whole) * 1e3,
        min * 1e3,
        max * 1e3,
        released * 1e3
    ))
}

fn run_to_end(argv: &[String]) -> Result<()> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = Command::new(program);
    let status = dies_with_bench(&mut command, libc::SIGKILL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("start {program}"))?;
    if !status.success() {
        bail!("{program} failed ({status})");
    }
    Ok(())
}
