//! The daemon's metrics, kept in the Prometheus project's own client (`prometheus-client`), which
//! also writes the exposition format. Names and help follow Prometheus conventions: `_total`
//! counters, base units (bytes, seconds), `process_*` for the daemon's own cost.
//!
//! Cardinality is bounded: at most `max_series` distinct label sets (comm / cgroup / pid) are
//! admitted; any further one is folded into the single label set whose values are all `other`.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::AtomicU64},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::cli::SeriesLabel;

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

    pub fn is_empty(&self) -> bool {
        self.admitted.is_empty()
    }
}

type FloatCounter = Counter<f64, AtomicU64>;

pub struct Metrics {
    registry: Arc<Registry>,
    by: Vec<SeriesLabel>,
    series: SeriesLimit,
    syscall_names: Vec<&'static str>,
    faults: Family<Labels, Counter>,
    syscalls: Family<Labels, Counter>,
    syscall_errors: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    oom_kills: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    program_time: Family<Labels, FloatCounter>,
    program_runs: Family<Labels, Counter>,
    failed_readings: Counter,
    cpu: FloatCounter,
    resident: Gauge,
    tracked: Gauge,
    series_in_use: Gauge,
}

impl Metrics {
    pub fn new(by: &[SeriesLabel], max_series: usize, syscall_names: Vec<&'static str>) -> Metrics {
        let mut registry = Registry::default();
        let faults = Family::default();
        registry.register(
            "memtrace_page_faults",
            "Page faults, by kind (minor: no I/O; major: waited for I/O), counted in the kernel",
            faults.clone(),
        );
        let syscalls = Family::default();
        registry.register(
            "memtrace_alloc_syscalls",
            "Completed memory-allocation syscalls (brk, mmap, munmap, mremap, mprotect, madvise)",
            syscalls.clone(),
        );
        let syscall_errors = Family::default();
        registry.register(
            "memtrace_alloc_syscall_errors",
            "Memory-allocation syscalls that returned an error",
            syscall_errors.clone(),
        );
        let bytes = Family::default();
        registry.register_with_unit(
            "memtrace_alloc",
            "Bytes mapped by mmap, unmapped by munmap, of program-break growth and shrinkage, and \
             of mremap size changes, by op",
            Unit::Bytes,
            bytes.clone(),
        );
        let oom_kills = Family::default();
        registry.register(
            "memtrace_oom_kills",
            "Processes killed by the OOM killer, by the victim's command name and memory cgroup",
            oom_kills.clone(),
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
            by: by.to_vec(),
            series: SeriesLimit::new(max_series),
            syscall_names,
            faults,
            syscalls,
            syscall_errors,
            bytes,
            oom_kills,
            dropped,
            program_time,
            program_runs,
            failed_readings,
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

    /// The (admitted) labels a process's counts go under.
    pub fn labels_of(&mut self, who: &Identity) -> Labels {
        let labels = self
            .by
            .iter()
            .map(|label| match label {
                SeriesLabel::Comm => ("comm", who.comm.clone()),
                SeriesLabel::Cgroup => ("cgroup", who.cgroup.clone()),
                SeriesLabel::Pid => ("pid", who.pid.to_string()),
            })
            .collect();
        self.series.admit(labels)
    }

    /// Whether series are per process, and so must be removed when it exits.
    pub fn per_process(&self) -> bool {
        self.by.contains(&SeriesLabel::Pid)
    }

    pub fn add_faults(&self, labels: &Labels, minor: u64, major: u64) {
        add(&self.faults, labels, "kind", "minor", minor);
        add(&self.faults, labels, "kind", "major", major);
    }

    /// A syscall's error counter exists (at 0) as soon as its call counter does, so that error
    /// ratios have both sides.
    pub fn add_syscalls(&self, labels: &Labels, syscall: &'static str, calls: u64, errors: u64) {
        if calls > 0 {
            let labels = with(labels, "syscall", syscall);
            self.syscalls.get_or_create(&labels).inc_by(calls);
            self.syscall_errors.get_or_create(&labels).inc_by(errors);
        }
    }

    pub fn add_bytes(&self, labels: &Labels, op: &'static str, bytes: u64) {
        add(&self.bytes, labels, "op", op, bytes);
    }

    pub fn add_oom_kill(&self, labels: &Labels) {
        self.oom_kills.get_or_create(labels).inc();
    }

    /// Drop counters exist from the start, at 0, so that an alert on them never meets a gap.
    pub fn add_dropped(&self, source: &'static str, n: u64) {
        let labels = vec![("source", source.to_owned())];
        self.dropped.get_or_create(&labels).inc_by(n);
    }

    pub fn add_program_run(&self, program: &str, seconds: f64, runs: u64) {
        let labels = vec![("program", program.to_owned())];
        self.program_time.get_or_create(&labels).inc_by(seconds);
        self.program_runs.get_or_create(&labels).inc_by(runs);
    }

    pub fn add_failed_reading(&self) {
        self.failed_readings.inc();
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
            self.faults.remove(&with(labels, "kind", kind));
        }
        for &syscall in &self.syscall_names {
            self.syscalls.remove(&with(labels, "syscall", syscall));
            self.syscall_errors
                .remove(&with(labels, "syscall", syscall));
        }
        for op in BYTE_OPS {
            self.bytes.remove(&with(labels, "op", op));
        }
        self.oom_kills.remove(labels);
        self.series.release(labels);
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }
}

/// The OpenMetrics text `prometheus-client` writes (what Prometheus asks for when it scrapes).
pub fn openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// The same samples in the classic text format (0.0.4), for readers that do not speak
/// OpenMetrics, such as `promtool check metrics` of Prometheus 2.42: a counter's `# HELP` and
/// `# TYPE` name its `_total` sample rather than the family, and there are no `# UNIT` or `# EOF`
/// lines. Sample lines are left exactly as the client wrote them.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|&prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key, value.to_owned()));
    labels
}

/// Adds `n` to one series of `family`; a zero adds nothing and creates no series.
fn add(family: &Family<Labels, Counter>, labels: &Labels, key: &'static str, value: &str, n: u64) {
    if n > 0 {
        family.get_or_create(&with(labels, key, value)).inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn classic_text_names_counter_metadata_after_the_sample() {
        let openmetrics = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\n\
                           a_bytes_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

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
            !text.contains(r#"kind="major""#),
            "zero deltas create no series"
        );
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
}
