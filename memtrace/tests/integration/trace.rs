//! `memtrace trace` against a peer no one here wrote: strace. The same programs run under
//! `strace -f` and under `memtrace trace`, both with address-space randomisation off
//! (`setarch -R` around the tracer, inherited by the program), so that every address, size, flag
//! and return value must be identical: the same calls, in the same order, thread by thread.
//! strace runs with `-y`: a descriptor memtrace names must be named as strace names it.

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{
    self, Tracer, Workload, memtrace, run_memtrace, schema, still_loaded_after, summary,
    unused_pid, workload,
};

/// How long (seconds, before `common::patience`) the kernel may take to free an exited
/// memtrace's programs.
const RELEASE_SECS: u64 = 2;
const DEFAULT_SET: &str = "brk,mmap,munmap,mremap,mprotect,madvise";

/// Per-thread sequences of `name(args) = ret`, sorted, so threads (whose ids differ between
/// runs) are matched by what they did.
type Traces = Vec<Vec<String>>;

fn scratch(name: &str) -> PathBuf {
    common::scratch("trace", name)
}

/// `name(args)` and the return value reduced to what both tools print alike: the value, or
/// `-1 ERRNO`.
fn normalise(call: &str, ret: &str) -> String {
    let mut words = ret.split_whitespace();
    let first = words.next().unwrap_or_default();
    let ret = if first == "-1" {
        format!("-1 {}", words.next().unwrap_or_default())
    } else {
        first.to_owned()
    };
    format!("{} = {ret}", call.trim_end())
}

/// The call with what `strace -y` adds to descriptors taken out: `3</x>` and `3</x>(deleted)`
/// become `3` (strace escapes `<` and `>` inside a name, so the first `>` ends it).
fn without_fd_names(call: &str) -> String {
    let mut out = String::with_capacity(call.len());
    let mut rest = call;
    while let Some(open) = rest.find('<') {
        let named = rest[..open].ends_with(|c: char| c.is_ascii_digit());
        let Some(close) = rest[open..].find('>').filter(|_| named) else {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        out.push_str(&rest[..open]);
        rest = &rest[open + close + 1..];
        rest = rest.strip_prefix("(deleted)").unwrap_or(rest);
    }
    out.push_str(rest);
    out
}

fn sorted(per_thread: BTreeMap<u32, Vec<String>>) -> Traces {
    let mut traces: Traces = per_thread.into_values().collect();
    // By the calls alone: one tracer may name a descriptor the other no longer could.
    traces.sort_by_cached_key(|calls| {
        calls
            .iter()
            .map(|c| without_fd_names(c))
            .collect::<Vec<_>>()
    });
    traces
}

fn under_strace(syscalls: &str, argv: &[&str]) -> Traces {
    let log = scratch("strace.log");
    let status = Command::new("setarch")
        .args(["-R", "strace", "-f", "-qq", "-y", "-e"])
        .arg(format!("trace={syscalls}"))
        .arg("-o")
        .arg(&log)
        .args(argv)
        .stdout(Stdio::null())
        .status()
        .expect("strace is installed by `cargo xtask setup`");
    assert!(status.success(), "strace {argv:?}: {status}");
    let text = fs::read_to_string(&log).unwrap();
    let mut unfinished: BTreeMap<u32, String> = BTreeMap::new();
    let mut per_thread: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let (tid, rest) = line.split_once(' ').unwrap();
        let tid: u32 = tid.parse().unwrap();
        let rest = rest.trim_start();
        let whole = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.insert(tid, head.to_owned());
            continue;
        } else if rest.starts_with("<... ") {
            let tail = &rest[rest.find("resumed>").unwrap() + "resumed>".len()..];
            format!("{}{}", unfinished.remove(&tid).unwrap(), tail.trim_start())
        } else if rest.starts_with("+++") || rest.starts_with("---") {
            continue;
        } else {
            rest.to_owned()
        };
        let (call, ret) = whole.rsplit_once(" = ").unwrap();
        per_thread
            .entry(tid)
            .or_default()
            .push(normalise(call, ret));
    }
    sorted(per_thread)
}

