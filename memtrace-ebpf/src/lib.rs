//! Empty on purpose: see `[lib]` in Cargo.toml. The kernel objects are the binary targets
//! `faults.rs`, `syscalls.rs` and `oom.rs`.
#![no_std]
