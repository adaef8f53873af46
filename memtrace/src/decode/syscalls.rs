//! The `syscalls` object's records: one completed call each.

use memtrace_common::syscalls::{RECORD_SYSCALL, SyscallRecord};

use super::{DecodeError, body, kind};
use crate::{
    sys::procfs,
    syscalls::{Call, Syscall},
};

/// The process of an exec record (0 if it is cut short).
pub fn exec(bytes: &[u8]) -> u32 {
    bytes
        .get(4..8)
        .and_then(|tgid| tgid.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Decodes one record of the `SYSCALL_EVENTS` ring buffer.
pub fn call(bytes: &[u8]) -> Result<Call, DecodeError> {
    let kind = kind(bytes)?;
    if kind != RECORD_SYSCALL {
        return Err(DecodeError::UnknownKind(kind));
    }
    let record: SyscallRecord = body(bytes, kind)?;
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
        fd_path: None,
        stack: record.stack,
    })
}

#[cfg(test)]
mod tests {
    use memtrace_common::syscalls::MAX_ARGS;

    use super::*;
    use crate::decode::bytes_of;

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
            stack: Default::default(),
        }
    }

    #[test]
    fn a_whole_record_decodes() {
        let call = call(&bytes_of(&record(Syscall::Mmap.nr()))).unwrap();
        assert_eq!(call.syscall, Syscall::Mmap);
        assert_eq!((call.pid, call.tid, call.comm.as_str()), (10, 11, "test"));
        assert_eq!(call.errno(), None);
        assert_eq!(call.prev_brk, None);
    }

    #[test]
    fn bad_records_are_typed_errors() {
        assert_eq!(call(&[1, 0]), Err(DecodeError::NoKind(2)));
        assert_eq!(call(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        let whole = bytes_of(&record(Syscall::Mmap.nr()));
        assert_eq!(
            call(&whole[..40]),
            Err(DecodeError::SizeMismatch {
                kind: RECORD_SYSCALL,
                len: 40,
                expected: size_of::<SyscallRecord>()
            })
        );
        assert_eq!(
            call(&bytes_of(&record(99_999))),
            Err(DecodeError::UnknownSyscall(99_999))
        );
    }

    #[test]
    fn errors_and_brk_growth() {
        let mut failed = record(Syscall::Mprotect.nr());
        failed.ret = -12;
        assert_eq!(call(&bytes_of(&failed)).unwrap().errno(), Some(12));

        let mut brk = record(Syscall::Brk.nr());
        brk.args[0] = 0x5000_0000 + 0x21000;
        brk.ret = 0x5000_0000 + 0x21000;
        brk.prev_brk = 0x5000_0000;
        assert_eq!(call(&bytes_of(&brk)).unwrap().brk_growth(), Some(0x21000));
        brk.args[0] = 0;
        assert_eq!(call(&bytes_of(&brk)).unwrap().brk_growth(), None);
    }

    /// Property tests: the decoder takes whatever the ring buffer hands it without panicking,
    /// and a whole record decodes to exactly what was encoded (and renders without panicking).
    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;
        use crate::output::trace::{human_line, render};

        fn render_all(call: &Call) {
            let _ = human_line(call, call.start_ns);
            let _ = render::json_args(call);
            let _ = (call.errno(), call.brk_growth());
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
                if let Ok(call) = call(&bytes) {
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
                match call(&bytes) {
                    Ok(call) => {
                        prop_assert_eq!(len, size_of::<SyscallRecord>());
                        render_all(&call);
                    }
                    Err(DecodeError::SizeMismatch { len: got, .. }) => prop_assert_eq!(got, len),
                    Err(DecodeError::NoKind(got)) => prop_assert!(got < 4),
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
                    stack: Default::default(),
                };
                let decoded = call(&bytes_of(&record)).unwrap();
                prop_assert_eq!(&decoded, &Call {
                    syscall,
                    pid: tgid,
                    tid,
                    comm: procfs::comm_from_bytes(&comm),
                    start_ns,
                    latency_ns,
                    args,
                    ret,
                    prev_brk: (prev_brk != 0).then_some(prev_brk),
                    fd_path: None,
                    stack: Default::default(),
                });
                prop_assert_eq!(decoded.errno().is_some(), (-4095..0).contains(&ret));
                render_all(&decoded);
            }
        }
    }
}
