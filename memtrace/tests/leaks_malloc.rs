//! `memtrace leaks --malloc` against what a program allocated and kept (`malloc_keep.c` says
//! exactly what, per function), against heaptrack on the same program, and against the
//! kernel's own view of the target once memtrace has gone, even by SIGKILL.

mod common;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::FileExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{Tracer, Workload, workload_built};
use serde_json::Value;

/// What `malloc_keep` keeps, per function (its header comment).
const KEPT: [(&str, u64, u64); 5] = [
    ("keep_before", 10_000, 10),
    ("keep_small", 14_800, 150),
    ("keep_large", 3 << 20, 3),
    ("keep_grown", 65_536, 1),
    ("keep_aligned", 35_272, 8),
];
/// What heaptrack misses of `keep_aligned`: `pvalloc` (not intercepted) and `reallocarray`
/// (glibc calls its own realloc inside, which no preloaded library sees).
const HEAPTRACK_BLIND: u64 = 8192 + 300;

fn malloc_keep() -> std::path::PathBuf {
    workload_built("malloc_keep", "", &["-g", "-fomit-frame-pointer"])
}

/// Bytes and blocks outstanding per function of `KEPT` and `churn` in a `leaks` report.
fn per_function(report: &Value) -> HashMap<&'static str, (u64, u64)> {
    let mut sums = HashMap::new();
    for row in report["stacks"].as_array().unwrap() {
        let frames = row["stack"].as_array().unwrap();
        for name in KEPT.iter().map(|k| k.0).chain(["churn"]) {
            if frames.iter().any(|frame| frame["symbol"] == name) {
                let sum: &mut (u64, u64) = sums.entry(name).or_default();
                sum.0 += row["bytes"].as_u64().unwrap();
                sum.1 += row["blocks"].as_u64().unwrap();
            }
        }
    }
    sums
}

/// Bytes leaked per function of `KEPT` and `churn` by heaptrack's account of the program.
fn heaptrack_leaked(binary: &std::path::Path) -> HashMap<String, u64> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("heaptrack");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let data = dir.join("run");
    let status = Command::new("heaptrack")
        .arg("-o")
        .arg(&data)
        .arg(binary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "heaptrack: {status}");
    let recorded = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().contains("run."))
        .expect("heaptrack's data file");
    let folded = dir.join("leaked.folded");
    let status = Command::new("heaptrack_print")
        .arg("-f")
        .arg(&recorded)
        .args(["--flamegraph-cost-type", "leaked", "-F"])
        .arg(&folded)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "heaptrack_print: {status}");
    let mut leaked = HashMap::new();
    for line in fs::read_to_string(&folded).unwrap().lines() {
        let (stack, bytes) = line.rsplit_once(' ').unwrap();
        // Frames are `function (file.c)` where heaptrack knows the file.
        let frames: Vec<&str> = stack
            .split(';')
            .map(|frame| frame.split(" (").next().unwrap_or(frame))
            .collect();
        for name in KEPT.iter().map(|k| k.0).chain(["churn"]) {
            if frames.contains(&name) {
                *leaked.entry(name.to_owned()).or_default() += bytes.parse::<u64>().unwrap();
            }
        }
    }
    leaked
}

fn final_report(records: &[Value]) -> &Value {
    let last = records.iter().rev().find(|r| r["type"] == "leaks").unwrap();
    assert_eq!(last["final"], true);
    assert_eq!(last["level"], "malloc");
    for (source, n) in last["dropped"].as_object().unwrap() {
        assert_eq!(n, 0, "dropped ({source})");
    }
    last
}

#[test]
fn a_command_s_blocks_left_at_exit_are_exact_per_function_and_heaptrack_s() {
    require_root!();
    require_tool!("heaptrack");
    let binary = malloc_keep();
    let output = common::memtrace()
        .args(["leaks", "--malloc", "--json", "--"])
        .arg(&binary)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let last = final_report(&records);
    let ours = per_function(last);
    for (name, bytes, blocks) in KEPT {
        assert_eq!(ours.get(name), Some(&(bytes, blocks)), "{name}: {last:#}");
    }
    assert_eq!(ours.get("churn"), None, "churn keeps nothing");
    let counts = &last["malloc"];
    assert!(
        counts["allocations"].as_u64().unwrap() >= 80_000,
        "{counts}"
    );
    assert!(counts["frees"].as_u64().unwrap() >= 60_000, "{counts}");

    let theirs = heaptrack_leaked(&binary);
    for (name, _, _) in KEPT {
        let blind = if name == "keep_aligned" {
            HEAPTRACK_BLIND
        } else {
            0
        };
        assert_eq!(
            theirs.get(name).copied().unwrap_or(0) + blind,
            ours[name].0,
            "{name}: heaptrack's leaked bytes vs memtrace's"
        );
    }
    assert_eq!(theirs.get("churn").copied().unwrap_or(0), 0);
}