fn under_memtrace(syscalls: &str, argv: &[&str]) -> Traces {
    let log = scratch("memtrace.log");
    let status = Command::new("setarch")
        .arg("-R")
        .arg(env!("CARGO_BIN_EXE_memtrace"))
        .args(["trace", "-e", syscalls, "-o"])
        .arg(&log)
        .arg("--")
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run memtrace");
    assert!(status.success(), "memtrace trace {argv:?}: {status}");
    let text = fs::read_to_string(&log).unwrap();
    let mut per_thread: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        // 12:03:01.532118 comm[pid/tid] name(args) = ret <latency>
        let (_, rest) = line.split_once(' ').unwrap();
        let ids_start = rest.find('[').unwrap();
        let (ids, call) = rest[ids_start + 1..].split_once("] ").unwrap();
        let tid: u32 = ids.split_once('/').unwrap().1.parse().unwrap();
        let call = &call[..call.rfind(" <").unwrap()];
        let (call, ret) = call.rsplit_once(" = ").unwrap();
        per_thread
            .entry(tid)
            .or_default()
            .push(normalise(call, ret));
    }
    sorted(per_thread)
}

/// memtrace's calls, each identical to strace's; where memtrace read a descriptor's link only
/// after the program had closed it (or exited), the bare number strace would print without
/// `-y` is the only other text accepted.
fn assert_same_as_strace(syscalls: &str, argv: &[&str]) -> Traces {
    let expected = under_strace(syscalls, argv);
    let seen = under_memtrace(syscalls, argv);
    let lengths = |t: &Traces| t.iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(
        lengths(&seen),
        lengths(&expected),
        "calls per thread: memtrace vs strace\nmemtrace: {seen:#?}\nstrace: {expected:#?}"
    );
    for (m, s) in seen.iter().zip(&expected) {
        for (i, (a, b)) in m.iter().zip(s).enumerate() {
            if a != b {
                assert_eq!(
                    a,
                    &without_fd_names(b),
                    "call {i} of a thread: memtrace vs strace -y"
                );
            }
        }
    }
    seen
}

