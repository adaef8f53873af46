//! `memtrace faults --stacks` against the kernel's own accounting: a program faults known
//! numbers of pages in known functions, and tells its `getrusage` deltas per phase; memtrace's
//! counts per stack must equal them, with the right frames, whether the program was built with
//! frame pointers or without (then only the unwind tables can give the stack), in C and in Rust.

use std::{collections::HashMap, fs, path::Path};

use crate::common::{self, disk_dir, memtrace, workload_built};
use serde_json::Value;

const NEAR: u64 = 3000;
const DEEP: u64 = 5000;

/// A file of `pages` pages on a real disk, for major faults once evicted; one per test, so that
/// tests run in parallel do not rewrite each other's.
fn data_file(name: &str, pages: u64) -> std::path::PathBuf {
    let path = disk_dir().join(format!("stacks-{name}.data"));
    let bytes: Vec<u8> = (0..pages * 4096)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    fs::write(&path, bytes).unwrap();
    path
}

/// Runs `memtrace faults --json FLAGS` on a command; returns its records and the workload's
/// counts per phase (from its stderr).
/// A run's records, and the workload's (minor, major) faults per phase.
type Run = (Vec<Value>, HashMap<String, (u64, u64)>);

fn run(flags: &[&str], command: &[&str]) -> Run {
    let args = [&["faults", "--json"], flags, &["--"], command].concat();
    let (records, stderr) = common::json_run(&args);
    let phases = phase_counts(&stderr);
    (records, phases)
}

/// The workload's `PHASE MINOR MAJOR` lines.
fn phase_counts(stderr: &str) -> HashMap<String, (u64, u64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let phase = words.next()?;
            let minor = words.next()?.parse().ok()?;
            let major = words.next()?.parse().ok()?;
            Some((phase.to_owned(), (minor, major)))
        })
        .collect()
}

fn record<'a>(records: &'a [Value], kind: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record"))
}

/// The functions of a stack, innermost first, with the paths' last parts for the rest.
fn functions(stack: &Value) -> Vec<String> {
    stack["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| {
            let symbol = frame["symbol"].as_str().unwrap_or("?");
            // Rust symbols come with their module path.
            symbol.rsplit("::").next().unwrap().to_owned()
        })
        .collect()
}

/// (minor, major) over the stacks whose innermost frames are `innermost`.
fn faults_under(stacks: &[Value], innermost: &[&str]) -> (u64, u64) {
    stacks
        .iter()
        .filter(|s| {
            functions(s).starts_with(&innermost.iter().map(|f| f.to_string()).collect::<Vec<_>>())
        })
        .fold((0, 0), |(minor, major), s| {
            (
                minor + s["minor"].as_u64().unwrap(),
                major + s["major"].as_u64().unwrap(),
            )
        })
}

/// Checks a run of the fault_stacks workload: each phase's faults under its function's stack
/// equal the kernel's count of that phase, and the stacks add up to the process's total.
fn assert_phases(records: &[Value], phases: &HashMap<String, (u64, u64)>, file: bool) {
    let stacks = record(records, "stacks")["stacks"]
        .as_array()
        .unwrap()
        .clone();
    let summary = record(records, "summary");
    assert_eq!(records.last().unwrap()["type"], "summary");
    for (source, n) in summary["dropped"].as_object().unwrap() {
        assert_eq!(n, 0, "dropped ({source})");
    }
    let near = faults_under(&stacks, &["touch_near", "main"]);
    assert_eq!(near, phases["near"], "faults under touch_near <- main");
    let deep = faults_under(
        &stacks,
        &["touch_deep", "middle_deep", "outer_deep", "main"],
    );
    assert_eq!(
        deep, phases["deep"],
        "faults under touch_deep <- middle_deep <- outer_deep"
    );
    if file {
        let mapped = faults_under(&stacks, &["read_mapped", "main"]);
        assert_eq!(mapped, phases["file"], "faults under read_mapped <- main");
        assert!(
            mapped.1 > 0,
            "the evicted file took no major fault: {mapped:?}"
        );
    }
    let process = &summary["processes"][0];
    let per_stack: (u64, u64) = stacks.iter().fold((0, 0), |(minor, major), s| {
        (
            minor + s["minor"].as_u64().unwrap(),
            major + s["major"].as_u64().unwrap(),
        )
    });
    assert_eq!(
        per_stack,
        (
            process["minor"].as_u64().unwrap(),
            process["major"].as_u64().unwrap()
        ),
        "the stacks' counts add up to the process total"
    );
    // The frames are named from the program's own debug information.
    let deep_stack = stacks
        .iter()
        .find(|s| functions(s).first().map(String::as_str) == Some("touch_deep"))
        .unwrap();
    let innermost = &deep_stack["stack"][0];
    assert!(
        innermost["file"]
            .as_str()
            .is_some_and(|f| f.contains("fault_stacks")),
        "{innermost}"
    );
    assert!(innermost["line"].as_u64().is_some(), "{innermost}");
}

