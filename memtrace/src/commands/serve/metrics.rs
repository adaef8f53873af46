//! The daemon's metrics, kept in the Prometheus project's own client (`prometheus-client`).
//! Names and help follow Prometheus conventions: `_total` counters, base units (bytes,
//! seconds), `process_*` for the daemon's own cost.
//!
//! Cardinality is bounded: at most `max_series` distinct label sets (comm / cgroup / pid) are
//! admitted; any further one is folded into the single label set whose values are all `other`.
//! Every count is also summed over the node, in `memtrace_node_*` families whose series exist
//! from the start ([`Tally`]).

use std::{
    collections::HashSet,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use memtrace_common::pressure::StallKind;

use super::held::{Counters, Scrapers, Tally};
use crate::{cli::SeriesLabel, enrich::owner::owner_of};

/// A series' labels, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// Byte operations of `memtrace_alloc_bytes_total{op}`.
pub const BYTE_OPS: [&str; 5] = ["mmap", "munmap", "brk_grow", "brk_shrink", "mremap"];

/// What identifies the process a count belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
}

/// The value of every label of the series that label sets beyond `--max-series` fold into.
const OTHER: &str = "other";

fn is_other(labels: &Labels) -> bool {
    !labels.is_empty() && labels.iter().all(|(_, value)| value == OTHER)
}

/// Admits label sets up to a maximum; the rest share one `other` set.
#[derive(Debug)]
pub struct SeriesLimit {
    admitted: HashSet<Labels>,
    max: usize,
}

impl SeriesLimit {
    pub fn new(max: usize) -> SeriesLimit {
        SeriesLimit {
            admitted: HashSet::new(),
            max,
        }
    }

    /// The labels to count under: `labels` itself while there is room, else all `other`.
    pub fn admit(&mut self, labels: Labels) -> Labels {
        if self.admitted.contains(&labels) || self.admitted.len() < self.max {
            self.admitted.insert(labels.clone());
            return labels;
        }
        labels
            .into_iter()
            .map(|(key, _)| (key, OTHER.to_owned()))
            .collect()
    }

    /// Makes room again (the series was removed).
    pub fn release(&mut self, labels: &Labels) {
        self.admitted.remove(labels);
    }

    pub fn len(&self) -> usize {
        self.admitted.len()
    }
}

type FloatCounter = Counter<f64, AtomicU64>;

pub struct Metrics {
    registry: Arc<Registry>,
    scrapers: Arc<Scrapers>,
    by: Vec<SeriesLabel>,
    series: SeriesLimit,
    syscall_names: Vec<&'static str>,
    faults: Tally,
    syscalls: Tally,
    syscall_errors: Tally,
    bytes: Tally,
    oom_kills: Tally,
    stalls: Tally,
    stall_seconds: Tally<f64>,
    dropped: Counters,
    program_time: Family<Labels, FloatCounter>,
    program_runs: Counters,
    failed_readings: Counter,
    last_reading: Gauge<f64, AtomicU64>,
    cpu: FloatCounter,
    resident: Gauge,
    tracked: Gauge,
    series_in_use: Gauge,
}

