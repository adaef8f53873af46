//! In-kernel target filtering: which processes the programs count.

/// Default capacity of the target table (processes).
pub const MAX_TARGETS: u32 = 8_192;

/// How the kernel programs decide whether a task is counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// Every task on the system.
    All = 0,
    /// Only processes present in the `TARGETS` map with [`TargetFlags::COUNT`].
    Targets = 1,
    /// Only tasks whose command name equals the `FILTER_COMM` global.
    Comm = 2,
}

/// Bits stored as the value of a `TARGETS` entry.
pub struct TargetFlags;

impl TargetFlags {
    /// Count this process's events.
    pub const COUNT: u32 = 1;
    /// Make every process this one forks a target too, counted and followed in turn.
    pub const FOLLOW: u32 = 2;
}

/// `CLONE_THREAD` from `<linux/sched.h>`: a new thread, not a new process.
pub const CLONE_THREAD: u64 = 0x0001_0000;