fn c_workload_run(variant: &str, flags: &[&str]) {
    let binary = workload_built("fault_stacks", variant, flags);
    let file = data_file(variant, 512);
    let (records, phases) = run(
        &["--stacks"],
        &[
            binary.to_str().unwrap(),
            &NEAR.to_string(),
            &DEEP.to_string(),
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(phases["near"].0, NEAR);
    assert_phases(&records, &phases, true);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_without_frame_pointers_equal_the_kernels_counts_per_function() {
    require_root!();
    c_workload_run("-nofp", &["-g", "-fomit-frame-pointer"]);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_with_frame_pointers_equal_the_kernels_counts_per_function() {
    require_root!();
    c_workload_run("-fp", &["-g", "-fno-omit-frame-pointer"]);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_of_a_rust_program_equal_the_kernels_counts_per_function() {
    require_root!();
    let binary = workload_built(
        "fault_stacks",
        "-rust",
        &["rustc", "-C", "opt-level=2", "-C", "debuginfo=2"],
    );
    let (records, phases) = run(
        &["--stacks"],
        &[
            binary.to_str().unwrap(),
            &NEAR.to_string(),
            &DEEP.to_string(),
        ],
    );
    assert_phases(&records, &phases, false);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn folded_lines_and_the_flame_graph_carry_the_same_counts() {
    require_root!();
    let binary = workload_built("fault_stacks", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let file = data_file("folded", 64);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let folded_path = dir.join("faults.folded");
    let svg_path = dir.join("faults.svg");
    let _ = fs::remove_file(&svg_path);
    let output = memtrace()
        .args(["faults", "--stacks", "--folded", "-o"])
        .arg(&folded_path)
        .arg("--flamegraph")
        .arg(&svg_path)
        .arg("--")
        .arg(&binary)
        .args([&NEAR.to_string(), &DEEP.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let phases = phase_counts(&stderr);
    let folded = fs::read_to_string(&folded_path).unwrap();
    let mut lines: HashMap<String, u64> = HashMap::new();
    for line in folded.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("STACK COUNT");
        assert!(
            lines
                .insert(stack.to_owned(), count.parse().unwrap())
                .is_none(),
            "one line per distinct stack: {stack}"
        );
    }
    let ending = |suffix: &str| -> u64 {
        lines
            .iter()
            .filter(|(stack, _)| stack.ends_with(suffix))
            .map(|(_, n)| n)
            .sum()
    };
    // Root first: the process name, then the outermost frame.
    assert!(
        lines.keys().all(|stack| stack.starts_with("fault_stacks")),
        "{folded}"
    );
    let total = |phase: &str| phases[phase].0 + phases[phase].1;
    assert_eq!(ending(";main;touch_near"), total("near"), "{folded}");
    assert_eq!(
        ending(";main;outer_deep;middle_deep;touch_deep"),
        total("deep"),
        "{folded}"
    );
    let svg = fs::read_to_string(&svg_path).expect("the flame graph");
    assert!(
        svg.starts_with("<?xml") && svg.contains("touch_deep"),
        "not a flame graph of the stacks"
    );
}

/// Runs `faults --by BY --json` on the C workload; returns the report record and the phases.
/// On a kernel older than bpf_find_vma (Linux 5.17) it checks the refusal instead: exit 5 and
/// one line naming the helper; then there is nothing to compare.
fn by(by: &str, file: &Path) -> Option<Run> {
    let binary = workload_built("fault_stacks", "-nofp", &["-g", "-fomit-frame-pointer"]);
    if common::kernel_version() < (5, 17) {
        let output = common::memtrace()
            .args(["faults", "--json", "--by", by, "--"])
            .arg(&binary)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("bpf_find_vma"), "{stderr}");
        return None;
    }
    Some(run(
        &["--by", by],
        &[
            binary.to_str().unwrap(),
            &NEAR.to_string(),
            &DEEP.to_string(),
            file.to_str().unwrap(),
        ],
    ))
}

fn counts(row: &Value) -> (u64, u64) {
    (
        row["minor"].as_u64().unwrap(),
        row["major"].as_u64().unwrap(),
    )
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn faults_by_mapping_tell_the_file_from_anonymous_memory() {
    require_root!();
    let file = data_file("by-mapping", 256);
    let Some((records, phases)) = by("mapping", &file) else {
        return;
    };
    let rows = record(&records, "mappings")["mappings"]
        .as_array()
        .unwrap()
        .clone();
    let path = file.to_str().unwrap();
    let file_rows: Vec<&Value> = rows.iter().filter(|r| r["mapping"] == path).collect();
    assert_eq!(file_rows.len(), 1, "one mapping of {path}: {rows:#?}");
    assert_eq!(file_rows[0]["file"], true);
    assert_eq!(
        counts(file_rows[0]),
        phases["file"],
        "faults on the mapped file"
    );
    let anonymous: u64 = rows
        .iter()
        .filter(|r| r["file"] == false)
        .map(|r| counts(r).0)
        .sum();
    let touched = phases["near"].0 + phases["deep"].0;
    assert!(
        anonymous >= touched,
        "{anonymous} minor faults on anonymous memory, but the program touched {touched} fresh pages"
    );
    let summary = record(&records, "summary");
    let total: (u64, u64) = rows
        .iter()
        .map(counts)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(
        total,
        totals(summary),
        "the mappings add up to the process total"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn faults_by_file_name_the_file_being_paged_in() {
    require_root!();
    let file = data_file("by-file", 256);
    let Some((records, phases)) = by("file", &file) else {
        return;
    };
    let report = record(&records, "files");
    let files = report["files"].as_array().unwrap();
    // Most major faults first: the evicted file.
    assert_eq!(files[0]["path"], file.to_str().unwrap(), "{report:#}");
    assert_eq!(counts(&files[0]), phases["file"]);
    assert!(files[0]["major"].as_u64().unwrap() > 0);
}

fn totals(summary: &Value) -> (u64, u64) {
    let process = &summary["processes"][0];
    (
        process["minor"].as_u64().unwrap(),
        process["major"].as_u64().unwrap(),
    )
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_of_processes_that_exit_mid_trace_are_kept_when_their_kernel_entries_go() {
    require_root!();
    let binary = workload_built("fault_stacks", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let file = data_file("exits", 64);
    // Two runs a second apart: the first has exited, been read for the last time and had its
    // kernel entries deleted (several intervals) before the second starts.
    let once = format!("{} {NEAR} {DEEP} {}", binary.display(), file.display());
    let script = format!("{once}; sleep 1; {once}");
    let (records, _) = run(&["--stacks", "--interval", "0.2"], &["sh", "-c", &script]);
    let stacks = record(&records, "stacks")["stacks"]
        .as_array()
        .unwrap()
        .clone();
    let summary = record(&records, "summary");
    let toucher_pids: Vec<u64> = summary["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["comm"] == "fault_stacks-no")
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(toucher_pids.len(), 2, "{summary:#}");
    for pid in toucher_pids {
        let theirs: Vec<Value> = stacks.iter().filter(|s| s["pid"] == pid).cloned().collect();
        assert_eq!(
            faults_under(&theirs, &["touch_near", "main"]).0,
            NEAR,
            "process {pid}'s faults in touch_near"
        );
        assert_eq!(
            faults_under(
                &theirs,
                &["touch_deep", "middle_deep", "outer_deep", "main"]
            )
            .0,
            DEEP,
            "process {pid}'s faults in touch_deep"
        );
    }
}
