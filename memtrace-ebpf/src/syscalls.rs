//! The `syscalls` object: allocation syscalls (brk, mmap, munmap, ...), entry and exit paired in
//! the kernel, per thread, so one record per completed call crosses to userspace, already
//! filtered by target, outcome and size. The same programs are attached to each traced
//! syscall's `syscalls:sys_enter_*` (one per number of arguments) and `sys_exit_*` tracepoints;
//! a syscall memtrace does not trace never runs them.
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
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{RawTracePointContext, TracePointContext, tracing::StackIdContext as _},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    stacks::{EventKind, StackRef},
    syscalls::{
        ExecRecord, MAX_ARGS, MAX_BREAKS, MAX_PENDING, MAX_PROC_SYSCALLS, MAX_SYSCALL_NR,
        MAX_TRACED, Moved, NO_CALL, PendingCall, ProcSyscallCounts, ProcSyscallKey, RECORD_EXEC,
        RECORD_SYSCALL, RING_BYTES, STANDARD_ARGS_OFFSET, STANDARD_NR_OFFSET, STANDARD_RET_OFFSET,
        SyscallClass, SyscallRecord, SyscallStats, WAKEUP_RECORDS, bytes_about, bytes_moved,
        class_of, is_error, slot_of, stacks_of,
    },
    targets::FilterMode,
};

// Every table is sized by userspace before load, by what the command does (`-c` sends no
// record, only `serve` counts per process, ...); the sizes here are the defaults.

#[map(name = "SYSCALL_PENDING")]
static PENDING: HashMap<u32, PendingCall> = HashMap::with_max_entries(MAX_PENDING, 0);

#[map(name = "SYSCALL_BREAKS")]
static BREAKS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_BREAKS, 0);

#[map(name = "SYSCALL_CLASSES")]
static CLASSES: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

#[map(name = "SYSCALL_STATS")]
static STATS: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(MAX_TRACED, 0);

/// Shared by every CPU (counts are added atomically), so its size does not grow with them.
#[map(name = "SYSCALL_PROC_STATS")]
static PROC_STATS: HashMap<ProcSyscallKey, ProcSyscallCounts> =
    HashMap::with_max_entries(MAX_PROC_SYSCALLS, 0);

#[map(name = "SYSCALL_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Records this CPU has written since it last woke userspace.
#[map(name = "SYSCALL_UNSIGNALLED")]
static UNSIGNALLED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

// Offsets into the `syscalls:sys_enter_*` / `sys_exit_*` records, read by userspace from each
// traced syscall's tracefs `format` at start-up. On 6.18 (sys_enter_mmap, sys_exit_mmap):
//   field:int __syscall_nr;    offset:8;  size:4; signed:1;
//   field:unsigned long addr;  offset:16; size:8; signed:0;   (then len at 24, prot at 32, ...)
//   field:long ret;            offset:16; size:8; signed:1;
// That is the standard layout, and then SYSCALL_DIRECT_READS is set: the verifier prunes the
// path not taken, so the programs either load fields at constant offsets or copy them.
#[unsafe(no_mangle)]
static SYSCALL_NR_OFFSET: Global<u32> = Global::new(STANDARD_NR_OFFSET);
#[unsafe(no_mangle)]
static SYSCALL_ARGS_OFFSET: Global<u32> = Global::new(STANDARD_ARGS_OFFSET);
#[unsafe(no_mangle)]
static SYSCALL_RET_OFFSET: Global<u32> = Global::new(STANDARD_RET_OFFSET);
#[unsafe(no_mangle)]
static SYSCALL_DIRECT_READS: Global<u32> = Global::new(0);

// Offsets into the `task:task_rename` record, from its tracefs `format`. On 6.18:
//   field:pid_t pid;          offset:8;  size:4;  signed:1;
//   field:char newcomm[16];   offset:28; size:16; signed:0;
#[unsafe(no_mangle)]
static RENAME_PID_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static RENAME_COMM_OFFSET: Global<u32> = Global::new(28);

