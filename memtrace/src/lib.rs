//! memtrace: a Linux kernel memory event tracer on eBPF.
//!
//! From kernel to screen: `bpf` loads each kernel object, attaches its programs and reads its
//! maps; `sys` holds the other kernel and OS interfaces (BTF, cgroupfs, perf counting events,
//! pidfd, capabilities, procfs, tracefs); `decode` turns what crosses the ring buffers into
//! typed values; `aggregate` turns counters into rates and totals (pure); `enrich` completes
//! records with what `/proc` and cgroupfs know; `model` holds what memtrace reports; `output`
//! writes it (human, JSON, Prometheus text, pprof); `session` is the skeleton every command
//! runs in, and `commands` has one module per subcommand.

pub mod aggregate;
pub mod bpf;
pub mod cli;
pub mod commands;
pub mod decode;
pub mod enrich;
pub mod error;
pub mod leaks;
pub mod model;
pub mod output;
pub mod session;
pub mod stacks;
pub mod sys;
pub mod syscalls;
