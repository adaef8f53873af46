//! Per-interval fault rates and per-process totals from the kernel's cumulative counters.
//!
//! The kernel table holds running totals per key since the key was first seen. A key is deleted
//! from it once its process has exited and been read for the last time ("retired"); should the
//! same key reappear (pid reuse), it is another process: its counter starts again from zero, and
//! it gets its own totals, never merged with the retired process's.
//!
//! The window that remains: the kernel keys counts by pid alone, so a process that exits *and*
//! whose pid is handed to a new process before memtrace's next reading (one `--interval`) is
//! counted as one. The kernel hands pids out in increasing order up to `pid_max` before reusing
//! one, so that takes a full wrap of the pid space within one interval (or a deliberate
//! `ns_last_pid`, as `tests/integration/reliability.rs` uses with a pause of a few intervals).

use std::{collections::BTreeMap, time::Duration};

use memtrace_common::faults::FaultKey;

use super::cumulative::Cumulative;
use crate::model::faults::Counts;

impl Cumulative for Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts::since(self, earlier)
    }
}

/// One process (or thread) in one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: FaultKey,
    pub comm: String,
    pub minor_per_s: f64,
    pub major_per_s: f64,
    /// Faults in this interval.
    pub delta: Counts,
    /// Faults since tracing began.
    pub total: Counts,
}

#[derive(Default)]
struct Entry {
    /// The last cumulative value read from the kernel table.
    seen: Counts,
    total: Counts,
    comm: String,
}

#[derive(Default)]
pub struct FaultAggregator {
    /// Live keys.
    entries: BTreeMap<FaultKey, Entry>,
    /// Retired processes (or threads), with their final totals, in retirement order.
    retired: Vec<(FaultKey, String, Counts)>,
}

impl FaultAggregator {
    /// Starts reporting a key before its first fault (an explicit `--pid` target).
    pub fn track(&mut self, key: FaultKey, comm: String) {
        self.entries.entry(key).or_default().comm = comm;
    }

    pub fn comm(&self, key: &FaultKey) -> Option<&str> {
        self.entries
            .get(key)
            .map(|entry| entry.comm.as_str())
            .filter(|comm| !comm.is_empty())
    }

    pub fn set_comm(&mut self, key: FaultKey, comm: String) {
        self.entries.entry(key).or_default().comm = comm;
    }

    /// Takes one reading of the kernel table and returns a row for every key still live.
    pub fn update(&mut self, samples: &[(FaultKey, Counts)], elapsed: Duration) -> Vec<Row> {
        let mut deltas: BTreeMap<FaultKey, Counts> = BTreeMap::new();
        for &(key, cumulative) in samples {
            let entry = self.entries.entry(key).or_default();
            let delta = cumulative.since(entry.seen);
            entry.seen = cumulative;
            entry.total.add(delta);
            deltas.insert(key, delta);
        }
        let secs = elapsed.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        self.entries
            .iter()
            .map(|(&key, entry)| {
                let delta = deltas.get(&key).copied().unwrap_or_default();
                Row {
                    key,
                    comm: entry.comm.clone(),
                    minor_per_s: rate(delta.minor),
                    major_per_s: rate(delta.major),
                    delta,
                    total: entry.total,
                }
            })
            .collect()
    }

    /// The key's process has exited and its final count was read; its kernel entry is deleted.
    pub fn retire(&mut self, key: FaultKey) {
        if let Some(entry) = self.entries.remove(&key) {
            self.retired.push((key, entry.comm, entry.total));
        }
    }

    /// The keys still live (not retired).
    pub fn live_keys(&self) -> Vec<FaultKey> {
        self.entries.keys().copied().collect()
    }

    /// Totals since tracing began, most faults first, including retired keys.
    pub fn totals(&self) -> Vec<(FaultKey, String, Counts)> {
        let mut totals: Vec<_> = self
            .retired
            .iter()
            .cloned()
            .chain(
                self.entries
                    .iter()
                    .map(|(&key, entry)| (key, entry.comm.clone(), entry.total)),
            )
            .collect();
        totals.sort_by(|a, b| b.2.sum().cmp(&a.2.sum()).then(a.0.cmp(&b.0)));
        totals
    }
}

