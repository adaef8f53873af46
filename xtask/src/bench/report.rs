//! Statistics and markdown rendering: pure functions on the measured samples, no I/O, so the
//! tables can be unit-tested on literal inputs.

use std::fmt::Write as _;

/// Median of the samples (NaN when there are none).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub fn min_max(samples: &[f64]) -> (f64, f64) {
    samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        })
}

/// One mode's samples in an overhead table.
pub struct OverheadRow {
    pub label: String,
    pub secs: Vec<f64>,
    /// Instructions retired by the workload in one extra run (with `perf stat` attached too).
    pub instructions: Option<u64>,
}

/// The overhead table: the first row is the untraced baseline the ratios refer to.
pub fn overhead_table(title: &str, note: &str, rows: &[OverheadRow]) -> String {
    let baseline = rows.first().map_or(f64::NAN, |row| median(&row.secs));
    let with_instructions = rows.iter().any(|row| row.instructions.is_some());
    let mut out = format!("### {title}\n\n{note}\n\n| mode | median s | min–max s | ratio |");
    if with_instructions {
        out.push_str(" instructions |");
    }
    out.push_str("\n|---|---|---|---|");
    if with_instructions {
        out.push_str("---|");
    }
    out.push('\n');
    for row in rows {
        let median = median(&row.secs);
        let (min, max) = min_max(&row.secs);
        let _ = write!(
            out,
            "| {} | {median:.3} | {min:.3}–{max:.3} | {:.2}× |",
            row.label,
            median / baseline
        );
        if with_instructions {
            match row.instructions {
                Some(n) => {
                    let _ = write!(out, " {n} |");
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// One level of the event storm.
pub struct StormRow {
    /// Target calls per second; `None`: as fast as the workload can.
    pub target: Option<u64>,
    pub secs: f64,
    /// Calls the workload made.
    pub calls: u64,
    /// Records memtrace received, from its JSON summary.
    pub records: u64,
    /// Records memtrace counted as lost in the kernel, by cause.
    pub dropped: Vec<(String, u64)>,
}

pub fn storm_table(title: &str, note: &str, rows: &[StormRow]) -> String {
    let mut out = format!(
        "### {title}\n\n{note}\n\n\
         | target calls/s | calls made | achieved calls/s | records | records/s | dropped | unaccounted |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for row in rows {
        let target = row
            .target
            .map_or_else(|| "unpaced".to_owned(), |rate| rate.to_string());
        let dropped: u64 = row.dropped.iter().map(|(_, n)| n).sum();
        let causes: Vec<String> = row
            .dropped
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(cause, n)| format!("{cause} {n}"))
            .collect();
        let dropped = if causes.is_empty() {
            dropped.to_string()
        } else {
            format!("{dropped} ({})", causes.join(", "))
        };
        // Calls neither received nor counted as dropped: must be 0, or memtrace lost silently.
        let unaccounted = row
            .calls
            .saturating_sub(row.records)
            .saturating_sub(row.dropped.iter().map(|(_, n)| n).sum());
        let _ = writeln!(
            out,
            "| {target} | {} | {:.0} | {} | {:.0} | {dropped} | {unaccounted} |",
            row.calls,
            row.calls as f64 / row.secs,
            row.records,
            row.records as f64 / row.secs,
        );
    }
    out
}

/// Launch-to-ready times of several tools, in seconds per run.
pub fn readiness_table(title: &str, note: &str, rows: &[(String, Vec<f64>)]) -> String {
    let mut out =
        format!("### {title}\n\n{note}\n\n| tool | median ms | min–max ms |\n|---|---|---|\n");
    for (label, secs) in rows {
        let (min, max) = min_max(secs);
        let _ = writeln!(
            out,
            "| {label} | {:.1} | {:.1}–{:.1} |",
            median(secs) * 1e3,
            min * 1e3,
            max * 1e3
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn min_max_spans_the_samples() {
        assert_eq!(min_max(&[2.0, 0.5, 1.5]), (0.5, 2.0));
    }

    #[test]
    fn ratios_are_to_the_first_row() {
        let rows = [
            OverheadRow {
                label: "untraced".into(),
                secs: vec![1.0, 2.0, 3.0],
                instructions: None,
            },
            OverheadRow {
                label: "memtrace".into(),
                secs: vec![3.0],
                instructions: None,
            },
        ];
        let table = overhead_table("t", "n", &rows);
        assert!(table.contains("| untraced | 2.000 | 1.000–3.000 | 1.00× |"));
        assert!(table.contains("| memtrace | 3.000 | 3.000–3.000 | 1.50× |"));
        assert!(!table.contains("instructions"));
    }

    #[test]
    fn storm_rows_show_drops_by_cause_and_silent_losses() {
        let rows = [StormRow {
            target: None,
            secs: 2.0,
            calls: 1000,
            records: 900,
            dropped: vec![("ring_full".into(), 60), ("table_full".into(), 0)],
        }];
        let table = storm_table("t", "n", &rows);
        assert!(table.contains("| unpaced | 1000 | 500 | 900 | 450 | 60 (ring_full 60) | 40 |"));
    }
}
