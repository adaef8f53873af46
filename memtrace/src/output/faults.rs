//! The records of a `memtrace faults` report: a start, one interval per `--interval`, a summary.
//! JSON Schema in `docs/schemas/`.

use std::io::{self, Write};

use memtrace_common::DropSource;
use serde::Serialize;

use super::{Record, Targets, drops_json};
use crate::model::time::{Timestamp, seconds, unix_seconds};
use crate::{aggregate::faults::Row, model::command::CommandOutcome};

/// Summary rows the human table shows before saying how many more there are.
const SUMMARY_ROWS: usize = 50;

/// What the report is about, told once at the start.
#[derive(Serialize)]
pub struct Start {
    #[serde(flatten)]
    pub targets: Targets,
    pub interval_s: f64,
    pub per_thread: bool,
    /// What counts the faults: `perf_counters` (explicit `--pid`s, no program at all) or
    /// `programs` (BPF programs on the fault events).
    pub counted_by: &'static str,
    /// Whether the table has a VSZ column (JSON rows always carry it).
    #[serde(skip)]
    pub vsz: bool,
}

impl Record for Start {
    const TYPE: &'static str = "start";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        eprintln!(
            "memtrace: counting page faults of {} (Ctrl-C to stop)",
            self.targets.description
        );
        writeln!(
            out,
            "{:<8} {:>8}{} {:<16} {:>10} {:>10} {:>12} {:>10}{} {:>8}",
            "TIME",
            "PID",
            tid_column(self.per_thread.then_some("TID")),
            "COMM",
            "MINOR/s",
            "MAJOR/s",
            "MINOR",
            "MAJOR",
            vsz_column(self.vsz.then_some("VSZ")),
            "RSS"
        )
    }
}

/// One process (thread) in one interval.
#[derive(Serialize)]
pub struct Rate<'a> {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub comm: &'a str,
    #[serde(serialize_with = "seconds")]
    pub minor_per_s: f64,
    #[serde(serialize_with = "seconds")]
    pub major_per_s: f64,
    /// Totals since tracing began.
    pub minor: u64,
    pub major: u64,
    /// The process's virtual size and resident memory when the row was written, from
    /// `/proc/PID/statm` (null once it has exited).
    pub vsz_kb: Option<u64>,
    pub rss_kb: Option<u64>,
}

impl<'a> Rate<'a> {
    /// A row, with the process's `(vsz_kb, rss_kb)` if it is still there.
    pub fn of(row: &'a Row, per_thread: bool, memory_kb: Option<(u64, u64)>) -> Rate<'a> {
        Rate {
            pid: row.key.tgid,
            tid: per_thread.then_some(row.key.tid),
            comm: &row.comm,
            minor_per_s: row.minor_per_s,
            major_per_s: row.major_per_s,
            minor: row.total.minor,
            major: row.total.major,
            vsz_kb: memory_kb.map(|(vsz, _)| vsz),
            rss_kb: memory_kb.map(|(_, rss)| rss),
        }
    }
}

/// One interval: the rows to show, and what the kernel could not count so far.
#[derive(Serialize)]
pub struct Interval<'a> {
    #[serde(serialize_with = "unix_seconds")]
    pub timestamp: Timestamp,
    #[serde(serialize_with = "seconds")]
    pub interval_s: f64,
    pub processes: Vec<Rate<'a>>,
    #[serde(serialize_with = "drops_json")]
    pub dropped: &'a [(DropSource, u64)],
    #[serde(skip)]
    pub show_vsz: bool,
}

impl Record for Interval<'_> {
    const TYPE: &'static str = "interval";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let hms = self.timestamp.local_hms();
        for rate in &self.processes {
            writeln!(
                out,
                "{hms:<8} {:>8}{} {:<16} {:>10.1} {:>10.1} {:>12} {:>10}{} {:>8}",
                rate.pid,
                tid_column(rate.tid),
                rate.comm,
                rate.minor_per_s,
                rate.major_per_s,
                rate.minor,
                rate.major,
                vsz_column(self.show_vsz.then(|| size_or_dash(rate.vsz_kb))),
                size_or_dash(rate.rss_kb)
            )?;
        }
        Ok(())
    }
}

/// One process's (thread's) totals in the summary.
#[derive(Serialize)]
pub struct Total {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    pub comm: String,
    pub minor: u64,
    pub major: u64,
}

#[derive(Serialize)]
pub struct Totals {
    pub minor: u64,
    pub major: u64,
}

