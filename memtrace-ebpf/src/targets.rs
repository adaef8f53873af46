//! Which tasks are counted: everything, an explicit set of processes (and, when followed, every
//! process they fork), or tasks by command name. The set lives in the kernel so that filtering
//! costs one hash lookup and no event for an untraced task ever leaves the kernel. Shared by the
//! objects that filter by target; each says what a new target needs through
//! `crate::on_new_target`.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use memtrace_common::{
    COMM_LEN, DropSource,
    targets::{CLONE_THREAD, FilterMode, MAX_TARGETS, TargetFlags},
};

use crate::{drops, record};

/// Sized by userspace: one entry when nothing is filtered by target.
#[map(name = "TARGETS")]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[unsafe(no_mangle)]
static FILTER_MODE: Global<u32> = Global::new(FilterMode::All as u32);

#[unsafe(no_mangle)]
static FILTER_COMM: Global<[u8; COMM_LEN]> = Global::new([0; COMM_LEN]);

// Offsets into the `task:task_newtask` record, read by userspace from the tracepoint's tracefs
// `format` at start-up. On 6.18:
//   field:pid_t pid;        offset:8;  size:4; signed:1;
//   field:u64 clone_flags;  offset:32; size:8; signed:0;
#[unsafe(no_mangle)]
static NEWTASK_PID_OFFSET: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static NEWTASK_FLAGS_OFFSET: Global<u32> = Global::new(32);

/// The current process id (tgid) and thread id.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// The configured [`FilterMode`], as its `u32` value.
#[inline(always)]
#[allow(
    dead_code,
    reason = "the objects that filter through their own tables use it"
)]
pub fn filter_mode() -> u32 {
    FILTER_MODE.load()
}

/// Whether events of the current task, whose process id is `tgid`, are counted.
#[inline(always)]
pub fn is_counted(tgid: u32) -> bool {
    let mode = FILTER_MODE.load();
    if mode == FilterMode::All as u32 {
        true
    } else if mode == FilterMode::Targets as u32 {
        flags_of(tgid) & TargetFlags::COUNT != 0
    } else {
        bpf_get_current_comm().is_ok_and(|comm| comm == FILTER_COMM.load())
    }
}

/// Removes a process from the targets.
#[inline(always)]
#[allow(dead_code, reason = "the objects that end targets themselves use it")]
pub fn forget(tgid: u32) {
    let _ = TARGETS.remove(tgid);
}

#[inline(always)]
fn flags_of(tgid: u32) -> u32 {
    match TARGETS.get_ptr(tgid) {
        // SAFETY: a value pointer from a successful lookup, read at once.
        Some(flags) => unsafe { *flags },
        None => 0,
    }
}

/// Fires in the parent while it creates a task: when the parent is followed and the new task is
/// a process rather than a thread, the child becomes a followed target before it ever runs.
#[tracepoint]
pub fn mt_newtask(ctx: TracePointContext) -> u32 {
    match try_newtask(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let (parent, _) = current_ids();
    if flags_of(parent) & TargetFlags::FOLLOW == 0 {
        return Ok(());
    }
    let clone_flags: u64 = record::read(ctx, NEWTASK_FLAGS_OFFSET.load())?;
    if clone_flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let child: i32 = record::read(ctx, NEWTASK_PID_OFFSET.load())?;
    let flags = TargetFlags::COUNT | TargetFlags::FOLLOW;
    if TARGETS
        .insert(child as u32, flags, u64::from(BPF_NOEXIST))
        .is_err()
    {
        drops::count(DropSource::TargetTableFull);
    } else if crate::on_new_target(child as u32) {
        debug!(ctx, "following child {} of {}", child, parent);
    }
    Ok(())
}
