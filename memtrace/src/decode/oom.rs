//! The `oom` object's records: a victim, or a fragment of the kernel's OOM report.

use memtrace_common::oom::{OOM_TEXT_LEN, OomRecordKind, OomText, OomVictim};

use super::{DecodeError, body, kind};
use crate::{
    model::oom::{OomRecord, TextFragment},
    sys::procfs,
};

/// Decodes one record of the `OOM_EVENTS` ring buffer.
pub fn record(bytes: &[u8]) -> Result<OomRecord, DecodeError> {
    let kind = kind(bytes)?;
    if kind == OomRecordKind::Victim as u32 {
        let victim: OomVictim = body(bytes, kind)?;
        Ok(OomRecord::Victim(Box::new(victim)))
    } else if kind == OomRecordKind::Text as u32 {
        let text: OomText = body(bytes, kind)?;
        let len = text.len as usize;
        if len > OOM_TEXT_LEN {
            return Err(DecodeError::TextTooLong(text.len));
        }
        // The kernel hands the console each line with its newline; the report parser wants
        // the text alone.
        let bytes = &text.text[..len];
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        Ok(OomRecord::Text(TextFragment {
            seq: text.seq,
            tid: text.tid,
            phase: text.phase,
            text: procfs::comm_from_bytes(bytes),
        }))
    } else {
        Err(DecodeError::UnknownKind(kind))
    }
}

#[cfg(test)]
mod tests {
    use memtrace_common::COMM_LEN;

    use super::*;
    use crate::decode::bytes_of;

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
        let bytes = bytes_of(&victim);
        assert_eq!(record(&bytes), Ok(OomRecord::Victim(Box::new(victim))));
        assert_eq!(
            record(&bytes[..100]),
            Err(DecodeError::SizeMismatch {
                kind: 1,
                len: 100,
                expected: size_of::<OomVictim>()
            })
        );
        assert_eq!(record(&[1, 0]), Err(DecodeError::NoKind(2)));
        assert_eq!(record(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
    }

    fn text(content: &[u8], len: u32) -> OomText {
        let mut text = OomText {
            kind: OomRecordKind::Text as u32,
            len,
            seq: 7,
            tid: 3,
            phase: 1,
            text: [0; OOM_TEXT_LEN],
        };
        text.text[..content.len()].copy_from_slice(content);
        text
    }

    #[test]
    fn text_fragments_decode_within_their_length_without_the_newline() {
        let Ok(OomRecord::Text(fragment)) = record(&bytes_of(&text(b"/oomexp\0x", 5))) else {
            panic!("not a text record");
        };
        assert_eq!(fragment.text, "/oome");
        assert_eq!((fragment.seq, fragment.tid, fragment.phase), (7, 3, 1));
        let Ok(OomRecord::Text(line)) = record(&bytes_of(&text(b",pid=42\n", 8))) else {
            panic!("not a text record");
        };
        assert_eq!(line.text, ",pid=42");
        let too_long = text(b"", OOM_TEXT_LEN as u32 + 1);
        assert_eq!(
            record(&bytes_of(&too_long)),
            Err(DecodeError::TextTooLong(OOM_TEXT_LEN as u32 + 1))
        );
    }

    /// Property tests: any bytes decode to a record or a typed error, never a panic; whole
    /// records decode to exactly what was encoded.
    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
                let _ = record(&bytes);
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
                match record(&bytes) {
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
                    record(&bytes_of(&victim)),
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
                let content = content.strip_suffix(b"\n").unwrap_or(&content);
                prop_assert_eq!(
                    record(&bytes_of(&text)),
                    Ok(OomRecord::Text(TextFragment {
                        seq,
                        tid,
                        phase,
                        text: String::from_utf8_lossy(content).into_owned(),
                    }))
                );
            }
        }
    }
}
