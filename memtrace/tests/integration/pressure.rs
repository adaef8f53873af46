//! `memtrace pressure` against an independent count of the same kernel events: bpftrace on the
//! vmscan tracepoints, in the same test, for the same process; inside a memory cgroup with a
//! small limit, where reading a file larger than the limit makes its reader reclaim at the
//! limit, contained (the rest of the machine sees no pressure).
//!
//! Direct reclaim is not tested: it needs the whole machine's free memory to run low, which no
//! test may cause.

use crate::common::{
    self, Tracer, Workload,
    cgroup::{MIB, TestCgroup},
    reclaim::{Bpftrace, big_file},
    still_loaded_after, summary, workload,
};

#[test]
#[ignore = "needs root: cargo xtask test"]
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
    // The cgroup's own PSI where cgroup v2 keeps it (memory.pressure); v1 has none.
    match cgroup.version {
        memtrace::model::cgroup::Version::V2 => {
            let stalled = row["psi"]["some"]["stalled_ms"].as_f64();
            assert!(stalled.is_some_and(|ms| ms > 0.0), "{row}");
        }
        memtrace::model::cgroup::Version::V1 => assert!(row["psi"].is_null(), "{row}"),
    }
    assert_eq!(summary["dropped"]["stall_table_full"], 0);
}

fn reader_pid(pid: &str) -> u64 {
    pid.parse().unwrap()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
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
    assert_eq!(still_loaded_after(&programs, common::patience(2)), vec![]);
}

/// A v2 cgroup's stall time so far (`some` or `full` `total=`, µs), from its own file.
fn psi_total_us(cgroup: &TestCgroup, which: &str) -> u64 {
    let text = std::fs::read_to_string(cgroup.dir.join("memory.pressure")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(which)?.split("total=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {which} total in {text}"))
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_cgroups_psi_is_the_stall_time_its_memory_pressure_file_counts() {
    require_root!();
    let cgroup = TestCgroup::new("psi", 32 * MIB);
    if cgroup.version != memtrace::model::cgroup::Version::V2 {
        skip_on_this_host!(
            "a cgroup's own PSI (memory.pressure) needs the memory controller on cgroup v2; \
             here it is on v1"
        );
    }
    let file = big_file(96);
    let mut reader = Workload::start_in(
        &cgroup.dir,
        &workload("read_file"),
        &[file.to_str().unwrap()],
    );
    // Nothing stalls in the cgroup outside the read: the file's counts before memtrace starts
    // and after it ends bound exactly the session's.
    let before = (psi_total_us(&cgroup, "some"), psi_total_us(&cgroup, "full"));
    let tracer = Tracer::start(&["pressure", "--by", "cgroup", "--interval", "0.2"]);
    reader.go();
    let (records, status) = tracer.interrupt();
    let after = (psi_total_us(&cgroup, "some"), psi_total_us(&cgroup, "full"));
    reader.finish();
    assert!(status.success());
    let summary = summary(&records);
    let row = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["cgroup"] == cgroup.path.as_str())
        .unwrap_or_else(|| panic!("no row for {}: {summary}", cgroup.path));
    for (which, kernel_us) in [("some", after.0 - before.0), ("full", after.1 - before.1)] {
        let ours = row["psi"][which]["stalled_ms"].as_f64().unwrap();
        let kernel = kernel_us as f64 / 1000.0;
        assert!(
            kernel > 0.0,
            "the read stalled the cgroup for no time: {row}"
        );
        assert!(
            (ours - kernel).abs() < 0.002,
            "{which}: memtrace {ours} ms, memory.pressure {kernel} ms"
        );
    }
}

/// THP's defrag setting, set for a test and restored when dropped.
struct Defrag(String);

const DEFRAG: &str = "/sys/kernel/mm/transparent_hugepage/defrag";

impl Defrag {
    fn set(to: &str) -> Defrag {
        let text = std::fs::read_to_string(DEFRAG).expect("THP's defrag setting");
        let now = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
            .expect("the chosen defrag setting")
            .to_owned();
        std::fs::write(DEFRAG, to).unwrap();
        Defrag(now)
    }
}

impl Drop for Defrag {
    fn drop(&mut self) {
        let _ = std::fs::write(DEFRAG, &self.0);
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn direct_reclaim_stalls_equal_bpftraces_count_of_the_same_events() {
    require_root!();
    require_tool!("bpftrace");
    require_guest!("it runs the whole machine's free memory low");
    // The machine's page cache filled to near its memory's size, then huge pages asked for
    // with THP defrag "always": each one the kernel cannot find free, the faulting task
    // reclaims (and compacts) for itself at once: direct reclaim, not kswapd's.
    let total_mib = meminfo_mib("MemTotal");
    // Allocated without being written, the file reads as zeros at memory speed: clean page
    // cache, which reclaim can take.
    let file = common::disk_dir().join("direct-reclaim.bin");
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{program} {args:?}");
    };
    let path = file.to_str().unwrap();
    let _defrag = Defrag::set("always");
    let hog_mib = total_mib / 2;
    // Whether free memory runs out under the hog depends on what the guest's page cache held
    // and on kswapd's pace: the measurement is taken again (at most 3 times) until the hog has
    // reclaimed directly at least once, and compared on that run.
    let mut attempt = 0;
    let (pid, records, status, begins, ends) = loop {
        attempt += 1;
        run(
            "fallocate",
            &["-l", &format!("{}M", total_mib * 85 / 100), path],
        );
        run("cat", &[path]);
        let mut hog = Workload::start(&workload("thp_touch"), &[&hog_mib.to_string()]);
        let pid = hog.pid().to_string();
        let independent = Bpftrace::direct_stalls_of(hog.pid());
        let tracer = Tracer::start(&["pressure", "--pid", &pid, "--interval", "0.2"]);
        hog.go();
        let (records, status) = tracer.interrupt();
        let (begins, ends) = independent.counts();
        hog.finish();
        let _ = std::fs::remove_file(&file);
        if ends >= 1 || attempt == 3 {
            break (pid, records, status, begins, ends);
        }
        eprintln!("attempt {attempt}: no direct reclaim; again");
    };
    assert!(status.success());
    assert!(
        ends >= 1,
        "taking {hog_mib} MiB of huge pages caused no direct reclaim, {attempt} times"
    );
    assert_eq!(begins, ends, "bpftrace saw unpaired reclaims");
    let summary = summary(&records);
    let row = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["pid"] == reader_pid(&pid))
        .unwrap_or_else(|| panic!("no row for {pid}: {summary}"));
    assert_eq!(
        row["stalls"]["direct"]["count"].as_u64(),
        Some(ends),
        "memtrace {row} vs bpftrace {ends}"
    );
}

/// A `/proc/meminfo` figure, in MiB.
fn meminfo_mib(key: &str) -> usize {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: usize = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"));
    kib / 1024
}
