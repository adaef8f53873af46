//! `memtrace faults` against the kernel's own accounting: `/proc/PID/stat` for running
//! processes, `wait4` rusage for spawned commands, bpftool for what is left loaded.

use std::{fs, io::Write, time::Duration};

use crate::common::{
    self, Tracer, Workload, proc_faults, run_memtrace, schema, still_loaded_after, summary,
    totals_of, workload,
};

/// How long (seconds, before `common::patience`) the kernel may take to free an exited
/// memtrace's programs.
const RELEASE_SECS: u64 = 2;

const PAGES: u64 = 20_000;

/// Traces a waiting workload by pid and checks that memtrace's totals equal the deltas of
/// /proc/PID/stat over exactly the traced window.
fn assert_pid_totals_match_proc(binary: &str, args: &[&str], extra: &[&str]) -> (u64, u64) {
    let mut work = Workload::start(&workload(binary), args);
    let pid = work.pid().to_string();
    let mut flags = vec!["faults", "--pid", &pid, "--interval", "0.2"];
    flags.extend_from_slice(extra);
    let tracer = Tracer::start(&flags);
    let before = proc_faults(work.pid());
    work.go();
    let after = proc_faults(work.pid());
    let (records, status) = tracer.interrupt();
    work.finish();

    assert!(status.success(), "memtrace exited with {status}");
    let summary = summary(&records);
    let counted = totals_of(summary, work_pid(&pid));
    let kernel = (after.0 - before.0, after.1 - before.1);
    assert_eq!(
        counted, kernel,
        "memtrace (minor, major) vs /proc/{pid}/stat deltas"
    );
    assert_eq!(summary["dropped"]["fault_table_full"], 0);
    counted
}

