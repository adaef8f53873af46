//! The `faults` object: page faults, classified exactly as the kernel's own per-task counters
//! do. The perf software events `minor-faults` / `major-faults` (sample period 1) fire in
//! `mm_account_fault()`, right where `min_flt` / `maj_flt` are incremented. Counts stay in the
//! kernel, per process (or thread); nothing per fault crosses to userspace.
//!
//! Explicit `--pid` targets need none of this: userspace counts them with perf's own counting
//! events, which run no program at all. This object serves the whole system, `--comm`,
//! `-- COMMAND` (followed from birth) and `--threads`.
#![no_std]
#![no_main]
// The atomic add is written in BPF assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod drops;
mod memcg;
mod record;
mod runtime;
mod targets;

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_comm,
    macros::{map, perf_event, raw_tracepoint},
    maps::HashMap,
    programs::{PerfEventContext, RawTracePointContext},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    faults::{FaultCounts, FaultKey, MAX_FAULT_KEYS},
    targets::FilterMode,
};

/// Shared by every CPU (counts are added atomically), so its size does not grow with them.
#[map(name = "FAULT_COUNTS")]
static FAULT_COUNTS: HashMap<FaultKey, FaultCounts> = HashMap::with_max_entries(MAX_FAULT_KEYS, 0);

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
    let per_thread = PER_THREAD.load() != 0;
    if targets::filter_mode() == FilterMode::Targets as u32 && !per_thread {
        // Targets are registered in the counting table itself (see `on_new_target`), so this
        // one lookup both filters and counts: the hottest path does a single hash lookup.
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
    let first = FaultCounts {
        minor: matches!(kind, Kind::Minor) as u64,
        major: matches!(kind, Kind::Major) as u64,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        memcg: memcg::current(),
    };
    if FAULT_COUNTS
        .insert(key, first, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    // Another CPU created the key meanwhile, or the table is full.
    match FAULT_COUNTS.get_ptr_mut(key) {
        Some(counts) => increment(counts, kind),
        None => drops::count(DropSource::FaultTableFull),
    }
}

#[inline(always)]
fn increment(counts: *mut FaultCounts, kind: Kind) {
    // SAFETY: a value pointer from a successful lookup; the counters are only ever changed
    // through atomic adds, here and on other CPUs.
    unsafe {
        let counter = match kind {
            Kind::Minor => &raw mut (*counts).minor,
            Kind::Major => &raw mut (*counts).major,
        };
        atomic::add(counter, 1);
    }
}

/// A new target process (a followed command's child, registered in `fork()`): counted from its
/// first fault, under the name it has now (its parent's, until it runs `exec`). Returns false
/// if the table is full (counted as a drop).
#[inline(always)]
pub fn on_new_target(tgid: u32) -> bool {
    if PER_THREAD.load() != 0 {
        // Per thread, keys are created at each thread's first fault.
        return true;
    }
    let zero = FaultCounts {
        minor: 0,
        major: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        memcg: memcg::current(),
    };
    if FAULT_COUNTS
        .insert(FaultKey { tgid, tid: 0 }, zero, u64::from(BPF_NOEXIST))
        .is_err()
    {
        drops::count(DropSource::FaultTableFull);
        return false;
    }
    true
}

/// `sched_process_exec` fires after the new name is set: the counted process (or the thread
/// that ran `exec`) takes it. A raw tracepoint needs no tracefs.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_exec(_ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = targets::current_ids();
    let key = FaultKey {
        tgid,
        tid: if PER_THREAD.load() != 0 { tid } else { 0 },
    };
    if let Some(counts) = FAULT_COUNTS.get_ptr_mut(key)
        && let Ok(comm) = bpf_get_current_comm()
    {
        // Processes are moved into their cgroup before they exec their program (by systemd,
        // container runtimes, shells): the cgroup is read again with the name.
        let memcg = memcg::current();
        // SAFETY: a value pointer from a successful lookup. A reader may see a name half
        // rewritten at the very moment of exec; the next reading has it whole.
        unsafe {
            (*counts).comm = comm;
            (*counts).memcg = memcg;
        }
    }
    0
}
