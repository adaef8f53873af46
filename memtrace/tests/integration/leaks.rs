//! `memtrace leaks` (mapping level) against what a program did and the kernel's own figures:
//! attached to a running process, it must report exactly the regions mapped and kept after it
//! attached, per function, with the resident bytes `/proc/PID/smaps` gives.

use std::{fs, thread, time::Duration};

use crate::common::{self, Tracer, Workload, schema, workload_built};
use serde_json::Value;

const KIB: u64 = 1024;

/// The stacks (by their first frame in the program) of the final report.
fn by_function<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| {
            row["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|frame| frame["symbol"] == function)
        })
        .collect()
}

/// The resident bytes of the workload's mapping of exactly `kib` KiB, from its smaps.
fn smaps_rss_of_mapping(pid: u32, kib: u64) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found = Vec::new();
    let mut size = 0;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("Size:") {
            size = value.trim().trim_end_matches(" kB").parse().unwrap();
        } else if let Some(value) = line.strip_prefix("Rss:")
            && size == kib
        {
            found.push(value.trim().trim_end_matches(" kB").parse::<u64>().unwrap() * KIB);
        }
    }
    assert_eq!(found.len(), 1, "one mapping of {kib} KiB in the workload");
    found[0]
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn attached_to_a_running_process_it_reports_what_was_kept_since_per_function() {
    require_root!();
    let binary = workload_built("keep_maps", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let mut work = Workload::start(&binary, &[]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["leaks", "--pid", &pid, "--interval", "0.2"]);
    work.go();
    // A few reports, then the kernel's own figure while the process still has it all mapped.
    thread::sleep(Duration::from_millis(600));
    let rss_big = smaps_rss_of_mapping(work.pid(), 4096);
    let (records, status) = tracer.interrupt();
    work.finish();
    assert!(status.success(), "memtrace: {status}");
    let last = records.iter().rev().find(|r| r["type"] == "leaks").unwrap();
    assert_eq!(last["final"], true);

    let small = by_function(last, "keep_small");
    assert_eq!(small.len(), 1, "{last:#}");
    assert_eq!(small[0]["bytes"], 3 * 64 * KIB);
    assert_eq!(small[0]["regions"], 3);

    let big = by_function(last, "keep_big");
    assert_eq!(big.len(), 1, "{last:#}");
    assert_eq!(big[0]["bytes"], 4096 * KIB);
    assert_eq!(
        big[0]["resident_bytes"], rss_big,
        "keep_big's resident bytes vs smaps"
    );
    assert_eq!(rss_big, 1024 * KIB, "the workload touched 1 MiB of it");

    // Grown by mremap, still under the stack that first mapped it.
    let grown = by_function(last, "keep_grown");
    assert_eq!(grown.len(), 1, "{last:#}");
    assert_eq!(grown[0]["bytes"], 256 * KIB);

    // Mapped and unmapped: nothing left. Mapped before memtrace attached: not seen.
    assert!(by_function(last, "churn").is_empty(), "{last:#}");
    assert!(by_function(last, "keep_before").is_empty(), "{last:#}");
    for (source, n) in last["dropped"].as_object().unwrap() {
        assert_eq!(n, 0, "dropped ({source})");
    }
}

/// The final `leaks` report of `memtrace leaks -- sh -c SCRIPT`. Not `common::json_run`: the
/// script's workload writes its protocol lines to the same stdout.
fn final_report(script: &str) -> Value {
    let output = common::memtrace()
        .args(["leaks", "--json", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| schema::record("leaks", line))
        .rfind(|record| record["type"] == "leaks")
        .unwrap()
}

/// The workload fed its lines a little apart (so that it lives long enough for memtrace to
/// read its mappings), run through `launcher` (`exec`, or `exec env X=1`).
fn keep_maps_through(launcher: &str) -> Value {
    let binary = workload_built("keep_maps", "-nofp", &["-g", "-fomit-frame-pointer"]);
    final_report(&format!(
        "(sleep 0.3; echo go; sleep 0.3; echo exit) | {launcher} {}",
        binary.display()
    ))
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_command_s_report_is_what_it_still_had_mapped_when_it_exited() {
    require_root!();
    let last = keep_maps_through("exec");
    assert_eq!(last["final"], true);
    // From birth: what it mapped before "ready" counts too, and all it kept, at its exit.
    for (function, bytes) in [
        ("keep_before", 2048 * KIB),
        ("keep_small", 3 * 64 * KIB),
        ("keep_big", 4096 * KIB),
        ("keep_grown", 256 * KIB),
    ] {
        let rows = by_function(&last, function);
        assert_eq!(rows.len(), 1, "{function}: {last:#}");
        assert_eq!(rows[0]["bytes"], bytes, "{function}");
        assert_eq!(
            rows[0]["resident_bytes"],
            Value::Null,
            "the process is gone"
        );
    }
    assert!(by_function(&last, "churn").is_empty(), "{last:#}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn exec_forgets_what_the_previous_program_mapped() {
    require_root!();
    // env maps its libraries, then runs exec: those mappings went with its address space.
    let direct = keep_maps_through("exec");
    let through_env = keep_maps_through("exec env X=1");
    // Everything the workload's process still had mapped: the shell before it and env before
    // that ran in the same process, and their mappings must not count.
    let kept = |report: &Value| -> u64 {
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["comm"] == "keep_maps-nofp")
            .map(|row| row["bytes"].as_u64().unwrap())
            .sum()
    };
    assert!(kept(&direct) > 0, "{direct:#}");
    assert_eq!(
        kept(&through_env),
        kept(&direct),
        "what the workload's process kept, run directly and through env"
    );
}
