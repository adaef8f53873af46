//! memtrace: a Linux kernel memory event tracer on eBPF.
//!
//! From kernel to screen: `bpf` loads each kernel object, attaches its programs and reads its
//! maps (`counters` counts explicit targets' faults with perf events instead); `decode` turns
//! what crosses the ring buffers into typed values; `aggregate` turns counters into rates and
//! totals (pure); `enrich` completes records with what `/proc` and cgroupfs know; `model` holds
//! what memtrace reports; `output` writes it (human, JSON, Prometheus); `session` is the
//! skeleton every command runs in, and `commands` has one module per subcommand.

pub mod aggregate;
pub mod bpf;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod counters;
pub mod decode;
pub mod enrich;
pub mod error;
pub mod leaks;
pub mod model;
pub mod output;
pub mod perf;
pub mod pidfd;
pub mod privileges;
pub mod procfs;
pub mod session;
pub mod stacks;
pub mod syscalls;
pub mod tracefs;
