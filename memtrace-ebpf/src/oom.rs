//! The `oom` object: OOM kills. `oom:mark_victim` fires once per victim, in the task running the
//! OOM killer (the trigger); the `console` raw tracepoint gives the kernel's own report, printed
//! by that same task just before: `oom-kill:constraint=...,oom_memcg=...,task_memcg=...` names the OOM domain and the
//! victim's memory cgroup exactly, with no race against the victim's exit, and `Tasks in CGROUP
//! are going to be killed due to memory.oom.group set` announces a group kill.
//!
//! A small per-trigger state machine numbers OOM invocations (`seq`): a new one starts at each
//! `oom-kill:` line (or at a victim marked without one, when the report is rate-limited); the
//! members of a group kill, marked by the same trigger right after the announcement, share it.
//! OOM invocations are serialised by the kernel's `oom_lock`, so the counter needs no atomics.
#![no_std]
#![no_main]
// The atomic add is written in BPF assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod drops;
mod runtime;

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, LruHashMap, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    oom::{
        MAX_OOM_FRAGMENTS, MAX_OOM_TASKS, NEW_PROCESS_RING_BYTES, OOM_RING_BYTES, OOM_TEXT_LEN,
        OomFields, OomLayout, OomPhase, OomRecordKind, OomText, OomVictim,
    },
};

#[map(name = "OOM_EVENTS")]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(OOM_RING_BYTES, 0);

/// The process of each `exec`, for the sampler of victims' histories (sized to one page by
/// userspace when it keeps no history). Drained on its own schedule: no wakeup.
#[map(name = "NEW_PROCESSES")]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(NEW_PROCESS_RING_BYTES, 0);

/// Trigger thread id → where it is in its OOM report.
#[map(name = "OOM_STATE")]
static OOM_STATE: LruHashMap<u32, State> = LruHashMap::with_max_entries(MAX_OOM_TASKS, 0);

/// One slot: the last OOM invocation number handed out.
#[map(name = "OOM_SEQ")]
static OOM_SEQ: Array<u64> = Array::with_max_entries(1, 0);

// Offsets read by userspace from tracefs at start-up. On 6.18:
//   oom:mark_victim
//     field:int pid;                      offset:8;  size:4; signed:1;
//     field:__data_loc char[] comm;       offset:12; size:4; signed:0;
//     field:unsigned long total_vm;       offset:16; size:8; signed:0;
//     field:unsigned long anon_rss;       offset:24; size:8; signed:0;
//     field:unsigned long file_rss;       offset:32; size:8; signed:0;
//     field:unsigned long shmem_rss;      offset:40; size:8; signed:0;
//     field:uid_t uid;                    offset:48; size:4; signed:0;
//     field:unsigned long pgtables;       offset:56; size:8; signed:0;
//     field:short oom_score_adj;          offset:64; size:2; signed:1;
#[unsafe(no_mangle)]
static OOM_LAYOUT: Global<OomLayout> = Global::new(OomLayout {
    fields: 0,
    pid: 8,
    comm: 0,
    total_vm: 0,
    anon_rss: 0,
    file_rss: 0,
    shmem_rss: 0,
    uid: 0,
    pgtables: 0,
    oom_score_adj: 0,
});

/// Group members are marked in one tight loop; a victim marked later than this after the
/// previous one starts a new invocation even without a report line.
const GROUP_WINDOW_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy)]
struct State {
    seq: u64,
    /// When the last victim of this invocation was marked (or its report began).
    last_ns: u64,
    phase: u32,
    fragments: u32,
}

const LINE_PREFIX: &[u8] = b"oom-kill:";
const GROUP_PREFIX: &[u8] = b"Tasks in ";

