//! The kernel's and the OS's interfaces other than BPF objects, each behind one module: what
//! the layers above read of the machine, and how.

pub mod btf;
pub mod cgroup;
pub mod clock;
pub mod counters;
pub mod perf;
pub mod pidfd;
pub mod privileges;
pub mod procfs;
pub mod refusal;
pub mod tracefs;
