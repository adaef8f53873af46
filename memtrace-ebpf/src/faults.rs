//! Page faults, classified exactly as the kernel's own per-task counters do: the perf software
//! events `minor-faults` / `major-faults` (sample period 1) fire in `mm_account_fault()`, right
//! where `min_flt` / `maj_flt` are incremented. Counts stay in the kernel, per CPU and per
//! process (or thread); nothing per fault crosses to userspace.

use aya_ebpf::{
    Global,
    bindings::BPF_ANY,
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use memtrace_common::{
    DropSource,
    faults::{FaultCounts, FaultKey, MAX_FAULT_KEYS},
};

use crate::{comms, drops, targets};

#[map(name = "FAULT_COUNTS")]
static FAULT_COUNTS: PerCpuHashMap<FaultKey, FaultCounts> =
    PerCpuHashMap::with_max_entries(MAX_FAULT_KEYS, 0);

#[unsafe(no_mangle)]
static PER_THREAD: Global<u32> = Global::new(0);

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
    if !targets::is_counted(tgid) {
        return;
    }
    let key = FaultKey {
        tgid,
        tid: if PER_THREAD.load() != 0 { tid } else { 0 },
    };
    if let Some(counts) = FAULT_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's own copy of the value; programs do not nest on one CPU, so a plain
        // increment cannot race.
        unsafe {
            match kind {
                Kind::Minor => (*counts).minor += 1,
                Kind::Major => (*counts).major += 1,
            }
        }
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
