//! How a command memtrace started ended.

/// How the command ended, with the kernel's fault counters for it and its reaped descendants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandExit {
    /// The exit status, or 128 + the signal number if a signal killed it (as shells report).
    pub code: u8,
    pub minor_faults: u64,
    pub major_faults: u64,
}

/// How the spawned command ended: its pid and exit.
pub type CommandOutcome = (u32, CommandExit);
