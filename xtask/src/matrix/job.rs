//! What a guest is asked to do and what it answers, and the guest's side of it: `xtask
//! guest-job DIR` runs inside the guest (the host's own xtask binary, seen through the shared
//! root), prepares what tests need there, runs the support probes and each test in its own
//! process, and writes the outcome into the job directory, which the host shares read-write.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::support::{self, ProbeResult};
use crate::shell::{Cmd, workspace_root};

/// The host's instructions, `job.json` in the job directory.
#[derive(Serialize, Deserialize)]
pub struct Job {
    pub series: String,
    /// The integration-test binary, each test of which runs in a process of its own.
    pub binary: PathBuf,
    /// Only tests whose names contain one of these (all when empty).
    pub filters: Vec<String>,
    /// Whether to run the support probes.
    pub probes: bool,
    /// How much slower than the host the guest runs: the tests stretch their timeouts by it.
    pub time_scale: u32,
}

/// The guest's answer, `outcome.json`.
#[derive(Serialize, Deserialize)]
pub struct Outcome {
    /// `uname -r`.
    pub release: String,
    pub tests: Vec<TestRun>,
    /// Tests that ran but could not check what they are for: (test, reason).
    pub skips: Vec<(String, String)>,
    pub probes: Vec<ProbeResult>,
    pub seconds: f64,
    /// Whether every test ran (a guest stopped midway leaves its outcome so far).
    pub finished: bool,
}

#[derive(Serialize, Deserialize)]
pub struct TestRun {
    /// `binary::test`.
    pub name: String,
    pub passed: bool,
    pub seconds: f64,
    /// Its output, relative to the job directory.
    pub log: PathBuf,
}

/// Tests that involve no kernel (they check files and argument parsing), so run on the host
/// only: `binary::test` prefixes.
const HOST_ONLY: [&str; 4] = [
    "deploy::",
    "cli::man_pages_render_without_warnings_and_completions_parse",
    "cli::usage_errors_found_by_the_parser_are_exit_2",
    "cli::help_and_version_are_exit_0",
];

/// Longest a single test may take in a guest before it is stopped and failed.
const TEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `xtask guest-job DIR`: the job, done inside the guest.
pub fn run_in_guest(dir: &Path) -> Result<()> {
    let started = Instant::now();
    let job: Job =
        serde_json::from_str(&fs::read_to_string(dir.join("job.json")).context("read the job")?)?;
    say(&format!("Linux {} is up; preparing", release()?));
    prepare_guest()?;
    let skips_file = dir.join("skips.tsv");
    let _ = fs::remove_file(&skips_file);

    let probes = if job.probes {
        say("support probes");
        support::probe_all(&memtrace_binary(), job.time_scale, &job.series)
    } else {
        Vec::new()
    };
    let mut outcome = Outcome {
        release: release()?,
        tests: Vec::new(),
        skips: Vec::new(),
        probes,
        seconds: 0.0,
        finished: false,
    };
    for name in list_tests(&job.binary, &job.filters)? {
        let run = run_test(dir, &job.binary, &name, &job, &skips_file)?;
        say(&format!(
            "{} {} ({:.1} s)",
            if run.passed { "ok    " } else { "FAILED" },
            run.name,
            run.seconds
        ));
        outcome.tests.push(run);
        // Written after each test: a guest stopped later still tells what it did.
        outcome.skips = read_skips(&skips_file)?;
        outcome.seconds = started.elapsed().as_secs_f64();
        write_outcome(dir, &outcome)?;
    }
    outcome.finished = true;
    outcome.skips = read_skips(&skips_file)?;
    outcome.seconds = started.elapsed().as_secs_f64();
    write_outcome(dir, &outcome)?;
    say("done");
    Ok(())
}

fn write_outcome(dir: &Path, outcome: &Outcome) -> Result<()> {
    let partial = dir.join("outcome.json.part");
    fs::write(&partial, serde_json::to_string_pretty(outcome)?)?;
    fs::rename(partial, dir.join("outcome.json"))?;
    Ok(())
}

