//! `memtrace pressure` against an independent count of the same kernel events: bpftrace on the
//! vmscan tracepoints, in the same test, for the same process; inside a memory cgroup with a
//! small limit, where reading a file larger than the limit makes its reader reclaim at the
//! limit, contained (the rest of the machine sees no pressure).
//!
//! Direct reclaim is not tested: it needs the whole machine's free memory to run low, which no
//! test may cause.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    Tracer, Workload,
    cgroup::{MIB, TestCgroup},
    still_loaded_after, summary, workload,
};
use serde_json::Value;

/// A clean file of `mib` MiB on a real disk (written and synced, so it can be dropped from the
/// page cache).
fn big_file(mib: usize) -> std::path::PathBuf {
    let path = common::disk_dir().join(format!("pressure-{mib}.bin"));
    if fs::metadata(&path).is_ok_and(|m| m.len() == (mib * MIB as usize) as u64) {
        return path;
    }
    let mut file = fs::File::create(&path).unwrap();
    let chunk: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8).collect();
    for _ in 0..mib {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    path
}

/// bpftrace counting the memcg reclaim stalls of one process, until stopped: the process and
/// its output lines, once it is attached.
struct Bpftrace {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bpftrace {
    fn memcg_stalls_of(pid: u32) -> Bpftrace {
        let script = format!(
            "BEGIN {{ printf(\"ready\\n\"); }} \
             tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin /pid == {pid}/ {{ @begin = count(); }} \
             tracepoint:vmscan:mm_vmscan_memcg_reclaim_end /pid == {pid}/ {{ @end = count(); }}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let bpftrace = Bpftrace { child, lines };
        loop {
            let line = bpftrace
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("bpftrace attached");
            if line.contains("ready") {
                return bpftrace;
            }
        }
    }

    /// Stops it (Ctrl-C: it prints its maps) and returns `@begin` and `@end`.
    fn counts(mut self) -> (u64, u64) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap();
        let maps: Vec<Value> = self
            .lines
            .try_iter()
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter(|v| v["type"] == "map")
            .collect();
        let count = |name: &str| {
            maps.iter()
                .find_map(|v| v["data"].get(name)?.as_u64())
                .unwrap_or(0)
        };
        (count("@begin"), count("@end"))
    }
}

#[test]
fn memcg_reclaim_stalls_equal_bpftraces_count_of_the_same_events() {
    require_root!();
    require_tool!("bpftrace");
    let file = big_file(160);
    let cgroup = TestCgroup::new("reclaim", 32 * MIB);
    let mut reader = Workload::start_in(
        &cgroup.dir,
        &workload("read_file"),
        &[file.to_str().unwrap()],
    );
    let pid = reader.pid().to_string();
    let independent = Bpftrace::memcg_stalls_of(reader.pid());
    let tracer = Tracer::start(&["pressure", "--pid", &pid, "--interval", "0.2"]);
    let by_cgroup = Tracer::start(&["pressure", "--by", "cgroup", "--interval", "0.2"]);
    reader.go();
    let (records, status) = tracer.interrupt();
    let (cgroup_records, cgroup_status) = by_cgroup.interrupt();
    let (begins, ends) = independent.counts();
    reader.finish();
    assert!(status.success() && cgroup_status.success());

    assert!(
        ends >= 10,
        "reading 160 MiB through a 32 MiB cgroup reclaimed only {ends} times"
    );
    assert_eq!(begins, ends, "bpftrace saw unpaired reclaims");
    let summary = summary(&records);
    let row = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["pid"] == reader_pid(&pid))
        .unwrap_or_else(|| panic!("no row for {pid}: {summary}"));
    let memcg = &row["stalls"]["memcg"];
    assert_eq!(
        memcg["count"].as_u64(),
        Some(ends),
        "memtrace {memcg} vs bpftrace {ends}"
    );
    assert!(memcg["ms"].as_f64().unwrap() > 0.0 && memcg["max_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(row["cgroup"], cgroup.path.as_str());
    assert_eq!(
        row["stalls"]["direct"]["count"], 0,
        "no direct reclaim: the machine has room"
    );

    // By cgroup, system-wide: the same stalls, under the reader's cgroup.
    let summary = common::summary(&cgroup_records);
    let row = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["cgroup"] == cgroup.path.as_str())
        .unwrap_or_else(|| panic!("no row for {}: {summary}", cgroup.path));
    assert_eq!(
        row["stalls"]["memcg"]["count"].as_u64(),
        Some(ends),
        "{row}"
    );
    assert_eq!(summary["dropped"]["stall_table_full"], 0);
}

fn reader_pid(pid: &str) -> u64 {
    pid.parse().unwrap()
}

#[test]
fn histograms_count_every_stall_and_nothing_is_left_loaded() {
    require_root!();
    let file = big_file(96);
    let cgroup = TestCgroup::new("histogram", 32 * MIB);
    let mut reader = Workload::start_in(
        &cgroup.dir,
        &workload("read_file"),
        &[file.to_str().unwrap()],
    );
    let pid = reader.pid().to_string();
    let tracer = Tracer::start(&["pressure", "-H", "--pid", &pid]);
    let programs: Vec<u64> = tracer.programs().into_iter().map(|(id, _)| id).collect();
    assert!(!programs.is_empty());
    reader.go();
    let (records, status) = tracer.interrupt();
    reader.finish();
    assert!(status.success());
    let summary = summary(&records);
    let stalls = summary["rows"][0]["stalls"]["memcg"]["count"]
        .as_u64()
        .unwrap();
    let histogram: u64 = summary["histograms"]["memcg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|slot| slot["count"].as_u64().unwrap())
        .sum();
    assert!(stalls > 0);
    assert_eq!(histogram, stalls, "the histogram holds every stall once");
    assert_eq!(
        still_loaded_after(&programs, Duration::from_secs(2)),
        vec![]
    );
}
