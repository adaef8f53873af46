//! The kernel matrix: memtrace's tests on the kernels people run (Debian's 5.10, 6.1 and 6.12,
//! with cgroup v2), each in a QEMU guest booted from Debian's own kernel package, beside the
//! host's kernel. The same test binary runs in every guest, one test per process, and the
//! support table of the README comes from probes run in each.
//!
//! `kernels` finds and unpacks the packages, `initramfs` and `init.sh` make a guest boot into
//! the host's root, `guest` boots one, `job` is what it runs and answers, `support` the table.

pub mod guest;
mod initramfs;
pub mod job;
mod kernels;
pub mod support;

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    shell::{Cmd, workspace_root},
};

use self::kernels::{SERIES, Series};

/// What the guests need on the host, by the binary that shows each is there: QEMU, a static
/// busybox for the initramfs, depmod/modprobe to pick the modules, the kernels' decompressors,
/// mkfs.ext4 and ip, which run in the guest from the host's root.
const PACKAGES: [(&str, &str); 7] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("zstd", "zstd"),
    ("xz", "xz-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("ip", "iproute2"),
];

/// Emulation runs the guests several times slower than the host: tests stretch their timeouts
/// (never their measurements) by this much.
const TIME_SCALE: u32 = 10;

/// Which kernels a test run covers: the host's, and these series of the matrix.
pub struct Selection {
    pub host: bool,
    pub series: Vec<&'static Series>,
}

impl Selection {
    /// From `--kernel` values (`host`, a series name, `all`); none means all.
    pub fn parse(names: &[String]) -> Result<Selection> {
        if names.is_empty() || names.iter().any(|n| n == "all") {
            return Ok(Selection {
                host: true,
                series: SERIES.iter().collect(),
            });
        }
        let mut selection = Selection {
            host: false,
            series: Vec::new(),
        };
        for name in names {
            if name == "host" {
                selection.host = true;
            } else if let Some(series) = SERIES.iter().find(|s| s.name == name) {
                selection.series.push(series);
            } else {
                let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
                bail!(
                    "no kernel {name:?} in the matrix: host, all, or one of {}",
                    known.join(", ")
                );
            }
        }
        Ok(selection)
    }

    pub fn is_everything(&self) -> bool {
        self.host && self.series.len() == SERIES.len()
    }
}

/// What `cargo xtask setup` prepares for the matrix: its packages and every kernel (as root;
/// otherwise the matrix cannot run anyway).
pub fn prepare_all() -> Result<()> {
    if !crate::shell::is_root() {
        eprintln!("xtask: not root, so the kernel matrix's guests were not prepared");
        return Ok(());
    }
    setup::ensure_packages(&PACKAGES)?;
    kernels::prepare(&SERIES.iter().collect::<Vec<_>>())?;
    Ok(())
}

/// One guest's run, for the report.
pub struct GuestRun {
    pub series: &'static str,
    pub kernel: String,
    pub outcome: Result<job::Outcome>,
}

/// Boots a guest per selected series and runs the integration tests (filtered) in each, with the
/// support probes when `probes`. Guests run side by side, one per host CPU, each on one
/// emulated CPU: a test keeps one CPU busy most of the time, and two guests at once use the
/// machine as one guest of two CPUs cannot (the whole matrix in about half the time).
pub fn run_guests(
    series: &[&'static Series],
    filters: &[String],
    probes: bool,
) -> Result<Vec<GuestRun>> {
    setup::ensure_packages(&PACKAGES)?;
    let kernels = kernels::prepare(series)?;
    let binary = test_binary()?;
    let at_once = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, series.len().max(1));
    // Taken from the end: the oldest (and slowest) kernel first.
    let queue = std::sync::Mutex::new(
        series
            .iter()
            .copied()
            .zip(kernels)
            .rev()
            .collect::<Vec<_>>(),
    );
    let runs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..at_once {
            scope.spawn(|| {
                loop {
                    let Some((series, kernel)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    eprintln!(
                        "xtask: booting Debian's {} {}{}",
                        kernel.package,
                        kernel.version,
                        if filters.is_empty() {
                            String::new()
                        } else {
                            format!(", only {}", filters.join(", "))
                        }
                    );
                    let job = job::Job {
                        series: series.name.to_owned(),
                        binary: binary.clone(),
                        filters: filters.to_vec(),
                        probes,
                        time_scale: TIME_SCALE,
                    };
                    let outcome = guest::run(&kernel, &job, &guest::job_dir(series.name));
                    runs.lock().unwrap().push(GuestRun {
                        series: series.name,
                        kernel: format!(
                            "{} ({} {})",
                            kernel.release, kernel.package, kernel.version
                        ),
                        outcome,
                    });
                }
            });
        }
    });
    let mut runs = runs.into_inner().unwrap();
    // In the matrix's order, whichever finished first.
    runs.sort_by_key(|run| SERIES.iter().position(|s| s.name == run.series));
    Ok(runs)
}

