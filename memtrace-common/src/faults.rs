//! Page-fault counting: the key and value of the in-kernel per-CPU counting table.

/// Default capacity of the fault table (processes, or threads with `--threads`).
pub const MAX_FAULT_KEYS: u32 = 16_384;

/// Up to this many explicit `--pid` targets (counted per process, not followed) are counted in
/// fixed slots rather than the hash table: their pids sit in one array entry, and a fault costs
/// a few compares and an array slot instead of a hash lookup (~50 ns less per fault here).
pub const MAX_FIXED_TARGETS: usize = 8;

/// The `FAULT_FIXED_PIDS` entry: slot `i` counts the process `pids[i]`; 0 is a free slot.
pub type FixedPids = [u32; MAX_FIXED_TARGETS];

/// Which process (and, when counting per thread, which thread) a count belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id, or 0 when counting per process.
    pub tid: u32,
}

/// Faults counted on one CPU for one key; userspace sums the per-CPU copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
}

const _: () = assert!(size_of::<FaultKey>() == 8);
const _: () = assert!(size_of::<FaultCounts>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `repr(C)`, made only of integers, with no padding bytes.
    unsafe impl aya::Pod for super::FaultKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultCounts {}
}
