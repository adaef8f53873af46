//! The `allocs` object (`leaks --malloc`): uprobes on a process's allocator. An entry program
//! per argument shape notes the call (size, stack) per thread; one return program records the
//! block it returned in `ALLOCATIONS`; `free` deletes it. The table is the answer: userspace
//! reads it, and only the first copy of each new stack crosses the ring. Entry programs exist
//! once per way of taking stacks (`stacks`; the `_compat` ones for kernels before 5.17).
#![no_std]
#![no_main]
// The atomic add is written in BPF assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod drops;
mod record;
mod runtime;
mod stacks;
mod targets;

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_send_signal,
    },
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use memtrace_common::{
    DropSource,
    allocs::{
        ALLOC_RING_BYTES, AllocCall, AllocKey, AllocStats, Allocation, MAX_ALLOC_THREADS,
        MAX_ALLOCATIONS, ProcessRecord, RECORD_PROCESS,
    },
    stacks::{EventKind, PAGE_BYTES},
    targets::MAX_TARGETS,
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

/// When each traced process last ran `exec`: its blocks born before are its old image's, gone
/// with its old address space, and userspace forgets them (deleting them here would need a
/// walk of the table, `bpf_for_each_map_elem`, which kernels before 5.13 lack). Kept after the
/// process exits, for userspace to read, and deleted by it.
#[map(name = "ALLOC_EXECS")]
static EXECS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Followed processes not given their uprobes yet (by userspace, which deletes them then).
#[map(name = "ALLOC_AWAITED")]
static AWAITED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[unsafe(no_mangle)]
static ALLOC_MIN_SIZE: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static ALLOC_SAMPLE: Global<u32> = Global::new(1);
#[unsafe(no_mangle)]
static ALLOC_PAGE_BYTES: Global<u64> = Global::new(PAGE_BYTES as u64);

/// The entry programs, each in two forms by the way they take stacks: `$helpers` with the
/// helpers of Linux 5.17, `$reads` without (`stacks`). `$size`, `$old` and `$out` compute the
/// call's size, the block `realloc` replaces and where `posix_memalign` writes its block, from
/// the probe's context.
macro_rules! entry_programs {
    ($($(#[$doc:meta])* $helpers:ident, $reads:ident: |$ctx:ident| ($size:expr, $old:expr, $out:expr);)*) => {$(
        $(#[$doc])*
        #[uprobe]
        pub fn $helpers($ctx: ProbeContext) -> u32 {
            enter::<true>(&$ctx, $size, $old, $out);
            0
        }

        $(#[$doc])*
        #[uprobe]
        pub fn $reads($ctx: ProbeContext) -> u32 {
            enter::<false>(&$ctx, $size, $old, $out);
            0
        }
    )*};
}

entry_programs!(
    /// `malloc(size)`, `valloc(size)`.
    mt_malloc, mt_malloc_compat: |ctx| (arg(&ctx, 0), 0, 0);
    /// `calloc(n, size)`.
    mt_calloc, mt_calloc_compat: |ctx| (product(arg(&ctx, 0), arg(&ctx, 1)), 0, 0);
    /// `realloc(ptr, size)`.
    mt_realloc, mt_realloc_compat: |ctx| (arg(&ctx, 1), arg(&ctx, 0), 0);
    /// `reallocarray(ptr, n, size)`.
    mt_reallocarray, mt_reallocarray_compat:
        |ctx| (product(arg(&ctx, 1), arg(&ctx, 2)), arg(&ctx, 0), 0);
    /// `memalign(align, size)`, `aligned_alloc(align, size)`.
    mt_memalign, mt_memalign_compat: |ctx| (arg(&ctx, 1), 0, 0);
    /// `posix_memalign(&ptr, align, size)`.
    mt_posix_memalign, mt_posix_memalign_compat: |ctx| (arg(&ctx, 2), 0, arg(&ctx, 0));
    /// `pvalloc(size)`: whole pages.
    mt_pvalloc, mt_pvalloc_compat: |ctx| (page_rounded(arg(&ctx, 0)), 0, 0);
);

/// `size` rounded up to whole pages (at least one), as `pvalloc` allocates.
#[inline(always)]
fn page_rounded(size: u64) -> u64 {
    let page = ALLOC_PAGE_BYTES.load().max(1);
    // Rounding up cannot overflow by more than a page: a size that near 2^64 fails anyway.
    size.max(1).div_ceil(page).wrapping_mul(page)
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

/// A followed child was born (the fork follower, `targets`, registered it): userspace is told
/// to give it uprobes, and until it has, the child is stopped at its `exec`.
#[inline(always)]
pub fn on_new_target(tgid: u32) -> bool {
    let _ = AWAITED.insert(tgid, 0, u64::from(BPF_ANY));
    let record = ProcessRecord {
        kind: RECORD_PROCESS,
        pid: tgid,
    };
    if SNAPSHOTS.output::<ProcessRecord>(&record, 0).is_err() {
        // Not followed, then: it must not wait at its exec for uprobes that never come.
        let _ = AWAITED.remove(tgid);
        drops::count(DropSource::StackRingFull);
        return false;
    }
    true
}

/// A traced process ran `exec`: its blocks are gone with its old address space, and the time
/// says which they are (a block the new image allocates at an old one's address replaces it).
/// A followed child still waiting for its uprobes stops here, before its new image runs, until
/// userspace has put them on.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_alloc_exec(_ctx: RawTracePointContext) -> i32 {
    let (tgid, _) = ids();
    if !targets::is_counted(tgid) {
        return 0;
    }
    if AWAITED.get_ptr(tgid).is_some() {
        // Stop first, then claim the entry: whichever of this program and userspace deletes
        // it, a stop is always followed by a continue (from userspace, which found it gone,
        // or from here, if userspace got there first).
        // SAFETY: signals to the current task, delivered as it returns to user mode; a
        // continue discards a pending stop.
        unsafe {
            bpf_send_signal(SIGSTOP);
            if AWAITED.remove(tgid).is_err() {
                bpf_send_signal(SIGCONT);
            }
        }
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if EXECS.insert(tgid, now, u64::from(BPF_ANY)).is_err() {
        drops::count(DropSource::TargetTableFull);
    }
    0
}

/// A thread ended: its call in progress, if any, with it. A traced process that ends leaves
/// the targets (its pid may come to name another).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn mt_alloc_exit(_ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = ids();
    let _ = CALLS.remove(tid);
    if tid == tgid && targets::is_counted(tgid) {
        targets::forget(tgid);
        let _ = AWAITED.remove(tgid);
        // Its exec time stays: its old image's blocks are still in the table, and userspace
        // deletes both once it has read them.
    }
    0
}

/// `SIGCONT` and `SIGSTOP`.
const SIGCONT: u32 = 18;
const SIGSTOP: u32 = 19;

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `n * size`, or `u64::MAX` if it overflows (the call then fails, as the allocator sees it).
/// By 32-bit halves: LLVM turns the usual overflow checks into a 128-bit multiply, which BPF
/// lacks.
#[inline(always)]
fn product(n: u64, size: u64) -> u64 {
    let (n_hi, n_lo) = (n >> 32, n & 0xffff_ffff);
    let (size_hi, size_lo) = (size >> 32, size & 0xffff_ffff);
    if n_hi != 0 && size_hi != 0 {
        return u64::MAX;
    }
    // At most one of the two is non-zero, and each term is below 2^64.
    let cross = n_hi * size_lo + n_lo * size_hi;
    if cross >> 32 != 0 {
        return u64::MAX;
    }
    let low = n_lo * size_lo;
    low.saturating_add(cross << 32)
}

/// The stack pointer of the user context the probe stopped.
#[inline(always)]
fn stack_pointer(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: the program's context, readable directly.
    unsafe { (*regs).rsp }
}

/// The user registers a stack starts from: the probe's context is the user context.
#[inline(always)]
fn user_registers(regs: *const aya_ebpf::bindings::pt_regs) -> (u64, u64, u64) {
    // SAFETY: as above.
    unsafe { ((*regs).rip, (*regs).rsp, (*regs).rbp) }
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
            (&raw mut (*stats).lost_returns, delta.lost_returns),
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
fn enter<const HELPERS: bool>(ctx: &ProbeContext, size: u64, old: u64, out: u64) {
    let (tgid, tid) = ids();
    let sp = stack_pointer(ctx.regs);
    let slot = CALLS.get_ptr_mut(tid);
    if let Some(slot) = slot {
        // SAFETY: this thread's own slot: only its own programs write it, one at a time.
        unsafe {
            if (*slot).active != 0 {
                // At or below the call in progress (a tail call keeps its stack pointer):
                // nested in it. Above it: that call is over, and its return was never seen.
                if sp <= (*slot).sp {
                    (*slot).depth += 1;
                    return;
                }
                count(|stats| stats.lost_returns += 1);
            }
        }
    }
    let sample = ALLOC_SAMPLE.load();
    // SAFETY: no preconditions.
    let skip = size < ALLOC_MIN_SIZE.load()
        || (sample > 1 && unsafe { bpf_get_prandom_u32() } % sample != 0);
    // realloc's old block leaves the table now: once the allocator has freed it, another
    // thread may be given its address. It goes back if the call fails.
    let old_key = AllocKey {
        tgid,
        _pad: 0,
        addr: old,
    };
    let old_block = match old {
        0 => None,
        // SAFETY: a value pointer from a successful lookup, copied at once.
        _ => ALLOCATIONS.get_ptr(old_key).map(|block| unsafe { *block }),
    };
    if old_block.is_some() {
        let _ = ALLOCATIONS.remove(old_key);
    }
    let call = AllocCall {
        size,
        old,
        old_block: old_block.unwrap_or_default(),
        out,
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        sp,
        stack: match skip {
            true => Default::default(),
            false => stacks::identify_at::<HELPERS>(
                user_registers(ctx.regs),
                tgid,
                tid,
                EventKind::Allocation,
                0,
                &SNAPSHOTS,
            ),
        },
        active: 1,
        depth: 0,
        skip: u32::from(skip),
        had_old: u32::from(old_block.is_some()),
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
    let sp = stack_pointer(ctx.regs);
    // SAFETY: this thread's own slot (see `enter`), copied before it is marked done.
    let call = unsafe {
        if (*slot).active == 0 {
            count(|stats| stats.orphan_returns += 1);
            return None;
        }
        // Back above the call in progress (its return pops the return address): that call's
        // return was lost, and this one's entry never seen.
        if sp > (*slot).sp + 8 {
            (*slot).active = 0;
            count(|stats| {
                stats.lost_returns += 1;
                stats.orphan_returns += 1;
            });
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
    if addr == 0 {
        // realloc(p, 0) frees p and may return NULL; any other NULL is a failure, which
        // leaves realloc's old block as it was.
        if call.size != 0 {
            count(|stats| stats.failed += 1);
            if call.had_old != 0 {
                let old = AllocKey {
                    tgid,
                    _pad: 0,
                    addr: call.old,
                };
                let _ = ALLOCATIONS.insert(old, call.old_block, u64::from(BPF_ANY));
            }
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
