//! `memtrace oom` against the kernel's own record of each OOM kill: the `Killed process` line in
//! the kernel log (`dmesg`), and the cgroup's own `oom_kill` counter. Every test works inside a
//! memory cgroup with a small limit, removed (with anything left in it) when the test ends.

use std::{
    io::{BufRead, BufReader},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::common::{
    self, Tracer,
    cgroup::{self, MIB, TestCgroup},
    memtrace, run_memtrace, schema, still_loaded_after, workload,
};
use memtrace::model::cgroup::Version;
use serde_json::Value;

/// The kernel's `Killed process PID (COMM) total-vm:..kB, anon-rss:..kB, file-rss:..kB,
/// shmem-rss:..kB, UID:.. pgtables:..kB oom_score_adj:..` line for `pid`, as numbers.
fn kernel_kill_line(pid: u64) -> Option<(String, Vec<(String, i64)>)> {
    let out = Command::new("dmesg").output().expect("dmesg");
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("Killed process {pid} (");
    let line = text.lines().rev().find(|l| l.contains(&needle))?;
    let rest = &line[line.find(&needle)? + needle.len()..];
    let close = rest.find(") ")?;
    let comm = rest[..close].to_owned();
    let fields = rest[close + 2..]
        .split([',', ' '])
        .filter_map(|item| {
            let (key, value) = item.trim().split_once(':')?;
            let value = value.trim_end_matches("kB").parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect();
    Some((comm, fields))
}

/// The console log level, set for a test and restored when dropped.
struct ConsoleLevel(String);

const PRINTK: &str = "/proc/sys/kernel/printk";

impl ConsoleLevel {
    fn set(level: u32) -> ConsoleLevel {
        let before = std::fs::read_to_string(PRINTK).unwrap();
        set_console_level(level);
        ConsoleLevel(before)
    }
}

impl Drop for ConsoleLevel {
    fn drop(&mut self) {
        let level = self.0.split_whitespace().next().unwrap_or("4");
        let _ = std::fs::write(PRINTK, level);
    }
}

fn set_console_level(level: u32) {
    std::fs::write(PRINTK, level.to_string()).expect("set the console log level");
}

fn kills(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["type"] == "oom_kill").collect()
}

/// Waits for memtrace to exit by itself (`--count`), with the records.
fn wait_for(tracer: Tracer) -> Vec<Value> {
    let (records, status) = tracer.wait(common::patience(30));
    assert!(status.success(), "memtrace: {status}");
    records
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn victim_pid_comm_cgroup_and_rss_match_the_kernel_log() {
    require_root!();
    let cgroup = TestCgroup::new("victim", 32 * MIB);
    let (tracer, start) =
        Tracer::start_with_record(&["oom", "--cgroup", &cgroup.path, "--count", "1"]);
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    let records = wait_for(tracer);
    let status = hog.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let kill = kills[0];
    let victim = &kill["victim"];
    assert_eq!(victim["pid"], u64::from(hog.id()), "{kill}");
    assert_eq!(victim["comm"], "oom_alloc");
    assert_eq!(victim["uid"], 0);
    assert_eq!(kill["trigger"]["pid"], u64::from(hog.id()));
    assert_eq!(kill["trigger"]["comm"], "oom_alloc");
    assert_eq!(kill["cgroup"]["path"], cgroup.path.as_str());
    // Where the kernel shows memtrace its report (it says which at start), the cgroup, scope
    // and OOM domain are the report's; else the cgroup is read from /proc in time.
    if start["kernel_reports"] == true {
        assert_eq!(kill["cgroup"]["source"], "kernel_report");
        assert_eq!(kill["cgroup"]["scope"], "cgroup");
        assert_eq!(kill["cgroup"]["oom_domain"], cgroup.path.as_str());
    } else {
        assert_eq!(kill["cgroup"]["source"], "proc", "{kill}");
    }
    assert_eq!(kill["cgroup"]["limit_bytes"], 32 * MIB);
    assert_eq!(kill["cgroup"]["oom_kill"], 1);

    // The kernel prints the same mm counters, in the same units, right after marking the victim.
    let (comm, fields) = kernel_kill_line(u64::from(hog.id())).expect("a Killed process line");
    assert_eq!(comm, "oom_alloc");
    for (kernel, ours) in [
        ("total-vm", "total_vm_kb"),
        ("anon-rss", "anon_rss_kb"),
        ("file-rss", "file_rss_kb"),
        ("shmem-rss", "shmem_rss_kb"),
        ("UID", "uid"),
        ("pgtables", "pgtables_kb"),
        ("oom_score_adj", "oom_score_adj"),
    ] {
        let value = fields
            .iter()
            .find(|(k, _)| k == kernel)
            .unwrap_or_else(|| panic!("{kernel} in the kernel's line: {fields:?}"))
            .1;
        assert_eq!(
            victim[ours].as_i64(),
            Some(value),
            "{ours} vs the kernel's {kernel}"
        );
    }
    assert!(
        victim["anon_rss_kb"].as_u64().unwrap() > 24 * 1024,
        "{victim}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn one_record_per_kill_equals_the_cgroups_oom_kill_counter() {
    require_root!();
    let cgroup = TestCgroup::new("count", 32 * MIB);
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "3"]);
    let mut pids = Vec::new();
    for _ in 0..3 {
        let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
        pids.push(u64::from(hog.id()));
        hog.wait().unwrap();
    }
    let records = wait_for(tracer);
    let kills = kills(&records);
    assert_eq!(kills.len() as u64, cgroup.oom_kills(), "{records:?}");
    let victims: Vec<u64> = kills
        .iter()
        .map(|k| k["victim"]["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(victims, pids);
    // Separate OOM invocations: separate group ids.
    let mut groups: Vec<u64> = kills
        .iter()
        .map(|k| k["group_id"].as_u64().unwrap())
        .collect();
    groups.dedup();
    assert_eq!(groups.len(), 3, "{groups:?}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_child_triggering_the_kill_of_its_parent() {
    require_root!();
    let cgroup = TestCgroup::new("parent", 48 * MIB);
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "1"]);
    let mut parent = cgroup.spawn(&workload("oom_alloc"), &["parent", "36", "24"]);
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u64 = line.trim().strip_prefix("child ").unwrap().parse().unwrap();
    let records = wait_for(tracer);
    parent.wait().unwrap();

    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let kill = kills[0];
    assert_eq!(kill["victim"]["pid"], u64::from(parent.id()), "{kill}");
    assert_eq!(kill["victim"]["oom_score_adj"], 1000);
    assert_eq!(kill["trigger"]["pid"], child, "{kill}");
    assert_ne!(kill["trigger"]["pid"], kill["victim"]["pid"]);
    assert_eq!(kill["cgroup"]["path"], cgroup.path.as_str());
    assert_eq!(kill["cgroup"]["oom_kill"], 1);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn every_victim_of_a_group_kill_shares_one_group_id() {
    require_root!();
    if cgroup::hierarchy().version != Version::V2 {
        skip_on_this_host!(
            "memory.oom.group needs the memory controller on cgroup v2; here it is on v1"
        );
    }
    let cgroup = TestCgroup::new("group", 48 * MIB);
    cgroup.write("memory.oom.group", "1");
    let (tracer, start) =
        Tracer::start_with_record(&["oom", "--cgroup", &cgroup.path, "--count", "2"]);
    if start["kernel_reports"] != true {
        skip_on_this_host!(
            "this kernel shows memtrace no OOM report (its console hook sees only what a \
             console prints), which is what groups a group kill's victims"
        );
    }
    let mut idle = cgroup.spawn(&workload("oom_alloc"), &["hog", "8"]);
    thread::sleep(Duration::from_millis(200));
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    let records = wait_for(tracer);
    hog.wait().unwrap();
    idle.wait().unwrap();
    let kills = kills(&records);
    assert_eq!(kills.len(), 2, "{records:?}");
    assert_eq!(kills[0]["group_id"], kills[1]["group_id"]);
    let mut victims: Vec<u64> = kills
        .iter()
        .map(|k| k["victim"]["pid"].as_u64().unwrap())
        .collect();
    victims.sort_unstable();
    let mut expected = vec![u64::from(hog.id()), u64::from(idle.id())];
    expected.sort_unstable();
    assert_eq!(victims, expected);
    for &pid in &victims {
        assert!(
            kernel_kill_line(pid).is_some(),
            "no Killed process {pid} line"
        );
    }
    // The kernel counts a kill attempt, not a victim: killing the group, it tries the chosen
    // victim a second time (and logs it again) unless it is already gone.
    let attempts = cgroup.oom_kills();
    assert!((2..=3).contains(&attempts), "{attempts} kills counted");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn kills_outside_the_cgroup_filter_are_not_reported() {
    require_root!();
    let watched = TestCgroup::new("watched", 32 * MIB);
    let other = TestCgroup::new("other", 32 * MIB);
    let tracer = Tracer::start(&[
        "oom",
        "--cgroup",
        &watched.dir.to_string_lossy(),
        "--count",
        "1",
    ]);
    other
        .spawn(&workload("oom_alloc"), &["hog", "256"])
        .wait()
        .unwrap();
    let mut hog = watched.spawn(&workload("oom_alloc"), &["hog", "256"]);
    let records = wait_for(tracer);
    hog.wait().unwrap();
    let kills = kills(&records);
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0]["victim"]["pid"], u64::from(hog.id()));
    assert_eq!(other.oom_kills(), 1);
}

fn assert_signal_ends_cleanly(signal: i32) {
    let tracer = Tracer::start(&["oom"]);
    let programs = tracer.programs();
    let names: Vec<&str> = programs.iter().map(|(_, name)| name.as_str()).collect();
    for expected in ["mt_oom_victim", "mt_oom_console"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    tracer.signal(signal);
    let (records, status) = tracer.wait(common::patience(10));
    assert!(status.success(), "{status}");
    assert_eq!(records.last().unwrap()["type"], "summary");
    assert_eq!(records.last().unwrap()["reason"], "signal");
    let ids: Vec<u64> = programs.iter().map(|(id, _)| *id).collect();
    assert_eq!(still_loaded_after(&ids, common::patience(2)), vec![]);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ctrl_c_and_sigterm_exit_0_leaving_nothing_loaded() {
    require_root!();
    assert_signal_ends_cleanly(libc::SIGINT);
    assert_signal_ends_cleanly(libc::SIGTERM);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn duration_ends_with_a_summary_and_exit_0() {
    require_root!();
    let started = Instant::now();
    let out = run_memtrace(&["oom", "--json", "--duration", "0.5"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let records = schema::records("oom", &String::from_utf8(out.stdout).unwrap());
    assert_eq!(records.last().unwrap()["type"], "summary");
    assert_eq!(records.last().unwrap()["reason"], "duration");
    assert!(
        took >= Duration::from_millis(500) && took < common::patience(10),
        "{took:?}"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn no_such_cgroup_is_a_clear_error() {
    require_root!();
    let out = run_memtrace(&["oom", "--cgroup", "/memtrace-no-such-cgroup"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no such cgroup"), "{stderr}");
}

#[test]
fn unprivileged_is_a_clear_error() {
    let out = common::memtrace_without_capabilities()
        .arg("oom")
        .output()
        .expect("run memtrace");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_kill_in_a_kubernetes_pod_names_the_pod_and_its_container() {
    require_root!();
    // The cgroup layout kubelet's cgroupfs driver and CRI-O give a burstable pod's container.
    let uid = "7f1c7f1e-52b1-4c4e-9a3c-0f9f0e7b8c9d";
    let id = "4d7a9b1c2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f00112233";
    let pod = format!("pod{uid}");
    let container = format!("crio-{id}");
    let cgroup = TestCgroup::nested(
        "pod",
        &["kubepods", "burstable", &pod, &container],
        32 * MIB,
    );
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "1"]);
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "64"]);
    let records = wait_for(tracer);
    hog.wait().unwrap();
    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let named = &kills[0]["cgroup"];
    assert_eq!(named["path"], cgroup.path.as_str(), "{named}");
    assert_eq!(named["pod_uid"], uid, "{named}");
    assert_eq!(named["container_id"], id, "{named}");
    assert_eq!(named["runtime"], "cri-o", "{named}");
    assert_eq!(named["qos_class"], "burstable", "{named}");
    assert_eq!(named["systemd_unit"], Value::Null, "{named}");
    assert_eq!(cgroup.oom_kills(), 1);
}

/// What a growing process reported of itself: `(unix seconds, KiB grown)` after each step.
fn growth_reports(child: &mut std::process::Child) -> Vec<(f64, u64)> {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let rest = line.strip_prefix("grown ")?;
            let (kb, at) = rest.split_once(" at ")?;
            Some((at.parse().ok()?, kb.parse().ok()?))
        })
        .collect()
}

/// How much the process had grown by `at`, by its own reports: at least the last step reported
/// before, at most the first reported after (a step may be under way).
fn grown_around(reports: &[(f64, u64)], at: f64, step_kb: u64) -> (u64, u64) {
    let before = reports
        .iter()
        .filter(|(when, _)| *when <= at)
        .map(|&(_, kb)| kb)
        .max()
        .unwrap_or(0);
    let after = reports
        .iter()
        .find(|(when, _)| *when >= at)
        .map_or(before + step_kb, |&(_, kb)| kb);
    (before, after)
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_victims_history_shows_its_growth_as_it_reported_it() {
    require_root!();
    let cgroup = TestCgroup::new("history", 64 * MIB);
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "1"]);
    // Both start after memtrace: a bystander using 2 MiB, and a process growing by 4 MiB every
    // 0.4 s until the 64 MiB limit kills it (about 6 s, 6 samples).
    let mut bystander = cgroup.spawn(&workload("oom_alloc"), &["hog", "2"]);
    let step_kb = 4 * 1024;
    let mut grower = cgroup.spawn(&workload("oom_alloc"), &["steps", "4", "400"]);
    let reports = growth_reports(&mut grower);
    let records = wait_for(tracer);
    assert!(grower.wait().is_ok());
    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let kill = kills[0];
    assert_eq!(kill["victim"]["pid"], grower.id(), "{kill}");
    assert!(reports.len() >= 10, "the grower reported {reports:?}");

    let killed_at = kill["timestamp"].as_f64().unwrap();
    let history = kill["victim"]["history"].as_array().unwrap();
    assert!(history.len() >= 4, "{} samples: {kill}", history.len());
    let mut last_t = f64::MAX;
    for point in history {
        let t = point["t"].as_f64().unwrap();
        assert!(t >= 0.0 && t < last_t && t <= 31.0, "{point}");
        last_t = t;
        // Its resident memory holds everything it had reported touching, and not much more than
        // what it reported next (its program, libc and stack: well under 4 MiB).
        let rss = point["rss_kb"].as_u64().unwrap();
        let (before, after) = grown_around(&reports, killed_at - t, step_kb);
        assert!(
            rss >= before && rss <= after + 4096,
            "{t} s before the kill: RSS {rss} KiB, grown {before}..{after} KiB by its reports"
        );
    }
    let rss = |i: usize| history[i]["rss_kb"].as_u64().unwrap();
    let last = history.len() - 1;
    assert!(
        rss(last) >= 48 * 1024 && rss(last) > rss(0) + 16 * 1024,
        "RSS {} -> {} KiB",
        rss(0),
        rss(last)
    );

    // Between the first sample and the last, its faults and mappings account for its growth.
    let sum = |key: &str| -> i64 {
        history[1..]
            .iter()
            .map(|p| p[key].as_i64().unwrap_or_else(|| panic!("{key} in {p}")))
            .sum()
    };
    let at = |i: usize| killed_at - history[i]["t"].as_f64().unwrap();
    let (first_before, first_after) = grown_around(&reports, at(0), step_kb);
    let (last_before, last_after) = grown_around(&reports, at(last), step_kb);
    let (least, most) = (
        last_before.saturating_sub(first_after) as i64,
        (last_after - first_before) as i64,
    );
    let alloc = sum("alloc_kb");
    assert!(
        alloc >= least && alloc <= most + 1024,
        "mapped {alloc} KiB while growing {least}..{most} KiB"
    );
    let page_kb = 4;
    let minor = sum("minor_faults");
    assert!(
        minor >= least / page_kb,
        "{minor} minor faults for {least} KiB touched"
    );
    assert!(
        history[1..]
            .iter()
            .all(|p| p["reclaim_stall_ms"].as_f64().is_some()),
        "stall times: {kill}"
    );

    // Its cgroup's biggest users when the kill was reported: the bystander among them, its size
    // as /proc has it now (it has not changed since).
    let users = kill["cgroup"]["top_users"].as_array().unwrap();
    let bystander_user = users
        .iter()
        .find(|u| u["pid"] == bystander.id())
        .unwrap_or_else(|| panic!("no bystander in {users:?}"));
    assert_eq!(bystander_user["victim"], false);
    let status = std::fs::read_to_string(format!("/proc/{}/status", bystander.id())).unwrap();
    let vm_rss: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        bystander_user["rss_kb"].as_u64().unwrap().abs_diff(vm_rss) <= 64,
        "{bystander_user} vs VmRSS {vm_rss}"
    );
    let sizes: Vec<u64> = users
        .iter()
        .map(|u| u["rss_kb"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_victim_killed_within_a_second_has_a_history_of_its_growth() {
    require_root!();
    let cgroup = TestCgroup::new("fast-history", 64 * MIB);
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "1"]);
    // 4 MiB every 50 ms: the 64 MiB limit kills it in under a second (more under TCG).
    let mut grower = cgroup.spawn(&workload("oom_alloc"), &["steps", "4", "50"]);
    let reports = growth_reports(&mut grower);
    let records = wait_for(tracer);
    assert!(grower.wait().is_ok());
    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let kill = kills[0];
    assert_eq!(kill["victim"]["pid"], grower.id(), "{kill}");
    let (first, last) = (reports.first().unwrap().0, reports.last().unwrap().0);
    let lived = kill["timestamp"].as_f64().unwrap() - first;

    // The first samples may be of the shell that moved it into the cgroup, before its `exec`:
    // its own history starts at its smallest sample, at its start (the last such: a sample
    // taken mid-`exec` can be as small as one after it, 4 KiB each on 5.10).
    let all = kill["victim"]["history"].as_array().unwrap();
    let rss_of = |p: &Value| p["rss_kb"].as_u64().unwrap();
    let start = (0..all.len())
        .rev()
        .min_by_key(|&i| rss_of(&all[i]))
        .unwrap();
    let history = &all[start..];
    assert!(
        history.len() >= 5,
        "{} samples in a life of {lived:.2} s ({} steps reported, the last {:.2} s after the \
         first): {kill}",
        history.len(),
        reports.len(),
        last - first
    );
    let rss: Vec<u64> = history.iter().map(rss_of).collect();
    assert!(rss.windows(2).all(|w| w[0] <= w[1]), "RSS {rss:?}");
    assert!(
        rss[rss.len() - 1] >= rss[0] + 32 * 1024,
        "RSS grew only {rss:?} KiB"
    );
    // Every sample after the first says what happened since the one before it.
    let growing = history[1..]
        .iter()
        .filter(|p| {
            p["minor_faults"].as_u64().is_some_and(|n| n > 0)
                && p["alloc_kb"].as_i64().is_some_and(|kb| kb > 0)
        })
        .count();
    assert!(
        growing >= 4,
        "{growing} samples with faults and mappings since the one before: {kill}"
    );
    let ts: Vec<f64> = history.iter().map(|p| p["t"].as_f64().unwrap()).collect();
    assert!(
        ts.windows(2).all(|w| w[0] > w[1]) && ts[0] <= lived + 0.5,
        "times before the kill {ts:?}, in a life of {lived:.2} s"
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_machine_wide_oom_kill_names_its_victim_its_trigger_and_no_constraint() {
    require_root!();
    require_guest!("it exhausts the whole machine's memory");
    let (tracer, start) = Tracer::start_with_record(&["oom", "--count", "1", "--history", "0"]);
    // Outside any limited cgroup, with oom_score_adj 1000 so that the kernel chooses it over
    // everything else the guest runs; it touches far more than the machine has.
    let mut hog = Command::new("sh")
        .arg("-c")
        .arg(r#"echo 1000 > /proc/self/oom_score_adj && exec "$0" hog 1000000"#)
        .arg(workload("oom_alloc"))
        .spawn()
        .expect("start the hog");
    let records = wait_for(tracer);
    let status = hog.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let kills = kills(&records);
    assert_eq!(kills.len(), 1, "{records:?}");
    let kill = kills[0];
    assert_eq!(kill["victim"]["pid"], u64::from(hog.id()), "{kill}");
    assert_eq!(kill["victim"]["oom_score_adj"], 1000, "{kill}");
    // Whichever task's allocation found the machine out of memory ran the killer: the hog, or
    // any other that allocated then.
    assert!(
        kill["trigger"]["pid"].as_u64().is_some_and(|pid| pid > 0),
        "{kill}"
    );
    if start["kernel_reports"] == true {
        assert_eq!(kill["cgroup"]["scope"], "system", "{kill}");
        assert_eq!(kill["cgroup"]["constraint"], "CONSTRAINT_NONE", "{kill}");
    }
    let (comm, fields) = kernel_kill_line(u64::from(hog.id())).expect("a Killed process line");
    assert_eq!(comm, "oom_alloc");
    let anon_rss = fields.iter().find(|(k, _)| k == "anon-rss").unwrap().1;
    // The kernel's tracepoint carries it from 6.9 on (the start record lists what it carries).
    let reported = start["victim_fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "anon_rss_kb");
    // Else from the kernel's report, where memtrace sees it; unknown only without either.
    // Else read from /proc while the victim still grew: near, not equal.
    let ours = kill["victim"]["anon_rss_kb"].as_i64();
    if reported || start["kernel_reports"] == true {
        assert_eq!(ours, Some(anon_rss), "{kill}");
    } else if let Some(ours) = ours {
        assert!(
            (ours - anon_rss).abs() <= 16 * 1024,
            "{kill}: the kernel's {anon_rss}"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn victims_are_those_a_kprobe_on_oom_kill_process_sees() {
    require_root!();
    require_tool!("bpftrace");
    if !common::bpftrace::has_kprobes() {
        skip_on_this_host!("this kernel has no kprobes (CONFIG_KPROBES), which the peer needs");
    }
    // bcc's and bpftrace's oomkill tools: a kprobe on oom_kill_process, whose oom_control
    // names the chosen victim.
    // The offsets from the kernel's BTF: bpftrace 0.17 resolves no struct on 5.10.
    let btf = memtrace::sys::btf::Btf::from_sys_fs().expect("the kernel's BTF");
    let chosen = btf.member_offset("oom_control", "chosen").unwrap();
    let tgid = btf.member_offset("task_struct", "tgid").unwrap();
    let peer = common::bpftrace::Bpftrace::start(&format!(
        "kprobe:oom_kill_process {{ $chosen = *(uint64 *)(arg0 + {chosen}); \
         printf(\"victim %d\\n\", *(int32 *)($chosen + {tgid})); }}"
    ));
    let cgroup = TestCgroup::new("kprobe", 32 * MIB);
    let tracer = Tracer::start(&["oom", "--cgroup", &cgroup.path, "--count", "2"]);
    let mut first = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    common::wait_child(&mut first, "the first hog", common::patience(30));
    let mut second = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    common::wait_child(&mut second, "the second hog", common::patience(30));
    let records = wait_for(tracer);
    let seen: Vec<u64> = common::bpftrace::printed(&peer.stop())
        .iter()
        .filter_map(|line| line.strip_prefix("victim ")?.trim().parse().ok())
        .collect();
    let ours: Vec<u64> = kills(&records)
        .iter()
        .map(|k| k["victim"]["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(ours, vec![u64::from(first.id()), u64::from(second.id())]);
    assert_eq!(ours, seen, "memtrace vs the kprobe");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn where_the_kernel_hides_its_reports_memtrace_says_so_and_reads_proc() {
    require_root!();
    // At the console log level most machines boot with (`quiet`: 4), the kernel's report
    // (KERN_INFO) is printed on no console: memtrace sees it only on kernels whose console hook
    // fires as messages are stored. What it claims in its start record must be what it does.
    let restore = ConsoleLevel::set(4);
    let cgroup = TestCgroup::new("hidden", 32 * MIB);
    let mut tracer = memtrace()
        .args(["oom", "--json", "--cgroup", &cgroup.path, "--count", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(tracer.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let mut hog = cgroup.spawn(&workload("oom_alloc"), &["hog", "256"]);
    let rest: Vec<String> = stdout.lines().map_while(Result::ok).collect();
    let output = tracer.wait_with_output().unwrap();
    hog.wait().unwrap();
    drop(restore);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let records: Vec<Value> = std::iter::once(first)
        .chain(rest)
        .map(|line| schema::record("oom", &line))
        .collect();
    let start = &records[0];
    let kill = kills(&records)[0];
    assert_eq!(kill["cgroup"]["path"], cgroup.path.as_str(), "{kill}");
    if start["kernel_reports"] == true {
        assert_eq!(kill["cgroup"]["source"], "kernel_report", "{kill}");
    } else {
        assert!(
            stderr.contains("only when they reach a console"),
            "{stderr}"
        );
        assert_eq!(kill["cgroup"]["source"], "proc", "{kill}");
    }
}
