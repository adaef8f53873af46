//! A report of many distinct stacks: how long a tool takes, once its command has exited, to
//! hand over its stacks folded and symbolized, and how many distinct ones it found. The workload
//! writes its `CLOCK_MONOTONIC` time to a stamp file just before it exits; the bench reads the
//! same clock when the tool is done.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Suite,
    report::{median, min_max},
    runner::dies_with_bench,
};

/// One tool, run to its end on the workload.
pub struct Tool {
    pub label: String,
    /// The command; `{stamp}` becomes the workload's stamp file, `{out}` the folded report,
    /// `{data}` a scratch file.
    pub argv: Vec<String>,
    pub stacks: Stacks,
}

/// Where a tool's stacks are.
pub enum Stacks {
    /// Nowhere: the untraced baseline.
    None,
    /// `{out}`, folded (`a;b;c count`), one line per distinct stack.
    Folded,
    /// `{data}`, a perf.data file, symbolized by `perf script` after the run and folded here:
    /// that is part of the time after the workload's exit.
    PerfScript,
}

/// What one run of a tool measured.
struct Sample {
    /// From the tool's start until it (and `perf script`) was done.
    whole: f64,
    /// From the workload's stamp until the tool was done.
    after_exit: f64,
    /// Distinct stacks, and those through `leaf`.
    stacks: Option<(usize, usize)>,
}

/// Runs each tool `suite.rounds` times, interleaved. A tool that fails is reported in the
/// table with its error and not run again; the others go on.
pub fn table(suite: &Suite, title: &str, tools: &[Tool], leaf: &str) -> Result<String> {
    let tools: Vec<&Tool> = tools.iter().filter(|t| suite.runs(Some(&t.argv))).collect();
    let rounds = suite.rounds;
    eprintln!("bench: {title} ({rounds} runs)");
    let mut samples: Vec<Vec<Sample>> = tools.iter().map(|_| Vec::new()).collect();
    let mut failures: Vec<Option<String>> = vec![None; tools.len()];
    for round in 0..rounds {
        for (i, tool) in tools.iter().enumerate() {
            if failures[i].is_some() {
                continue;
            }
            match run_once(suite, tool, leaf) {
                Ok(sample) => {
                    eprintln!(
                        "bench:   run {} {:<50} {:8.1} ms, {:8.1} ms after exit, stacks {:?}",
                        round + 1,
                        tool.label,
                        sample.whole * 1e3,
                        sample.after_exit * 1e3,
                        sample.stacks
                    );
                    samples[i].push(sample);
                }
                Err(err) => {
                    eprintln!("bench:   {}: {err:#}", tool.label);
                    failures[i] = Some(format!("{err:#}"));
                }
            }
        }
    }
    let mut out = format!(
        "### {title}\n\n{rounds} runs each, interleaved. *After exit*: from the workload's last \
         clock reading (written to a file as it exits) until the tool is done: memtrace has \
         exited, its folded report written; perf record has exited and `perf script`'s output \
         is folded. *Distinct stacks*: lines of the folded report (user frames only); *through \
         `{leaf}`*: those ending in the workload's leaf, 16384 if every path was seen.\n\n\
         | tool | whole run, median ms | after exit, median ms | min–max ms | distinct stacks | \
         through `{leaf}` |\n|---|---|---|---|---|---|\n"
    );
    for ((tool, samples), failure) in tools.iter().zip(&samples).zip(&failures) {
        if let Some(failure) = failure.as_deref().filter(|_| samples.is_empty()) {
            let _ = writeln!(out, "| {} | failed: {failure} | | | | |", tool.label);
            continue;
        }
        let whole: Vec<f64> = samples.iter().map(|s| s.whole).collect();
        let after: Vec<f64> = samples.iter().map(|s| s.after_exit).collect();
        let (min, max) = min_max(&after);
        // The counts of the last run: the workload is deterministic.
        let (distinct, through_leaf) = match samples.last().and_then(|s| s.stacks) {
            Some((distinct, through_leaf)) => (distinct.to_string(), through_leaf.to_string()),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1}–{:.1} | {distinct} | {through_leaf} |",
            tool.label,
            median(&whole) * 1e3,
            median(&after) * 1e3,
            min * 1e3,
            max * 1e3
        );
    }
    Ok(out)
}

