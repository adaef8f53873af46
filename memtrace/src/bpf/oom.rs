//! The OOM-kill programs: `oom:mark_victim` (one record per victim) and `printk:console` (the
//! kernel's own OOM report, for the victim's cgroup and the OOM's scope), their layout read from
//! tracefs, and the decoding of the records they send through the `OOM_EVENTS` ring buffer.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
    programs::TracePoint,
};
use memtrace_common::{
    DropSource, maps,
    oom::{OOM_TEXT_LEN, OomFields, OomLayout, OomRecordKind, OomText, OomVictim},
};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};

use super::{kernel_refusal, program_mut};
use crate::{
    error::Failure,
    tracefs::{Field, Format},
};

/// The fields of `oom:mark_victim` beyond `pid`, with their bit and size (6.9+).
const OPTIONAL_FIELDS: [(&str, u32, u32); 8] = [
    ("comm", OomFields::COMM, 4),
    ("total_vm", OomFields::TOTAL_VM, 8),
    ("anon_rss", OomFields::ANON_RSS, 8),
    ("file_rss", OomFields::FILE_RSS, 8),
    ("shmem_rss", OomFields::SHMEM_RSS, 8),
    ("uid", OomFields::UID, 4),
    ("pgtables", OomFields::PGTABLES, 8),
    ("oom_score_adj", OomFields::OOM_SCORE_ADJ, 2),
];

/// Reads the layout of both tracepoints from tracefs.
pub fn layout() -> Result<OomLayout, Failure> {
    let victim = Format::read("oom", "mark_victim")?;
    let console = Format::read("printk", "console")?;
    let mut layout = layout_of(victim.fields()).map_err(|detail| Failure::KernelUnsupported {
        what: "the expected layout of oom:mark_victim".into(),
        hint: detail,
    })?;
    layout.console_msg = console.offset("msg", 4)?;
    Ok(layout)
}

/// The `mark_victim` layout from its fields: `pid` must be there; every other field is used when
/// present with the size the program reads, and reported unknown otherwise.
pub fn layout_of(fields: &[Field]) -> Result<OomLayout, String> {
    let find = |name: &str| fields.iter().find(|f| f.name == name);
    let pid = find("pid").ok_or("no field `pid`")?;
    if pid.size != 4 {
        return Err(format!("field `pid` of size {} (expected 4)", pid.size));
    }
    let mut layout = OomLayout {
        pid: pid.offset,
        ..OomLayout::default()
    };
    for (name, bit, size) in OPTIONAL_FIELDS {
        let Some(field) = find(name) else { continue };
        if field.size != size {
            log::warn!(
                "oom:mark_victim field `{name}` has size {} (expected {size}): reported as unknown",
                field.size
            );
            continue;
        }
        layout.fields |= bit;
        let slot = match bit {
            OomFields::COMM => &mut layout.comm,
            OomFields::TOTAL_VM => &mut layout.total_vm,
            OomFields::ANON_RSS => &mut layout.anon_rss,
            OomFields::FILE_RSS => &mut layout.file_rss,
            OomFields::SHMEM_RSS => &mut layout.shmem_rss,
            OomFields::UID => &mut layout.uid,
            OomFields::PGTABLES => &mut layout.pgtables,
            _ => &mut layout.oom_score_adj,
        };
        *slot = field.offset;
    }
    Ok(layout)
}

/// A `__data_loc` field: the low 16 bits are the data's offset in the record, the high 16 its
/// length (with the terminating NUL, for strings). Returns (offset, length).
pub fn data_loc(value: u32) -> (usize, usize) {
    ((value & 0xffff) as usize, (value >> 16) as usize)
}

/// Loads both programs and attaches them to their tracepoints.
pub fn attach(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    for (name, category, event) in [
        ("mt_oom_console", "printk", "console"),
        ("mt_oom_victim", "oom", "mark_victim"),
    ] {
        let program: &mut TracePoint = program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|err| kernel_refusal(err, &format!("load {name}")))?;
        program
            .attach(category, event)
            .map_err(|err| kernel_refusal(err, &format!("attach {category}:{event}")))?;
    }
    Ok(())
}

/// What the kernel sent: a victim, or a fragment of its OOM report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OomRecord {
    Victim(Box<OomVictim>),
    Text(TextFragment),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFragment {
    pub seq: u64,
    pub tid: u32,
    pub phase: u32,
    pub text: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for its kind tag")]
    NoKind(usize),
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    SizeMismatch {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("text fragment claims {0} bytes, more than it can hold")]
    TextTooLong(u32),
}