impl Metrics {
    pub fn new(by: &[SeriesLabel], max_series: usize, syscall_names: Vec<&'static str>) -> Metrics {
        let mut registry = Registry::default();
        let stall_kinds: Vec<&str> = StallKind::ALL.iter().map(|kind| kind.name()).collect();
        let faults = Tally::register(
            &mut registry,
            "memtrace_page_faults",
            "Page faults, by kind (minor: no I/O; major: waited for I/O), counted in the kernel",
            None,
            Some(("kind", &["minor", "major"])),
        );
        let syscalls = Tally::register(
            &mut registry,
            "memtrace_alloc_syscalls",
            "Completed memory-allocation syscalls (brk, mmap, munmap, mremap, mprotect, madvise)",
            None,
            Some(("syscall", &syscall_names)),
        );
        let syscall_errors = Tally::register(
            &mut registry,
            "memtrace_alloc_syscall_errors",
            "Memory-allocation syscalls that returned an error",
            None,
            Some(("syscall", &syscall_names)),
        );
        let bytes = Tally::register(
            &mut registry,
            "memtrace_alloc",
            "Bytes mapped by mmap, unmapped by munmap, of program-break growth and shrinkage, and \
             of mremap size changes, by op",
            Some(Unit::Bytes),
            Some(("op", &BYTE_OPS)),
        );
        let oom_kills = Tally::register(
            &mut registry,
            "memtrace_oom_kills",
            "Processes killed by the OOM killer (the victim's command name and memory cgroup label \
             the per-owner series)",
            None,
            None,
        );
        let stalls = Tally::register(
            &mut registry,
            "memtrace_reclaim_stalls",
            "Times a task stalled for memory, by kind (direct: reclaim because free memory ran \
             low; memcg: reclaim at its memory cgroup's limit; compaction; throttled: made to \
             wait for writeback by reclaim), ended and counted in the kernel",
            None,
            Some(("kind", &stall_kinds)),
        );
        let stall_seconds = Tally::register(
            &mut registry,
            "memtrace_reclaim_stall",
            "Time tasks spent in those stalls, by kind",
            Some(Unit::Seconds),
            Some(("kind", &stall_kinds)),
        );
        let dropped = Family::default();
        registry.register(
            "memtrace_events_dropped",
            "Events the kernel side could not record (a full table or ring buffer), by source",
            dropped.clone(),
        );
        let program_time = Family::default();
        registry.register_with_unit(
            "memtrace_bpf_program_run_time",
            "Time the kernel spent running each of memtrace's BPF programs (kernel BPF stats)",
            Unit::Seconds,
            program_time.clone(),
        );
        let program_runs = Family::default();
        registry.register(
            "memtrace_bpf_program_runs",
            "Runs of each of memtrace's BPF programs (kernel BPF stats)",
            program_runs.clone(),
        );
        let failed_readings = Counter::default();
        registry.register(
            "memtrace_failed_readings",
            "Readings of the kernel's counters that failed (each is logged; the daemon goes on, \
             and /healthz answers 503 while they fail)",
            failed_readings.clone(),
        );
        let last_reading = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "memtrace_last_reading_timestamp_seconds",
            "When the kernel's counters were last read successfully (Unix time): stale while \
             readings stall or fail",
            last_reading.clone(),
        );
        let cpu = FloatCounter::default();
        registry.register_with_unit(
            "process_cpu",
            "User and system CPU time spent by the memtrace daemon",
            Unit::Seconds,
            cpu.clone(),
        );
        let resident = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the memtrace daemon",
            Unit::Bytes,
            resident.clone(),
        );
        let tracked = Gauge::default();
        registry.register(
            "memtrace_tracked_processes",
            "Processes the daemon is counting now (exited ones are read a last time and dropped)",
            tracked.clone(),
        );
        let series_in_use = Gauge::default();
        registry.register(
            "memtrace_series",
            "Label sets in use, out of --max-series (more are folded into the \"other\" one)",
            series_in_use.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            scrapers: Arc::default(),
            by: by.to_vec(),
            series: SeriesLimit::new(max_series),
            syscall_names,
            faults,
            syscalls,
            syscall_errors,
            bytes,
            oom_kills,
            stalls,
            stall_seconds,
            dropped: Counters::new(dropped),
            program_time,
            program_runs: Counters::new(program_runs),
            failed_readings,
            last_reading,
            cpu,
            resident,
            tracked,
            series_in_use,
        }
    }

    /// The registry, for the HTTP endpoint to encode.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Who scrapes, for the HTTP endpoint to record.
    pub fn scrapers(&self) -> Arc<Scrapers> {
        Arc::clone(&self.scrapers)
    }

    /// Adds the held counts of new series every scraper has seen at 0 (once per reading).
    pub fn release_held(&mut self, now: Instant) {
        let scrapers = Arc::clone(&self.scrapers);
        for tally in [
            &mut self.faults,
            &mut self.syscalls,
            &mut self.syscall_errors,
            &mut self.bytes,
            &mut self.oom_kills,
            &mut self.stalls,
        ] {
            tally.release(&scrapers, now);
        }
        self.stall_seconds.release(&scrapers, now);
        self.dropped.release(&scrapers, now);
        self.program_runs.release(&scrapers, now);
    }

    /// The (admitted) labels a process's counts go under. Container, pod, QoS class and unit
    /// are read from the cgroup path: functions of it, they add no series to `cgroup`'s.
    pub fn labels_of(&mut self, who: &Identity) -> Labels {
        let owner = owner_of(&who.cgroup);
        let labels = self
            .by
            .iter()
            .map(|label| match label {
                SeriesLabel::Comm => ("comm", who.comm.clone()),
                SeriesLabel::Cgroup => ("cgroup", who.cgroup.clone()),
                SeriesLabel::Pid => ("pid", who.pid.to_string()),
                SeriesLabel::Container => {
                    ("container_id", owner.container_label().unwrap_or_default())
                }
                SeriesLabel::Pod => ("pod_uid", owner.pod_uid.clone().unwrap_or_default()),
                SeriesLabel::Qos => ("qos_class", owner.qos_class.unwrap_or_default().into()),
                SeriesLabel::Unit => (
                    "systemd_unit",
                    owner.systemd_unit.clone().unwrap_or_default(),
                ),
            })
            .collect();
        self.series.admit(labels)
    }

    /// Whether series are per process, and so must be removed when it exits.
    pub fn per_process(&self) -> bool {
        self.by.contains(&SeriesLabel::Pid)
    }

    pub fn add_faults(&mut self, labels: &Labels, minor: u64, major: u64) {
        self.faults.add(labels, Some(("kind", "minor")), minor);
        self.faults.add(labels, Some(("kind", "major")), major);
    }

    /// A syscall's error counter exists (at 0) as soon as its call counter does, so that error
    /// ratios have both sides.
    pub fn add_syscalls(
        &mut self,
        labels: &Labels,
        syscall: &'static str,
        calls: u64,
        errors: u64,
    ) {
        if calls > 0 {
            let syscall = Some(("syscall", syscall));
            self.syscalls.add(labels, syscall, calls);
            self.syscall_errors.create(labels, syscall);
            self.syscall_errors.add(labels, syscall, errors);
        }
    }

    pub fn add_bytes(&mut self, labels: &Labels, op: &'static str, bytes: u64) {
        self.bytes.add(labels, Some(("op", op)), bytes);
    }

    pub fn add_oom_kill(&mut self, labels: &Labels) {
        self.oom_kills.add(labels, None, 1);
    }

    /// Stalls of one kind: their number, and their time. The seconds series is created with the
    /// count's, so that a mean stall (one divided by the other) always has both sides.
    pub fn add_stalls(&mut self, labels: &Labels, kind: &'static str, count: u64, seconds: f64) {
        if count > 0 {
            let kind = Some(("kind", kind));
            self.stalls.add(labels, kind, count);
            self.stall_seconds.create(labels, kind);
            self.stall_seconds.add(labels, kind, seconds);
        }
    }

    /// Drop counters exist from the start, at 0, so that an alert on them never meets a gap.
    pub fn add_dropped(&mut self, source: &'static str, n: u64) {
        let labels = vec![("source", source.to_owned())];
        self.dropped.create(&labels);
        self.dropped.add(&labels, n);
    }

    /// A program's run counters (`--bpf-stats`: its programs are known from the start).
    pub fn add_program_run(&mut self, program: &str, seconds: f64, runs: u64) {
        let labels = vec![("program", program.to_owned())];
        self.program_time.get_or_create(&labels).inc_by(seconds);
        self.program_runs.create(&labels);
        self.program_runs.add(&labels, runs);
    }

    pub fn add_failed_reading(&self) {
        self.failed_readings.inc();
    }

    /// A reading succeeded at `unix_seconds`.
    pub fn set_last_reading(&self, unix_seconds: f64) {
        self.last_reading.set(unix_seconds);
    }

    pub fn add_own_usage(&self, cpu_seconds: f64, resident_bytes: u64) {
        self.cpu.inc_by(cpu_seconds);
        self.resident.set(gauge_value(resident_bytes));
    }

    /// The daemon's own bookkeeping, set once per tick.
    pub fn set_bookkeeping(&self, tracked_processes: usize) {
        self.tracked.set(gauge_value(tracked_processes as u64));
        self.series_in_use
            .set(gauge_value(self.series.len() as u64));
    }

    /// Removes every series of an exited process (only when series are per process). The shared
    /// `other` series stays: other folded processes' counts are in it.
    pub fn forget(&mut self, labels: &Labels) {
        if is_other(labels) {
            return;
        }
        for kind in ["minor", "major"] {
            self.faults.remove(labels, Some(("kind", kind)));
        }
        for &syscall in &self.syscall_names {
            self.syscalls.remove(labels, Some(("syscall", syscall)));
            self.syscall_errors
                .remove(labels, Some(("syscall", syscall)));
        }
        for op in BYTE_OPS {
            self.bytes.remove(labels, Some(("op", op)));
        }
        self.oom_kills.remove(labels, None);
        for kind in StallKind::ALL {
            let kind = Some(("kind", kind.name()));
            self.stalls.remove(labels, kind);
            self.stall_seconds.remove(labels, kind);
        }
        self.series.release(labels);
    }

    #[cfg(test)]
    pub fn series(&self) -> usize {
        self.series.len()
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::output::prometheus::openmetrics;

    fn labels(comm: &str) -> Labels {
        vec![("comm", comm.to_owned())]
    }

    #[test]
    fn label_sets_beyond_the_limit_are_folded_into_other() {
        let mut limit = SeriesLimit::new(2);
        assert_eq!(limit.admit(labels("a")), labels("a"));
        assert_eq!(limit.admit(labels("b")), labels("b"));
        assert_eq!(limit.admit(labels("a")), labels("a"), "already admitted");
        assert_eq!(limit.admit(labels("c")), labels("other"));
        limit.release(&labels("a"));
        assert_eq!(limit.admit(labels("c")), labels("c"), "room again");
        assert_eq!(limit.len(), 2);
    }

    /// Has a scraper see what is there now, then releases what it has seen at 0.
    fn scrape_then_read(metrics: &mut Metrics) {
        let at = Instant::now();
        metrics.scrapers().scraped("prometheus".into(), at);
        metrics.release_held(at + Duration::from_millis(1));
    }

    #[test]
    fn exposition_follows_prometheus_conventions() {
        let mut metrics = Metrics::new(&[SeriesLabel::Comm, SeriesLabel::Cgroup], 10, vec!["mmap"]);
        let who = Identity {
            pid: 7,
            comm: "db".into(),
            cgroup: "/x".into(),
        };
        let series = metrics.labels_of(&who);
        metrics.add_faults(&series, 5, 0);
        metrics.add_syscalls(&series, "mmap", 3, 1);
        metrics.add_bytes(&series, "mmap", 4096);
        metrics.add_oom_kill(&series);
        metrics.add_dropped("fault_table_full", 2);
        scrape_then_read(&mut metrics);
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        for line in [
            r#"memtrace_page_faults_total{comm="db",cgroup="/x",kind="minor"} 5"#,
            r#"memtrace_alloc_syscalls_total{comm="db",cgroup="/x",syscall="mmap"} 3"#,
            r#"memtrace_alloc_syscall_errors_total{comm="db",cgroup="/x",syscall="mmap"} 1"#,
            r#"memtrace_alloc_bytes_total{comm="db",cgroup="/x",op="mmap"} 4096"#,
            r#"memtrace_oom_kills_total{comm="db",cgroup="/x"} 1"#,
            r#"memtrace_events_dropped_total{source="fault_table_full"} 2"#,
            "# TYPE memtrace_page_faults counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains(r#"cgroup="/x",kind="major""#),
            "zero deltas create no series"
        );
    }

    fn sample(metrics: &Metrics, line_start: &str) -> Option<String> {
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        text.lines()
            .find(|line| line.starts_with(line_start))
            .map(|line| line.rsplit_once(' ').unwrap().1.to_owned())
    }

    #[test]
    fn a_new_series_is_scraped_at_zero_before_it_counts() {
        let mut metrics = Metrics::new(&[SeriesLabel::Comm], 10, vec![]);
        let labels = metrics.labels_of(&Identity {
            pid: 1,
            comm: "hog".into(),
            cgroup: String::new(),
        });
        let t0 = Instant::now();
        let kills = r#"memtrace_oom_kills_total{comm="hog"}"#;
        metrics.add_oom_kill(&labels);
        metrics.release_held(t0);
        assert_eq!(sample(&metrics, kills).as_deref(), Some("0"), "born at 0");
        // Scraped at 0 (the scrape began after the series was created): the kill now counts,
        // and later ones at once.
        scrape_then_read(&mut metrics);
        assert_eq!(sample(&metrics, kills).as_deref(), Some("1"));
        metrics.add_oom_kill(&labels);
        assert_eq!(sample(&metrics, kills).as_deref(), Some("2"));
    }

    #[test]
    fn kubernetes_labels_come_from_the_cgroup_path() {
        let by = [
            SeriesLabel::Pod,
            SeriesLabel::Container,
            SeriesLabel::Qos,
            SeriesLabel::Unit,
        ];
        let mut metrics = Metrics::new(&by, 10, vec![]);
        let id = "4d7a9b1c2e3f40516273849a0b1c2d3e4f5061728394a5b6c7d8e9f00112233";
        let labels = metrics.labels_of(&Identity {
            pid: 1,
            comm: "java".into(),
            cgroup: format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\
                 7f1c7f1e_52b1_4c4e_9a3c_0f9f0e7b8c9d.slice/cri-containerd-{id}.scope"
            ),
        });
        assert_eq!(
            labels,
            vec![
                ("pod_uid", "7f1c7f1e-52b1-4c4e-9a3c-0f9f0e7b8c9d".to_owned()),
                ("container_id", format!("containerd://{id}")),
                ("qos_class", "burstable".to_owned()),
                ("systemd_unit", String::new()),
            ]
        );
        let host = metrics.labels_of(&Identity {
            pid: 2,
            comm: "nginx".into(),
            cgroup: "/system.slice/nginx.service".into(),
        });
        assert_eq!(host[3], ("systemd_unit", "nginx.service".to_owned()));
        assert_eq!(host[0], ("pod_uid", String::new()));
    }

    #[test]
    fn forgetting_a_folded_process_keeps_the_shared_other_series() {
        let mut metrics = Metrics::new(&[SeriesLabel::Pid], 1, vec![]);
        let who = |pid| Identity {
            pid,
            comm: String::new(),
            cgroup: String::new(),
        };
        let first = metrics.labels_of(&who(1));
        let folded = metrics.labels_of(&who(2));
        assert_eq!(folded, vec![("pid", "other".to_owned())]);
        metrics.add_faults(&first, 1, 0);
        metrics.add_faults(&folded, 7, 0);
        scrape_then_read(&mut metrics);
        metrics.forget(&folded);
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        assert!(
            text.contains(r#"memtrace_page_faults_total{pid="other",kind="minor"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn per_process_series_are_removed_with_their_process() {
        let mut metrics = Metrics::new(&[SeriesLabel::Pid], 10, vec!["mmap"]);
        let who = Identity {
            pid: 42,
            comm: String::new(),
            cgroup: String::new(),
        };
        let series = metrics.labels_of(&who);
        metrics.add_faults(&series, 1, 1);
        metrics.add_syscalls(&series, "mmap", 1, 0);
        assert_eq!(metrics.series(), 1);
        metrics.forget(&series);
        let mut text = String::new();
        encode(&mut text, &metrics.registry()).unwrap();
        assert!(!text.contains(r#"pid="42""#), "{text}");
        assert_eq!(metrics.series(), 0);
    }

    #[test]
    fn node_totals_exist_at_zero_from_the_start_and_outlive_their_processes() {
        let mut metrics = Metrics::new(&[SeriesLabel::Pid], 10, vec!["mmap"]);
        let kills = "memtrace_node_oom_kills_total";
        let minor = r#"memtrace_node_page_faults_total{kind="minor"}"#;
        assert_eq!(sample(&metrics, kills).as_deref(), Some("0"));
        assert_eq!(sample(&metrics, minor).as_deref(), Some("0"));
        for line in [
            r#"memtrace_node_alloc_syscalls_total{syscall="mmap"}"#,
            r#"memtrace_node_alloc_bytes_total{op="brk_grow"}"#,
            r#"memtrace_node_reclaim_stall_seconds_total{kind="memcg"}"#,
        ] {
            let value = sample(&metrics, line).map(|v| v.parse::<f64>().unwrap());
            assert_eq!(value, Some(0.0), "{line}");
        }
        scrape_then_read(&mut metrics);
        let series = metrics.labels_of(&Identity {
            pid: 42,
            comm: String::new(),
            cgroup: String::new(),
        });
        metrics.add_faults(&series, 3, 0);
        metrics.add_oom_kill(&series);
        assert_eq!(
            sample(&metrics, minor).as_deref(),
            Some("3"),
            "scraped at 0 already"
        );
        assert_eq!(sample(&metrics, kills).as_deref(), Some("1"));
        let text = openmetrics(&metrics.registry()).unwrap();
        assert!(
            text.contains("\nmemtrace_node_oom_kills_total 1\n"),
            "{text}"
        );
        metrics.forget(&series);
        assert_eq!(
            sample(&metrics, minor).as_deref(),
            Some("3"),
            "kept after its process"
        );
    }
}