/// The spawned command, with the kernel's own count for it and its reaped descendants (`wait4`
/// rusage), as a cross-check.
#[derive(Serialize)]
pub struct Command {
    pub pid: u32,
    pub exit_code: u8,
    pub kernel_minor: u64,
    pub kernel_major: u64,
}

impl Command {
    pub fn of((pid, exit): CommandOutcome) -> Command {
        Command {
            pid,
            exit_code: exit.code,
            kernel_minor: exit.minor_faults,
            kernel_major: exit.major_faults,
        }
    }
}

#[derive(Serialize)]
pub struct Summary<'a> {
    #[serde(serialize_with = "unix_seconds")]
    pub timestamp: Timestamp,
    #[serde(serialize_with = "seconds")]
    pub duration_s: f64,
    /// Why tracing ended ([`crate::session::End::reason`]).
    pub reason: &'static str,
    /// Busiest first.
    pub processes: Vec<Total>,
    pub total: Totals,
    #[serde(serialize_with = "drops_json")]
    pub dropped: &'a [(DropSource, u64)],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(skip)]
    pub per_thread: bool,
}

impl Record for Summary<'_> {
    const TYPE: &'static str = "summary";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let count = self.processes.len();
        let noun = match (self.per_thread, count) {
            (true, 1) => "thread",
            (true, _) => "threads",
            (false, 1) => "process",
            (false, _) => "processes",
        };
        writeln!(
            out,
            "\nSummary: {:.1} s, {count} {noun} ({})",
            self.duration_s,
            self.reason.replace('_', " ")
        )?;
        let tid_header = tid_column(self.per_thread.then_some("TID"));
        writeln!(
            out,
            "{:>8}{tid_header} {:<16} {:>12} {:>10}",
            "PID", "COMM", "MINOR", "MAJOR"
        )?;
        for t in self.processes.iter().take(SUMMARY_ROWS) {
            writeln!(
                out,
                "{:>8}{} {:<16} {:>12} {:>10}",
                t.pid,
                tid_column(t.tid),
                t.comm,
                t.minor,
                t.major
            )?;
        }
        if count > SUMMARY_ROWS {
            writeln!(
                out,
                "  ... and {} more (--json lists all)",
                count - SUMMARY_ROWS
            )?;
        }
        let pad = if self.per_thread { 9 } else { 0 };
        writeln!(
            out,
            "{:>8}{:pad$} {:<16} {:>12} {:>10}",
            "total", "", "", self.total.minor, self.total.major
        )?;
        if let Some(command) = &self.command {
            writeln!(
                out,
                "command (pid {}) exited with status {}; the kernel's own count for it and its \
                 reaped children: {} minor, {} major",
                command.pid, command.exit_code, command.kernel_minor, command.kernel_major
            )?;
        }
        for &(source, n) in self.dropped {
            if n > 0 {
                writeln!(out, "dropped: {n} ({})", source.name())?;
            }
        }
        Ok(())
    }
}

/// The `TID` column, present only when counting per thread.
/// The VSZ column, when shown.
fn vsz_column(vsz: Option<impl std::fmt::Display>) -> String {
    vsz.map_or_else(String::new, |vsz| format!(" {vsz:>8}"))
}

/// A size, `-` when unknown.
fn size_or_dash(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), super::size_kb)
}

fn tid_column(tid: Option<impl std::fmt::Display>) -> String {
    tid.map(|tid| format!(" {tid:>8}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use memtrace_common::faults::FaultKey;

    use super::*;
    use crate::{model::faults::Counts, model::time::round_secs};

    #[test]
    fn rates_round_to_microseconds_in_json_and_tid_only_per_thread() {
        let row = Row {
            key: FaultKey { tgid: 7, tid: 8 },
            comm: "x".into(),
            minor_per_s: 1.0 / 3.0,
            major_per_s: 0.0,
            delta: Counts::default(),
            total: Counts { minor: 5, major: 1 },
        };
        let json = serde_json::to_value(Rate::of(&row, false, Some((2048, 1024)))).unwrap();
        assert_eq!(json["minor_per_s"], round_secs(1.0 / 3.0));
        assert!(json.get("tid").is_none());
        assert_eq!(
            (json["vsz_kb"].as_u64(), json["rss_kb"].as_u64()),
            (Some(2048), Some(1024))
        );
        let json = serde_json::to_value(Rate::of(&row, true, None)).unwrap();
        assert_eq!(json["tid"], 8);
        assert!(json["rss_kb"].is_null(), "an exited process has no size");
    }
}
