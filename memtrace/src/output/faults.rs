//! Rendering `memtrace faults` reports: a table for people, JSON lines for machines. The JSON
//! schema is documented in the README; every record has a `"type"`.

use std::io::{self, Write};

use memtrace_common::DropSource;
use serde::Serialize;

use super::{Timestamp, round_secs};
use crate::{aggregate::faults::Row, spawn::CommandExit};

/// What the report is about, told once at the start.
pub struct Start<'a> {
    /// `"system"`, `"pids"`, `"comm"` or `"command"`.
    pub mode: &'static str,
    pub description: &'a str,
    pub pids: &'a [u32],
    pub interval_s: f64,
    pub per_thread: bool,
}

/// One process's totals in the final summary.
pub struct Total {
    pub pid: u32,
    pub tid: Option<u32>,
    pub comm: String,
    pub minor: u64,
    pub major: u64,
}

pub struct Summary {
    pub time: Timestamp,
    pub duration_s: f64,
    /// Why tracing ended: `"signal"`, `"duration"`, `"targets_exited"`, `"command_exited"`,
    /// `"output_closed"`.
    pub reason: &'static str,
    pub totals: Vec<Total>,
    pub dropped: Vec<(DropSource, u64)>,
    pub command: Option<(u32, CommandExit)>,
}

pub struct FaultsOutput {
    out: Box<dyn Write>,
    json: bool,
    per_thread: bool,
    /// Rows the human summary shows before saying how many more there are.
    summary_rows: usize,
}

#[derive(Serialize)]
struct JsonStart<'a> {
    r#type: &'static str,
    mode: &'static str,
    description: &'a str,
    pids: &'a [u32],
    interval_s: f64,
    per_thread: bool,
}

#[derive(Serialize)]
struct JsonRate<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    comm: &'a str,
    minor_per_s: f64,
    major_per_s: f64,
    minor: u64,
    major: u64,
}

#[derive(Serialize)]
struct JsonInterval<'a> {
    r#type: &'static str,
    timestamp: f64,
    interval_s: f64,
    processes: Vec<JsonRate<'a>>,
    dropped: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct JsonTotal<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    comm: &'a str,
    minor: u64,
    major: u64,
}

#[derive(Serialize)]
struct JsonCommand {
    pid: u32,
    exit_code: u8,
    /// The kernel's own count for the command and its reaped descendants (`wait4` rusage).
    kernel_minor: u64,
    kernel_major: u64,
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    r#type: &'static str,
    timestamp: f64,
    duration_s: f64,
    reason: &'static str,
    processes: Vec<JsonTotal<'a>>,
    total: JsonTotals,
    dropped: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<JsonCommand>,
}

#[derive(Serialize)]
struct JsonTotals {
    minor: u64,
    major: u64,
}

fn dropped_json(dropped: &[(DropSource, u64)]) -> serde_json::Map<String, serde_json::Value> {
    dropped
        .iter()
        .map(|&(source, n)| (source.name().to_owned(), n.into()))
        .collect()
}

fn tid_of(row_tid: u32, per_thread: bool) -> Option<u32> {
    per_thread.then_some(row_tid)
}

