//! Per-CPU counters of everything the kernel side failed to record, so no loss is silent. Each
//! object has its own; userspace reads the sources that object can lose.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use memtrace_common::DropSource;

use crate::atomic;

#[map(name = "DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropSource::COUNT, 0);

#[inline(always)]
pub fn count(source: DropSource) {
    count_n(source, 1);
}

/// Counts `n` losses at once.
#[inline(always)]
pub fn count_n(source: DropSource, n: u64) {
    if let Some(slot) = DROPS.get_ptr_mut(source as u32) {
        // SAFETY: a value pointer from a successful lookup. Atomically: programs on uprobes
        // can be preempted by another task's on the same CPU.
        unsafe { atomic::add(slot, n) };
    }
}
