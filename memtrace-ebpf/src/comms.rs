//! Command names of counted processes, kept in the kernel so that a process which exits between
//! two reads is still reported by its name. Set at the first counted event, refreshed at `exec`
//! (the name before `exec` is usually the parent's).

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_get_current_comm,
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use memtrace_common::{COMM_LEN, faults::MAX_FAULT_KEYS};

use crate::targets;

#[map(name = "COMMS")]
static COMMS: HashMap<u32, [u8; COMM_LEN]> = HashMap::with_max_entries(MAX_FAULT_KEYS, 0);

/// Records the current task's name for `tgid`, unless one is already known.
#[inline(always)]
pub fn remember(tgid: u32) {
    if let Ok(comm) = bpf_get_current_comm() {
        // Failure means already known, or the table is full: the name is then read from /proc.
        let _ = COMMS.insert(tgid, comm, u64::from(BPF_NOEXIST));
    }
}

/// `sched_process_exec` fires after the new name is set. A raw tracepoint needs no tracefs.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn mt_exec(_ctx: RawTracePointContext) -> i32 {
    let (tgid, _) = targets::current_ids();
    if let Ok(comm) = bpf_get_current_comm() {
        // BPF_EXIST: only processes already being counted are renamed.
        let _ = COMMS.insert(tgid, comm, u64::from(BPF_EXIST));
    }
    0
}
