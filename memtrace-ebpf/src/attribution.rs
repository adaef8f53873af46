//! The `attribution` object: page faults counted per user stack. Programs on the perf software
//! events `minor-faults` / `major-faults` (sample period 1, where the kernel counts each fault
//! for its task) hash the few stack words userspace said identify the stack at that place
//! (`stacks`), and count the fault under that stack in the kernel. A fault at a place or on a
//! stack not yet known sends its stack whole, once, for userspace to unwind.
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
    macros::{map, perf_event},
    maps::RingBuf,
    programs::PerfEventContext,
};
use memtrace_common::stacks::EventKind;

/// Stacks sent whole; sized by userspace.
#[map(name = "STACK_SNAPSHOTS")]
static SNAPSHOTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// memtrace's own process: never attributed (unwinding a stack faults, which would be sent).
#[unsafe(no_mangle)]
static SELF_TGID: Global<u32> = Global::new(0);

#[perf_event]
pub fn mt_attr_minor(ctx: PerfEventContext) -> u32 {
    attribute(&ctx, EventKind::MinorFault);
    // 0: the sample has been handled here; the kernel need not write it to a perf buffer.
    0
}

#[perf_event]
pub fn mt_attr_major(ctx: PerfEventContext) -> u32 {
    attribute(&ctx, EventKind::MajorFault);
    0
}

#[inline(always)]
fn attribute(ctx: &PerfEventContext, kind: EventKind) {
    let (tgid, tid) = targets::current_ids();
    if tgid == SELF_TGID.load() || !targets::is_counted(tgid) {
        return;
    }
    stacks::identify(tgid, tid, kind, fault_address(ctx), &SNAPSHOTS);
}

/// The faulting address: the sample's `addr`, which the fault events carry.
#[inline(always)]
fn fault_address(ctx: &PerfEventContext) -> u64 {
    // SAFETY: a context load the verifier checks (and rewrites to the sample's address).
    unsafe { (*ctx.ctx).addr }
}

/// Every new target is counted from its first fault: nothing to prepare.
#[inline(always)]
pub fn on_new_target(_tgid: u32) -> bool {
    true
}
