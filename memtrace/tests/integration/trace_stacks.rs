//! `memtrace trace --stack` against `strace -k` (libdw unwinding) on the same programs, built
//! without frame pointers, both under `setarch -R` so that addresses agree: every call must
//! come with the same frames (module and file offset), innermost first, thread by thread.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::common::{self, workload_built};

/// One call, as `name(args) = ret`, and its frames as `module [0xoffset]`.
type Call = (String, Vec<String>);

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("trace-stacks");
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `module(symbol+0xoff) [0xoffset]...` → `module [0xoffset]`: symbol names differ between
/// the tools (strace names from `.dynsym` only), files and offsets must not.
fn frame(line: &str) -> String {
    let line = line.trim_start().trim_start_matches("> ");
    let module = &line[..line.find('(').unwrap_or(line.len())];
    let offset = line
        .find(" [")
        .map(|at| &line[at + 1..at + 1 + line[at..].find(']').unwrap_or(0)])
        .unwrap_or("?");
    format!("{module} {offset}")
}

/// Calls per thread, threads sorted by what they did (their ids differ between runs).
fn parse(text: &str, thread_of: impl Fn(&str) -> Option<(u32, String)>) -> Vec<Vec<Call>> {
    let mut threads: BTreeMap<u32, Vec<Call>> = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        if line.trim_start().starts_with('>') {
            if let Some(tid) = current {
                let calls = threads.get_mut(&tid).unwrap();
                calls.last_mut().unwrap().1.push(frame(line));
            }
            continue;
        }
        current = None;
        if let Some((tid, call)) = thread_of(line) {
            threads.entry(tid).or_default().push((call, Vec::new()));
            current = Some(tid);
        }
    }
    let mut sorted: Vec<Vec<Call>> = threads.into_values().collect();
    sorted.sort();
    sorted
}

/// `name(args) = value`, as both tools print it.
fn call_text(call: &str, ret: &str) -> String {
    format!(
        "{} = {}",
        call.trim_end(),
        ret.split_whitespace().next().unwrap_or("")
    )
}

fn under_strace(argv: &[&str]) -> Vec<Vec<Call>> {
    let log = scratch("strace.log");
    let status = Command::new("setarch")
        .args([
            "-R",
            "strace",
            "-f",
            "-qq",
            "-k",
            "-e",
            "trace=mmap,munmap",
            "-o",
        ])
        .arg(&log)
        .args(argv)
        .stdout(Stdio::null())
        .status()
        .expect("strace is installed by `cargo xtask setup`");
    assert!(status.success(), "strace -k {argv:?}: {status}");
    // A call another thread interrupted is printed in two parts; its stack follows the second.
    let unfinished = std::cell::RefCell::new(BTreeMap::<u32, String>::new());
    parse(&fs::read_to_string(&log).unwrap(), |line| {
        let (tid, rest) = line.split_once(' ')?;
        let tid: u32 = tid.parse().ok()?;
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            unfinished.borrow_mut().insert(tid, head.to_owned());
            return None;
        }
        let whole = if rest.starts_with("<... ") {
            let tail = &rest[rest.find("resumed>")? + "resumed>".len()..];
            format!(
                "{}{}",
                unfinished.borrow_mut().remove(&tid)?,
                tail.trim_start()
            )
        } else if rest.starts_with("+++") || rest.starts_with("---") {
            return None;
        } else {
            rest.to_owned()
        };
        let (call, ret) = whole.rsplit_once(" = ")?;
        Some((tid, call_text(call, ret)))
    })
}

fn under_memtrace(argv: &[&str]) -> Vec<Vec<Call>> {
    let log = scratch("memtrace.log");
    let status = Command::new("setarch")
        .arg("-R")
        .arg(env!("CARGO_BIN_EXE_memtrace"))
        .args(["trace", "--stack", "-e", "mmap,munmap", "-o"])
        .arg(&log)
        .arg("--")
        .args(argv)
        .stdout(Stdio::null())
        .status()
        .expect("run memtrace");
    assert!(
        status.success(),
        "memtrace trace --stack {argv:?}: {status}"
    );
    parse(&fs::read_to_string(&log).unwrap(), |line| {
        // 12:03:01.532118 comm[pid/tid] name(args) = ret <latency>
        let (_, rest) = line.split_once(' ')?;
        let (ids, call) = rest[rest.find('[')? + 1..].split_once("] ")?;
        let tid = ids.split_once('/')?.1.parse().ok()?;
        let call = &call[..call.rfind(" <")?];
        let (call, ret) = call.rsplit_once(" = ")?;
        Some((tid, call_text(call, ret)))
    })
}