impl FaultsOutput {
    pub fn new(out: Box<dyn Write>, json: bool, per_thread: bool) -> FaultsOutput {
        FaultsOutput {
            out,
            json,
            per_thread,
            summary_rows: 50,
        }
    }

    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        super::json_line(&mut self.out, value)
    }

    pub fn start(&mut self, start: &Start) -> io::Result<()> {
        if self.json {
            return self.json_line(&JsonStart {
                r#type: "start",
                mode: start.mode,
                description: start.description,
                pids: start.pids,
                interval_s: start.interval_s,
                per_thread: start.per_thread,
            });
        }
        eprintln!(
            "memtrace: counting page faults of {} (Ctrl-C to stop)",
            start.description
        );
        let tid = if self.per_thread {
            format!(" {:>8}", "TID")
        } else {
            String::new()
        };
        writeln!(
            self.out,
            "{:<8} {:>8}{tid} {:<16} {:>10} {:>10} {:>12} {:>10}",
            "TIME", "PID", "COMM", "MINOR/s", "MAJOR/s", "MINOR", "MAJOR"
        )?;
        self.out.flush()
    }

    pub fn interval(
        &mut self,
        time: Timestamp,
        interval_s: f64,
        rows: &[Row],
        dropped: &[(DropSource, u64)],
    ) -> io::Result<()> {
        if self.json {
            let processes = rows
                .iter()
                .map(|row| JsonRate {
                    pid: row.key.tgid,
                    tid: tid_of(row.key.tid, self.per_thread),
                    comm: &row.comm,
                    minor_per_s: round_secs(row.minor_per_s),
                    major_per_s: round_secs(row.major_per_s),
                    minor: row.total.minor,
                    major: row.total.major,
                })
                .collect();
            return self.json_line(&JsonInterval {
                r#type: "interval",
                timestamp: round_secs(time.unix),
                interval_s: round_secs(interval_s),
                processes,
                dropped: dropped_json(dropped),
            });
        }
        let hms = time.local_hms();
        for row in rows {
            let tid = if self.per_thread {
                format!(" {:>8}", row.key.tid)
            } else {
                String::new()
            };
            writeln!(
                self.out,
                "{hms:<8} {:>8}{tid} {:<16} {:>10.1} {:>10.1} {:>12} {:>10}",
                row.key.tgid,
                row.comm,
                row.minor_per_s,
                row.major_per_s,
                row.total.minor,
                row.total.major
            )?;
        }
        self.out.flush()
    }

    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let (minor, major) = summary.totals.iter().fold((0, 0), |(minor, major), t| {
            (minor + t.minor, major + t.major)
        });
        if self.json {
            let processes = summary
                .totals
                .iter()
                .map(|t| JsonTotal {
                    pid: t.pid,
                    tid: t.tid,
                    comm: &t.comm,
                    minor: t.minor,
                    major: t.major,
                })
                .collect();
            return self.json_line(&JsonSummary {
                r#type: "summary",
                timestamp: round_secs(summary.time.unix),
                duration_s: round_secs(summary.duration_s),
                reason: summary.reason,
                processes,
                total: JsonTotals { minor, major },
                dropped: dropped_json(&summary.dropped),
                command: summary.command.map(|(pid, exit)| JsonCommand {
                    pid,
                    exit_code: exit.code,
                    kernel_minor: exit.minor_faults,
                    kernel_major: exit.major_faults,
                }),
            });
        }
        let w = &mut self.out;
        writeln!(
            w,
            "\nSummary: {:.1} s, {} {} ({})",
            summary.duration_s,
            summary.totals.len(),
            match (self.per_thread, summary.totals.len()) {
                (true, 1) => "thread",
                (true, _) => "threads",
                (false, 1) => "process",
                (false, _) => "processes",
            },
            summary.reason.replace('_', " ")
        )?;
        let tid = if self.per_thread {
            format!(" {:>8}", "TID")
        } else {
            String::new()
        };
        writeln!(
            w,
            "{:>8}{tid} {:<16} {:>12} {:>10}",
            "PID", "COMM", "MINOR", "MAJOR"
        )?;
        for t in summary.totals.iter().take(self.summary_rows) {
            let tid = t.tid.map(|tid| format!(" {tid:>8}")).unwrap_or_default();
            writeln!(
                w,
                "{:>8}{tid} {:<16} {:>12} {:>10}",
                t.pid, t.comm, t.minor, t.major
            )?;
        }
        if summary.totals.len() > self.summary_rows {
            writeln!(
                w,
                "  ... and {} more (--json lists all)",
                summary.totals.len() - self.summary_rows
            )?;
        }
        let pad = if self.per_thread { 9 } else { 0 };
        writeln!(
            w,
            "{:>8}{:pad$} {:<16} {minor:>12} {major:>10}",
            "total", "", ""
        )?;
        if let Some((pid, exit)) = summary.command {
            writeln!(
                w,
                "command (pid {pid}) exited with status {}; the kernel's own count for it and its \
                 reaped children: {} minor, {} major",
                exit.code, exit.minor_faults, exit.major_faults
            )?;
        }
        for &(source, n) in &summary.dropped {
            if n > 0 {
                writeln!(w, "dropped: {n} ({})", source.name())?;
            }
        }
        w.flush()
    }
}
