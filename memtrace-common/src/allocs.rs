//! The `allocs` object (`leaks --malloc`): uprobes on a process's allocator functions keep every
//! live allocation in a kernel table, with its size, birth and stack, so nothing per call
//! crosses to userspace but the first copy of each new stack.

use crate::stacks::StackRef;

/// Default capacity of [`crate::maps::ALLOCATIONS`]: live allocations tracked at once. Its
/// entries are allocated as it fills (~100 bytes each); its buckets (16 bytes per entry of
/// capacity) are not.
pub const MAX_ALLOCATIONS: u32 = 1 << 20;

/// Threads with an allocation call in progress (an LRU: a thread that died in one is
/// forgotten).
pub const MAX_ALLOC_THREADS: u32 = 16_384;

/// The `kind` of a [`ProcessRecord`] on the stacks' ring (after `RECORD_STACK`'s 2 and the
/// syscall records' 1 and 3).
pub const RECORD_PROCESS: u32 = 4;

/// A followed process's birth, on the stacks' ring (`leaks --malloc -- COMMAND`): userspace
/// puts the uprobes on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessRecord {
    /// [`RECORD_PROCESS`].
    pub kind: u32,
    pub pid: u32,
}

/// Bytes of the ring that carries new stacks to userspace.
pub const ALLOC_RING_BYTES: u32 = 16 << 20;

/// A live allocation, by process and address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// What the kernel keeps of a live allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Bytes asked for.
    pub size: u64,
    /// CLOCK_MONOTONIC at the call.
    pub born_ns: u64,
    pub stack: StackRef,
}

/// How an allocator function takes its arguments and gives its block: one entry program per
/// shape, and one return program for all.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `malloc(size)`, `valloc(size)`.
    Malloc = 0,
    /// `calloc(n, size)`.
    Calloc = 1,
    /// `realloc(ptr, size)`.
    Realloc = 2,
    /// `reallocarray(ptr, n, size)`.
    ReallocArray = 3,
    /// `memalign(align, size)`, `aligned_alloc(align, size)`.
    Memalign = 4,
    /// `posix_memalign(&ptr, align, size)`: the block is written through the first argument.
    PosixMemalign = 5,
    /// `pvalloc(size)`: the size rounded up to whole pages.
    Pvalloc = 6,
}

/// A thread's allocation call between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCall {
    /// Bytes asked for.
    pub size: u64,
    /// `realloc`'s old block, or 0.
    pub old: u64,
    /// The old block's record, taken out of the table at the call's entry (before the
    /// allocator can hand its address to another thread) and put back if the call fails.
    pub old_block: Allocation,
    /// `posix_memalign`'s out-pointer, or 0.
    pub out: u64,
    pub start_ns: u64,
    /// The stack pointer at the entry: a return comes back to it (plus the return address),
    /// and a call entered at or above it cannot be nested in this one.
    pub sp: u64,
    pub stack: StackRef,
    /// Non-zero while a call is in progress.
    pub active: u32,
    /// Allocator calls nested in this one (glibc's `realloc(NULL, n)` calls `malloc`): only
    /// the outermost is recorded, when it returns.
    pub depth: u32,
    /// Non-zero when the new block is not recorded (smaller than the minimum, or sampled out).
    pub skip: u32,
    /// Non-zero when `old_block` holds the old block's record.
    pub had_old: u32,
}

/// Per-CPU counts of what the allocator programs saw ([`crate::maps::ALLOC_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Allocation calls that returned a block.
    pub allocations: u64,
    /// Of those, recorded in the table.
    pub recorded: u64,
    /// Calls that returned no block (out of memory).
    pub failed: u64,
    /// `free` of a block (not NULL).
    pub frees: u64,
    /// Frees of blocks not in the table: allocated before memtrace attached, sampled out,
    /// smaller than the minimum, or lost to a full table.
    pub unmatched_frees: u64,
    /// Returns met with no call in progress (a thread's call began before attaching).
    pub orphan_returns: u64,
    /// Calls whose return never came (a thread left the allocator by longjmp, or died in it),
    /// found when the thread's next call began.
    pub lost_returns: u64,
}

impl AllocStats {
    pub fn add(&mut self, other: &AllocStats) {
        self.allocations += other.allocations;
        self.recorded += other.recorded;
        self.failed += other.failed;
        self.frees += other.frees;
        self.unmatched_frees += other.unmatched_frees;
        self.orphan_returns += other.orphan_returns;
        self.lost_returns += other.lost_returns;
    }
}

const _: () = assert!(size_of::<AllocKey>() == 16);
const _: () = assert!(size_of::<ProcessRecord>() == 8);
const _: () = assert!(size_of::<Allocation>() == 32);
const _: () = assert!(size_of::<AllocCall>() == 104);
const _: () = assert!(size_of::<AllocStats>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `repr(C)`, made only of integers, with no padding.
    unsafe impl aya::Pod for super::AllocKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Allocation {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocStats {}
}