fn work_pid(pid: &str) -> u32 {
    pid.parse().unwrap()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn pid_totals_equal_proc_stat_deltas_for_fresh_anonymous_pages() {
    require_root!();
    let (minor, major) =
        assert_pid_totals_match_proc("touch_pages", &[&PAGES.to_string(), "1"], &[]);
    assert!(
        minor >= PAGES,
        "touched {PAGES} fresh pages but counted {minor} minor faults"
    );
    assert_eq!(major, 0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn multi_threaded_toucher_is_counted_exactly_per_process_and_per_thread() {
    require_root!();
    let (minor, _) = assert_pid_totals_match_proc("touch_pages", &[&PAGES.to_string(), "4"], &[]);
    assert!(minor >= PAGES);

    // Per thread: the rows of one process add up to its /proc delta, over several threads.
    let mut work = Workload::start(&workload("touch_pages"), &[&PAGES.to_string(), "4"]);
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["faults", "--pid", &pid, "--threads", "--interval", "0.2"]);
    let before = proc_faults(work.pid());
    work.go();
    let after = proc_faults(work.pid());
    let (records, status) = tracer.interrupt();
    work.finish();
    assert!(status.success());
    let rows: Vec<_> = summary(&records)["processes"].as_array().unwrap().clone();
    let tids: std::collections::BTreeSet<u64> =
        rows.iter().map(|r| r["tid"].as_u64().unwrap()).collect();
    assert!(
        tids.len() >= 4,
        "expected the 4 touching threads, got {tids:?}"
    );
    let sum: u64 = rows.iter().map(|r| r["minor"].as_u64().unwrap()).sum();
    assert_eq!(sum, after.0 - before.0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn major_faults_from_a_file_evicted_from_the_page_cache() {
    require_root!();
    let path = common::disk_dir().join("major-faults.bin");
    let pages = 2048u64;
    {
        let mut file = fs::File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..pages {
            file.write_all(&chunk).unwrap();
        }
        // Clean pages only: dirty ones cannot be evicted by POSIX_FADV_DONTNEED.
        file.sync_all().unwrap();
    }
    let (_, major) = assert_pid_totals_match_proc("read_mapped", &[path.to_str().unwrap()], &[]);
    fs::remove_file(&path).unwrap();
    assert!(
        major >= pages / 2,
        "read {pages} evicted pages with readahead off but counted {major} major faults"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn spawned_command_tree_matches_the_kernels_rusage() {
    require_root!();
    let binary = workload("fork_children");
    let tracer = Tracer::start(&["faults", "--", binary.to_str().unwrap(), "4", "5000"]);
    let (records, status) = tracer.wait(common::patience(30));
    assert!(
        status.success(),
        "memtrace should exit with the command's status 0: {status}"
    );
    let summary = summary(&records);
    assert_eq!(summary["reason"], "command_exited");
    let processes = summary["processes"].as_array().unwrap();
    assert_eq!(
        processes.len(),
        5,
        "the command and its 4 children: {processes:?}"
    );
    for process in processes {
        assert!(process["minor"].as_u64().unwrap() >= 5000, "{process}");
    }
    let counted = summary["total"]["minor"].as_u64().unwrap();
    let kernel = summary["command"]["kernel_minor"].as_u64().unwrap();
    // The kernel's count also holds the few faults execve takes through get_user_pages while
    // copying arguments, which raise no perf event (see the README); nothing else may differ.
    assert!(
        counted <= kernel && kernel - counted <= 8,
        "memtrace counted {counted} minor faults, the kernel's rusage says {kernel}"
    );
    assert_eq!(
        summary["total"]["major"],
        summary["command"]["kernel_major"]
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn exit_status_of_the_command_is_memtraces() {
    require_root!();
    let out = run_memtrace(&["faults", "--json", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = run_memtrace(&["faults", "--", "/nonexistent/command"]);
    assert_eq!(out.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
}

/// Ends tracing with `signal` and checks the summary, then that every program this memtrace
/// held is gone from bpftool's list.
fn assert_signal_ends_cleanly(signal: i32) {
    let tracer = Tracer::start(&["faults", "--interval", "0.2"]);
    let programs = tracer.programs();
    let names: Vec<&str> = programs.iter().map(|(_, name)| name.as_str()).collect();
    for expected in ["mt_fault_minor", "mt_fault_major", "mt_exec"] {
        assert!(
            names.contains(&expected),
            "bpftool should list {expected} while tracing: {names:?}"
        );
    }
    tracer.signal(signal);
    let (records, status) = tracer.wait(common::patience(10));
    assert!(status.success(), "{status}");
    assert_eq!(summary(&records)["reason"], "signal");
    let ids: Vec<u64> = programs.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        still_loaded_after(&ids, common::patience(RELEASE_SECS)),
        vec![],
        "programs left loaded"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ctrl_c_prints_the_summary_and_leaves_nothing_loaded() {
    require_root!();
    assert_signal_ends_cleanly(libc::SIGINT);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn sigterm_prints_the_summary_and_leaves_nothing_loaded() {
    require_root!();
    assert_signal_ends_cleanly(libc::SIGTERM);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_target_exiting_ends_tracing_with_a_summary() {
    require_root!();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("0.5")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let tracer = Tracer::start(&["faults", "--pid", &pid, "--interval", "0.1"]);
    // memtrace does not reap the target; its exit is noticed through a pidfd.
    sleeper.wait().unwrap();
    let (records, status) = tracer.wait(common::patience(10));
    assert!(status.success());
    assert_eq!(summary(&records)["reason"], "targets_exited");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn duration_ends_tracing() {
    require_root!();
    let tracer = Tracer::start(&["faults", "--duration", "0.5", "--interval", "0.2"]);
    let (records, status) = tracer.wait(common::patience(10));
    assert!(status.success());
    assert_eq!(summary(&records)["reason"], "duration");
    assert!(
        records.iter().any(|r| r["type"] == "interval"),
        "interval records expected"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn comm_filter_counts_only_that_name() {
    require_root!();
    let mut work = Workload::start(&workload("touch_pages"), &[&PAGES.to_string(), "1"]);
    let tracer = Tracer::start(&["faults", "--comm", "touch_pages", "--interval", "0.2"]);
    let before = proc_faults(work.pid());
    work.go();
    let after = proc_faults(work.pid());
    let (records, status) = tracer.interrupt();
    let pid = work.pid();
    work.finish();
    assert!(status.success());
    let summary = summary(&records);
    assert_eq!(
        totals_of(summary, pid),
        (after.0 - before.0, after.1 - before.1)
    );
    for process in summary["processes"].as_array().unwrap() {
        assert_eq!(process["comm"], "touch_pages", "{process}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn no_such_pid_is_a_clear_error() {
    require_root!();
    let pid = common::unused_pid().to_string();
    let out = run_memtrace(&["faults", "--pid", &pid]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), format!("memtrace: no such process: {pid}"));
}

#[test]
fn unprivileged_is_a_clear_error() {
    let out = common::memtrace_without_capabilities()
        .args(["faults", "--duration", "1"])
        .output()
        .expect("run memtrace");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &["faults", "--interval", "0"][..],
        &["faults", "--duration", "-1"],
        &["faults", "--pid", "1", "--", "true"],
        &["faults", "--comm", "a-name-longer-than-15"],
        &["faults", "--bogus"],
    ] {
        let out = run_memtrace(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error:") || stderr.starts_with("memtrace:"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn system_wide_keeps_the_totals_of_processes_that_exit_between_reads() {
    require_root!();
    let tracer = Tracer::start(&["faults", "--interval", "0.1"]);
    let mut pids = Vec::new();
    for _ in 0..5 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        pids.push(child.id());
        child.wait().unwrap();
        // Let an interval pass, so each exited process is read and retired from the kernel table.
        std::thread::sleep(Duration::from_millis(250));
    }
    let (records, status) = tracer.interrupt();
    assert!(status.success(), "{status}");
    let summary = summary(&records);
    for pid in pids {
        let process = summary["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("exited process {pid} missing from the summary"));
        assert_eq!(process["comm"], "true", "named after its exec: {process}");
        assert!(process["minor"].as_u64().unwrap() > 10, "{process}");
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn sigkill_of_memtrace_still_releases_every_program() {
    require_root!();
    let tracer = Tracer::start(&["faults", "--interval", "0.2"]);
    let ids: Vec<u64> = tracer.programs().iter().map(|(id, _)| *id).collect();
    assert!(ids.len() >= 3, "expected our programs loaded: {ids:?}");
    tracer.signal(libc::SIGKILL);
    let _ = tracer.wait(common::patience(10));
    // Nothing is pinned: the kernel frees what only our file descriptors held.
    assert_eq!(
        still_loaded_after(&ids, common::patience(RELEASE_SECS)),
        vec![]
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn sigkill_of_the_command_ends_with_a_summary_and_its_status() {
    require_root!();
    let tracer = Tracer::start(&["faults", "--interval", "0.1", "--", "sleep", "30"]);
    std::thread::sleep(Duration::from_millis(300));
    let sleep_pid = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        tracer.pid(),
        tracer.pid()
    ))
    .unwrap()
    .trim()
    .parse::<i32>()
    .expect("memtrace's child");
    // SAFETY: kill(2) on the pid of the command memtrace started.
    assert_eq!(unsafe { libc::kill(sleep_pid, libc::SIGKILL) }, 0);
    let (records, status) = tracer.wait(common::patience(10));
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGKILL),
        "the command's fate is memtrace's"
    );
    let summary = summary(&records);
    assert_eq!(summary["reason"], "command_exited");
    assert_eq!(summary["command"]["exit_code"], 128 + libc::SIGKILL);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn two_instances_at_once_each_count_exactly() {
    require_root!();
    let mut work = Workload::start(&workload("touch_pages"), &[&PAGES.to_string(), "2"]);
    let pid = work.pid().to_string();
    let first = Tracer::start(&["faults", "--pid", &pid, "--interval", "0.1"]);
    let second = Tracer::start(&["faults", "--pid", &pid, "--threads", "--interval", "0.1"]);
    let before = proc_faults(work.pid());
    work.go();
    let after = proc_faults(work.pid());
    let (first, status_first) = first.interrupt();
    let (second, status_second) = second.interrupt();
    let work_pid = work.pid();
    work.finish();
    assert!(status_first.success() && status_second.success());
    let kernel = after.0 - before.0;
    assert_eq!(
        totals_of(summary(&first), work_pid),
        (kernel, after.1 - before.1)
    );
    let per_thread: u64 = summary(&second)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["minor"].as_u64().unwrap())
        .sum();
    assert_eq!(per_thread, kernel);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn explicit_targets_are_counted_by_perf_counters_with_no_program_loaded() {
    require_root!();
    // Several targets, each counted whole by perf's own counting events: nothing of memtrace's
    // runs on any fault, so it holds no BPF program at all. Kernels before 5.13 cannot limit
    // a counter's inheritance to threads: there, programs count, as exactly.
    let targets = 9;
    let mut works: Vec<Workload> = (0..targets)
        .map(|_| Workload::start(&workload("touch_pages"), &["2000", "2"]))
        .collect();
    let pids: Vec<String> = works.iter().map(|w| w.pid().to_string()).collect();
    let mut flags = vec!["faults", "--interval", "0.2"];
    for pid in &pids {
        flags.extend(["--pid", pid]);
    }
    let (tracer, start) = Tracer::start_with_record(&flags);
    if start["counted_by"] == "perf_counters" {
        assert_eq!(
            tracer.programs(),
            vec![],
            "faults --pid loaded BPF programs"
        );
    } else {
        // perf's `inherit_thread` came with Linux 5.13.
        assert!(common::kernel_version() < (5, 13), "{start}");
        assert!(!tracer.programs().is_empty(), "{start}");
    }
    let before: Vec<(u64, u64)> = works.iter().map(|w| proc_faults(w.pid())).collect();
    for work in &mut works {
        work.go();
    }
    let after: Vec<(u64, u64)> = works.iter().map(|w| proc_faults(w.pid())).collect();
    let (records, status) = tracer.interrupt();
    assert!(status.success(), "memtrace exited with {status}");
    let summary = summary(&records);
    for (i, work) in works.into_iter().enumerate() {
        let kernel = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        assert_eq!(totals_of(summary, work.pid()), kernel, "target {i}");
        assert!(kernel.0 >= 2000, "target {i}: {kernel:?}");
        work.finish();
    }
    assert_eq!(summary["dropped"]["fault_table_full"], 0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_targets_total_is_its_own_not_its_childrens() {
    require_root!();
    // The counters follow the target's new threads but not the processes it forks: like
    // /proc/PID/stat, its total leaves out a child that faults far more than it does.
    let (parent_pages, child_pages) = (2_000, 20_000);
    workload("touch_pages"); // the child it starts
    let mut work = Workload::start(
        &workload("fork_touch"),
        &[&parent_pages.to_string(), &child_pages.to_string()],
    );
    let pid = work.pid().to_string();
    let tracer = Tracer::start(&["faults", "--pid", &pid, "--interval", "0.2"]);
    let before = proc_faults(work.pid());
    work.go();
    let after = proc_faults(work.pid());
    let (records, status) = tracer.interrupt();
    let work_pid = work.pid();
    work.finish();
    assert!(status.success());
    let counted = totals_of(summary(&records), work_pid);
    assert_eq!(counted, (after.0 - before.0, after.1 - before.1));
    assert!(
        counted.0 >= parent_pages && counted.0 < child_pages,
        "{counted:?}: the parent's own {parent_pages} pages, not the child's {child_pages}"
    );
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmSize`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn rss_and_vsz_columns_equal_proc_status_at_the_same_moment() {
    require_root!();
    let pages = 5_000;
    let mut work = Workload::start(&workload("touch_pages"), &[&pages.to_string(), "1"]);
    let pid = work.pid();
    let mut tracer = Tracer::start(&["faults", "--pid", &pid.to_string(), "--interval", "0.2"]);
    // Each row's sizes, and /proc's read as soon as the row arrives (the workload is idle
    // between its steps, so both see the same memory).
    // `after`: skip rows of intervals that began before this Unix time (records queue up while
    // the test is slow to read them, as in a guest).
    let next_row = |tracer: &mut Tracer, after: f64| {
        let record = loop {
            let record = tracer
                .next_record(common::patience(5))
                .expect("an interval record");
            assert_eq!(record["type"], "interval", "{record}");
            let began =
                record["timestamp"].as_f64().unwrap() - record["interval_s"].as_f64().unwrap();
            if began >= after {
                break record;
            }
        };
        let (rss, vsz) = (status_kb(pid, "VmRSS"), status_kb(pid, "VmSize"));
        let row = &record["processes"][0];
        assert_eq!(row["pid"], pid, "{record}");
        let shown = (
            row["rss_kb"].as_u64().unwrap(),
            row["vsz_kb"].as_u64().unwrap(),
        );
        (shown, (rss, vsz))
    };
    // SAFETY: sysconf has no preconditions.
    let page_kb = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024;
    let ((before, vsz_before), (proc_before, proc_vsz)) = next_row(&mut tracer, 0.0);
    assert!(
        before.abs_diff(proc_before) <= page_kb,
        "{before} KiB vs VmRSS {proc_before}"
    );
    assert_eq!(vsz_before, proc_vsz);

    work.go();
    // A row of an interval begun once the touching was done.
    let done = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ((after, vsz_after), (proc_after, proc_vsz)) = next_row(&mut tracer, done);
    assert!(
        after.abs_diff(proc_after) <= page_kb,
        "{after} KiB vs VmRSS {proc_after}"
    );
    assert_eq!(vsz_after, proc_vsz);
    assert!(
        after >= before + pages * page_kb,
        "touching {pages} pages grew RSS from {before} to {after} KiB"
    );
    work.finish();
    let (_, status) = tracer.wait(common::patience(10));
    assert!(status.success());
}

/// A swap file on the test disk, on while held.
struct SwapFile {
    path: std::path::PathBuf,
}

impl SwapFile {
    fn on(mib: u64) -> SwapFile {
        let path = common::disk_dir().join("memtrace-test.swap");
        let _ = fs::remove_file(&path);
        // Written out (a swap file may have no holes), owner-only, as swapon wants it.
        let run = |program: &str, args: &[&str]| {
            let status = std::process::Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap_or_else(|err| panic!("{program}: {err}"));
            assert!(status.success(), "{program} {args:?}: {status}");
        };
        let file = path.to_str().unwrap();
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={file}"),
                "bs=1M",
                &format!("count={mib}"),
                "status=none",
            ],
        );
        run("chmod", &["600", file]);
        run("mkswap", &[file]);
        run("swapon", &[file]);
        SwapFile { path }
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        let _ = std::process::Command::new("swapoff")
            .arg(&self.path)
            .status();
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn swap_ins_are_major_faults_counted_as_the_kernel_counts_them() {
    require_root!();
    require_guest!("it turns swap on");
    if common::cgroup::hierarchy().version != memtrace::model::cgroup::Version::V2 {
        skip_on_this_host!("a memory cgroup that swaps needs cgroup v2 here");
    }
    let _swap = SwapFile::on(256);
    // 96 MiB through a 32 MiB cgroup that may swap: reclaim writes most of it out during the
    // first pass, and the second pass reads it back, one major fault per swap-in.
    let cgroup = common::cgroup::TestCgroup::new("swap", 32 * common::cgroup::MIB);
    cgroup.write("memory.swap.max", "max");
    let script = format!(
        r#"echo $$ > "{}/cgroup.procs" && exec "{}" 96"#,
        cgroup.dir.display(),
        workload("swap_touch").display()
    );
    let swap_ins = |stderr: &str| -> u64 {
        stderr
            .lines()
            .find_map(|line| line.split("majflt=").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no swap_touch report in {stderr}"))
    };
    let (records, stderr) = common::json_run(&["faults", "--json", "--", "sh", "-c", &script]);
    let second_pass = swap_ins(&stderr);
    assert!(second_pass > 100, "only {second_pass} swap-ins: {stderr}");
    let summary = common::summary(&records);
    let pid = summary["command"]["pid"].as_u64().unwrap();
    // Every major fault of the process, swap-ins among them, as its own rusage counts them.
    let ours: u64 = summary["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == pid)
        .map(|p| p["major"].as_u64().unwrap())
        .sum();
    assert_eq!(
        ours,
        summary["command"]["kernel_major"].as_u64().unwrap(),
        "{summary}"
    );

    // By mapping, they are major faults on anonymous memory (where the kernel can find a
    // fault's mapping: else memtrace refuses, in one line).
    let args = [
        "faults", "--json", "--by", "mapping", "--", "sh", "-c", &script,
    ];
    let output = common::memtrace().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(5) {
        assert!(stderr.contains("bpf_find_vma"), "{stderr}");
        return;
    }
    assert!(output.status.success(), "{stderr}");
    let second_pass = swap_ins(&stderr);
    let records = schema::records("faults", &String::from_utf8_lossy(&output.stdout));
    let pid = common::summary(&records)["command"]["pid"]
        .as_u64()
        .unwrap();
    let mappings: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "mappings")
        .flat_map(|r| r["mappings"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["pid"] == pid)
        .collect();
    let majors = |anonymous: bool| -> u64 {
        mappings
            .iter()
            .filter(|m| m["file"] == !anonymous)
            .map(|m| m["major"].as_u64().unwrap())
            .sum()
    };
    // Every major fault under some mapping, as many as the process's rusage counts, and the
    // swap-ins among them on anonymous memory.
    let summary = common::summary(&records);
    assert_eq!(
        majors(true) + majors(false),
        summary["command"]["kernel_major"].as_u64().unwrap(),
        "{mappings:?}"
    );
    assert!(
        majors(true) >= second_pass,
        "{} anonymous majors, {second_pass} swap-ins",
        majors(true)
    );
}