/// Decodes one ring-buffer record, checking its length against its kind.
pub fn decode(bytes: &[u8]) -> Result<OomRecord, DecodeError> {
    let kind = bytes
        .first_chunk::<4>()
        .map(|b| u32::from_ne_bytes(*b))
        .ok_or(DecodeError::NoKind(bytes.len()))?;
    let expect = |expected: usize| {
        if bytes.len() == expected {
            Ok(())
        } else {
            Err(DecodeError::SizeMismatch {
                kind,
                len: bytes.len(),
                expected,
            })
        }
    };
    if kind == OomRecordKind::Victim as u32 {
        expect(size_of::<OomVictim>())?;
        // SAFETY: the length is exactly the struct's; it is `repr(C)` plain old data (any bytes
        // are a valid value), and `read_unaligned` needs no alignment.
        let victim = unsafe { bytes.as_ptr().cast::<OomVictim>().read_unaligned() };
        Ok(OomRecord::Victim(Box::new(victim)))
    } else if kind == OomRecordKind::Text as u32 {
        expect(size_of::<OomText>())?;
        // SAFETY: as above.
        let text = unsafe { bytes.as_ptr().cast::<OomText>().read_unaligned() };
        let len = text.len as usize;
        if len > OOM_TEXT_LEN {
            return Err(DecodeError::TextTooLong(text.len));
        }
        Ok(OomRecord::Text(TextFragment {
            seq: text.seq,
            tid: text.tid,
            phase: text.phase,
            text: crate::procfs::comm_from_bytes(&text.text[..len]),
        }))
    } else {
        Err(DecodeError::UnknownKind(kind))
    }
}

/// The ring buffer, awaited through tokio.
pub struct OomEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl OomEvents {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<OomEvents> {
        let map = ebpf
            .take_map(maps::OOM_EVENTS)
            .context("the BPF object has no OOM_EVENTS map")?;
        let ring = RingBuf::try_from(map).context("OOM_EVENTS map")?;
        // SAFETY: the AsyncFd owns the ring buffer, and with it its descriptor, for its whole life.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .context("poll OOM_EVENTS")?;
        Ok(OomEvents { ring })
    }

    /// Waits until records are available, then decodes every one of them. Malformed records
    /// are reported and skipped.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<OomRecord>> {
        loop {
            let mut ready = self.ring.readable_mut().await.context("poll OOM_EVENTS")?;
            let ring = ready.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Ok(record) => batch.push(record),
                    Err(err) => log::warn!("skipping a malformed OOM record: {err}"),
                }
            }
            ready.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// OOM records the kernel side could not send (the ring buffer was full).
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<u64> {
    Ok(super::faults::drops(ebpf)?
        .into_iter()
        .filter(|&(source, _)| source == DropSource::OomRingFull)
        .map(|(_, n)| n)
        .sum())
}

#[cfg(test)]
mod tests {
    use memtrace_common::COMM_LEN;

    use super::*;
    use crate::tracefs::parse_format;

    const MARK_VICTIM_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    // Before 6.9 the record held only the pid.
    const MARK_VICTIM_6_1: &str = "name: mark_victim
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
";

    #[test]
    fn full_layout_on_6_18() {
        let layout = layout_of(&parse_format(MARK_VICTIM_6_18)).unwrap();
        assert_eq!(layout.fields, 0xff);
        assert_eq!(
            (layout.pid, layout.comm, layout.total_vm, layout.anon_rss),
            (8, 12, 16, 24)
        );
        assert_eq!(
            (
                layout.file_rss,
                layout.shmem_rss,
                layout.uid,
                layout.pgtables
            ),
            (32, 40, 48, 56)
        );
        assert_eq!(layout.oom_score_adj, 64);
    }

    #[test]
    fn old_kernels_give_only_the_pid() {
        let layout = layout_of(&parse_format(MARK_VICTIM_6_1)).unwrap();
        assert_eq!(layout.fields, 0);
        assert_eq!(layout.pid, 8);
        assert!(layout_of(&[]).is_err());
    }

    #[test]
    fn data_loc_splits_offset_and_length() {
        assert_eq!(data_loc(0x0010_0048), (0x48, 0x10));
        assert_eq!(data_loc(0), (0, 0));
    }

    fn victim_bytes(victim: &OomVictim) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value without padding.
        unsafe {
            std::slice::from_raw_parts(
                (victim as *const OomVictim).cast::<u8>(),
                size_of::<OomVictim>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn victims_decode_and_lengths_are_checked() {
        let mut comm = [0; COMM_LEN];
        comm[..3].copy_from_slice(b"hog");
        let victim = OomVictim {
            kind: OomRecordKind::Victim as u32,
            pid: 42,
            anon_rss_kb: 32512,
            comm,
            ..OomVictim::default()
        };
        let bytes = victim_bytes(&victim);
        assert_eq!(decode(&bytes), Ok(OomRecord::Victim(Box::new(victim))));
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::SizeMismatch {
                kind: 1,
                len: 100,
                expected: size_of::<OomVictim>()
            })
        );
        assert_eq!(decode(&[1, 0]), Err(DecodeError::NoKind(2)));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
    }

