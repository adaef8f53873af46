//! Decoding the kernel's per-call records, length-checked: a record that is too short, of the
//! wrong size, of an unknown kind or for an unknown syscall is a typed error, never a panic.

use memtrace_common::syscalls::{MAX_ARGS, RECORD_SYSCALL, SyscallRecord, is_error};
use thiserror::Error;

use super::Syscall;
use crate::procfs;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("record of {len} bytes has no kind tag")]
    TooShort { len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("syscall record of {len} bytes (expected {expected})")]
    SizeMismatch { len: usize, expected: usize },
    #[error("record for syscall number {0}, which memtrace does not trace")]
    UnknownSyscall(u32),
}

/// One completed call, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub syscall: Syscall,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// CLOCK_MONOTONIC nanoseconds at entry.
    pub start_ns: u64,
    pub latency_ns: u64,
    pub args: [u64; MAX_ARGS],
    /// The raw return value (`-errno` on failure).
    pub ret: i64,
    /// For brk: the break before the call, when known.
    pub prev_brk: Option<u64>,
}

impl Call {
    /// The errno, if the call failed.
    pub fn errno(&self) -> Option<i32> {
        is_error(self.ret).then(|| (-self.ret) as i32)
    }

    /// For brk: how far the break moved, when the previous one is known and the call asked to
    /// move it (`brk(NULL)` only asks where it is).
    pub fn brk_growth(&self) -> Option<i64> {
        if self.syscall != Syscall::Brk || self.args[0] == 0 {
            return None;
        }
        let prev = self.prev_brk?;
        Some((self.ret as u64).wrapping_sub(prev) as i64)
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Call, DecodeError> {
    let Some(tag) = bytes.get(..4) else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    let kind = u32::from_ne_bytes([tag[0], tag[1], tag[2], tag[3]]);
    if kind != RECORD_SYSCALL {
        return Err(DecodeError::UnknownKind(kind));
    }
    let expected = size_of::<SyscallRecord>();
    if bytes.len() != expected {
        return Err(DecodeError::SizeMismatch {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: exactly size_of::<SyscallRecord>() readable bytes (checked above); the type is
    // plain integers, valid for any bit pattern; read_unaligned needs no alignment.
    let record: SyscallRecord = unsafe { bytes.as_ptr().cast::<SyscallRecord>().read_unaligned() };
    let syscall = Syscall::from_nr(record.nr).ok_or(DecodeError::UnknownSyscall(record.nr))?;
    Ok(Call {
        syscall,
        pid: record.tgid,
        tid: record.tid,
        comm: procfs::comm_from_bytes(&record.comm),
        start_ns: record.start_ns,
        latency_ns: record.latency_ns,
        args: record.args,
        ret: record.ret,
        prev_brk: (record.prev_brk != 0).then_some(record.prev_brk),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(nr: u32) -> SyscallRecord {
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"test");
        SyscallRecord {
            kind: RECORD_SYSCALL,
            nr,
            tgid: 10,
            tid: 11,
            comm,
            start_ns: 5,
            latency_ns: 4100,
            args: [0, 4096, 3, 0x22, u64::MAX, 0],
            ret: 0x7f00_0000_0000,
            prev_brk: 0,
        }
    }

    fn bytes(record: &SyscallRecord) -> Vec<u8> {
        // SAFETY: a plain `repr(C)` value without padding, viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (record as *const SyscallRecord).cast::<u8>(),
                size_of::<SyscallRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn a_whole_record_decodes() {
        let call = decode(&bytes(&record(Syscall::Mmap.nr()))).unwrap();
        assert_eq!(call.syscall, Syscall::Mmap);
        assert_eq!((call.pid, call.tid, call.comm.as_str()), (10, 11, "test"));
        assert_eq!(call.errno(), None);
        assert_eq!(call.prev_brk, None);
    }

    #[test]
    fn bad_records_are_typed_errors() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::TooShort { len: 2 }));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        let whole = bytes(&record(Syscall::Mmap.nr()));
        assert!(matches!(
            decode(&whole[..50]),
            Err(DecodeError::SizeMismatch { len: 50, .. })
        ));
        assert_eq!(
            decode(&bytes(&record(0))),
            Err(DecodeError::UnknownSyscall(0))
        );
    }

    #[test]
    fn errors_and_brk_growth() {
        let mut failed = record(Syscall::Mprotect.nr());
        failed.ret = -12;
        assert_eq!(decode(&bytes(&failed)).unwrap().errno(), Some(12));

        let mut brk = record(Syscall::Brk.nr());
        brk.args[0] = 0x5000_0000 + 0x21000;
        brk.ret = 0x5000_0000 + 0x21000;
        brk.prev_brk = 0x5000_0000;
        assert_eq!(decode(&bytes(&brk)).unwrap().brk_growth(), Some(0x21000));
        brk.args[0] = 0;
        assert_eq!(decode(&bytes(&brk)).unwrap().brk_growth(), None);
    }

    /// Property tests: the decoder takes whatever the ring buffer hands it without panicking,
    /// and a whole record decodes to exactly what was encoded (and renders without panicking).
    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;
        use crate::{output::trace::human_line, syscalls::render};

        fn render_all(call: &Call) {
            let _ = human_line(call, call.start_ns);
            let _ = render::json_args(call);
            let _ = (call.errno(), call.brk_growth());
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
                if let Ok(call) = decode(&bytes) {
                    render_all(&call);
                }
            }

            #[test]
            fn arbitrary_bytes_of_the_right_kind_never_panic(
                len in 0..2 * size_of::<SyscallRecord>(),
                fill in any::<u8>(),
                nr in prop_oneof![any::<u32>(), (0..Syscall::ALL.len()).prop_map(|i| Syscall::ALL[i].nr())],
            ) {
                let mut bytes = vec![fill; len];
                for (at, field) in [(0, RECORD_SYSCALL), (4, nr)] {
                    if let Some(slot) = bytes.get_mut(at..at + 4) {
                        slot.copy_from_slice(&field.to_ne_bytes());
                    }
                }
                match decode(&bytes) {
                    Ok(call) => {
                        prop_assert_eq!(len, size_of::<SyscallRecord>());
                        render_all(&call);
                    }
                    Err(DecodeError::SizeMismatch { len: got, .. }) => prop_assert_eq!(got, len),
                    Err(DecodeError::TooShort { len: got }) => prop_assert!(got < 4),
                    Err(DecodeError::UnknownSyscall(got)) => prop_assert_eq!(got, nr),
                    Err(err) => prop_assert!(false, "unexpected {}", err),
                }
            }

            #[test]
            fn whole_records_round_trip(
                which in 0..Syscall::ALL.len(),
                tgid in any::<u32>(),
                tid in any::<u32>(),
                comm in any::<[u8; 16]>(),
                start_ns in any::<u64>(),
                latency_ns in any::<u64>(),
                args in any::<[u64; MAX_ARGS]>(),
                ret in prop_oneof![any::<i64>(), -4095i64..0],
                prev_brk in any::<u64>(),
            ) {
                let syscall = Syscall::ALL[which];
                let record = SyscallRecord {
                    kind: RECORD_SYSCALL,
                    nr: syscall.nr(),
                    tgid,
                    tid,
                    comm,
                    start_ns,
                    latency_ns,
                    args,
                    ret,
                    prev_brk,
                };
                let call = decode(&bytes(&record)).unwrap();
                prop_assert_eq!(&call, &Call {
                    syscall,
                    pid: tgid,
                    tid,
                    comm: procfs::comm_from_bytes(&comm),
                    start_ns,
                    latency_ns,
                    args,
                    ret,
                    prev_brk: (prev_brk != 0).then_some(prev_brk),
                });
                prop_assert_eq!(call.errno().is_some(), (-4095..0).contains(&ret));
                render_all(&call);
            }
        }
    }
}
