//! memtrace: a Linux kernel memory event tracer on eBPF.
//!
//! From kernel to screen: `bpf` loads and attaches the programs and reads their maps,
//! `aggregate` turns counters into rates and totals (pure), `procfs` enriches them with what
//! `/proc` knows, `output` renders them, and `commands` ties one subcommand together.

pub mod aggregate;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod enrich;
pub mod error;
pub mod output;
pub mod pidfd;
pub mod privileges;
pub mod procfs;
pub mod spawn;
pub mod syscalls;
pub mod tracefs;