/// `exact`: the calls' addresses must agree too (not with threads, whose interleaving decides
/// which mapping each gets).
fn assert_same_stacks_as_strace(argv: &[&str], exact: bool) {
    let without_addresses = |threads: Vec<Vec<Call>>| -> Vec<Vec<Call>> {
        let mut threads: Vec<Vec<Call>> = threads
            .into_iter()
            .map(|calls| {
                calls
                    .into_iter()
                    .map(|(call, frames)| {
                        (if exact { call } else { hide_addresses(&call) }, frames)
                    })
                    .collect()
            })
            .collect();
        threads.sort();
        threads
    };
    let expected = without_addresses(under_strace(argv));
    let seen = without_addresses(under_memtrace(argv));
    assert_eq!(
        seen.iter().map(Vec::len).collect::<Vec<_>>(),
        expected.iter().map(Vec::len).collect::<Vec<_>>(),
        "calls per thread"
    );
    let mut nested = 0;
    for (thread, (m, s)) in seen.iter().zip(&expected).enumerate() {
        for (i, (ours, theirs)) in m.iter().zip(s).enumerate() {
            assert_eq!(ours.0, theirs.0, "thread {thread}, call {i}");
            assert_eq!(
                ours.1, theirs.1,
                "thread {thread}, call {i} ({}): memtrace's frames vs strace -k's",
                ours.0
            );
            nested += usize::from(ours.1.len() >= 4 && ours.0.starts_with("mmap(NULL"));
        }
    }
    assert!(nested > 0, "no call from the nested functions was compared");
}

/// `0x7ffff7fbd000` → `0x…`.
fn hide_addresses(call: &str) -> String {
    let mut out = String::new();
    let mut rest = call;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at + 2]);
        out.push('…');
        rest = rest[at + 2..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_without_frame_pointers_equal_strace_k() {
    require_tool!("strace");
    require_root!();
    let binary = workload_built("map_nested", "-nofp", &["-g", "-fomit-frame-pointer"]);
    assert_same_stacks_as_strace(&[binary.to_str().unwrap(), "20", "0"], true);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn stacks_of_threads_equal_strace_k() {
    require_tool!("strace");
    require_root!();
    let binary = workload_built("map_nested", "-nofp", &["-g", "-fomit-frame-pointer"]);
    assert_same_stacks_as_strace(&[binary.to_str().unwrap(), "10", "3"], false);
}

/// The `syscall` records of `trace FLAGS --json -e mmap` on the workload doing `rounds`.
fn json_calls(flags: &[&str], rounds: &str) -> Vec<serde_json::Value> {
    json_trace(flags, rounds).0
}

/// `trace --json -e mmap` on map_nested: its calls, its summary, and what it said on stderr.
fn json_trace(flags: &[&str], rounds: &str) -> (Vec<serde_json::Value>, serde_json::Value, String) {
    let binary = workload_built("map_nested", "-nofp", &["-g", "-fomit-frame-pointer"]);
    let mut args = vec!["trace"];
    args.extend(flags);
    args.extend([
        "--json",
        "-e",
        "mmap",
        "--",
        binary.to_str().unwrap(),
        rounds,
        "0",
    ]);
    let (records, stderr) = common::json_run(&args);
    let summary = common::summary(&records).clone();
    let calls = records
        .into_iter()
        .filter(|r: &serde_json::Value| r["type"] == "syscall")
        .collect();
    (calls, summary, stderr)
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn json_stacks_name_functions_files_and_lines() {
    require_root!();
    let calls = json_calls(&["--stack"], "3");
    let nested: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c["stack"][1]["symbol"] == "map_inner")
        .collect();
    assert_eq!(nested.len(), 3, "three maps from map_inner: {calls:#?}");
    for call in nested {
        let stack = call["stack"].as_array().unwrap();
        let names: Vec<&str> = stack
            .iter()
            .map(|f| f["symbol"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            &names[1..4],
            ["map_inner", "map_middle", "map_outer"],
            "{call}"
        );
        assert!(
            stack[1]["file"].as_str().unwrap().ends_with("map_nested.c"),
            "{call}"
        );
        assert!(stack[1]["line"].as_u64().unwrap() > 0);
        assert!(
            stack[1]["module"]
                .as_str()
                .unwrap()
                .ends_with("map_nested-nofp")
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn kernel_stack_adds_the_kernels_frames_above_the_users() {
    require_root!();
    let (calls, summary, stderr) = json_trace(&["--stack", "--kernel-stack"], "2");
    if summary["kernel_stacks_missing"] == summary["records"] {
        // Such a kernel hands programs on syscall tracepoints the user's registers: memtrace
        // must say that no call has a kernel stack, not show them without one silently.
        assert!(stderr.contains("no kernel stack"), "{stderr}");
        skip_on_this_host!("this kernel gives programs on syscall tracepoints no kernel stack");
    }
    assert_eq!(summary["kernel_stacks_missing"], 0, "{summary}");
    let nested: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| {
            c["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["symbol"] == "map_inner")
        })
        .collect();
    assert_eq!(nested.len(), 2, "{calls:#?}");
    for call in nested {
        let stack = call["stack"].as_array().unwrap();
        let kernel: Vec<&serde_json::Value> = stack
            .iter()
            .take_while(|f| f["module"] == "[kernel]")
            .collect();
        // The syscall's entry into the kernel, named from kallsyms.
        assert!(
            kernel.iter().any(|f| f["symbol"]
                .as_str()
                .is_some_and(|s| s.starts_with("do_syscall_64"))),
            "{call}"
        );
        // Then the user frames, innermost first: libc's mmap, then the program's.
        let user = &stack[kernel.len()..];
        assert!(
            user[0]["module"].as_str().unwrap().contains("libc"),
            "{call}"
        );
        assert_eq!(user[1]["symbol"], "map_inner", "{call}");
    }
}
