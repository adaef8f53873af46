//! `memtrace leaks`: what each process has mapped and not unmapped (the mapping level), or
//! allocated and not freed (`--malloc`), since tracing began, grouped by the stack that did it.

pub mod allocator;
pub mod blocks;
pub mod regions;
pub mod resident;
