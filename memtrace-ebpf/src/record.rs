//! Reading fields of a classic tracepoint's record.
//!
//! The verifier allows direct context loads only at offsets fixed in the instruction: [`load`]
//! is for fields whose offset is known when the program is built. Offsets known only at load
//! time (from the tracepoint's tracefs `format`) need [`read`], a `bpf_probe_read_kernel` copy:
//! a helper call each (tens of ns here), so read neighbouring fields as one block.

// Shared by the objects, each of which uses a part of it (`expect` would not hold for all).
#![allow(dead_code, reason = "each kernel object uses a part of these readers")]

use core::ptr;

use aya_ebpf::{EbpfContext as _, helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// The scalar `T` at byte `OFFSET` of the record, loaded straight from it. The kernel refuses to
/// attach the program to a tracepoint whose records end before `OFFSET + size_of::<T>()`.
#[inline(always)]
pub fn load<T: Copy, const OFFSET: usize>(ctx: &TracePointContext) -> T {
    // SAFETY: the context is the record, 8-byte aligned, and the verifier bounds the load; the
    // callers' offsets are multiples of their fields' alignment. Volatile, so that neighbouring
    // loads are not merged into a copy the verifier would refuse.
    unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(OFFSET).cast::<T>()) }
}

/// The `T` at byte `offset` of the record (a field, or a block of consecutive fields).
#[inline(always)]
pub fn read<T: Copy>(ctx: &TracePointContext, offset: u32) -> Result<T, i64> {
    // SAFETY: the source is inside the tracepoint record (offsets from its own format) and the
    // helper copies at most `size_of::<T>()` bytes, failing cleanly on a bad address.
    let field = unsafe {
        bpf_probe_read_kernel(ctx.as_ptr().cast::<u8>().add(offset as usize).cast::<T>())
    };
    field.map_err(i64::from)
}
