//! Per-syscall statistics for `trace -c`: the kernel's per-CPU counters combined into one row per
//! syscall. Pure: no I/O.

use memtrace_common::syscalls::{ProcSyscallCounts, SyscallStats};

use super::cumulative::Cumulative;
use crate::syscalls::Syscall;

/// Combines per-CPU statistics (or several syscalls' totals) into one: counts, times and bytes
/// add up, min and max are over all. `None` when there were no calls.
pub fn combine<'a>(parts: impl IntoIterator<Item = &'a SyscallStats>) -> Option<SyscallStats> {
    parts
        .into_iter()
        .filter(|part| part.calls > 0)
        .fold(None, |sum: Option<SyscallStats>, part| {
            let Some(sum) = sum else {
                return Some(*part);
            };
            Some(SyscallStats {
                calls: sum.calls + part.calls,
                errors: sum.errors + part.errors,
                total_ns: sum.total_ns + part.total_ns,
                min_ns: sum.min_ns.min(part.min_ns),
                max_ns: sum.max_ns.max(part.max_ns),
                mapped: sum.mapped + part.mapped,
                unmapped: sum.unmapped + part.unmapped,
                brk_growth: sum.brk_growth + part.brk_growth,
            })
        })
}

/// Mean latency, 0 with no calls.
pub fn avg_ns(stats: &SyscallStats) -> u64 {
    stats.total_ns.checked_div(stats.calls).unwrap_or(0)
}

/// Rows sorted like `strace -c`: most total time first, then by name.
pub fn by_time(mut rows: Vec<(Syscall, SyscallStats)>) -> Vec<(Syscall, SyscallStats)> {
    rows.sort_by(|a, b| {
        b.1.total_ns
            .cmp(&a.1.total_ns)
            .then(a.0.name().cmp(b.0.name()))
    });
    rows
}

/// The sum of all rows (min and max over all).
pub fn grand_total(rows: &[(Syscall, SyscallStats)]) -> SyscallStats {
    combine(rows.iter().map(|(_, row)| row)).unwrap_or_default()
}

/// Per-process syscall counts (`serve`), restarted together when a process's entry is deleted.
impl Cumulative for ProcSyscallCounts {
    fn since(self, earlier: Self) -> Self {
        if self.calls < earlier.calls
            || self.errors < earlier.errors
            || self.bytes_up < earlier.bytes_up
            || self.bytes_down < earlier.bytes_down
        {
            return self;
        }
        ProcSyscallCounts {
            calls: self.calls - earlier.calls,
            errors: self.errors - earlier.errors,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(calls: u64, errors: u64, total: u64, min: u64, max: u64) -> SyscallStats {
        SyscallStats {
            calls,
            errors,
            total_ns: total,
            min_ns: min,
            max_ns: max,
            mapped: calls * 4096,
            unmapped: 0,
            brk_growth: -(calls as i64),
        }
    }

    #[test]
    fn per_cpu_copies_combine() {
        let t = combine(&[
            cpu(2, 1, 300, 100, 200),
            SyscallStats::default(),
            cpu(1, 0, 50, 50, 50),
        ])
        .unwrap();
        assert_eq!((t.calls, t.errors, t.total_ns), (3, 1, 350));
        assert_eq!((t.min_ns, t.max_ns, avg_ns(&t)), (50, 200, 116));
        assert_eq!((t.mapped, t.brk_growth), (3 * 4096, -3));
    }

    #[test]
    fn an_unused_syscall_has_no_row() {
        assert_eq!(combine(&[SyscallStats::default(); 4]), None);
        assert_eq!(avg_ns(&SyscallStats::default()), 0);
    }

    #[test]
    fn rows_sort_by_time_and_total() {
        let a = SyscallStats {
            calls: 1,
            total_ns: 10,
            min_ns: 10,
            max_ns: 10,
            ..Default::default()
        };
        let b = SyscallStats {
            calls: 2,
            total_ns: 30,
            min_ns: 5,
            max_ns: 25,
            ..Default::default()
        };
        let rows = by_time(vec![(Syscall::Brk, a), (Syscall::Mmap, b)]);
        assert_eq!(rows[0].0, Syscall::Mmap);
        let total = grand_total(&rows);
        assert_eq!(
            (total.calls, total.total_ns, total.min_ns, total.max_ns),
            (3, 40, 5, 25)
        );
    }
}