#[tracepoint]
pub fn mt_oom_victim(ctx: TracePointContext) -> u32 {
    match try_oom_victim(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_oom_victim(ctx: &TracePointContext) -> Result<(), i64> {
    let now = ktime_ns();
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: a value pointer from a successful lookup, read at once.
    let state = OOM_STATE.get_ptr(tid).map(|state| unsafe { *state });
    let (seq, phase) = match state {
        Some(s) if s.phase == OomPhase::LINE => (s.seq, OomPhase::KILLED),
        Some(s) if s.phase == OomPhase::GROUP => (s.seq, OomPhase::MEMBERS),
        Some(s) if s.phase == OomPhase::MEMBERS && now - s.last_ns < GROUP_WINDOW_NS => {
            (s.seq, OomPhase::MEMBERS)
        }
        _ => (next_seq(), OomPhase::KILLED),
    };
    let next = State {
        seq,
        last_ns: now,
        phase,
        fragments: 0,
    };
    // Failure only loses grouping for the next victim; the victim itself is still reported.
    let _ = OOM_STATE.insert(tid, next, u64::from(BPF_ANY));

    let Some(mut entry) = OOM_EVENTS.reserve::<OomVictim>(0) else {
        drops::count(DropSource::OomRingFull);
        return Ok(());
    };
    let layout = OOM_LAYOUT.load();
    let mut victim = OomVictim {
        kind: OomRecordKind::Victim as u32,
        fields: layout.fields,
        seq,
        ktime_ns: now,
        trigger_pid: (id >> 32) as u32,
        trigger_tid: tid,
        phase,
        trigger_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        ..OomVictim::default()
    };
    if let Err(err) = read_victim(ctx, &layout, &mut victim) {
        entry.discard(0);
        return Err(err);
    }
    entry.write(victim);
    entry.submit(0);
    Ok(())
}

#[inline(always)]
fn read_victim(
    ctx: &TracePointContext,
    layout: &OomLayout,
    victim: &mut OomVictim,
) -> Result<(), i64> {
    let has = |bit: u32| layout.fields & bit != 0;
    // SAFETY (every read below): offsets come from the tracepoint's own format; the reads are
    // bounds-checked probe helpers.
    let pid: i32 = unsafe { ctx.read_at(layout.pid as usize)? };
    victim.pid = pid as u32;
    if has(OomFields::COMM) {
        // SAFETY: as above.
        let loc: u32 = unsafe { ctx.read_at(layout.comm as usize)? };
        // SAFETY: a `__data_loc` offset points inside this record.
        let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
        // SAFETY: `src` is a kernel address; the helper stops at the buffer's end.
        unsafe { bpf_probe_read_kernel_str_bytes(src, &mut victim.comm)? };
    }
    if has(OomFields::TOTAL_VM) {
        // SAFETY: as above.
        victim.total_vm_kb = unsafe { ctx.read_at(layout.total_vm as usize)? };
    }
    if has(OomFields::ANON_RSS) {
        // SAFETY: as above.
        victim.anon_rss_kb = unsafe { ctx.read_at(layout.anon_rss as usize)? };
    }
    if has(OomFields::FILE_RSS) {
        // SAFETY: as above.
        victim.file_rss_kb = unsafe { ctx.read_at(layout.file_rss as usize)? };
    }
    if has(OomFields::SHMEM_RSS) {
        // SAFETY: as above.
        victim.shmem_rss_kb = unsafe { ctx.read_at(layout.shmem_rss as usize)? };
    }
    if has(OomFields::UID) {
        // SAFETY: as above.
        victim.uid = unsafe { ctx.read_at(layout.uid as usize)? };
    }
    if has(OomFields::PGTABLES) {
        // SAFETY: as above.
        victim.pgtables_kb = unsafe { ctx.read_at(layout.pgtables as usize)? };
    }
    if has(OomFields::OOM_SCORE_ADJ) {
        // SAFETY: as above.
        let adj: i16 = unsafe { ctx.read_at(layout.oom_score_adj as usize)? };
        victim.oom_score_adj = i32::from(adj);
    }
    Ok(())
}

#[inline(always)]
fn ktime_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// The next OOM invocation number. Callers run under the kernel's `oom_lock`.
#[inline(always)]
fn next_seq() -> u64 {
    match OOM_SEQ.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: the only slot; OOM invocations are serialised by `oom_lock`.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}

/// A program started (`exec`): a process that may grow into an OOM victim before the sampler's
/// next scan of every process. Raw: no record is formatted, and it detaches at once. The
/// sampler is woken (the kernel's default: only when it has read everything before), so that
/// a process killed within a second of its start has a history from its start.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_oom_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if NEW_PROCESSES.output::<u32>(&tgid, 0).is_err() {
        drops::count(DropSource::NewProcessRingFull);
    }
    0
}

