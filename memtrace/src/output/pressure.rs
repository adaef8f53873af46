//! The records of a `memtrace pressure` report: a start, one interval per `--interval` (the
//! rows that stalled, and the kernel's own pressure figures), a summary (totals, longest
//! stalls, histograms with `-H`). JSON Schema in `docs/schemas/`.

use std::io::{self, Write};

use memtrace_common::{
    DropSource,
    pressure::{HISTOGRAM_SLOTS, Histogram, StallKind},
};
use serde::{Serialize, ser::SerializeMap};

use super::{Record, Targets, drops_json};
use crate::{
    aggregate::pressure::{Kinds, Row, RowKey},
    model::command::CommandOutcome,
    model::time::{Timestamp, round_secs, seconds},
    sys::procfs::Psi,
};

/// Column headings of the kinds, in [`StallKind`] order.
const HEADINGS: [&str; StallKind::COUNT] = ["DIRECT", "MEMCG", "COMPACT", "THROTTLE"];

#[derive(Serialize)]
pub struct Start {
    #[serde(flatten)]
    pub targets: Targets,
    pub interval_s: f64,
    /// `"process"` or `"cgroup"`.
    pub by: &'static str,
    pub histograms: bool,
}

impl Record for Start {
    const TYPE: &'static str = "start";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        eprintln!(
            "memtrace: timing memory stalls of {} (Ctrl-C to stop)",
            self.targets.description
        );
        let who = if self.by == "cgroup" {
            format!("{:<32} {:>5}", "CGROUP", "PROCS")
        } else {
            format!("{:>8} {:<16}", "PID", "COMM")
        };
        write!(out, "{:<8} {who}", "TIME")?;
        for heading in HEADINGS {
            write!(out, " {heading:>8} {:>9}", "ms")?;
        }
        writeln!(out)
    }
}

/// One row's stalls: `{"direct": {"count", "ms"}, ...}` (and `max_ms` in the summary).
struct KindsJson<'a> {
    kinds: &'a Kinds,
    max_ns: Option<&'a [u64; StallKind::COUNT]>,
}

impl Serialize for KindsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct One {
            count: u64,
            ms: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            max_ms: Option<f64>,
        }
        let mut map = s.serialize_map(Some(StallKind::COUNT))?;
        for kind in StallKind::ALL {
            let stalls = self.kinds.of(kind);
            map.serialize_entry(
                kind.name(),
                &One {
                    count: stalls.count,
                    ms: ms(stalls.total_ns),
                    max_ms: self.max_ns.map(|max| ms(max[kind as usize])),
                },
            )?;
        }
        map.end()
    }
}

fn ms(ns: u64) -> f64 {
    round_secs(ns as f64 / 1e6)
}

/// A row as shown: its process's memory cgroup (for a process row), and its cgroup's own PSI
/// figures where cgroup v2 has them (`memory.pressure`).
pub struct Shown<'a> {
    pub row: &'a Row,
    pub cgroup: Option<&'a str>,
    pub psi: Option<PsiReport>,
}

/// Rows as JSON: the interval's counts, or (`summary`) the totals with the longest stalls.
fn rows_json<'a>(rows: &'a [Shown<'a>], summary: bool) -> Vec<RowJson<'a>> {
    rows.iter()
        .map(|shown| RowJson { shown, summary })
        .collect()
}

/// A row as JSON: a process (`pid`, `comm`, `cgroup`) or a cgroup (`cgroup`, `processes`).
struct RowJson<'a> {
    shown: &'a Shown<'a>,
    summary: bool,
}

impl Serialize for RowJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let row = self.shown.row;
        let mut map = s.serialize_map(None)?;
        match &row.key {
            RowKey::Process(pid) => {
                map.serialize_entry("pid", pid)?;
                map.serialize_entry("comm", &row.comm)?;
                map.serialize_entry("cgroup", &self.shown.cgroup)?;
            }
            RowKey::Cgroup(path) => {
                map.serialize_entry("cgroup", path)?;
                map.serialize_entry("processes", &row.processes)?;
            }
        }
        let (kinds, max_ns) = if self.summary {
            (&row.total, Some(&row.max_ns))
        } else {
            (&row.delta, None)
        };
        map.serialize_entry("stalls", &KindsJson { kinds, max_ns })?;
        map.serialize_entry("psi", &self.shown.psi)?;
        map.end()
    }
}

/// The kernel's pressure figures at a moment, with what stalled since the last ones.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PsiReport {
    pub some: PsiLineReport,
    pub full: PsiLineReport,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct PsiLineReport {
    /// Percent of the last 10, 60, 300 s in which some (or all) tasks stalled for memory.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Stall time since the previous figures (the kernel's `total` counter's delta).
    #[serde(serialize_with = "seconds")]
    pub stalled_ms: f64,
}