fn run_once(suite: &Suite, tool: &Tool, leaf: &str) -> Result<Sample> {
    let stamp = suite.dir.join("stack-report.stamp");
    let out = suite.dir.join("stack-report.folded");
    let data = suite.dir.join("stack-report.data");
    for file in [&stamp, &out, &data] {
        let _ = fs::remove_file(file);
    }
    let argv: Vec<String> = tool
        .argv
        .iter()
        .map(|arg| {
            arg.replace("{stamp}", &stamp.to_string_lossy())
                .replace("{out}", &out.to_string_lossy())
                .replace("{data}", &data.to_string_lossy())
        })
        .collect();
    let started = monotonic_ns();
    run_to_end(&argv)?;
    let stacks = match tool.stacks {
        Stacks::None => None,
        Stacks::Folded => {
            let folded = fs::read_to_string(&out).context("the folded report")?;
            Some(count(folded.lines(), leaf))
        }
        Stacks::PerfScript => {
            let script = perf_script(&data)?;
            let folded = fold_perf_script(&script);
            Some(count(folded.keys().map(String::as_str), leaf))
        }
    };
    let done = monotonic_ns();
    let exited: i128 = fs::read_to_string(&stamp)
        .context("the workload's stamp")?
        .trim()
        .parse()
        .context("the workload's stamp")?;
    for file in [&stamp, &out, &data] {
        let _ = fs::remove_file(file);
    }
    Ok(Sample {
        whole: (done - started) as f64 / 1e9,
        after_exit: (done - exited) as f64 / 1e9,
        stacks,
    })
}

/// Distinct stacks (non-empty lines) and those whose innermost frame is `leaf`.
fn count<'a>(stacks: impl Iterator<Item = &'a str>, leaf: &str) -> (usize, usize) {
    let mut distinct = 0;
    let mut through_leaf = 0;
    for stack in stacks.filter(|line| !line.trim().is_empty()) {
        distinct += 1;
        // `a;b;leaf 3`: the count after the last space, the innermost frame before it.
        let frames = stack.rsplit_once(' ').map_or(stack, |(frames, _)| frames);
        if frames.rsplit(';').next() == Some(leaf) {
            through_leaf += 1;
        }
    }
    (distinct, through_leaf)
}

fn run_to_end(argv: &[String]) -> Result<()> {
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = Command::new(program);
    let output = dies_with_bench(&mut command, libc::SIGKILL)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("start {program}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr
            .lines()
            .find(|line| line.to_ascii_lowercase().contains("error"))
            .or_else(|| stderr.lines().rfind(|line| !line.trim().is_empty()))
            .unwrap_or("")
            .trim();
        bail!("{program} failed ({}): {said}", output.status);
    }
    Ok(())
}

/// `perf script`'s callchains of `data`: command name, then one frame per line.
fn perf_script(data: &Path) -> Result<String> {
    let output = Command::new("perf")
        .args(["script", "-F", "comm,ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("start perf script")?;
    if !output.status.success() {
        bail!("perf script failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Folds `perf script -F comm,ip,sym` output as `stackcollapse-perf.pl` does, user frames
/// only: each sample's frames, outermost first, joined with `;`, counted per distinct stack.
pub fn fold_perf_script(script: &str) -> HashMap<String, u64> {
    let mut folded = HashMap::new();
    let mut frames: Vec<&str> = Vec::new();
    let mut flush = |frames: &mut Vec<&str>| {
        if !frames.is_empty() {
            frames.reverse();
            *folded.entry(frames.join(";")).or_insert(0) += 1;
            frames.clear();
        }
    };
    for line in script.lines() {
        // A sample starts with an unindented header line and ends with a blank line.
        if line.trim().is_empty() || !line.starts_with([' ', '\t']) {
            flush(&mut frames);
            continue;
        }
        let Some((ip, symbol)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        // Kernel frames: the user stack is what is attributed.
        if ip.starts_with("ffffffff") {
            continue;
        }
        frames.push(symbol.trim().trim_end_matches("(inlined)").trim_end());
    }
    flush(&mut frames);
    folded
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the workload's stamp is read from.
fn monotonic_ns() -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_script_folded_user_frames_outermost_first() {
        let script = "ds \n\tffffffff8177539a elf_load\n\n\
                      ds \n\t    1139 touch_page\n\t    1180 f14_a\n\t    1b7c9 main (inlined)\n\n\
                      ds \n\t    1139 touch_page\n\t    1180 f14_a\n\t    1b7c9 main (inlined)\n";
        let folded = fold_perf_script(script);
        assert_eq!(folded.len(), 1);
        assert_eq!(folded["main;f14_a;touch_page"], 2);
    }

    #[test]
    fn stacks_through_the_leaf_are_counted() {
        let folded = "main;f1_a;touch_page 1\nmain;f1_b;touch_page 1\n_start;_dl_start 2\n\n";
        assert_eq!(count(folded.lines(), "touch_page"), (3, 2));
    }
}