/// Every kernel log fragment passes here; only those of an OOM report are sent on. A raw
/// tracepoint: its arguments are the text and its length (`TP_PROTO(const char *text, size_t
/// len)`), with no record to format, and it detaches at once (a classic tracepoint's perf event
/// costs two RCU grace periods to release).
#[raw_tracepoint(tracepoint = "console")]
pub fn mt_oom_console(ctx: RawTracePointContext) -> i32 {
    match try_oom_console(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_oom_console(ctx: &RawTracePointContext) -> Result<(), i64> {
    let text: *const u8 = ctx.arg(0);
    let len: u64 = ctx.arg(1);
    let mut prefix = [0u8; 16];
    let prefix_len = if len < prefix.len() as u64 {
        len
    } else {
        prefix.len() as u64
    };
    // SAFETY: `text` is the kernel's message, `len` bytes long; the helper copies at most
    // `prefix_len` (within the buffer) and fails cleanly on a bad address.
    read_kernel(&mut prefix, text, prefix_len)?;
    let starts_with =
        |pattern: &[u8]| prefix_len >= pattern.len() as u64 && prefix.starts_with(pattern);
    let tid = bpf_get_current_pid_tgid() as u32;
    let now = ktime_ns();

    let state = if starts_with(LINE_PREFIX) {
        State {
            seq: next_seq(),
            last_ns: now,
            phase: OomPhase::LINE,
            fragments: 0,
        }
    } else {
        let Some(state) = OOM_STATE.get_ptr(tid) else {
            return Ok(());
        };
        // SAFETY: a value pointer from a successful lookup, read at once.
        let mut state = unsafe { *state };
        if state.phase == OomPhase::KILLED && starts_with(GROUP_PREFIX) {
            state.phase = OomPhase::GROUP;
            state.fragments = 0;
        } else if state.phase != OomPhase::LINE && state.phase != OomPhase::GROUP {
            return Ok(());
        }
        state
    };
    if state.fragments >= MAX_OOM_FRAGMENTS {
        return Ok(());
    }
    let next = State {
        fragments: state.fragments + 1,
        ..state
    };
    let _ = OOM_STATE.insert(tid, next, u64::from(BPF_ANY));

    let Some(mut entry) = OOM_EVENTS.reserve::<OomText>(0) else {
        drops::count(DropSource::OomRingFull);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    let len = if len < OOM_TEXT_LEN as u64 {
        len
    } else {
        OOM_TEXT_LEN as u64
    };
    // SAFETY: `record` points to the reserved, writable entry, owned until submit/discard.
    unsafe {
        (*record).kind = OomRecordKind::Text as u32;
        (*record).seq = state.seq;
        (*record).tid = tid;
        (*record).phase = state.phase;
        (*record).len = match read_kernel(&mut (*record).text, text, len) {
            Ok(()) => len as u32,
            Err(_) => 0,
        };
    }
    entry.submit(0);
    Ok(())
}

/// Copies `len` bytes (at most the buffer's size) of kernel memory at `src` into `dst`.
#[inline(always)]
fn read_kernel<const N: usize>(dst: &mut [u8; N], src: *const u8, len: u64) -> Result<(), i64> {
    let len = if len > N as u64 { N as u32 } else { len as u32 };
    // SAFETY: `dst` holds N >= len bytes; the helper reads kernel memory and fails cleanly on a
    // bad address.
    let rc = unsafe { bpf_probe_read_kernel(dst.as_mut_ptr().cast(), len, src.cast()) };
    if rc == 0 { Ok(()) } else { Err(rc) }
}
