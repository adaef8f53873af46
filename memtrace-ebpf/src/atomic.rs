//! Atomic adds to counters shared by every CPU. The BPF target has no compare-and-swap, so
//! Rust's atomic types offer no `fetch_add` there; the add itself is one instruction
//! (`BPF_ATOMIC | BPF_ADD`, the old `BPF_XADD`), which every kernel memtrace runs on has.

use core::arch::asm;

/// Adds `n` to `*counter` atomically.
///
/// # Safety
/// `counter` points to a live, 8-byte aligned `u64` in a map value, changed only atomically.
#[inline(always)]
pub unsafe fn add(counter: *mut u64, n: u64) {
    // SAFETY: the caller guarantees the pointer; the instruction only adds to that word.
    unsafe {
        asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) counter,
            in(reg) n,
            options(nostack, preserves_flags),
        );
    }
}
