//! Memory stalls per interval and since tracing began, by process or by memory cgroup, from the
//! kernel's cumulative per-process counts. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use memtrace_common::pressure::{Stall, StallKind};

use super::cumulative::{Cumulative, Deltas};

/// Count and time of one kind of stall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stalls {
    pub count: u64,
    pub total_ns: u64,
}

/// Every kind's, in [`StallKind`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kinds(pub [Stalls; StallKind::COUNT]);

impl Kinds {
    /// The counts and times of the kernel's table entry.
    pub fn from_kernel(stalls: &[Stall; StallKind::COUNT]) -> Kinds {
        Kinds(stalls.map(|stall| Stalls {
            count: stall.count,
            total_ns: stall.total_ns,
        }))
    }

    pub fn of(&self, kind: StallKind) -> Stalls {
        self.0[kind as usize]
    }

    /// All stall time, every kind.
    pub fn total_ns(&self) -> u64 {
        self.0.iter().map(|s| s.total_ns).sum()
    }

    fn add(&mut self, other: &Kinds) {
        for (sum, part) in self.0.iter_mut().zip(other.0) {
            sum.count += part.count;
            sum.total_ns += part.total_ns;
        }
    }
}

/// A process's counts restart together when its kernel entry is deleted.
impl Cumulative for Kinds {
    fn since(self, earlier: Kinds) -> Kinds {
        let backwards = self
            .0
            .iter()
            .zip(earlier.0)
            .any(|(now, then)| now.count < then.count || now.total_ns < then.total_ns);
        if backwards {
            return self;
        }
        let mut delta = self;
        for (d, then) in delta.0.iter_mut().zip(earlier.0) {
            d.count -= then.count;
            d.total_ns -= then.total_ns;
        }
        delta
    }
}

/// What a row stands for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    Process(u32),
    Cgroup(String),
}

/// One process's reading.
#[derive(Clone, Debug)]
pub struct Reading {
    pub tgid: u32,
    /// The row it counts in (itself, or its memory cgroup).
    pub row: RowKey,
    pub comm: String,
    pub cumulative: Kinds,
    /// The longest stall of each kind so far.
    pub max_ns: [u64; StallKind::COUNT],
}

/// One row of an interval, or of the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: RowKey,
    /// The process's name (the last seen, for a cgroup row).
    pub comm: String,
    /// Processes that stalled in it (1 for a process row).
    pub processes: usize,
    /// Stalls in this interval.
    pub delta: Kinds,
    /// Since tracing began.
    pub total: Kinds,
    pub max_ns: [u64; StallKind::COUNT],
}

#[derive(Default)]
struct Entry {
    total: Kinds,
    max_ns: [u64; StallKind::COUNT],
    comm: String,
    processes: BTreeSet<u32>,
}

#[derive(Default)]
pub struct StallAggregator {
    seen: Deltas<u32, Kinds>,
    rows: BTreeMap<RowKey, Entry>,
}

impl StallAggregator {
    /// Starts reporting a row before its first stall (an explicit `--pid` target).
    pub fn track(&mut self, key: RowKey, comm: String) {
        self.rows.entry(key).or_default().comm = comm;
    }

    /// Takes one reading; returns every row, with what it stalled since the last one.
    pub fn update(&mut self, readings: &[Reading]) -> Vec<Row> {
        let mut deltas: BTreeMap<RowKey, Kinds> = BTreeMap::new();
        for reading in readings {
            let delta = self.seen.update(reading.tgid, reading.cumulative);
            let entry = self.rows.entry(reading.row.clone()).or_default();
            entry.total.add(&delta);
            for (max, now) in entry.max_ns.iter_mut().zip(reading.max_ns) {
                *max = (*max).max(now);
            }
            entry.comm.clone_from(&reading.comm);
            entry.processes.insert(reading.tgid);
            deltas.entry(reading.row.clone()).or_default().add(&delta);
        }
        self.rows
            .iter()
            .map(|(key, entry)| Row {
                key: key.clone(),
                comm: entry.comm.clone(),
                processes: entry.processes.len(),
                delta: deltas.get(key).copied().unwrap_or_default(),
                total: entry.total,
                max_ns: entry.max_ns,
            })
            .collect()
    }