#[unsafe(no_mangle)]
static SYSCALL_COUNT_ONLY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_FAILED_ONLY: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_MIN_SIZE: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SELF_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_PER_PROCESS: Global<u32> = Global::new(0);
/// Which calls' user stacks to take (`stacks_of`).
#[unsafe(no_mangle)]
static SYSCALL_STACKS: Global<u32> = Global::new(stacks_of::NONE);
/// Non-zero to take each call's kernel stack too (`trace --kernel-stack`).
#[unsafe(no_mangle)]
static SYSCALL_KERNEL_STACKS: Global<u32> = Global::new(0);

/// Kernel stacks, by id (sized by userspace: one entry unless asked for).
#[map(name = "KERNEL_STACKS")]
static KERNEL_STACKS: StackTrace = StackTrace::with_max_entries(1, 0);

/// Entry programs, one per number of arguments (`memtrace_common::syscalls::ENTRY_PROGRAMS`),
/// each in three forms: without stacks (`trace`, `trace -c`, `serve`), and taking stacks either
/// way (`memtrace_common::stacks::StackWay`). A kernel without `bpf_loop` refuses any program
/// holding the first way's code, even unreached, so no form carries more than its own.
macro_rules! entry_programs {
    ($($arity:literal: $plain:ident, $helpers:ident, $reads:ident;)*) => {$(
        #[tracepoint]
        pub fn $plain(ctx: TracePointContext) -> u32 {
            let _ = try_enter::<$arity, false, false>(&ctx);
            0
        }

        #[tracepoint]
        pub fn $helpers(ctx: TracePointContext) -> u32 {
            let _ = try_enter::<$arity, true, true>(&ctx);
            0
        }

        #[tracepoint]
        pub fn $reads(ctx: TracePointContext) -> u32 {
            let _ = try_enter::<$arity, true, false>(&ctx);
            0
        }
    )*};
}

entry_programs!(
    0: mt_sys_enter0, mt_sys_enter0_stack, mt_sys_enter0_stack_compat;
    1: mt_sys_enter1, mt_sys_enter1_stack, mt_sys_enter1_stack_compat;
    2: mt_sys_enter2, mt_sys_enter2_stack, mt_sys_enter2_stack_compat;
    3: mt_sys_enter3, mt_sys_enter3_stack, mt_sys_enter3_stack_compat;
    4: mt_sys_enter4, mt_sys_enter4_stack, mt_sys_enter4_stack_compat;
    5: mt_sys_enter5, mt_sys_enter5_stack, mt_sys_enter5_stack_compat;
    6: mt_sys_enter6, mt_sys_enter6_stack, mt_sys_enter6_stack_compat;
);

#[tracepoint]
pub fn mt_sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit::<false, false>(&ctx);
    0
}

#[tracepoint]
pub fn mt_sys_exit_stack(ctx: TracePointContext) -> u32 {
    let _ = try_exit::<true, true>(&ctx);
    0
}

#[tracepoint]
pub fn mt_sys_exit_stack_compat(ctx: TracePointContext) -> u32 {
    let _ = try_exit::<true, false>(&ctx);
    0
}

/// Entry of a traced syscall with `ARITY` arguments; `STACKS`: whether this form takes stacks,
/// `HELPERS` which way.
#[inline(always)]
fn try_enter<const ARITY: usize, const STACKS: bool, const HELPERS: bool>(
    ctx: &TracePointContext,
) -> Result<(), i64> {
    let (tgid, tid) = targets::current_ids();
    let nr: i32 = field::<i32, { STANDARD_NR_OFFSET as usize }>(ctx, &SYSCALL_NR_OFFSET)?;
    let args = arguments::<ARITY>(ctx)?;

    // A thread keeps its slot between calls: only targets get one, so a thread that has one is
    // a target (by name, it may have been renamed since: check again), and reusing it in place
    // saves a hash insert and delete per call.
    if let Some(slot) = PENDING.get_ptr_mut(tid)
        && targets::filter_mode() != FilterMode::Comm as u32
    {
        // SAFETY: this thread's own slot: only this thread writes these fields, between its own
        // calls (a rename writes only the name). No preconditions for the clock.
        unsafe {
            (*slot).args = args;
            (*slot).nr = nr as u32;
            (*slot).stack = user_stack::<STACKS, HELPERS>(ctx, tgid, tid);
            (*slot).start_ns = bpf_ktime_get_ns();
        }
        return Ok(());
    }
    if tgid == SELF_TGID.load() || !targets::is_counted(tgid) {
        return Ok(());
    }
    let call = PendingCall {
        comm: bpf_get_current_comm().unwrap_or_default(),
        args,
        nr: nr as u32,
        _pad: 0,
        stack: user_stack::<STACKS, HELPERS>(ctx, tgid, tid),
        // SAFETY: no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
    };
    if PENDING.insert(tid, call, u64::from(BPF_ANY)).is_err() {
        drops::count(DropSource::SyscallPendingFull);
    }
    Ok(())
}

