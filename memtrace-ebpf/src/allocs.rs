//! The `allocs` object (`leaks --malloc`): uprobes on a process's allocator. An entry program
//! per argument shape notes the call (size, stack) per thread; one return program records the
//! block it returned in `ALLOCATIONS`; `free` deletes it. The table is the answer: userspace
//! reads it, and only the first copy of each new stack crosses the ring.
#![no_std]
#![no_main]
// The atomic add is written in BPF assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod drops;
mod runtime;
mod stacks;

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use memtrace_common::{
    DropSource,
    allocs::{
        ALLOC_RING_BYTES, AllocCall, AllocKey, AllocStats, Allocation, MAX_ALLOC_THREADS,
        MAX_ALLOCATIONS,
    },
    stacks::{EventKind, PAGE_BYTES},
};

/// Allocated as it fills: an idle bound costs nothing.
#[map(name = "ALLOCATIONS")]
static ALLOCATIONS: HashMap<AllocKey, Allocation> =
    HashMap::with_max_entries(MAX_ALLOCATIONS, BPF_F_NO_PREALLOC);

/// An LRU, so a thread that dies inside a call leaves nothing behind for long.
#[map(name = "ALLOC_CALLS")]
static CALLS: LruHashMap<u32, AllocCall> = LruHashMap::with_max_entries(MAX_ALLOC_THREADS, 0);

#[map(name = "ALLOC_STATS")]
static STATS: PerCpuArray<AllocStats> = PerCpuArray::with_max_entries(1, 0);

/// New stacks, sent whole (`stacks`).
#[map(name = "STACK_SNAPSHOTS")]
static SNAPSHOTS: RingBuf = RingBuf::with_byte_size(ALLOC_RING_BYTES, 0);

/// Traced processes (written by userspace), and the time of their last `exec`: blocks older
/// than it belong to an address space that is gone.
#[map(name = "ALLOC_EXECS")]
static EXECS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

#[unsafe(no_mangle)]
static ALLOC_MIN_SIZE: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static ALLOC_SAMPLE: Global<u32> = Global::new(1);

/// `malloc(size)`, `valloc(size)`.
#[uprobe]
pub fn mt_malloc(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 0), 0, 0);
    0
}

/// `calloc(n, size)`.
#[uprobe]
pub fn mt_calloc(ctx: ProbeContext) -> u32 {
    // An overflowing product makes the call fail, and a failed call records nothing.
    enter(arg(&ctx, 0).wrapping_mul(arg(&ctx, 1)), 0, 0);
    0
}

/// `realloc(ptr, size)`.
#[uprobe]
pub fn mt_realloc(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 1), arg(&ctx, 0), 0);
    0
}

/// `reallocarray(ptr, n, size)`.
#[uprobe]
pub fn mt_reallocarray(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 1).wrapping_mul(arg(&ctx, 2)), arg(&ctx, 0), 0);
    0
}

/// `memalign(align, size)`, `aligned_alloc(align, size)`.
#[uprobe]
pub fn mt_memalign(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 1), 0, 0);
    0
}

/// `posix_memalign(&ptr, align, size)`.
#[uprobe]
pub fn mt_posix_memalign(ctx: ProbeContext) -> u32 {
    enter(arg(&ctx, 2), 0, arg(&ctx, 0));
    0
}

/// `pvalloc(size)`: whole pages.
#[uprobe]
pub fn mt_pvalloc(ctx: ProbeContext) -> u32 {
    let page = PAGE_BYTES as u64;
    enter(arg(&ctx, 0).max(1).div_ceil(page) * page, 0, 0);
    0
}

/// `free(ptr)`.
#[uprobe]
pub fn mt_free(ctx: ProbeContext) -> u32 {
    let ptr = arg(&ctx, 0);
    if ptr == 0 {
        return 0;
    }
    let (tgid, _) = ids();
    let unmatched = ALLOCATIONS
        .remove(AllocKey {
            tgid,
            _pad: 0,
            addr: ptr,
        })
        .is_err();
    count(|stats| {
        stats.frees += 1;
        stats.unmatched_frees += u64::from(unmatched);
    });
    0
}

/// The return of every allocator function.
#[uretprobe]
pub fn mt_alloc_return(ctx: RetProbeContext) -> u32 {
    let _ = try_return(&ctx);
    0
}