/// The integration-test binary of the test build (built if need be): the unit tests need no
/// kernel and run on the host only.
pub fn test_binary() -> Result<PathBuf> {
    let output = Cmd::new("cargo")
        // The workspace's build, as the host's tests use: anything narrower unifies features
        // differently and builds everything again.
        .args(["test", "--no-run", "--message-format=json"])
        .output()?;
    let mut binaries = Vec::new();
    for line in output.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_integration_test = message["reason"] == "compiler-artifact"
            && message["profile"]["test"] == true
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let Some(path) = message["executable"].as_str()
            && is_integration_test
        {
            binaries.push(PathBuf::from(path));
        }
    }
    match <[PathBuf; 1]>::try_from(binaries) {
        Ok([binary]) => Ok(binary),
        Err(binaries) => bail!(
            "cargo built {} integration-test binaries, where memtrace has one: {binaries:?}",
            binaries.len()
        ),
    }
}

/// Prints what each guest did; the failures, as lines for the run's final verdict.
pub fn report(runs: &[GuestRun]) -> Vec<String> {
    let mut failures = Vec::new();
    for run in runs {
        let outcome = match &run.outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                eprintln!("xtask: the {} guest failed: {err:#}", run.series);
                failures.push(format!("the {} guest did not finish", run.series));
                continue;
            }
        };
        let failed: Vec<&job::TestRun> = outcome.tests.iter().filter(|t| !t.passed).collect();
        if !outcome.finished {
            eprintln!(
                "xtask: the {} guest stopped before its last test",
                run.series
            );
            failures.push(format!("the {} guest did not finish", run.series));
        }
        eprintln!(
            "xtask: Linux {}: {} tests passed, {} failed, {} skipped, in {:.1} min",
            run.kernel,
            outcome.tests.len() - failed.len(),
            failed.len(),
            outcome.skips.len(),
            outcome.seconds / 60.0
        );
        let dir = guest::job_dir(run.series);
        for test in &failed {
            let log = dir.join(&test.log);
            eprintln!(
                "  FAILED {} ({}), its log ends:\n{}",
                test.name,
                log.display(),
                indent(&guest::tail(&log, 25))
            );
            failures.push(format!("{} on {}", test.name, run.series));
        }
        for (reason, tests) in job::by_reason(&outcome.skips) {
            eprintln!("  {} skipped ({reason}):", tests.len());
            for test in tests {
                eprintln!("    {test}");
            }
        }
        if outcome.tests.is_empty() {
            failures.push(format!("no test ran on {}", run.series));
        }
    }
    failures
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The support table's columns: the host's probes, then each guest's.
pub fn support_columns(host: Vec<support::ProbeResult>, runs: &[GuestRun]) -> Vec<support::Column> {
    let mut columns = vec![support::Column {
        kernel: format!(
            "{} (host)",
            host_series().unwrap_or_else(|_| "host".to_owned())
        ),
        results: host,
    }];
    for run in runs {
        columns.push(support::Column {
            kernel: run.series.to_owned(),
            results: run
                .outcome
                .as_ref()
                .map(|o| o.probes.clone())
                .unwrap_or_default(),
        });
    }
    columns
}

/// The host kernel's major.minor: `6.18.44-fc` → `6.18`.
pub fn host_series() -> Result<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    let (major, minor) = (parts.next(), parts.next());
    Ok(format!(
        "{}.{}",
        major.context("kernel release")?,
        minor.context("kernel release")?
    ))
}

/// The README, whose support table the run checks.
pub fn readme() -> PathBuf {
    workspace_root().join("README.md")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_chosen_by_name() {
        let all = Selection::parse(&[]).unwrap();
        assert!(all.is_everything());
        let one = Selection::parse(&["6.1".to_owned()]).unwrap();
        assert!(!one.host && one.series.len() == 1 && one.series[0].name == "6.1");
        let host = Selection::parse(&["host".to_owned()]).unwrap();
        assert!(host.host && host.series.is_empty());
        let err = Selection::parse(&["4.19".to_owned()]).err().unwrap();
        assert!(err.to_string().contains("5.10, 6.1, 6.12"), "{err}");
    }
}
