//! Decoding what the kernel programs send through their ring buffers, one style for every
//! record: each starts with a `u32` kind tag, then its fixed-size `repr(C)` body; whatever the
//! bytes, the result is a typed value or a [`DecodeError`], never a panic.

pub mod oom;
pub mod oom_report;
pub mod syscalls;

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for its kind tag")]
    NoKind(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    SizeMismatch {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("record for syscall number {0}, which memtrace does not trace")]
    UnknownSyscall(u32),
    #[error("text fragment claims {0} bytes, more than it can hold")]
    TextTooLong(u32),
}

/// The kind tag at the start of a record.
pub fn kind(bytes: &[u8]) -> Result<u32, DecodeError> {
    bytes
        .first_chunk::<4>()
        .map(|tag| u32::from_ne_bytes(*tag))
        .ok_or(DecodeError::NoKind(bytes.len()))
}

/// The record of kind `kind` as its type `T`, which it must fill exactly.
fn body<T: aya::Pod>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::SizeMismatch {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: exactly size_of::<T>() readable bytes (checked above); `T: Pod` is plain data,
    // valid for any bit pattern; read_unaligned needs no alignment.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The bytes of a `repr(C)` value without padding, as the kernel would send it (tests).
#[cfg(test)]
pub(crate) fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: `T: Pod` has no padding bytes; the slice lives no longer than `value`.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