impl PsiReport {
    pub fn between(earlier: &Psi, now: &Psi) -> PsiReport {
        let line =
            |then: &crate::sys::procfs::PsiLine, now: &crate::sys::procfs::PsiLine| PsiLineReport {
                avg10: now.avg10,
                avg60: now.avg60,
                avg300: now.avg300,
                stalled_ms: now.total_us.saturating_sub(then.total_us) as f64 / 1e3,
            };
        PsiReport {
            some: line(&earlier.some, &now.some),
            full: line(&earlier.full, &now.full),
        }
    }

    fn human(&self) -> String {
        format!(
            "some {:.2}% full {:.2}% (avg10); stalled {:.1} ms (some), {:.1} ms (full)",
            self.some.avg10, self.full.avg10, self.some.stalled_ms, self.full.stalled_ms
        )
    }
}

pub struct Interval<'a> {
    pub timestamp: Timestamp,
    pub interval_s: f64,
    /// With the memory cgroup of each process row (`None` where unknown).
    pub rows: Vec<Shown<'a>>,
    /// The machine's (`/proc/pressure/memory`), where the kernel has PSI.
    pub psi: Option<PsiReport>,
    pub dropped: &'a [(DropSource, u64)],
}

impl Serialize for Interval<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("timestamp", &round_secs(self.timestamp.unix))?;
        map.serialize_entry("interval_s", &round_secs(self.interval_s))?;
        map.serialize_entry("rows", &rows_json(&self.rows, false))?;
        map.serialize_entry("psi", &self.psi)?;
        map.serialize_entry("dropped", &DropsJson(self.dropped))?;
        map.end()
    }
}

struct DropsJson<'a>(&'a [(DropSource, u64)]);

impl Serialize for DropsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        drops_json(self.0, s)
    }
}

impl Record for Interval<'_> {
    const TYPE: &'static str = "interval";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let hms = self.timestamp.local_hms();
        for shown in &self.rows {
            write!(out, "{hms:<8} {}", who(shown.row))?;
            kinds_human(out, &shown.row.delta)?;
            writeln!(out, "{}", cgroup_psi(shown.psi.as_ref()))?;
        }
        if let Some(psi) = &self.psi {
            writeln!(out, "{hms:<8} psi      {}", psi.human())?;
        }
        Ok(())
    }
}

/// A row's cgroup PSI, after its columns: `  psi some 1.20% full 0.40%` (avg10), where known.
fn cgroup_psi(psi: Option<&PsiReport>) -> String {
    psi.map_or_else(String::new, |psi| {
        format!(
            "  psi some {:.2}% full {:.2}%",
            psi.some.avg10, psi.full.avg10
        )
    })
}

fn who(row: &Row) -> String {
    match &row.key {
        RowKey::Process(pid) => format!("{pid:>8} {:<16}", row.comm),
        RowKey::Cgroup(path) => format!("{path:<32} {:>5}", row.processes),
    }
}

fn kinds_human(out: &mut dyn Write, kinds: &Kinds) -> io::Result<()> {
    for kind in StallKind::ALL {
        let stalls = kinds.of(kind);
        write!(
            out,
            " {:>8} {:>9.1}",
            stalls.count,
            stalls.total_ns as f64 / 1e6
        )?;
    }
    Ok(())
}

pub struct Summary<'a> {
    pub timestamp: Timestamp,
    pub duration_s: f64,
    pub reason: &'static str,
    pub rows: Vec<Shown<'a>>,
    /// Pressure over the whole session.
    pub psi: Option<PsiReport>,
    /// With `-H`.
    pub histograms: Option<&'a [Histogram; StallKind::COUNT]>,
    pub dropped: &'a [(DropSource, u64)],
    pub command: Option<CommandOutcome>,
}

/// One histogram's non-empty range, as `[{"from_us", "to_us", "count"}]`.
fn slots(histogram: &Histogram) -> Vec<(u64, u64, u64)> {
    let first = histogram.iter().position(|&n| n > 0);
    let last = histogram.iter().rposition(|&n| n > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    (first..=last)
        .map(|slot| {
            let from = if slot == 0 { 0 } else { 1u64 << slot };
            let to = if slot == HISTOGRAM_SLOTS - 1 {
                u64::MAX
            } else {
                (1u64 << (slot + 1)) - 1
            };
            (from, to, histogram[slot])
        })
        .collect()
}

impl Serialize for Summary<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Slot {
            from_us: u64,
            to_us: u64,
            count: u64,
        }
        #[derive(Serialize)]
        struct Command {
            pid: u32,
            exit_code: u8,
        }
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("timestamp", &round_secs(self.timestamp.unix))?;
        map.serialize_entry("duration_s", &round_secs(self.duration_s))?;
        map.serialize_entry("reason", self.reason)?;
        map.serialize_entry("rows", &rows_json(&self.rows, true))?;
        map.serialize_entry("psi", &self.psi)?;
        if let Some(histograms) = self.histograms {
            let by_kind: std::collections::BTreeMap<&str, Vec<Slot>> = StallKind::ALL
                .iter()
                .map(|&kind| {
                    let slots = slots(&histograms[kind as usize])
                        .into_iter()
                        .map(|(from_us, to_us, count)| Slot {
                            from_us,
                            to_us,
                            count,
                        })
                        .collect();
                    (kind.name(), slots)
                })
                .collect();
            map.serialize_entry("histograms", &by_kind)?;
        }
        map.serialize_entry("dropped", &DropsJson(self.dropped))?;
        if let Some((pid, exit)) = self.command {
            map.serialize_entry(
                "command",
                &Command {
                    pid,
                    exit_code: exit.code,
                },
            )?;
        }
        map.end()
    }
}

