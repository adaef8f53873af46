//! Types and names shared by memtrace's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, carries no `bool`, and is checked for
//! size at compile time, so both sides agree byte for byte. Map and global names live here once so
//! that the loader and the programs cannot drift apart.
#![no_std]

pub mod faults;
pub mod oom;
pub mod targets;

/// Size in bytes of a kernel task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Names of the global variables userspace sets before load (`EbpfLoader::override_global`).
pub mod globals {
    /// `u32`: a [`crate::targets::FilterMode`] value.
    pub const FILTER_MODE: &str = "FILTER_MODE";
    /// `[u8; COMM_LEN]`: the command name matched by [`crate::targets::FilterMode::Comm`].
    pub const FILTER_COMM: &str = "FILTER_COMM";
    /// `u32`: non-zero to count faults per thread rather than per process.
    pub const PER_THREAD: &str = "PER_THREAD";
    /// `u32`: byte offset of `pid` in the `task:task_newtask` record (from its tracefs format).
    pub const NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    /// `u32`: byte offset of `clone_flags` in the `task:task_newtask` record.
    pub const NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
    /// [`crate::oom::OomLayout`]: field offsets of `oom:mark_victim` and `printk:console`.
    pub const OOM_LAYOUT: &str = "OOM_LAYOUT";
}

/// Names of the maps userspace reads and writes.
pub mod maps {
    /// Per-CPU hash: [`crate::faults::FaultKey`] → [`crate::faults::FaultCounts`].
    pub const FAULT_COUNTS: &str = "FAULT_COUNTS";
    /// Hash: process id → [`crate::targets::TargetFlags`] bits.
    pub const TARGETS: &str = "TARGETS";
    /// Hash: process id → command name (`[u8; COMM_LEN]`), set at a process's first counted
    /// event and refreshed at `exec`: the name of a process that exited before userspace read
    /// `/proc/PID/comm`.
    pub const COMMS: &str = "COMMS";
    /// Per-CPU array indexed by [`crate::DropSource`]: events the kernel side could not record.
    pub const DROPS: &str = "DROPS";
    /// Ring buffer of [`crate::oom::OomVictim`] and [`crate::oom::OomText`] records.
    pub const OOM_EVENTS: &str = "OOM_EVENTS";
}

/// Why the kernel side failed to record something. Each has its own slot in [`maps::DROPS`], so
/// no loss is ever silent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropSource {
    /// A fault was seen but its process had no room in `FAULT_COUNTS`.
    FaultTableFull = 0,
    /// A child of a followed process was created but had no room in `TARGETS`.
    TargetTableFull = 1,
    /// An OOM victim or OOM report fragment found the `OOM_EVENTS` ring buffer full.
    OomRingFull = 2,
}

impl DropSource {
    pub const COUNT: u32 = 3;
    pub const ALL: [DropSource; Self::COUNT as usize] = [
        DropSource::FaultTableFull,
        DropSource::TargetTableFull,
        DropSource::OomRingFull,
    ];

    /// A stable, machine-friendly name (used in JSON output).
    pub const fn name(self) -> &'static str {
        match self {
            DropSource::FaultTableFull => "fault_table_full",
            DropSource::TargetTableFull => "target_table_full",
            DropSource::OomRingFull => "oom_ring_full",
        }
    }
}