/// Keeps a traced thread's name current: `task_rename` fires when a task's name changes, by
/// `exec` or otherwise, and names the task by thread id (it may not be the current one).
#[tracepoint]
pub fn mt_sys_rename(ctx: TracePointContext) -> u32 {
    match try_rename(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_rename(ctx: &TracePointContext) -> Result<(), i64> {
    let tid: i32 = record::read(ctx, RENAME_PID_OFFSET.load())?;
    let Some(slot) = PENDING.get_ptr_mut(tid as u32) else {
        return Ok(());
    };
    let comm: [u8; COMM_LEN] = record::read(ctx, RENAME_COMM_OFFSET.load())?;
    // SAFETY: a value pointer from a successful lookup; only the name is written, which the
    // thread's own programs only read (a call ending meanwhile may see either name).
    unsafe { (*slot).comm = comm };
    Ok(())
}

/// Non-zero to tell userspace when a traced process runs `exec` (`leaks`).
#[unsafe(no_mangle)]
static SYSCALL_EXECS: Global<u32> = Global::new(0);

/// A traced process ran `exec`: its old mappings are gone. On the records' ring, so in order
/// with its calls.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_sys_exec(_ctx: RawTracePointContext) -> i32 {
    let (tgid, _) = targets::current_ids();
    if SYSCALL_EXECS.load() == 0 || !targets::is_counted(tgid) {
        return 0;
    }
    let record = ExecRecord {
        kind: RECORD_EXEC,
        tgid,
    };
    if EVENTS.output::<ExecRecord>(&record, 0).is_err() {
        drops::count(DropSource::SyscallRingFull);
    }
    0
}

/// Frees an exiting thread's slot (the only place slots are deleted).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn mt_thread_exit(_ctx: RawTracePointContext) -> i32 {
    let (_, tid) = targets::current_ids();
    let _ = PENDING.remove(tid);
    0
}

