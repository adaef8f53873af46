//! What memtrace reports, independent of where it comes from (`bpf`, `decode`, `enrich`) and of
//! how it is shown (`output`). Faults and syscalls have theirs in `aggregate` and `syscalls`;
//! stacks, mappings and allocations will have theirs here.

pub mod oom;
pub mod time;
