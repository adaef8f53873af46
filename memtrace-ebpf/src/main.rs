//! memtrace's kernel programs, built for `bpfel-unknown-none` by `memtrace/build.rs` and embedded
//! in the `memtrace` binary. One module per hook family; each program reads what it needs,
//! filters early, and updates a map. Nothing here allocates or loops unboundedly.
#![no_std]
#![no_main]

mod comms;
mod drops;
mod faults;
mod oom;
mod record;
mod syscalls;
mod targets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it exists only to satisfy `no_std`.
    loop {}
}

/// GPL-compatible, as the perf-event and tracing helpers require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
