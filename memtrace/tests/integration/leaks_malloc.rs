//! `memtrace leaks --malloc` against what a program allocated and kept (`malloc_keep.c` says
//! exactly what, per function), against heaptrack on the same program, and against the
//! kernel's own view of the target once memtrace has gone, even by SIGKILL.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::FileExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::common::{self, Tracer, Workload, workload_built};
use serde_json::Value;

/// What `malloc_keep` keeps, per function (its header comment).
const KEPT: [(&str, u64, u64); 6] = [
    ("keep_before", 10_000, 10),
    ("keep_small", 14_800, 150),
    ("keep_large", 3 << 20, 3),
    ("keep_grown", 65_536, 1),
    ("keep_aligned", 35_272, 8),
    ("keep_edges", 100, 1),
];
/// Where heaptrack's "leaked" differs from what the program kept, per function: it misses
/// `keep_aligned`'s `pvalloc` (not intercepted) and `reallocarray` (glibc calls its own
/// realloc inside, which no preloaded library sees), and counts the 50 bytes `keep_edges`
/// freed with `realloc(p, 0)` (glibc frees and returns NULL; heaptrack sees no free).
fn heaptrack_error(function: &str) -> i64 {
    match function {
        "keep_aligned" => -(8192 + 300),
        "keep_edges" => 50,
        _ => 0,
    }
}

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

/// The records of `memtrace leaks --malloc --json -- BINARY`, run to the program's exit.
fn run_to_exit(binary: &std::path::Path) -> Vec<Value> {
    run_command(&[], &[binary.to_str().unwrap()])
}