    /// The process's kernel entry was deleted (it exited, and was read a last time).
    pub fn forget(&mut self, tgid: u32) {
        self.seen.forget(&tgid);
    }

    /// Rows since tracing began, most stall time first.
    pub fn totals(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(key, entry)| Row {
                key: key.clone(),
                comm: entry.comm.clone(),
                processes: entry.processes.len(),
                delta: Kinds::default(),
                total: entry.total,
                max_ns: entry.max_ns,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total
                .total_ns()
                .cmp(&a.total.total_ns())
                .then(a.key.cmp(&b.key))
        });
        rows
    }
}

/// The `n` rows that stalled longest in the interval, skipping those that did not.
pub fn busiest(mut rows: Vec<Row>, n: usize) -> Vec<Row> {
    rows.retain(|row| row.delta.0.iter().any(|s| s.count > 0));
    rows.sort_by(|a, b| {
        b.delta
            .total_ns()
            .cmp(&a.delta.total_ns())
            .then(a.key.cmp(&b.key))
    });
    rows.truncate(n);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(memcg: (u64, u64), direct: (u64, u64)) -> Kinds {
        let mut kinds = Kinds::default();
        kinds.0[StallKind::Direct as usize] = Stalls {
            count: direct.0,
            total_ns: direct.1,
        };
        kinds.0[StallKind::Memcg as usize] = Stalls {
            count: memcg.0,
            total_ns: memcg.1,
        };
        kinds
    }

    fn reading(tgid: u32, row: RowKey, cumulative: Kinds) -> Reading {
        Reading {
            tgid,
            row,
            comm: format!("p{tgid}"),
            cumulative,
            max_ns: [0, 7, 0, 0],
        }
    }

    #[test]
    fn intervals_are_deltas_and_totals_add_up() {
        let mut agg = StallAggregator::default();
        let first = agg.update(&[reading(1, RowKey::Process(1), kinds((2, 100), (0, 0)))]);
        assert_eq!(first[0].delta.of(StallKind::Memcg).count, 2);
        let second = agg.update(&[reading(1, RowKey::Process(1), kinds((5, 400), (1, 50)))]);
        assert_eq!(second[0].delta, kinds((3, 300), (1, 50)));
        assert_eq!(second[0].total, kinds((5, 400), (1, 50)));
        assert_eq!(second[0].max_ns[1], 7);
    }

    #[test]
    fn cgroup_rows_sum_their_processes() {
        let mut agg = StallAggregator::default();
        let group = RowKey::Cgroup("/db".into());
        let rows = agg.update(&[
            reading(1, group.clone(), kinds((2, 100), (0, 0))),
            reading(2, group.clone(), kinds((3, 300), (0, 0))),
            reading(3, RowKey::Cgroup("/web".into()), kinds((1, 10), (0, 0))),
        ]);
        let db = rows.iter().find(|r| r.key == group).unwrap();
        assert_eq!(
            db.delta.of(StallKind::Memcg),
            Stalls {
                count: 5,
                total_ns: 400
            }
        );
        assert_eq!(db.processes, 2);
        let top: Vec<RowKey> = busiest(rows, 1).into_iter().map(|r| r.key).collect();
        assert_eq!(top, [group]);
    }

    #[test]
    fn a_forgotten_process_starting_again_is_counted_from_zero() {
        let mut agg = StallAggregator::default();
        agg.update(&[reading(9, RowKey::Process(9), kinds((4, 40), (0, 0)))]);
        agg.forget(9);
        // The pid is reused: its kernel counts restart.
        let rows = agg.update(&[reading(9, RowKey::Process(9), kinds((1, 5), (0, 0)))]);
        assert_eq!(rows[0].delta.of(StallKind::Memcg).count, 1);
        assert_eq!(agg.totals()[0].total.of(StallKind::Memcg).count, 5);
    }

    #[test]
    fn idle_rows_are_not_the_busiest() {
        let mut agg = StallAggregator::default();
        agg.track(RowKey::Process(3), "idle".into());
        let rows = agg.update(&[]);
        assert_eq!(rows.len(), 1, "tracked rows show every interval");
        assert!(busiest(rows, 10).is_empty());
    }
}
