//! memtrace's integration tests, one binary (as aya's own): each module runs the real `memtrace`
//! against the real kernel and compares what it reports with the kernel's own accounting or a
//! peer tool. The tests that need root are `#[ignore]`d, so a plain `cargo test` says how many
//! it did not run; `cargo xtask test` runs them all, as root, on the host and in the kernel
//! matrix's guests.

#[macro_use]
mod common;

mod cli;
mod deploy;
mod faults;
mod footprint;
mod leaks;
mod leaks_malloc;
mod oom;
mod pprof;
mod pressure;
mod reliability;
mod schemas;
mod serve;
mod stacks;
mod top;
mod trace;
mod trace_stacks;
