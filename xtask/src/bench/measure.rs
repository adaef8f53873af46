//! The three kinds of measurement: overhead (modes interleaved round by round against the
//! untraced baseline), the event storm (memtrace alone at increasing call rates), and
//! launch-to-ready time. Each returns a rendered markdown section.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Suite,
    report::{self, OverheadRow, StormRow},
    runner::{self, Mode, Ready, Workload},
};

/// Runs every mode `suite.rounds` times, interleaved (A B C A B C …, the order rotating each
/// round so that no mode always follows another), so drift in the machine's speed hits every
/// mode alike. The first mode must be the untraced baseline.
pub fn overhead(suite: &Suite, title: &str, workload: &Workload, modes: &[Mode]) -> Result<String> {
    let modes: Vec<Mode> = modes
        .iter()
        .filter(|mode| suite.runs(mode.command.as_deref()))
        .cloned()
        .collect();
    let modes = modes.as_slice();
    let rounds = suite.rounds;
    eprintln!("bench: {title} ({rounds} rounds)");
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for round in 0..rounds {
        for i in 0..modes.len() {
            let index = (i + round) % modes.len();
            let mode = &modes[index];
            if mode.slow && samples[index].len() >= suite.slow_rounds() {
                continue;
            }
            let run = runner::run_once(workload, mode, &suite.dir, None)
                .with_context(|| format!("{title} under {}", mode.label))?;
            eprintln!(
                "bench:   round {} {:<55} {:.3} s",
                round + 1,
                mode.label,
                run.secs
            );
            samples[index].push(run.secs);
        }
    }

    let mut rows = Vec::new();
    for (mode, secs) in modes.iter().zip(samples) {
        let instructions = if suite.instructions {
            instructions(suite, workload, mode)
                .with_context(|| format!("instruction count of {title} under {}", mode.label))?
        } else {
            None
        };
        let mut label = mode.label.clone();
        if mode.slow && secs.len() < rounds {
            let runs = secs.len();
            label.push_str(&format!(
                " ({runs} round{})",
                if runs == 1 { "" } else { "s" }
            ));
        }
        rows.push(OverheadRow {
            label,
            secs,
            instructions,
        });
    }
    let mut note = format!(
        "{rounds} rounds, interleaved; seconds of work (median, min–max), ratio to untraced"
    );
    if suite.instructions {
        note.push_str("; instructions retired by the workload (user and kernel), in one more run");
    }
    Ok(report::overhead_table(title, &note, &rows))
}

/// Instructions the workload retires under `mode`, counted by `perf stat` attached alongside the
/// tracer in one extra, untimed run: the tracer's in-kernel work in the workload's context
/// counts, which is the cost we want, and unlike seconds it hardly moves with the machine's load.
fn instructions(suite: &Suite, workload: &Workload, mode: &Mode) -> Result<Option<u64>> {
    let perf_stat: Vec<String> = ["perf", "stat", "-x,", "-e", "instructions", "-p", "{pid}"]
        .into_iter()
        .chain(["-o", "{out}"])
        .map(str::to_owned)
        .collect();
    // perf stat has no "attached" signal; it attaches well within this.
    let ready = Ready::After(Duration::from_millis(300));
    let run = runner::run_once(workload, mode, &suite.dir, Some((&perf_stat, ready)))?;
    Ok(run.companion_output.as_deref().and_then(parse_perf_stat))
}

/// The count of `perf stat -x,` output's `instructions` line (`12345,,instructions,...`).
pub fn parse_perf_stat(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let mut fields = line.split(',');
        let value = fields.next()?;
        (fields.nth(1)? == "instructions")
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// The samples `perf record` says it wrote, from its last line:
/// `[ perf record: Captured and wrote 522.040 MB perf.data (64914 samples) ]`.
pub fn parse_perf_record_samples(line: &str) -> Option<u64> {
    let (_, tail) = line.rsplit_once('(')?;
    let mut words = tail.split_whitespace();
    let samples = words.next()?.parse().ok()?;
    (words.next()? == "samples)").then_some(samples)
}

/// Whether `perf stat` can count instructions here (virtual machines often lack the PMU).
pub fn instructions_supported() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "instructions", "true"])
        .output()
        .is_ok_and(|out| parse_perf_stat(&String::from_utf8_lossy(&out.stderr)).is_some())
}