    #[test]
    fn text_fragments_decode_within_their_length() {
        let mut text = OomText {
            kind: OomRecordKind::Text as u32,
            len: 5,
            seq: 7,
            tid: 3,
            phase: 1,
            text: [0; OOM_TEXT_LEN],
        };
        text.text[..9].copy_from_slice(b"/oomexp\0x");
        // SAFETY: reading the bytes of a repr(C) value without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&text as *const OomText).cast::<u8>(), size_of::<OomText>())
        }
        .to_vec();
        let Ok(OomRecord::Text(fragment)) = decode(&bytes) else {
            panic!("not a text record");
        };
        assert_eq!(fragment.text, "/oome");
        assert_eq!((fragment.seq, fragment.tid, fragment.phase), (7, 3, 1));
        text.len = OOM_TEXT_LEN as u32 + 1;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts((&text as *const OomText).cast::<u8>(), size_of::<OomText>())
        };
        assert_eq!(
            decode(bytes),
            Err(DecodeError::TextTooLong(OOM_TEXT_LEN as u32 + 1))
        );
    }

    /// Property tests: any bytes decode to a record or a typed error, never a panic; whole
    /// records decode to exactly what was encoded.
    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        fn text_bytes(text: &OomText) -> Vec<u8> {
            // SAFETY: reading the bytes of a repr(C) value without padding.
            unsafe {
                std::slice::from_raw_parts(
                    (text as *const OomText).cast::<u8>(),
                    size_of::<OomText>(),
                )
            }
            .to_vec()
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn arbitrary_bytes_of_a_known_kind_never_panic(
                kind in prop_oneof![Just(OomRecordKind::Victim as u32), Just(OomRecordKind::Text as u32)],
                len in 0..600usize,
                fill in any::<u8>(),
                text_len in any::<u32>(),
            ) {
                let mut bytes = vec![fill; len];
                for (at, field) in [(0, kind), (4, text_len)] {
                    if let Some(slot) = bytes.get_mut(at..at + 4) {
                        slot.copy_from_slice(&field.to_ne_bytes());
                    }
                }
                match decode(&bytes) {
                    Ok(OomRecord::Victim(_)) => prop_assert_eq!(len, size_of::<OomVictim>()),
                    Ok(OomRecord::Text(fragment)) => {
                        prop_assert_eq!(len, size_of::<OomText>());
                        prop_assert!(fragment.text.len() <= 3 * OOM_TEXT_LEN);
                    }
                    Err(DecodeError::TextTooLong(n)) => prop_assert!(n as usize > OOM_TEXT_LEN),
                    Err(DecodeError::SizeMismatch { len: got, .. }) => prop_assert_eq!(got, len),
                    Err(DecodeError::NoKind(got)) => prop_assert!(got < 4),
                    Err(err) => prop_assert!(false, "unexpected {}", err),
                }
            }

            #[test]
            fn victims_round_trip(
                (fields, seq, ktime_ns, pid, uid) in any::<(u32, u64, u64, u32, u32)>(),
                rss in any::<[u64; 5]>(),
                (oom_score_adj, trigger_pid, trigger_tid, phase) in any::<(i32, u32, u32, u32)>(),
                (comm, trigger_comm) in any::<([u8; COMM_LEN], [u8; COMM_LEN])>(),
            ) {
                let victim = OomVictim {
                    kind: OomRecordKind::Victim as u32,
                    fields,
                    seq,
                    ktime_ns,
                    pid,
                    uid,
                    total_vm_kb: rss[0],
                    anon_rss_kb: rss[1],
                    file_rss_kb: rss[2],
                    shmem_rss_kb: rss[3],
                    pgtables_kb: rss[4],
                    oom_score_adj,
                    trigger_pid,
                    trigger_tid,
                    phase,
                    comm,
                    trigger_comm,
                };
                prop_assert_eq!(
                    decode(&victim_bytes(&victim)),
                    Ok(OomRecord::Victim(Box::new(victim)))
                );
            }

            #[test]
            fn text_fragments_round_trip(
                content in vec(1u8..=255, 0..=OOM_TEXT_LEN),
                (seq, tid, phase) in any::<(u64, u32, u32)>(),
            ) {
                let mut text = OomText {
                    kind: OomRecordKind::Text as u32,
                    len: content.len() as u32,
                    seq,
                    tid,
                    phase,
                    text: [0; OOM_TEXT_LEN],
                };
                text.text[..content.len()].copy_from_slice(&content);
                prop_assert_eq!(
                    decode(&text_bytes(&text)),
                    Ok(OomRecord::Text(TextFragment {
                        seq,
                        tid,
                        phase,
                        text: String::from_utf8_lossy(&content).into_owned(),
                    }))
                );
            }
        }
    }
}
