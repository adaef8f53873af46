//! Page-fault counting: the key and value of the in-kernel counting table.

/// Default capacity of the fault table (processes, or threads with `--threads`).
pub const MAX_FAULT_KEYS: u32 = 16_384;

/// Which process (and, when counting per thread, which thread) a count belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id, or 0 when counting per process.
    pub tid: u32,
}

/// Faults counted for one key, and its command name. One copy shared by every CPU, incremented
/// atomically: a per-CPU table would grow with the CPU count (50 MB at 192 CPUs), and a
/// process faulting on several CPUs at once is the rare case.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
    /// The command name: set when the key is created, rewritten at `exec`, so that a process
    /// which exits between two readings is still named.
    pub comm: [u8; crate::COMM_LEN],
}

const _: () = assert!(size_of::<FaultKey>() == 8);
const _: () = assert!(size_of::<FaultCounts>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `repr(C)`, made only of integers and byte arrays, with no padding bytes.
    unsafe impl aya::Pod for super::FaultKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultCounts {}
}
