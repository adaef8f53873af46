//! memtrace: a Linux kernel memory event tracer on eBPF.
//!
//! The modules are declared from the bottom layer up, and a module uses only itself and those
//! declared before it: `cargo xtask test` checks it (`xtask/src/layers.rs`). Each says what it
//! holds; the path of a fault, a call or a kill reads from the bottom (`model`) to the top
//! (`commands`, which only wires the others).

// Errors a user can act on, and memtrace's exit codes.
pub mod error;

// The vocabulary: what memtrace reports, independent of where it comes from and how it shows.
pub mod model;

// Kernel and OS interfaces other than BPF: BTF, cgroupfs, perf counting events, pidfd,
// capabilities, procfs, tracefs, and what the kernel's refusals mean.
pub mod sys;

// The allocation syscalls: their table, argument flags and errno names.
pub mod syscalls;

// What crosses the ring buffers, as typed values.
pub mod decode;

// Counters turned into rates and totals (pure).
pub mod aggregate;

// User stacks: unwinding, module maps and symbols.
pub mod stacks;

// What processes keep: regions, malloc blocks, the allocators that hand them out.
pub mod leaks;

// The kernel objects: loading them, attaching their programs, reading their maps.
pub mod bpf;

// Records completed with what `/proc` and cgroupfs know (names, cgroups, owners, history).
pub mod enrich;

// Writing reports: human text, JSON lines, folded stacks, flame graphs, Prometheus, pprof.
pub mod output;

// What more than one command runs: faults attributed to stacks or mappings, calls' stacks.
pub mod pipelines;

// The skeleton every command runs in: targets, the command it starts, how it ends.
pub mod session;

// The command line.
pub mod cli;

// One module per subcommand, wiring the others.
pub mod commands;