impl Record for Summary<'_> {
    const TYPE: &'static str = "summary";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "\nSummary: {:.1} s, {} stalled ({})",
            self.duration_s,
            self.rows.len(),
            self.reason.replace('_', " ")
        )?;
        for shown in &self.rows {
            let row = shown.row;
            write!(out, "{:<8} {}", "total", who(row))?;
            kinds_human(out, &row.total)?;
            writeln!(out, "{}", cgroup_psi(shown.psi.as_ref()))?;
            let longest: Vec<String> = StallKind::ALL
                .iter()
                .filter(|&&kind| row.max_ns[kind as usize] > 0)
                .map(|&kind| {
                    format!(
                        "{} {:.1} ms",
                        kind.name(),
                        row.max_ns[kind as usize] as f64 / 1e6
                    )
                })
                .collect();
            if !longest.is_empty() {
                writeln!(out, "{:<8} longest: {}", "", longest.join(", "))?;
            }
        }
        if let Some(psi) = &self.psi {
            writeln!(out, "psi over the session: {}", psi.human())?;
        }
        if let Some(histograms) = self.histograms {
            for kind in StallKind::ALL {
                histogram_human(out, kind, &histograms[kind as usize])?;
            }
        }
        if let Some((pid, exit)) = self.command {
            writeln!(out, "command (pid {pid}) exited with status {}", exit.code)?;
        }
        for &(source, n) in self.dropped {
            if n > 0 {
                writeln!(out, "dropped: {n} ({})", source.name())?;
            }
        }
        Ok(())
    }
}

/// A histogram as bcc's tools print them: a row per power of two, stars scaled to the largest.
fn histogram_human(out: &mut dyn Write, kind: StallKind, histogram: &Histogram) -> io::Result<()> {
    let rows = slots(histogram);
    if rows.is_empty() {
        return Ok(());
    }
    let most = rows.iter().map(|&(_, _, n)| n).max().unwrap_or(1).max(1);
    writeln!(out, "\n{} stalls", kind.name())?;
    writeln!(out, "{:>24} : {:<8} distribution", "usecs", "count")?;
    for (from, to, count) in rows {
        let to = if to == u64::MAX {
            "...".to_owned()
        } else {
            to.to_string()
        };
        let stars = (count * 40).div_ceil(most) as usize;
        writeln!(
            out,
            "{:>10} -> {:<10} : {:<8} |{:<40}|",
            from,
            to,
            count,
            "*".repeat(stars.min(40))
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Captured, Format};

    #[test]
    fn histograms_show_their_non_empty_range_as_bcc_does() {
        let mut histogram = [0u64; HISTOGRAM_SLOTS];
        histogram[2] = 4;
        histogram[4] = 1;
        assert_eq!(slots(&histogram), vec![(4, 7, 4), (8, 15, 0), (16, 31, 1)]);
        let mut out = Vec::new();
        histogram_human(&mut out, StallKind::Memcg, &histogram).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("memcg stalls"), "{text}");
        assert!(
            text.contains(
                "         4 -> 7          : 4        |****************************************|"
            ),
            "{text}"
        );
        assert_eq!(slots(&[0; HISTOGRAM_SLOTS]), vec![]);
    }

    #[test]
    fn rows_are_json_with_every_kind() {
        let mut delta = Kinds::default();
        delta.0[StallKind::Memcg as usize].count = 3;
        delta.0[StallKind::Memcg as usize].total_ns = 2_500_000;
        let row = Row {
            key: RowKey::Process(42),
            comm: "cat".into(),
            processes: 1,
            delta,
            total: delta,
            max_ns: [0, 1_000_000, 0, 0],
        };
        let (mut sink, captured) = Captured::sink(Format::Json);
        sink.emit(&Interval {
            timestamp: Timestamp { unix: 1.0 },
            interval_s: 1.0,
            rows: vec![Shown {
                row: &row,
                cgroup: Some("/db"),
                psi: None,
            }],
            psi: None,
            dropped: &[],
        })
        .unwrap();
        sink.flush().unwrap();
        let json: serde_json::Value = serde_json::from_str(&captured.text()).unwrap();
        let row = &json["rows"][0];
        assert_eq!(row["pid"], 42);
        assert_eq!(row["cgroup"], "/db");
        assert_eq!(row["stalls"]["memcg"]["count"], 3);
        assert_eq!(row["stalls"]["memcg"]["ms"], 2.5);
        assert_eq!(row["stalls"]["direct"]["count"], 0);
        assert!(row["stalls"]["memcg"].get("max_ms").is_none());
        assert!(row["psi"].is_null(), "no cgroup PSI on cgroup v1");
    }
}
