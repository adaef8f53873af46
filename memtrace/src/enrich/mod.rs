//! Completing what the kernel reported with what `/proc` and cgroupfs know.

pub mod cgroups;
pub mod fds;
pub mod history;
pub mod names;
pub mod oom;
pub mod owner;
