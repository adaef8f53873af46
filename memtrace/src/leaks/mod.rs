//! `memtrace leaks`, mapping level: what each process has mapped and not unmapped since
//! tracing began, grouped by the stack that mapped it.

pub mod regions;
pub mod resident;
