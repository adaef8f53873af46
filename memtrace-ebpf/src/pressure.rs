//! The `pressure` object: how long tasks stall for memory, per process. Raw tracepoints on the
//! kernel's reclaim and compaction begin/end (paired per task in the kernel: a start time per
//! task, the duration added at the end) and on reclaim throttling, which reports its own delay.
//! They fire only while memory is short: the rest of the time this costs nothing.
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
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, generated::bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use memtrace_common::{
    COMM_LEN, DropSource,
    pressure::{
        Histogram, MAX_STALLERS, MAX_STALLING, Stall, StallCounts, StallKind, StallStarts,
        histogram_slot,
    },
};

/// Per process; shared by every CPU (counts added atomically). Entries are allocated as
/// processes first stall rather than all up front: most never stall, and the daemon and an idle
/// `pressure` then hold next to nothing (the allocation happens once per process, off the
/// hot path of an ongoing stall).
#[map(name = "STALLS")]
static STALLS: HashMap<u32, StallCounts> =
    HashMap::with_max_entries(MAX_STALLERS, BPF_F_NO_PREALLOC);

/// Per task inside a stall now; its entry goes when its last stall ends (allocated likewise).
#[map(name = "STALL_STARTS")]
static STARTS: HashMap<u32, StallStarts> =
    HashMap::with_max_entries(MAX_STALLING, BPF_F_NO_PREALLOC);

/// Sized to one entry by userspace unless histograms are asked for (`-H`).
#[map(name = "STALL_HISTOGRAMS")]
static HISTOGRAMS: PerCpuArray<Histogram> =
    PerCpuArray::with_max_entries(StallKind::COUNT as u32, 0);

#[unsafe(no_mangle)]
static WITH_HISTOGRAMS: Global<u32> = Global::new(0);

// Raw tracepoints: their arguments are the tracepoint's own (`TP_PROTO`), no record is
// formatted, and they detach at once. The begin/end events' arguments (order, gfp flags,
// pages reclaimed) are not needed: only when.

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub fn mt_direct_begin(_ctx: RawTracePointContext) -> i32 {
    begin(StallKind::Direct);
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_end")]
pub fn mt_direct_end(_ctx: RawTracePointContext) -> i32 {
    end(StallKind::Direct);
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_begin")]
pub fn mt_memcg_begin(_ctx: RawTracePointContext) -> i32 {
    begin(StallKind::Memcg);
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_memcg_reclaim_end")]
pub fn mt_memcg_end(_ctx: RawTracePointContext) -> i32 {
    end(StallKind::Memcg);
    0
}

#[raw_tracepoint(tracepoint = "mm_compaction_begin")]
pub fn mt_compact_begin(_ctx: RawTracePointContext) -> i32 {
    begin(StallKind::Compaction);
    0
}

#[raw_tracepoint(tracepoint = "mm_compaction_end")]
pub fn mt_compact_end(_ctx: RawTracePointContext) -> i32 {
    end(StallKind::Compaction);
    0
}

/// `TP_PROTO(int nid, int usec_timeout, int usec_delayed, int reason)`: the delay is the
/// event's own.
#[raw_tracepoint(tracepoint = "mm_vmscan_throttled")]
pub fn mt_throttled(ctx: RawTracePointContext) -> i32 {
    let (tgid, _) = targets::current_ids();
    if targets::is_counted(tgid) {
        let usec: u64 = ctx.arg(2);
        record(tgid, StallKind::Throttled, (usec as u32 as u64) * 1000);
    }
    0
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The start slot of a kind in a task's starts (throttling has none: it reports its delay).
#[inline(always)]
fn slot(starts: *mut StallStarts, kind: StallKind) -> *mut u64 {
    // SAFETY: field addresses of a live map value; nothing is read here.
    unsafe {
        match kind {
            StallKind::Direct => &raw mut (*starts).direct_ns,
            StallKind::Memcg => &raw mut (*starts).memcg_ns,
            _ => &raw mut (*starts).compaction_ns,
        }
    }
}

#[inline(always)]
fn begin(kind: StallKind) {
    let (tgid, tid) = targets::current_ids();
    if !targets::is_counted(tgid) {
        return;
    }
    let at = now();
    if let Some(starts) = STARTS.get_ptr_mut(tid) {
        // SAFETY: this task's own entry: only its own stalls write it.
        unsafe { *slot(starts, kind) = at };
        return;
    }
    let mut starts = StallStarts::default();
    // SAFETY: a local value.
    unsafe { *slot(&raw mut starts, kind) = at };
    if STARTS.insert(tid, starts, u64::from(BPF_NOEXIST)).is_err() {
        drops::count(DropSource::StallStartFull);
    }
}

#[inline(always)]
fn end(kind: StallKind) {
    let (tgid, tid) = targets::current_ids();
    let Some(starts) = STARTS.get_ptr_mut(tid) else {
        // Not a target, or the stall began before memtrace attached.
        return;
    };
    // SAFETY: this task's own entry, read and written only by its own stalls.
    let (began, others_under_way) = unsafe {
        let began = *slot(starts, kind);
        *slot(starts, kind) = 0;
        let left = (*starts).direct_ns | (*starts).memcg_ns | (*starts).compaction_ns;
        (began, left != 0)
    };
    if !others_under_way {
        let _ = STARTS.remove(tid);
    }
    if began != 0 {
        record(tgid, kind, now().saturating_sub(began));
    }
}

/// Adds one stall of `ns` to the process's counts (creating them, with its name and memory
/// cgroup, at its first stall) and to the histogram.
#[inline(always)]
fn record(tgid: u32, kind: StallKind, ns: u64) {
    let counts = match STALLS.get_ptr_mut(tgid) {
        Some(counts) => counts,
        None => {
            let first = StallCounts {
                kinds: [Stall::default(); StallKind::COUNT],
                comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
                memcg: memcg::current(),
            };
            // Failure: another CPU created it meanwhile (found below), or the table is full.
            let _ = STALLS.insert(tgid, first, u64::from(BPF_NOEXIST));
            match STALLS.get_ptr_mut(tgid) {
                Some(counts) => counts,
                None => {
                    drops::count(DropSource::StallTableFull);
                    return;
                }
            }
        }
    };
    // SAFETY: a value pointer from a successful lookup; counts and totals change only through
    // atomic adds; `max_ns` is a plain store (see `Stall::max_ns`).
    unsafe {
        let stall = &raw mut (*counts).kinds[kind as usize];
        atomic::add(&raw mut (*stall).count, 1);
        atomic::add(&raw mut (*stall).total_ns, ns);
        if ns > (*stall).max_ns {
            (*stall).max_ns = ns;
        }
    }
    if WITH_HISTOGRAMS.load() != 0
        && let Some(histogram) = HISTOGRAMS.get_ptr_mut(kind as u32)
    {
        let slot = histogram_slot(ns);
        // SAFETY: this CPU's own copy; programs do not nest on one CPU here.
        unsafe {
            if let Some(bucket) = (*histogram).get_mut(slot) {
                *bucket += 1;
            }
        }
    }
}

/// Nothing to prepare for a new target: its stalls create its counts.
#[inline(always)]
pub fn on_new_target(_tgid: u32) -> bool {
    true
}