/// memtrace alone, one run per call rate, reading what it received and lost from its JSON
/// summary.
pub fn storm(
    suite: &Suite,
    title: &str,
    note: &str,
    mode: &Mode,
    levels: &[(Option<u64>, Workload)],
) -> Result<String> {
    eprintln!("bench: {title}");
    let mut rows = Vec::new();
    for (target, workload) in levels {
        let run = runner::run_once(workload, mode, &suite.dir, None)
            .with_context(|| format!("{title} at {target:?} calls/s"))?;
        let summary = run
            .last_output_line
            .as_deref()
            .context("memtrace wrote nothing")?;
        let (records, dropped) = parse_trace_summary(summary)?;
        let calls = run.count.context("the workload reported no call count")?;
        eprintln!(
            "bench:   {:>8} calls/s target: {calls} calls in {:.3} s, {records} records, {} dropped",
            target.map_or_else(|| "unpaced".into(), |t| t.to_string()),
            run.secs,
            dropped.iter().map(|(_, n)| n).sum::<u64>()
        );
        rows.push(StormRow {
            target: *target,
            secs: run.secs,
            calls,
            records,
            dropped,
        });
    }
    Ok(report::storm_table(title, note, &rows))
}

/// `records` and the `dropped` counts of memtrace trace's JSON summary record.
pub fn parse_trace_summary(line: &str) -> Result<(u64, Vec<(String, u64)>)> {
    let value: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("not JSON: {line:.200}"))?;
    if value["type"] != "summary" {
        bail!("the last record is not the summary: {line:.200}");
    }
    let records = value["records"]
        .as_u64()
        .context("summary without records")?;
    let mut dropped: Vec<(String, u64)> = value["dropped"]
        .as_object()
        .context("summary without dropped")?
        .iter()
        .map(|(cause, n)| (cause.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    dropped.sort();
    Ok((records, dropped))
}

/// Time from launching each tool until it says it is ready, `runs` times, the tools
/// interleaved; each is stopped with Ctrl-C before the next starts.
pub fn readiness(
    title: &str,
    note: &str,
    tools: &[(String, Vec<String>, Ready)],
    runs: usize,
    scratch: &Path,
) -> Result<String> {
    eprintln!("bench: {title} ({runs} runs)");
    let mut samples = vec![Vec::new(); tools.len()];
    for run in 0..runs {
        for (i, (label, argv, ready)) in tools.iter().enumerate() {
            let started = Instant::now();
            let tool = runner::start(argv, *ready, &scratch.join("tracer.out"))
                .with_context(|| format!("start {label}"))?;
            let secs = started.elapsed().as_secs_f64();
            // Stopping waits until the kernel has released what it attached, so the next tool
            // does not wait for it.
            runner::stop(tool)?;
            eprintln!("bench:   run {} {label:<50} {:.1} ms", run + 1, secs * 1e3);
            samples[i].push(secs);
            thread::sleep(Duration::from_millis(50));
        }
    }
    let rows: Vec<(String, Vec<f64>)> = tools
        .iter()
        .map(|(label, _, _)| label.clone())
        .zip(samples)
        .collect();
    Ok(report::readiness_table(title, note, &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_counts_or_not_supported() {
        assert_eq!(
            parse_perf_stat("\n1234567,,instructions,1000,100.00,,\n"),
            Some(1_234_567)
        );
        assert_eq!(
            parse_perf_stat("<not supported>,,instructions,0,100.00,,"),
            None
        );
    }

    #[test]
    fn perf_record_says_how_many_samples_it_wrote() {
        assert_eq!(
            parse_perf_record_samples(
                "[ perf record: Captured and wrote 522.040 MB /t/p.data (64914 samples) ]"
            ),
            Some(64914)
        );
        assert_eq!(
            parse_perf_record_samples("Processed 200009 samples and lost 67.54%!"),
            None
        );
    }

    #[test]
    fn trace_summary_gives_records_and_drops() {
        let line = r#"{"type":"summary","duration_s":1.5,"records":810000,"dropped":{"target_table_full":0,"syscall_ring_full":12}}"#;
        let (records, dropped) = parse_trace_summary(line).unwrap();
        assert_eq!(records, 810_000);
        assert_eq!(
            dropped,
            [
                ("syscall_ring_full".to_string(), 12),
                ("target_table_full".to_string(), 0)
            ]
        );
        assert!(parse_trace_summary(r#"{"type":"start"}"#).is_err());
    }
}