/// The records of `memtrace leaks --malloc --json FLAGS -- COMMAND`, run to its exit.
fn run_command(flags: &[&str], command: &[&str]) -> Vec<Value> {
    let args = [&["leaks", "--malloc", "--json"], flags, &["--"], command].concat();
    common::json_run(&args).0
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
#[ignore = "needs root: cargo xtask test"]
fn a_command_s_blocks_left_at_exit_are_exact_per_function_and_heaptrack_s() {
    require_root!();
    require_tool!("heaptrack");
    let binary = malloc_keep();
    let records = run_to_exit(&binary);
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
    // keep_edges: a realloc and a calloc that fail.
    assert_eq!(counts["failed"], 2, "{counts}");
    assert_eq!(counts["recorded"], counts["allocations"], "{counts}");
    assert_eq!(counts["lost_returns"], 0, "{counts}");

    let theirs = heaptrack_leaked(&binary);
    for (name, _, _) in KEPT {
        assert_eq!(
            theirs.get(name).copied().unwrap_or(0) as i64,
            ours[name].0 as i64 + heaptrack_error(name),
            "{name}: heaptrack's leaked bytes vs memtrace's"
        );
    }
    assert_eq!(theirs.get("churn").copied().unwrap_or(0), 0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
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
#[ignore = "needs root: cargo xtask test"]
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
    let _ = tracer.wait(common::patience(5));

    let deadline = Instant::now() + common::patience(5);
    while malloc_bytes(pid).0 != file && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        malloc_bytes(pid).0,
        file,
        "malloc restored after memtrace was killed"
    );
    let left = common::still_loaded_after(&programs, common::patience(5));
    assert!(left.is_empty(), "programs left in the kernel: {left:?}");
    // And the target carries on, allocating through the restored code.
    work.go();
    work.finish();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_static_program_is_traced_through_its_own_malloc_or_refused_if_stripped() {
    require_root!();
    let binary = workload_built("malloc_keep", "-static", &["-static", "-g"]);
    let records = run_to_exit(&binary);
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

/// What `--min-size`, `--sample` and a full table leave out, counted.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn min_size_sample_and_a_full_table_record_less_and_say_so() {
    require_root!();
    let binary = malloc_keep();
    let binary = binary.to_str().unwrap();
    let run = |flags: &[&str]| run_command(flags, &[binary]).last().unwrap().clone();

    // Blocks under 1000 bytes are not recorded: keep_small's and keep_before's (1000 is not
    // under it), memalign's 300, reallocarray's 300; realloc's chain ends at 64 KiB.
    let last = run(&["--min-size", "1000"]);
    let ours = per_function(&last);
    assert_eq!(ours.get("keep_small"), None, "{last:#}");
    assert_eq!(ours.get("keep_before"), Some(&(10_000, 10)));
    assert_eq!(ours.get("keep_large"), Some(&(3 << 20, 3)));
    assert_eq!(ours.get("keep_grown"), Some(&(65_536, 1)));
    assert_eq!(ours.get("keep_aligned"), Some(&(35_272 - 600, 6)));
    let counts = &last["malloc"];
    assert!(
        counts["recorded"].as_u64() < counts["allocations"].as_u64(),
        "{counts}"
    );

    // One in two, at random: about half of 80,000 allocations.
    let last = run(&["--sample", "2"]);
    let counts = &last["malloc"];
    let (all, recorded) = (
        counts["allocations"].as_u64().unwrap(),
        counts["recorded"].as_u64().unwrap(),
    );
    let share = recorded as f64 / all as f64;
    assert!((0.45..0.55).contains(&share), "{recorded} of {all}");

    // A table of 100: what does not fit is dropped, and counted.
    let last = run(&["--max-allocations", "100"]);
    let counts = &last["malloc"];
    let full = last["dropped"]["alloc_table_full"].as_u64().unwrap();
    assert!(full > 0, "{last:#}");
    assert_eq!(
        counts["recorded"].as_u64().unwrap() + full,
        counts["allocations"].as_u64().unwrap(),
        "{counts}"
    );
    assert!(last["total_blocks"].as_u64().unwrap() <= 100);
}

/// `exec` replaces the address space: what the shell and env allocated is forgotten.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn exec_forgets_the_previous_image_s_blocks() {
    require_root!();
    let binary = malloc_keep();
    let script = format!("exec env MALLOC_KEEP=1 {}", binary.display());
    let records = run_command(&[], &["sh", "-c", &script]);
    let last = final_report(&records);
    for row in last["stacks"].as_array().unwrap() {
        assert_eq!(row["comm"], "malloc_keep", "{row}");
        // Nothing of the images before (the shell's, env's): their blocks went with them,
        // even read after the process's exit.
        for frame in row["stack"].as_array().unwrap() {
            let module = frame["module"].as_str().unwrap_or("");
            let program = module.rsplit('/').next().unwrap_or("");
            assert!(!["sh", "dash", "bash", "env"].contains(&program), "{row}");
        }
    }
    let ours = per_function(last);
    for (name, bytes, blocks) in KEPT {
        assert_eq!(ours.get(name), Some(&(bytes, blocks)), "{name}: {last:#}");
    }
}

/// Attached while four threads allocate without pause: every block kept after is seen (a call
/// caught between the attaching of its probes must not blind its thread).
#[test]
#[ignore = "needs root: cargo xtask test"]
fn attached_to_threads_allocating_without_pause_it_misses_nothing_after() {
    require_root!();
    let binary = workload_built("malloc_threads", "", &["-g"]);
    let mut work = Workload::start(&binary, &[]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["leaks", "--malloc", "--pid", &pid]);
    thread::sleep(Duration::from_millis(300));
    work.go();
    let (records, status) = tracer.interrupt();
    work.finish();
    assert!(status.success());
    let last = records.iter().rev().find(|r| r["type"] == "leaks").unwrap();
    let mut kept = (0, 0);
    for row in last["stacks"].as_array().unwrap() {
        let frames = row["stack"].as_array().unwrap();
        if frames
            .iter()
            .any(|frame| frame["symbol"] == "keep_per_thread")
        {
            kept.0 += row["bytes"].as_u64().unwrap();
            kept.1 += row["blocks"].as_u64().unwrap();
        }
    }
    assert_eq!(kept, (25_600, 400), "{last:#}");
    assert_eq!(last["malloc"]["lost_returns"], 0, "{}", last["malloc"]);
}

/// A command's descendants are followed from birth: each child is given its uprobes before its
/// `exec` runs its program (it waits stopped there until it has).
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_command_s_children_are_followed_from_birth() {
    require_root!();
    let binary = malloc_keep();
    let script = format!("{0}; {0} && true", binary.display());
    let records = run_command(&[], &["sh", "-c", &script]);
    let last = final_report(&records);
    let children: std::collections::BTreeSet<u64> = last["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["comm"] == "malloc_keep")
        .map(|row| row["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(children.len(), 2, "{last:#}");
    let ours = per_function(last);
    for (name, bytes, blocks) in KEPT {
        assert_eq!(
            ours.get(name),
            Some(&(2 * bytes, 2 * blocks)),
            "{name}: {last:#}"
        );
    }
}

/// The file a process maps its C library from.
fn libc_of(pid: u32) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .unwrap_or_else(|| panic!("no libc in {pid}'s mappings"))
        .to_owned()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn blocks_kept_equal_what_a_uprobe_script_on_the_same_calls_counts() {
    require_root!();
    require_tool!("bpftrace");
    let binary = workload_built("malloc_plain", "", &["-g"]);
    let mut work = Workload::start(&binary, &[]);
    let pid = work.pid();
    // The peer: bpftrace's own uprobes on malloc and free of the same process, keeping each
    // live block's size as bcc's memleak does.
    let libc = libc_of(pid);
    let peer = common::bpftrace::Bpftrace::start(&format!(
        "uprobe:{libc}:malloc /pid == {pid}/ {{ @size[tid] = arg0; @in[tid] = 1; }} \
         uretprobe:{libc}:malloc /pid == {pid} && @in[tid] == 1/ {{ \
             if (retval != 0) {{ @live[retval] = @size[tid]; @bytes = sum(@size[tid]); \
                                @blocks = sum(1); }} \
             delete(@in[tid]); delete(@size[tid]); }} \
         uprobe:{libc}:free /pid == {pid} && @live[arg0] != 0/ {{ \
             @bytes = sum(-@live[arg0]); @blocks = sum(-1); delete(@live[arg0]); }} \
         END {{ clear(@live); clear(@size); clear(@in); }}"
    ));
    let tracer = Tracer::start(&["leaks", "--malloc", "--pid", &pid.to_string()]);
    work.go();
    let (records, status) = tracer.interrupt();
    let seen = peer.stop();
    work.finish();
    assert!(status.success());
    let last = final_report(&records);
    let peer_bytes = common::bpftrace::number(&seen, "@bytes");
    let peer_blocks = common::bpftrace::number(&seen, "@blocks");
    assert_eq!(peer_blocks, 300, "the peer's count of kept blocks");
    assert_eq!(
        (
            last["total_bytes"].as_u64().unwrap(),
            last["total_blocks"].as_u64().unwrap()
        ),
        (peer_bytes, peer_blocks),
        "memtrace vs the uprobe script: {last}"
    );
    // 24 * (1 + 2 + ... + 300)
    assert_eq!(peer_bytes, 24 * 300 * 301 / 2);
}