fn try_exit<const STACKS: bool, const HELPERS: bool>(ctx: &TracePointContext) -> Result<(), i64> {
    let (tgid, tid) = targets::current_ids();
    let Some(entry) = PENDING.get_ptr_mut(tid) else {
        // Not a target, or the call began before tracing did.
        return Ok(());
    };
    // SAFETY: this thread's own slot, copied at once and marked reported.
    let call = unsafe { *entry };
    if call.nr == NO_CALL {
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { (*entry).nr = NO_CALL };
    // SAFETY: no preconditions.
    let latency_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(call.start_ns);
    let ret: i64 = field::<i64, { STANDARD_RET_OFFSET as usize }>(ctx, &SYSCALL_RET_OFFSET)?;
    let failed = is_error(ret);
    let Some(&entry) = CLASSES.get(call.nr) else {
        return Ok(());
    };
    let class = class_of(entry);

    let mut prev_brk = 0;
    let mut brk_growth = 0i64;
    if class == SyscallClass::Brk as u32 {
        // brk returns the new break, or the unchanged one when it fails. Updated in place when
        // known: an LRU map's update takes a lock and a free node, several times the lookup.
        if let Some(prev) = BREAKS.get_ptr_mut(tgid) {
            // SAFETY: a value pointer from a successful lookup. Two threads of one process
            // ending brk calls at once may race here, as their updates would; the process's
            // next brk sets it right.
            unsafe {
                prev_brk = *prev;
                *prev = ret as u64;
            }
        } else {
            let _ = BREAKS.insert(tgid, ret as u64, u64::from(BPF_ANY));
        }
        if prev_brk != 0 && call.args[0] != 0 {
            brk_growth = (ret as u64).wrapping_sub(prev_brk) as i64;
        }
    }
    let size = bytes_about(class, call.args[1], call.args[2], brk_growth);
    if (SYSCALL_FAILED_ONLY.load() != 0 && !failed) || size < SYSCALL_MIN_SIZE.load() {
        return Ok(());
    }
    count(&call, entry, failed, latency_ns, brk_growth);
    if SYSCALL_PER_PROCESS.load() != 0 {
        count_for_process(tgid, &call, class, failed, brk_growth);
    }
    if SYSCALL_COUNT_ONLY.load() != 0 {
        return Ok(());
    }

    let stack = if STACKS
        && SYSCALL_STACKS.load() == stacks_of::MAPPING_CALLS
        && !failed
        && (class == SyscallClass::Mmap as u32
            || class == SyscallClass::Mremap as u32
            || brk_growth > 0)
    {
        // Before the record is reserved: a stack sent whole goes first on the same ring.
        stacks::identify::<HELPERS>(tgid, tid, EventKind::Syscall, 0, &EVENTS)
    } else {
        call.stack
    };
    let Some(mut slot) = EVENTS.reserve::<SyscallRecord>(0) else {
        drops::count(DropSource::SyscallRingFull);
        return Ok(());
    };
    slot.write(SyscallRecord {
        kind: RECORD_SYSCALL,
        nr: call.nr,
        tgid,
        tid,
        comm: call.comm,
        start_ns: call.start_ns,
        latency_ns,
        args: call.args,
        ret,
        prev_brk,
        stack,
    });
    slot.submit(u64::from(wakeup_flag()));
    Ok(())
}

/// The calling thread's user stack, when asked for: a stack sent whole goes on the records'
/// own ring, so it is read before the call's record.
#[inline(always)]
fn user_stack<const STACKS: bool, const HELPERS: bool>(
    ctx: &TracePointContext,
    tgid: u32,
    tid: u32,
) -> StackRef {
    if !STACKS || SYSCALL_STACKS.load() != stacks_of::EVERY_CALL {
        return StackRef::default();
    }
    let mut stack = stacks::identify::<HELPERS>(tgid, tid, EventKind::Syscall, 0, &EVENTS);
    if SYSCALL_KERNEL_STACKS.load() != 0 {
        // The kernel's own walk (ORC): right for kernel code. Identical stacks share an id.
        stack.kernel = match ctx.get_stackid(&KERNEL_STACKS, 0) {
            Ok(id) => id as u32 + 1,
            Err(_) => 0,
        };
    }
    stack
}

/// The call's `ARITY` arguments, the other slots zero: each loaded at its standard offset when
/// the kernel uses the standard layout (one load apiece: the verifier allows context loads only
/// at constant offsets, so no loop and no block copy), else copied as one block.
#[inline(always)]
fn arguments<const ARITY: usize>(ctx: &TracePointContext) -> Result<[u64; MAX_ARGS], i64> {
    const FIRST: usize = STANDARD_ARGS_OFFSET as usize;
    let mut args = [0u64; MAX_ARGS];
    if ARITY == 0 {
        return Ok(args);
    }
    if SYSCALL_DIRECT_READS.load() == 0 {
        let own: [u64; ARITY] = record::read(ctx, SYSCALL_ARGS_OFFSET.load())?;
        args[..ARITY].copy_from_slice(&own);
        return Ok(args);
    }
    args[0] = record::load::<u64, FIRST>(ctx);
    if ARITY > 1 {
        args[1] = record::load::<u64, { FIRST + 8 }>(ctx);
    }
    if ARITY > 2 {
        args[2] = record::load::<u64, { FIRST + 16 }>(ctx);
    }
    if ARITY > 3 {
        args[3] = record::load::<u64, { FIRST + 24 }>(ctx);
    }
    if ARITY > 4 {
        args[4] = record::load::<u64, { FIRST + 32 }>(ctx);
    }
    if ARITY > 5 {
        args[5] = record::load::<u64, { FIRST + 40 }>(ctx);
    }
    Ok(args)
}

/// A field of the record: loaded at its standard offset when the kernel uses the standard
/// layout, else copied from `offset` (from tracefs).
#[inline(always)]
fn field<T: Copy, const STANDARD_OFFSET: usize>(
    ctx: &TracePointContext,
    offset: &Global<u32>,
) -> Result<T, i64> {
    if SYSCALL_DIRECT_READS.load() != 0 {
        Ok(record::load::<T, STANDARD_OFFSET>(ctx))
    } else {
        record::read(ctx, offset.load())
    }
}

/// Wakes the reader only once every [`WAKEUP_RECORDS`] records of this CPU: it also polls on a
/// short timer, so a burst of calls costs one wake-up rather than one each.
#[inline(always)]
fn wakeup_flag() -> u32 {
    let Some(unsignalled) = UNSIGNALLED.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP;
    };
    // SAFETY: this CPU's own counter; programs do not nest on one CPU here.
    unsafe {
        *unsignalled += 1;
        if *unsignalled < WAKEUP_RECORDS {
            return BPF_RB_NO_WAKEUP;
        }
        *unsignalled = 0;
    }
    BPF_RB_FORCE_WAKEUP
}

