//! Reading fields of a classic tracepoint's record at offsets known only at load time.
//!
//! The verifier allows direct context loads only at offsets fixed in the instruction, and ours
//! come from the tracepoint's tracefs `format`, so fields are copied with
//! `bpf_probe_read_kernel`. Each copy is a helper call (tens of ns here): read neighbouring
//! fields as one block rather than one by one.

use aya_ebpf::{EbpfContext as _, helpers::bpf_probe_read_kernel, programs::TracePointContext};

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
