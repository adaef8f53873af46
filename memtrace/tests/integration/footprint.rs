//! What each command holds in the kernel, as the kernel itself reports it: the maps it creates
//! (bpftool's `memlock`) and, once it has exited, what its release helper still holds.

use std::{
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::common::{self, Tracer, Workload, workload};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// The maps a process holds: (name, memlock bytes), from its descriptors and bpftool.
fn maps_held_by(pid: u32) -> Vec<(String, u64)> {
    // Its descriptors must be there to be read: no maps found is then a finding.
    assert!(
        fs::metadata(format!("/proc/{pid}/fdinfo")).is_ok(),
        "process {pid} is gone"
    );
    let ids = common::maps_held_by(pid);
    ids.into_iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "id", &id.to_string()])
                .output()
                .expect("bpftool");
            let map: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            (
                map["name"].as_str().unwrap_or("").to_owned(),
                map["bytes_memlock"].as_u64().expect("bytes_memlock"),
            )
        })
        .collect()
}

fn assert_footprint(args: &[&str], budget: u64, absent: &[&str]) -> Vec<(String, u64)> {
    let tracer = Tracer::start(args);
    let maps = maps_held_by(tracer.pid());
    let (_, status) = tracer.interrupt();
    assert!(status.success(), "memtrace {args:?} exited with {status}");
    let total: u64 = maps.iter().map(|(_, bytes)| bytes).sum();
    assert!(
        total <= budget,
        "memtrace {args:?} holds {total} bytes of maps, over {budget}: {maps:?}"
    );
    for name in absent {
        assert!(
            !maps.iter().any(|(map, _)| map == name),
            "memtrace {args:?} created {name}, which it does not use: {maps:?}"
        );
    }
    maps
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn each_command_creates_only_the_maps_it_uses_within_its_budget() {
    require_root!();
    // --pid is counted by perf's own counters: no program, no map at all.
    let mut work = Workload::start(&workload("touch_pages"), &["100", "1"]);
    let pid = work.pid().to_string();
    let maps = assert_footprint(&["faults", "--pid", &pid], 2 * MIB, &[]);
    // Before 5.13 (no inherit_thread), programs count even explicit processes: then within
    // the same budget.
    if common::kernel_version() >= (5, 13) {
        assert_eq!(maps, vec![], "faults --pid created maps");
    }
    work.go();
    work.finish();

    // oom times stalls for its victims' histories: the pressure object, whose target table
    // (one entry, unused system-wide) comes with it.
    let oom = assert_footprint(
        &["oom"],
        MIB,
        &["FAULT_COUNTS", "SYSCALL_EVENTS", "SYSCALL_PENDING"],
    );
    assert!(
        oom.iter().any(|(name, _)| name == "NEW_PROCESSES"),
        "{oom:?}"
    );
    assert_footprint(
        &["oom", "--history", "0"],
        MIB / 2,
        &["FAULT_COUNTS", "SYSCALL_EVENTS", "STALLS", "TARGETS"],
    );
    // -c sends no record: no 8 MiB ring.
    let counting = assert_footprint(&["trace", "-c"], 4 * MIB, &["FAULT_COUNTS", "OOM_EVENTS"]);
    let ring = counting
        .iter()
        .find(|(name, _)| name == "SYSCALL_EVENTS")
        .expect("the ring exists, at its minimum");
    assert!(ring.1 < MIB, "trace -c's ring: {ring:?}");
    assert_footprint(&["faults"], 2 * MIB, &["SYSCALL_EVENTS", "OOM_EVENTS"]);
    assert_footprint(
        &["pressure"],
        2 * MIB,
        &["FAULT_COUNTS", "SYSCALL_EVENTS", "OOM_EVENTS"],
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn serve_stays_within_its_budget() {
    require_root!();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut daemon = common::memtrace()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let mut line = String::new();
    // Warnings of what this kernel lacks may come first.
    while line.is_empty() || line.starts_with("[WARN") {
        line.clear();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    }
    assert!(line.starts_with("memtrace: serving"), "{line}");
    let maps = maps_held_by(daemon.id());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let total: u64 = maps.iter().map(|(_, bytes)| bytes).sum();
    assert!(total <= 12 * MIB, "serve holds {total} bytes: {maps:?}");
}

/// Processes named `memtrace-detach` still at work (an exited one waits, a zombie, for its new
/// parent to reap it, and holds nothing).
fn release_helpers() -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| matches!(stat.split_once("(memtrace-detach) "), Some((_, rest)) if !rest.starts_with(['Z', 'X'])))
        })
        .collect()
}

fn wait_for_no_helper(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !release_helpers().is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_release_helper_holds_only_perf_events_and_is_soon_gone() {
    require_root!();
    assert!(
        wait_for_no_helper(common::patience(10)),
        "an earlier helper lingers"
    );
    // The default set: 12 syscall tracepoints and task_rename, ~40 ms each to release.
    let out = common::memtrace()
        .args(["trace", "--json", "--", "/bin/true"])
        .stdin(Stdio::null())
        .output()
        .expect("run memtrace");
    assert!(out.status.success());
    // memtrace's output ended: the helper does not hold its pipe.
    let helpers = release_helpers();
    assert_eq!(helpers.len(), 1, "one helper expected: {helpers:?}");
    let helper = helpers[0];
    let fds: Vec<String> = fs::read_dir(format!("/proc/{helper}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .map(|target| target.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        fds.iter().all(|fd| fd == "anon_inode:[perf_event]"),
        "the helper holds more than perf events: {fds:?}"
    );
    assert!(
        wait_for_no_helper(common::patience(5)),
        "the helper still runs after 5 s"
    );
}
