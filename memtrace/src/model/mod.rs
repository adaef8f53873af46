//! What memtrace reports, independent of where it comes from (`bpf`, `decode`, `enrich`) and of
//! how it is shown (`output`): the vocabulary at the bottom, which imports nothing above it.
//! Syscalls have theirs in `syscalls`.

pub mod cgroup;
pub mod command;
pub mod faults;
pub mod leaks;
pub mod oom;
pub mod owner;
pub mod stacks;
pub mod time;