/// A line on the console, which the host shows prefixed with the kernel's name.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "memtrace-guest: {line}");
    let _ = out.flush();
}

fn release() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned())
}

/// The memtrace binary the tests run (`CARGO_BIN_EXE_memtrace` of the test build).
pub fn memtrace_binary() -> PathBuf {
    workspace_root().join("target/debug/memtrace")
}

/// What the tests expect of a machine and a guest lacks at boot: loopback up, every cgroup v2
/// controller available to child cgroups, and a real disk where the tests put files they
/// evict from the page cache (the overlay's tmpfs cannot evict), mounted where they look.
fn prepare_guest() -> Result<()> {
    Cmd::new("ip").args(["link", "set", "lo", "up"]).run()?;
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
        .context("enable the cgroup v2 controllers")?;
    // Kernel messages below warnings (OOM reports' details, by the hundred) stay off the
    // console the host reads; warnings and worse (a soft lockup's backtrace) show.
    fs::write("/proc/sys/kernel/printk", "5 4 1 7")?;
    let files = workspace_root().join("target/tmp/files");
    fs::create_dir_all(&files)?;
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "nodiscard", "/dev/vda"])
        .run()?;
    Cmd::new("mount")
        .args(["-t", "ext4", "/dev/vda"])
        .args([&files])
        .run()?;
    Ok(())
}

/// The names (`module::test`) of the binary's tests that contain one of the filters, but for
/// the host-only ones.
pub fn list_tests(binary: &Path, filters: &[String]) -> Result<Vec<String>> {
    let output = Command::new(binary)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("list the tests of {}", binary.display()))?;
    if !output.status.success() {
        bail!("{} --list failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .filter(|test| {
            !HOST_ONLY.iter().any(|prefix| test.starts_with(prefix))
                && (filters.is_empty() || filters.iter().any(|f| test.contains(f.as_str())))
        })
        .map(str::to_owned)
        .collect())
}

/// Runs one test alone, in its own process, its output into a log of its own.
fn run_test(
    dir: &Path,
    binary: &Path,
    test: &str,
    job: &Job,
    skips_file: &Path,
) -> Result<TestRun> {
    let log = PathBuf::from("logs").join(format!("{test}.log"));
    fs::create_dir_all(dir.join("logs"))?;
    let output = fs::File::create(dir.join(&log))?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        // Its own process group: a test stopped for taking too long is stopped with every
        // process it started (memtrace, workloads), which would blur the tests after it.
        .process_group(0)
        .current_dir(workspace_root().join("memtrace"))
        .env("HOME", "/root")
        .env("MEMTRACE_TEST_SKIPS", skips_file)
        .env("MEMTRACE_TEST_MUST_RUN", "1")
        .env("MEMTRACE_TEST_GUEST", &job.series)
        .env("MEMTRACE_TEST_TIME_SCALE", job.time_scale.to_string())
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("run {}", binary.display()))?;
    let passed = loop {
        if let Some(status) = child.try_wait()? {
            break status.success();
        }
        if started.elapsed() > TEST_TIMEOUT {
            // SAFETY: kill(2) on the test's own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            let mut log = fs::OpenOptions::new().append(true).open(dir.join(&log))?;
            writeln!(log, "xtask: stopped after {TEST_TIMEOUT:?}")?;
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(TestRun {
        name: test.to_owned(),
        passed,
        seconds: started.elapsed().as_secs_f64(),
        log,
    })
}

/// The skips the tests recorded, one `test<TAB>reason` line each.
pub fn read_skips(path: &Path) -> Result<Vec<(String, String)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    Ok(text
        .lines()
        .map(|line| {
            let (test, reason) = line.split_once('\t').unwrap_or((line, "no reason given"));
            (test.to_owned(), reason.to_owned())
        })
        .collect())
}

/// Skips grouped by reason, for the report.
pub fn by_reason(skips: &[(String, String)]) -> BTreeMap<&str, Vec<&str>> {
    let mut grouped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (test, reason) in skips {
        grouped.entry(reason).or_default().push(test);
    }
    grouped
}