#[test]
fn attached_to_a_running_process_only_blocks_allocated_since_count_with_their_age() {
    require_root!();
    let binary = malloc_keep();
    let mut work = Workload::start(&binary, &["wait"]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["leaks", "--malloc", "--pid", &pid, "--interval", "0.3"]);
    // A second tracer at once, hiding blocks younger than an hour: none of them.
    let patient = Tracer::start(&["leaks", "--malloc", "--pid", &pid, "--min-age", "3600"]);
    let went = Instant::now();
    work.go();
    thread::sleep(Duration::from_millis(700));
    let (records, status) = tracer.interrupt();
    let since_go = went.elapsed().as_secs_f64();
    let (patient_records, patient_status) = patient.interrupt();
    work.finish();
    assert!(status.success() && patient_status.success());

    let last = final_report(&records);
    let ours = per_function(last);
    assert_eq!(
        ours.get("keep_before"),
        None,
        "allocated before attaching: {last:#}"
    );
    assert_eq!(ours.get("churn"), None);
    for (name, bytes, blocks) in &KEPT[1..] {
        assert_eq!(ours.get(name), Some(&(*bytes, *blocks)), "{name}: {last:#}");
    }
    for row in last["stacks"].as_array().unwrap() {
        let age = row["oldest_s"].as_f64().unwrap();
        assert!(
            age > 0.5 && age <= since_go,
            "age {age} s vs {since_go} s since go"
        );
    }
    // Interval reports came before the final one, with the same figures by then.
    assert!(records.iter().filter(|r| r["type"] == "leaks").count() >= 2);

    let hidden = final_report(&patient_records);
    assert!(per_function(hidden).is_empty(), "{hidden:#}");
    assert_eq!(hidden["total_blocks"], 0);
}

/// The first byte of `malloc` in process `pid`'s memory, and in its C library's file.
fn malloc_bytes(pid: u32) -> (u8, u8) {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("r-xp") && l.contains("/libc.so"))
        .expect("the workload maps libc");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (start, _) = fields[0].split_once('-').unwrap();
    let start = u64::from_str_radix(start, 16).unwrap();
    let map_offset = u64::from_str_radix(fields[2], 16).unwrap();
    let path = fields[5];
    let nm = Command::new("nm")
        .args(["-D", "--defined-only", path])
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let malloc_vaddr = symbols
        .lines()
        .find_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.get(2) == Some(&"malloc@@GLIBC_2.2.5")).then(|| parts[0].to_owned())
        })
        .expect("libc defines malloc");
    // libc's text is mapped at its file offset's address: vaddr == file offset here.
    let offset = u64::from_str_radix(&malloc_vaddr, 16).unwrap();
    let mut in_file = [0u8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut in_file, offset)
        .unwrap();
    let mut in_memory = [0u8];
    fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap()
        .read_exact_at(&mut in_memory, start + offset - map_offset)
        .unwrap();
    (in_memory[0], in_file[0])
}

#[test]
fn detaching_leaves_the_target_as_it_was_even_after_sigkill() {
    require_root!();
    const INT3: u8 = 0xcc;
    let mut work = Workload::start(&malloc_keep(), &["wait"]);
    let pid = work.pid();
    let (before, file) = malloc_bytes(pid);
    assert_eq!(before, file, "malloc untouched before tracing");
    assert_ne!(file, INT3);

    let tracer = Tracer::start(&["leaks", "--malloc", "--pid", &pid.to_string()]);
    let programs = common::programs_held_by(tracer.pid());
    assert!(programs.len() >= 9, "the uprobe programs: {programs:?}");
    assert_eq!(
        malloc_bytes(pid).0,
        INT3,
        "a breakpoint on malloc while attached"
    );
    tracer.signal(libc::SIGKILL);
    let _ = tracer.wait(Duration::from_secs(5));

    let deadline = Instant::now() + Duration::from_secs(5);
    while malloc_bytes(pid).0 != file && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        malloc_bytes(pid).0,
        file,
        "malloc restored after memtrace was killed"
    );
    let left = common::still_loaded_after(&programs, Duration::from_secs(5));
    assert!(left.is_empty(), "programs left in the kernel: {left:?}");
    // And the target carries on, allocating through the restored code.
    work.go();
    work.finish();
}

#[test]
fn a_static_program_is_traced_through_its_own_malloc_or_refused_if_stripped() {
    require_root!();
    let binary = workload_built("malloc_keep", "-static", &["-static", "-g"]);
    let output = common::memtrace()
        .args(["leaks", "--malloc", "--json", "--"])
        .arg(&binary)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let start = &records[0];
    assert_eq!(
        start["allocators"][0]["file"],
        binary.to_str().unwrap(),
        "{start}"
    );
    let ours = per_function(final_report(&records));
    assert_eq!(ours.get("keep_large"), Some(&(3 << 20, 3)));
    assert_eq!(ours.get("keep_small"), Some(&(14_800, 150)));

    let stripped = workload_built("malloc_keep", "-static-stripped", &["-static", "-s"]);
    let output = common::memtrace()
        .args(["leaks", "--malloc", "--"])
        .arg(&stripped)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("statically linked") && stderr.contains("--allocator"),
        "{stderr}"
    );
}
