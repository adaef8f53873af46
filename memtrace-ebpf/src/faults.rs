//! Page faults, classified exactly as the kernel's own per-task counters do: the perf software
//! events `minor-faults` / `major-faults` (sample period 1) fire in `mm_account_fault()`, right
//! where `min_flt` / `maj_flt` are incremented. Counts stay in the kernel, per CPU and per
//! process (or thread); nothing per fault crosses to userspace.

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_NOEXIST},
    macros::{map, perf_event},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::PerfEventContext,
};
use memtrace_common::{
    DropSource,
    faults::{FaultCounts, FaultKey, FixedPids, MAX_FAULT_KEYS, MAX_FIXED_TARGETS},
    targets::FilterMode,
};

use crate::{comms, drops, targets};

#[map(name = "FAULT_COUNTS")]
static FAULT_COUNTS: PerCpuHashMap<FaultKey, FaultCounts> =
    PerCpuHashMap::with_max_entries(MAX_FAULT_KEYS, 0);

#[map(name = "FAULT_FIXED_PIDS")]
static FIXED_PIDS: Array<FixedPids> = Array::with_max_entries(1, 0);

#[map(name = "FAULT_FIXED_COUNTS")]
static FIXED_COUNTS: PerCpuArray<FaultCounts> =
    PerCpuArray::with_max_entries(MAX_FIXED_TARGETS as u32, 0);

#[unsafe(no_mangle)]
static PER_THREAD: Global<u32> = Global::new(0);

#[unsafe(no_mangle)]
static FIXED_TARGETS: Global<u32> = Global::new(0);

#[derive(Clone, Copy)]
enum Kind {
    Minor,
    Major,
}

#[perf_event]
pub fn mt_fault_minor(_ctx: PerfEventContext) -> u32 {
    count(Kind::Minor);
    // 0: the sample has been handled here; the kernel need not write it to a perf buffer.
    0
}

#[perf_event]
pub fn mt_fault_major(_ctx: PerfEventContext) -> u32 {
    count(Kind::Major);
    0
}

#[inline(always)]
fn count(kind: Kind) {
    let (tgid, tid) = targets::current_ids();
    if FIXED_TARGETS.load() != 0 {
        count_fixed(tgid, kind);
        return;
    }
    let per_thread = PER_THREAD.load() != 0;
    if targets::filter_mode() == FilterMode::Targets as u32 && !per_thread {
        // Targets are registered in the counting table itself (see `register`), so this one
        // lookup both filters and counts: the hottest path does a single hash lookup.
        if let Some(counts) = FAULT_COUNTS.get_ptr_mut(FaultKey { tgid, tid: 0 }) {
            increment(counts, kind);
        }
        return;
    }
    if !targets::is_counted(tgid) {
        return;
    }
    let key = FaultKey {
        tgid,
        tid: if per_thread { tid } else { 0 },
    };
    if let Some(counts) = FAULT_COUNTS.get_ptr_mut(key) {
        increment(counts, kind);
        return;
    }
    comms::remember(tgid);
    let first = FaultCounts {
        minor: matches!(kind, Kind::Minor) as u64,
        major: matches!(kind, Kind::Major) as u64,
    };
    // BPF_ANY: if another CPU created the key meanwhile, this writes only this CPU's copy.
    if FAULT_COUNTS.insert(key, first, u64::from(BPF_ANY)).is_err() {
        drops::count(DropSource::FaultTableFull);
    }
}

/// A few explicit targets: found among the fixed slots' pids (one array entry, read in place)
/// and counted in their slot, with no hash lookup.
#[inline(always)]
fn count_fixed(tgid: u32, kind: Kind) {
    let Some(pids) = FIXED_PIDS.get(0) else {
        return;
    };
    for (slot, &pid) in pids.iter().enumerate() {
        if pid == tgid && pid != 0 {
            if let Some(counts) = FIXED_COUNTS.get_ptr_mut(slot as u32) {
                increment(counts, kind);
            }
            return;
        }
    }
}

#[inline(always)]
fn increment(counts: *mut FaultCounts, kind: Kind) {
    // SAFETY: this CPU's own copy of the value; programs do not nest on one CPU, so a plain
    // increment cannot race.
    unsafe {
        match kind {
            Kind::Minor => (*counts).minor += 1,
            Kind::Major => (*counts).major += 1,
        }
    }
}

/// Registers a new target process with zero counts (and its name), so that the per-process
/// target path above counts it. Returns false if the table is full (counted as a drop).
#[inline(always)]
pub fn register(tgid: u32) -> bool {
    if PER_THREAD.load() != 0 {
        // Per thread, keys are created at each thread's first fault.
        return true;
    }
    comms::remember(tgid);
    let zero = FaultCounts { minor: 0, major: 0 };
    if FAULT_COUNTS
        .insert(FaultKey { tgid, tid: 0 }, zero, u64::from(BPF_NOEXIST))
        .is_err()
    {
        drops::count(DropSource::FaultTableFull);
        return false;
    }
    true
}