/// The `n` busiest rows of an interval (by faults per second), skipping idle ones.
pub fn busiest(mut rows: Vec<Row>, n: usize) -> Vec<Row> {
    rows.retain(|row| row.delta.sum() > 0);
    rows.sort_by(|a, b| b.delta.sum().cmp(&a.delta.sum()).then(a.key.cmp(&b.key)));
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32) -> FaultKey {
        FaultKey { tgid, tid: 0 }
    }

    fn counts(minor: u64, major: u64) -> Counts {
        Counts { minor, major }
    }

    #[test]
    fn rates_are_deltas_over_elapsed_time() {
        let mut agg = FaultAggregator::default();
        agg.update(&[(key(1), counts(100, 2))], Duration::from_secs(1));
        let rows = agg.update(&[(key(1), counts(600, 3))], Duration::from_millis(500));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].delta, counts(500, 1));
        assert_eq!(rows[0].minor_per_s, 1000.0);
        assert_eq!(rows[0].major_per_s, 2.0);
        assert_eq!(rows[0].total, counts(600, 3));
    }

    #[test]
    fn tracked_keys_report_zero_before_their_first_fault() {
        let mut agg = FaultAggregator::default();
        agg.track(key(7), "idle".into());
        let rows = agg.update(&[], Duration::from_secs(1));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].comm, "idle");
        assert_eq!(rows[0].total, Counts::default());
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let mut agg = FaultAggregator::default();
        agg.set_comm(key(5), "first".into());
        agg.update(&[(key(5), counts(10, 1))], Duration::from_secs(1));
        agg.retire(key(5));
        assert!(agg.update(&[], Duration::from_secs(1)).is_empty());
        assert!(agg.live_keys().is_empty());
        // The pid is reused: the kernel counter restarts from zero, for a new process.
        agg.set_comm(key(5), "second".into());
        let rows = agg.update(&[(key(5), counts(4, 0))], Duration::from_secs(1));
        assert_eq!(rows[0].delta, counts(4, 0));
        assert_eq!(rows[0].total, counts(4, 0));
        assert_eq!(rows[0].comm, "second");
        assert_eq!(
            agg.totals(),
            [
                (key(5), "first".to_owned(), counts(10, 1)),
                (key(5), "second".to_owned(), counts(4, 0)),
            ]
        );
        // Retiring a key twice (or one never seen) changes nothing.
        agg.retire(key(5));
        agg.retire(key(5));
        agg.retire(key(6));
        assert_eq!(agg.totals().len(), 2);
    }

    #[test]
    fn a_counter_going_backwards_counts_as_restarted() {
        let mut agg = FaultAggregator::default();
        agg.update(&[(key(1), counts(50, 5))], Duration::from_secs(1));
        let rows = agg.update(&[(key(1), counts(3, 0))], Duration::from_secs(1));
        assert_eq!(rows[0].delta, counts(3, 0));
        assert_eq!(rows[0].total, counts(53, 5));
    }

    #[test]
    fn totals_are_sorted_busiest_first() {
        let mut agg = FaultAggregator::default();
        agg.update(
            &[
                (key(1), counts(1, 0)),
                (key(2), counts(9, 1)),
                (key(3), counts(5, 0)),
            ],
            Duration::from_secs(1),
        );
        let order: Vec<u32> = agg.totals().iter().map(|t| t.0.tgid).collect();
        assert_eq!(order, [2, 3, 1]);
    }

    #[test]
    fn busiest_skips_idle_rows_and_truncates() {
        let mut agg = FaultAggregator::default();
        agg.track(key(9), String::new());
        let rows = agg.update(
            &[
                (key(1), counts(1, 0)),
                (key(2), counts(9, 1)),
                (key(3), counts(5, 0)),
            ],
            Duration::from_secs(1),
        );
        let top: Vec<u32> = busiest(rows, 2).iter().map(|r| r.key.tgid).collect();
        assert_eq!(top, [2, 3]);
    }

    #[test]
    fn zero_elapsed_gives_zero_rates() {
        let mut agg = FaultAggregator::default();
        let rows = agg.update(&[(key(1), counts(10, 0))], Duration::ZERO);
        assert_eq!(rows[0].minor_per_s, 0.0);
    }
}
