//! What every kernel object needs besides its programs: a panic handler (the verifier rejects
//! any path that could reach it) and a GPL-compatible licence, which the perf-event and tracing
//! helpers require.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
