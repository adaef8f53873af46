//! Per-syscall statistics for `trace -c`: the kernel's per-CPU counters combined into one row per
//! syscall. Pure: no I/O.

use memtrace_common::syscalls::{ProcSyscallCounts, SyscallStats};

use super::cumulative::Cumulative;
use crate::syscalls::Syscall;

/// One syscall's totals over the whole trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallTotals {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub mapped: u64,
    pub unmapped: u64,
    pub brk_growth: i64,
}

impl SyscallTotals {
    /// Combines the per-CPU copies; `None` when the syscall was never called.
    pub fn combine(per_cpu: &[SyscallStats]) -> Option<SyscallTotals> {
        let mut totals: Option<SyscallTotals> = None;
        for cpu in per_cpu.iter().filter(|cpu| cpu.calls > 0) {
            let sum = totals.get_or_insert(SyscallTotals {
                min_ns: cpu.min_ns,
                ..SyscallTotals::default()
            });
            sum.calls += cpu.calls;
            sum.errors += cpu.errors;
            sum.total_ns += cpu.total_ns;
            sum.min_ns = sum.min_ns.min(cpu.min_ns);
            sum.max_ns = sum.max_ns.max(cpu.max_ns);
            sum.mapped += cpu.mapped;
            sum.unmapped += cpu.unmapped;
            sum.brk_growth += cpu.brk_growth;
        }
        totals
    }

    pub fn avg_ns(&self) -> u64 {
        self.total_ns.checked_div(self.calls).unwrap_or(0)
    }
}

/// Rows sorted like `strace -c`: most total time first, then by name.
pub fn by_time(mut rows: Vec<(Syscall, SyscallTotals)>) -> Vec<(Syscall, SyscallTotals)> {
    rows.sort_by(|a, b| {
        b.1.total_ns
            .cmp(&a.1.total_ns)
            .then(a.0.name().cmp(b.0.name()))
    });
    rows
}

/// The sum of all rows (min and max over all).
pub fn grand_total(rows: &[(Syscall, SyscallTotals)]) -> SyscallTotals {
    let mut total = SyscallTotals {
        min_ns: rows.iter().map(|r| r.1.min_ns).min().unwrap_or(0),
        ..SyscallTotals::default()
    };
    for (_, row) in rows {
        total.calls += row.calls;
        total.errors += row.errors;
        total.total_ns += row.total_ns;
        total.max_ns = total.max_ns.max(row.max_ns);
        total.mapped += row.mapped;
        total.unmapped += row.unmapped;
        total.brk_growth += row.brk_growth;
    }
    total
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
        let t = SyscallTotals::combine(&[
            cpu(2, 1, 300, 100, 200),
            SyscallStats::default(),
            cpu(1, 0, 50, 50, 50),
        ])
        .unwrap();
        assert_eq!((t.calls, t.errors, t.total_ns), (3, 1, 350));
        assert_eq!((t.min_ns, t.max_ns, t.avg_ns()), (50, 200, 116));
        assert_eq!((t.mapped, t.brk_growth), (3 * 4096, -3));
    }

    #[test]
    fn an_unused_syscall_has_no_row() {
        assert_eq!(SyscallTotals::combine(&[SyscallStats::default(); 4]), None);
        assert_eq!(SyscallTotals::default().avg_ns(), 0);
    }

    #[test]
    fn rows_sort_by_time_and_total() {
        let a = SyscallTotals {
            calls: 1,
            total_ns: 10,
            min_ns: 10,
            max_ns: 10,
            ..Default::default()
        };
        let b = SyscallTotals {
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