/// The per-process counts `serve` exports: calls, errors and bytes by direction.
#[inline(always)]
fn count_for_process(tgid: u32, call: &PendingCall, class: u32, failed: bool, brk_growth: i64) {
    let key = ProcSyscallKey { tgid, nr: call.nr };
    let Moved { up, down } = if failed {
        Moved::default()
    } else {
        bytes_moved(class, call.args[1], call.args[2], brk_growth)
    };
    if let Some(counts) = PROC_STATS.get_ptr_mut(key) {
        add_for_process(counts, failed, up, down);
        return;
    }
    let first = ProcSyscallCounts {
        calls: 1,
        errors: u64::from(failed),
        bytes_up: up,
        bytes_down: down,
    };
    if PROC_STATS
        .insert(key, first, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    // Another CPU created the key meanwhile, or the table is full.
    match PROC_STATS.get_ptr_mut(key) {
        Some(counts) => add_for_process(counts, failed, up, down),
        None => drops::count(DropSource::SyscallProcFull),
    }
}

#[inline(always)]
fn add_for_process(counts: *mut ProcSyscallCounts, failed: bool, up: u64, down: u64) {
    // SAFETY: a value pointer from a successful lookup; its counters are only ever changed
    // through atomic adds, here and on other CPUs. Zero adds are skipped: an atomic costs.
    unsafe {
        atomic::add(&raw mut (*counts).calls, 1);
        if failed {
            atomic::add(&raw mut (*counts).errors, 1);
        }
        if up != 0 {
            atomic::add(&raw mut (*counts).bytes_up, up);
        }
        if down != 0 {
            atomic::add(&raw mut (*counts).bytes_down, down);
        }
    }
}

#[inline(always)]
fn count(call: &PendingCall, entry: u32, failed: bool, latency_ns: u64, brk_growth: i64) {
    let class = class_of(entry);
    let Some(stats) = STATS.get_ptr_mut(slot_of(entry)) else {
        return;
    };
    // SAFETY: this CPU's own slot; programs do not nest on one CPU here, so no race.
    let stats = unsafe { &mut *stats };
    if stats.calls == 0 || latency_ns < stats.min_ns {
        stats.min_ns = latency_ns;
    }
    if latency_ns > stats.max_ns {
        stats.max_ns = latency_ns;
    }
    stats.calls += 1;
    stats.total_ns += latency_ns;
    if failed {
        stats.errors += 1;
        return;
    }
    if class == SyscallClass::Brk as u32 {
        // The break's own counter keeps its sign: growth and shrinking net out.
        stats.brk_growth += brk_growth;
    } else {
        let moved = bytes_moved(class, call.args[1], call.args[2], brk_growth);
        stats.mapped += moved.up;
        stats.unmapped += moved.down;
    }
}

/// Nothing to prepare for a new target: its threads get their slots at their first call.
#[inline(always)]
pub fn on_new_target(_tgid: u32) -> bool {
    true
}