/// The calls starting with `prefix`, descriptors' names left out.
fn calls_named(traces: &Traces, prefix: &str) -> impl Iterator<Item = String> {
    traces
        .iter()
        .flatten()
        .map(|c| without_fd_names(c))
        .filter(|c| c.starts_with(prefix))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn malloc_thresholds_anonymous_and_file_mappings_and_a_failure_match_strace() {
    require_root!();
    let binary = workload("mixed_alloc");
    let file = scratch("mapped.dat");
    let traces = assert_same_as_strace(
        DEFAULT_SET,
        &[binary.to_str().unwrap(), file.to_str().unwrap()],
    );
    // The program really exercised what it claims to.
    assert!(
        calls_named(&traces, "brk(0x").count() >= 2,
        "heap growth by brk"
    );
    assert!(calls_named(&traces, "mremap(").count() == 1);
    assert!(calls_named(&traces, "madvise(").any(|c| c.contains("MADV_DONTNEED")));
    assert!(
        calls_named(
            &traces,
            "mmap(NULL, 20480, PROT_READ|PROT_WRITE, MAP_SHARED, 3, 0)"
        )
        .count()
            == 1
    );
    assert!(
        calls_named(
            &traces,
            "mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3, 0x1000)"
        )
        .count()
            == 1
    );
    assert_eq!(
        calls_named(&traces, "mprotect(0x10000, 4096, PROT_READ) = -1 ENOMEM").count(),
        1
    );
    assert!(
        calls_named(&traces, "mmap(NULL, 1052672,").count() >= 1,
        "large malloc by mmap"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn threads_match_strace_thread_by_thread() {
    require_root!();
    let binary = workload("threads_alloc");
    let traces = assert_same_as_strace(DEFAULT_SET, &[binary.to_str().unwrap()]);
    assert_eq!(traces.len(), 5, "main thread and 4 workers");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn fork_and_exec_match_strace_process_by_process() {
    require_root!();
    let binary = workload("fork_exec");
    let traces = assert_same_as_strace(DEFAULT_SET, &[binary.to_str().unwrap(), "/bin/true"]);
    assert_eq!(traces.len(), 2, "parent and child");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_narrowed_set_matches_strace() {
    require_root!();
    let binary = workload("mixed_alloc");
    let file = scratch("mapped2.dat");
    let traces = assert_same_as_strace(
        "mremap,mprotect",
        &[binary.to_str().unwrap(), file.to_str().unwrap()],
    );
    assert!(
        traces
            .iter()
            .flatten()
            .all(|c| c.starts_with("mremap(") || c.starts_with("mprotect("))
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn descriptors_kept_open_are_named_exactly_as_strace_y_names_them() {
    require_root!();
    let binary = workload("map_fds");
    let dir = scratch("fds");
    fs::create_dir_all(&dir).unwrap();
    let traces = assert_same_as_strace("mmap", &[binary.to_str().unwrap(), dir.to_str().unwrap()]);
    // map_fds's own calls (lengths 1001 to 1007) keep their descriptors open while memtrace
    // reads: each must be named, and named as strace named it (checked above).
    let own: BTreeMap<u64, &String> = traces
        .iter()
        .flatten()
        .filter_map(|c| {
            let len: u64 = c
                .strip_prefix("mmap(NULL, ")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (1001..=1007).contains(&len).then_some((len, c))
        })
        .collect();
    let dir = dir.display();
    let expected = [
        (1001, format!("3<{dir}/plain>, 0)")),
        (1002, format!("3<{dir}/plain>, 0x1000)")),
        (1003, format!("4<{dir}/gone>(deleted), 0)")),
        (1004, format!("5<{dir}/odd \\74name\\76\\t\\\"x\\\">, 0)")),
        (1005, "6</memfd:map_fds>(deleted), 0)".into()),
        (1006, "7</dev/zero>, 0)".into()),
        (1007, "MAP_ANONYMOUS, -1, 0)".into()),
    ];
    assert_eq!(own.len(), expected.len(), "{own:#?}");
    for (len, tail) in expected {
        assert!(
            own[&len].contains(&tail),
            "{len}: {} lacks {tail}",
            own[&len]
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn json_fd_path_is_the_descriptors_link() {
    require_root!();
    let binary = workload("map_fds");
    let dir = scratch("fds-json");
    fs::create_dir_all(&dir).unwrap();
    let (records, code) = json_run(&[
        "trace",
        "--json",
        "-e",
        "mmap",
        "--",
        binary.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let fd_path: BTreeMap<u64, Option<&str>> = records
        .iter()
        .filter(|r| r["type"] == "syscall" && r["args"]["addr"] == 0)
        .filter_map(|r| Some((r["args"]["len"].as_u64()?, r)))
        .filter(|(len, _)| (1001..=1007).contains(len))
        .map(|(len, r)| (len, r.get("fd_path").map(|p| p.as_str().unwrap())))
        .collect();
    let dir = dir.display().to_string();
    let plain = format!("{dir}/plain");
    let gone = format!("{dir}/gone (deleted)");
    let odd = format!("{dir}/odd <name>\t\"x\"");
    let expected: BTreeMap<u64, Option<&str>> = [
        (1001, Some(plain.as_str())),
        (1002, Some(&plain)),
        // The link verbatim: the kernel's own suffix for an unlinked file.
        (1003, Some(&gone)),
        (1004, Some(&odd)),
        (1005, Some("/memfd:map_fds (deleted)")),
        (1006, Some("/dev/zero")),
        // Anonymous: no descriptor, no field.
        (1007, None),
    ]
    .into_iter()
    .collect();
    assert_eq!(fd_path, expected);
}

/// memtrace's records (valid by the trace schema) and exit code, whatever the code.
fn json_run(args: &[&str]) -> (Vec<serde_json::Value>, i32) {
    let out = run_memtrace(args);
    let records = schema::records("trace", &String::from_utf8(out.stdout).unwrap());
    (records, out.status.code().unwrap())
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn json_records_and_kernel_counts_agree_and_nothing_is_lost() {
    require_root!();
    let binary = workload("mixed_alloc");
    let file = scratch("mapped3.dat");
    let (records, code) = json_run(&[
        "trace",
        "--json",
        "--",
        binary.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(records[0]["type"], "start");
    let calls: Vec<_> = records.iter().filter(|r| r["type"] == "syscall").collect();
    let summary = summary(&records);
    let counted: u64 = summary["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["calls"].as_u64().unwrap())
        .sum();
    // Every call the kernel counted crossed to userspace: seen + dropped == produced.
    assert_eq!(calls.len() as u64, counted);
    assert_eq!(summary["records"].as_u64().unwrap(), counted);
    assert_eq!(summary["dropped"]["syscall_ring_full"], 0);
    assert_eq!(summary["dropped"]["syscall_pending_full"], 0);
    let failed: Vec<_> = calls.iter().filter(|c| c.get("errno").is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["syscall"], "mprotect");
    assert_eq!(failed[0]["errno"], "ENOMEM");
    assert_eq!(failed[0]["ret"], -12);
    assert_eq!(failed[0]["args"]["start"], 0x10000);
    assert_eq!(failed[0]["args"]["prot"], "PROT_READ");
    for call in &calls {
        for field in [
            "pid",
            "tid",
            "comm",
            "syscall",
            "args",
            "ret",
            "latency_ns",
            "ts_ns",
        ] {
            assert!(call.get(field).is_some(), "{field} missing in {call}");
        }
    }
    // The large blocks: mapped and unmapped bytes add up in the kernel's statistics.
    let mmap = summary["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["syscall"] == "mmap")
        .unwrap();
    let mapped: u64 = calls
        .iter()
        .filter(|c| c["syscall"] == "mmap" && c.get("errno").is_none())
        .map(|c| c["args"]["len"].as_u64().unwrap())
        .sum();
    assert_eq!(mmap["mapped_bytes"].as_u64().unwrap(), mapped);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn each_call_carries_the_name_its_thread_had_then() {
    require_root!();
    let binary = workload("renames");
    let (records, code) = json_run(&[
        "trace",
        "--json",
        "-e",
        "mmap",
        "--",
        binary.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let page = 4096;
    // The workload's own calls, told apart by their lengths (see renames.c).
    let named: BTreeMap<u64, (String, u64)> = records
        .iter()
        .filter(|r| r["type"] == "syscall" && r["args"]["addr"] == 0)
        .filter_map(|r| {
            let pages = r["args"]["len"].as_u64()? / page;
            let comm = r["comm"].as_str()?.to_owned();
            Some((pages, (comm, r["tid"].as_u64()?)))
        })
        .filter(|(pages, _)| [3, 5, 7, 11].contains(pages))
        .collect();
    let comm = |pages: u64| named.get(&pages).map(|(comm, _)| comm.as_str());
    assert_eq!(comm(3), Some("renames"), "{named:?}");
    // prctl(PR_SET_NAME) by the thread itself.
    assert_eq!(comm(5), Some("renamed-main"), "{named:?}");
    // A new thread starts with its creator's name.
    assert_eq!(comm(7), Some("renamed-main"), "{named:?}");
    // Renamed by another thread, through /proc.
    assert_eq!(comm(11), Some("from-outside"), "{named:?}");
    assert_eq!(named[&7].1, named[&11].1, "the same thread: {named:?}");
    assert_ne!(named[&5].1, named[&7].1, "two threads: {named:?}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn summary_only_counts_match_strace_per_syscall() {
    require_root!();
    let binary = workload("mixed_alloc");
    let file = scratch("mapped4.dat");
    let argv = [binary.to_str().unwrap(), file.to_str().unwrap()];
    let expected = under_strace(DEFAULT_SET, &argv);
    let mut args = vec!["trace", "-c", "--json", "--"];
    args.extend_from_slice(&argv);
    let (records, code) = json_run(&args);
    assert_eq!(code, 0);
    assert!(
        records.iter().all(|r| r["type"] != "syscall"),
        "-c sends no per-call record"
    );
    let summary = summary(&records);
    for row in summary["syscalls"].as_array().unwrap() {
        let name = row["syscall"].as_str().unwrap();
        let strace_calls = calls_named(&expected, &format!("{name}(")).count() as u64;
        let strace_errors = calls_named(&expected, &format!("{name}("))
            .filter(|c| c.contains(" = -1 "))
            .count() as u64;
        assert_eq!(row["calls"].as_u64().unwrap(), strace_calls, "{name} calls");
        assert_eq!(
            row["errors"].as_u64().unwrap(),
            strace_errors,
            "{name} errors"
        );
        assert!(row["min_ns"].as_u64() <= row["avg_ns"].as_u64());
        assert!(row["avg_ns"].as_u64() <= row["max_ns"].as_u64());
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn failed_and_min_size_filter_in_the_kernel() {
    require_root!();
    let binary = workload("mixed_alloc");
    let file = scratch("mapped5.dat");
    let (records, _) = json_run(&[
        "trace",
        "--json",
        "--failed",
        "--",
        binary.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let calls: Vec<_> = records.iter().filter(|r| r["type"] == "syscall").collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["errno"], "ENOMEM");

    let (records, _) = json_run(&[
        "trace",
        "--json",
        "--min-size",
        "1000000",
        "-e",
        "mmap,munmap",
        "--",
        binary.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    let calls: Vec<_> = records.iter().filter(|r| r["type"] == "syscall").collect();
    assert!(!calls.is_empty());
    assert!(
        calls
            .iter()
            .all(|c| c["args"]["len"].as_u64().unwrap() >= 1_000_000),
        "{calls:?}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_command_exit_status_is_passed_on() {
    require_root!();
    let out = run_memtrace(&["trace", "-c", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_pid_that_exits_mid_trace_ends_with_a_summary() {
    require_root!();
    // Two threads: the second one's stack is mapped after `go`, while traced.
    let mut work = Workload::start(&workload("touch_pages"), &["100", "2"]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["trace", "--pid", &pid]);
    work.go();
    work.finish();
    let (records, status) = tracer.wait(common::patience(10));
    assert!(status.success(), "{status}");
    assert_eq!(summary(&records)["reason"], "targets_exited");
    assert!(
        records.iter().any(|r| r["type"] == "syscall"),
        "the toucher's mmap"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn duration_ends_with_the_summary() {
    require_root!();
    let mut work = Workload::start(&workload("touch_pages"), &["100", "1"]);
    let pid = work.pid().to_string();
    let started = std::time::Instant::now();
    let (records, code) = json_run(&["trace", "--json", "--pid", &pid, "--duration", "0.5"]);
    let took = started.elapsed();
    work.go();
    work.finish();
    assert_eq!(code, 0);
    assert_eq!(summary(&records)["reason"], "duration");
    assert!(
        took >= Duration::from_millis(500) && took < common::patience(10),
        "{took:?}"
    );
    // System-wide and counting only, too.
    let (records, code) = json_run(&["trace", "-c", "--json", "--duration", "0.3"]);
    assert_eq!(code, 0);
    assert_eq!(summary(&records)["reason"], "duration");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nothing_stays_loaded_after_ctrl_c() {
    require_root!();
    let mut work = Workload::start(&workload("touch_pages"), &["100", "1"]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["trace", "-f", "--pid", &pid]);
    let programs = tracer.programs();
    let names: Vec<&str> = programs.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.iter().any(|name| name.starts_with("mt_sys_enter")) && names.contains(&"mt_sys_exit"),
        "{names:?}"
    );
    work.go();
    let (records, status) = tracer.interrupt();
    work.finish();
    assert!(status.success());
    assert_eq!(summary(&records)["reason"], "signal");
    let ids: Vec<u64> = programs.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        still_loaded_after(&ids, common::patience(RELEASE_SECS)),
        vec![]
    );
}

fn assert_fails(args: &[&str], code: i32, message: &str) {
    let out = run_memtrace(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn bad_input_is_one_clear_line_and_an_exit_code() {
    require_root!();
    let nobody = unused_pid().to_string();
    assert_fails(&["trace", "--pid", &nobody], 4, "no such process");
    assert_fails(
        &["trace", "-e", "mmap,open", "--", "true"],
        2,
        "valid: brk, mmap",
    );
    assert_fails(
        &["trace", "-o", "/proc/nope/out", "--", "true"],
        2,
        "cannot write to /proc/nope/out",
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn unprivileged_is_refused_before_touching_the_kernel() {
    require_root!();
    let out = common::memtrace_without_capabilities()
        .args(["trace", "--", "true"])
        .output()
        .expect("run memtrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    let _ = memtrace;
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_storm_bigger_than_the_ring_buffer_loses_nothing_silently() {
    require_root!();
    // 200,000 records of 112 bytes: almost three times the 8 MiB ring buffer.
    let calls = 200_000u64;
    let mut work = common::Workload::start(&workload("map_loop"), &[&(calls / 2).to_string()]);
    let pid = work.pid().to_string();
    let tracer = common::Tracer::start(&["trace", "--pid", &pid, "-e", "mmap,munmap"]);
    // A stopped reader: the kernel fills the ring, then can only count what it cannot keep.
    tracer.signal(libc::SIGSTOP);
    work.go();
    tracer.signal(libc::SIGCONT);
    let (records, status) = tracer.interrupt();
    work.finish();
    assert!(status.success(), "{status}");
    let summary = summary(&records);
    let received = summary["records"].as_u64().unwrap();
    let dropped = summary["dropped"]["syscall_ring_full"].as_u64().unwrap();
    let printed = records.iter().filter(|r| r["type"] == "syscall").count() as u64;
    assert!(
        dropped > 0,
        "the storm should overflow the ring buffer (received {received})"
    );
    assert_eq!(printed, received, "every record received is printed");
    assert_eq!(
        received + dropped,
        calls,
        "received + dropped must be exactly the calls made"
    );
}
