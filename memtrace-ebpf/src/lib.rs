//! Empty on purpose: see `[lib]` in Cargo.toml. The kernel programs are in `main.rs`.
#![no_std]