/// A traced process ran `exec`: its blocks are gone with its old address space.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_alloc_exec(_ctx: RawTracePointContext) -> i32 {
    let (tgid, _) = ids();
    if EXECS.get_ptr(tgid).is_some() {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = EXECS.insert(tgid, now, u64::from(BPF_ANY));
    }
    0
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[inline(always)]
fn ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// Adds to this CPU's statistics. Atomically: a uprobe's program can be preempted, and another
/// task's run on the same CPU meanwhile.
#[inline(always)]
fn count(change: impl FnOnce(&mut AllocStats)) {
    let mut delta = AllocStats::default();
    change(&mut delta);
    let Some(stats) = STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a value pointer from a successful lookup, changed only atomically.
    unsafe {
        for (field, n) in [
            (&raw mut (*stats).allocations, delta.allocations),
            (&raw mut (*stats).recorded, delta.recorded),
            (&raw mut (*stats).failed, delta.failed),
            (&raw mut (*stats).frees, delta.frees),
            (&raw mut (*stats).unmatched_frees, delta.unmatched_frees),
            (&raw mut (*stats).orphan_returns, delta.orphan_returns),
        ] {
            if n != 0 {
                atomic::add(field, n);
            }
        }
    }
}

/// Notes the thread's call: `size` bytes, `old` the block `realloc` replaces, `out` where
/// `posix_memalign` writes its block.
#[inline(always)]
fn enter(size: u64, old: u64, out: u64) {
    let (tgid, tid) = ids();
    let slot = CALLS.get_ptr_mut(tid);
    if let Some(slot) = slot {
        // SAFETY: this thread's own slot: only its own programs write it, one at a time.
        unsafe {
            if (*slot).active != 0 {
                (*slot).depth += 1;
                return;
            }
        }
    }
    let sample = ALLOC_SAMPLE.load();
    // SAFETY: no preconditions.
    let skip = size < ALLOC_MIN_SIZE.load()
        || (sample > 1 && unsafe { bpf_get_prandom_u32() } % sample != 0);
    let call = AllocCall {
        size,
        old,
        out,
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        stack: match skip {
            true => Default::default(),
            false => stacks::identify(tgid, tid, EventKind::Allocation, 0, &SNAPSHOTS),
        },
        active: 1,
        depth: 0,
        skip: u32::from(skip),
        _pad: 0,
    };
    match slot {
        // SAFETY: as above.
        Some(slot) => unsafe { *slot = call },
        None => {
            let _ = CALLS.insert(tid, call, u64::from(BPF_ANY));
        }
    }
}

#[inline(always)]
fn try_return(ctx: &RetProbeContext) -> Option<()> {
    let (tgid, tid) = ids();
    let Some(slot) = CALLS.get_ptr_mut(tid) else {
        count(|stats| stats.orphan_returns += 1);
        return None;
    };
    // SAFETY: this thread's own slot (see `enter`), copied before it is marked done.
    let call = unsafe {
        if (*slot).active == 0 {
            count(|stats| stats.orphan_returns += 1);
            return None;
        }
        if (*slot).depth > 0 {
            (*slot).depth -= 1;
            return None;
        }
        (*slot).active = 0;
        *slot
    };
    let ret: u64 = ctx.ret();
    let addr = match call.out {
        0 => ret,
        // posix_memalign returns 0 on success, the block through its out-pointer.
        // SAFETY: a checked read of the caller's memory.
        out if ret == 0 => unsafe { bpf_probe_read_user(out as *const u64) }.unwrap_or(0),
        _ => 0,
    };
    // realloc frees the old block when it returns a new one, or when asked for 0 bytes.
    if call.old != 0 && (addr != 0 || call.size == 0) {
        let _ = ALLOCATIONS.remove(AllocKey {
            tgid,
            _pad: 0,
            addr: call.old,
        });
    }
    if addr == 0 {
        if call.size != 0 {
            count(|stats| stats.failed += 1);
        }
        return None;
    }
    if call.skip != 0 {
        count(|stats| stats.allocations += 1);
        return None;
    }
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    let block = Allocation {
        size: call.size,
        born_ns: call.start_ns,
        stack: call.stack,
    };
    if ALLOCATIONS.insert(key, block, u64::from(BPF_ANY)).is_err() {
        drops::count(DropSource::AllocTableFull);
        count(|stats| stats.allocations += 1);
        return None;
    }
    count(|stats| {
        stats.allocations += 1;
        stats.recorded += 1;
    });
    Some(())
}
