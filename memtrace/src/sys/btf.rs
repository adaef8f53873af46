//! The kernel's own type information (`/sys/kernel/btf/vmlinux`): the few field offsets and
//! enum values memtrace's programs need to follow kernel pointers, read at start-up so that none
//! is hard-coded. A focused reader: one pass indexes the type records, then lookups by name.
//!
//! Format (the kernel's `Documentation/bpf/btf.rst`): a header, then type records (a common
//! part: name, info = kind and member count, size or type; and a kind-specific tail), then a
//! string table. Type ids are the records' order, from 1.

use std::{fs, io};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

/// BTF kinds memtrace looks into, and the size of each kind's tail.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF (no magic number)")]
    NotBtf,
    #[error("BTF truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF of unknown kind {0}")]
    UnknownKind(u32),
}

/// Parsed enough to answer by name.
pub struct Btf {
    data: Vec<u8>,
    strings: usize,
    strings_end: usize,
    /// Byte offset of each type's record, by type id (index 0, `void`, unused).
    records: Vec<usize>,
}

/// One type record's common part.
#[derive(Clone, Copy, Debug)]
struct Record {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size (structs, unions, ints, enums) or referenced type id (pointers, typedefs, ...).
    size_or_type: u32,
    /// Where its tail starts.
    tail: usize,
}

impl Btf {
    pub fn from_sys_fs() -> io::Result<Btf> {
        let data = fs::read(VMLINUX)?;
        Btf::parse(data).map_err(io::Error::other)
    }

    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let u16_at = |at: usize| -> Result<u16, BtfError> {
            let bytes = data.get(at..at + 2).ok_or(BtfError::Truncated(at))?;
            Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
        };
        if u16_at(0)? != MAGIC {
            return Err(BtfError::NotBtf);
        }
        let header = |at: usize| read_u32(&data, at);
        let hdr_len = header(4)? as usize;
        let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
        let types = hdr_len + type_off;
        let types_end = types + type_len;
        let strings = hdr_len + str_off;
        let strings_end = strings + str_len;
        if data.len() < types_end || data.len() < strings_end {
            return Err(BtfError::Truncated(data.len()));
        }
        let mut records = vec![0];
        let mut at = types;
        while at < types_end {
            records.push(at);
            let record = record_at(&data, at)?;
            at = record.tail + tail_len(record.kind, record.vlen)?;
        }
        Ok(Btf {
            data,
            strings,
            strings_end,
            records,
        })
    }

    fn record(&self, id: u32) -> Option<Record> {
        record_at(&self.data, *self.records.get(id as usize)?).ok()
    }

    fn name(&self, offset: u32) -> &str {
        let start = self.strings + offset as usize;
        let Some(bytes) = self.data.get(start..self.strings_end) else {
            return "";
        };
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    /// The first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<Record> {
        (1..self.records.len() as u32)
            .filter_map(|id| self.record(id))
            .find(|record| record.kind == kind && self.name(record.name) == name)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<Record> {
        for _ in 0..32 {
            let record = self.record(id)?;
            match record.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = record.size_or_type;
                }
                _ => return Some(record),
            }
        }
        None
    }

    /// The byte offset of `field` in `struct name`, looking into its anonymous members (as
    /// randomized or unioned layouts nest fields).
    pub fn member_offset(&self, name: &str, field: &str) -> Option<u32> {
        let record = self.find(KIND_STRUCT, name)?;
        self.offset_in(record, field, 0)
    }

    fn offset_in(&self, record: Record, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for i in 0..record.vlen {
            let at = record.tail + 12 * i;
            let name = read_u32(&self.data, at).ok()?;
            let member_type = read_u32(&self.data, at + 4).ok()?;
            let raw = read_u32(&self.data, at + 8).ok()?;
            let bits = if record.kind_flag {
                raw & 0xff_ffff
            } else {
                raw
            };
            if name == 0 {
                let inner = self.resolve(member_type)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(offset) = self.offset_in(inner, field, depth + 1)
                {
                    return Some(bits / 8 + offset);
                }
            } else if self.name(name) == field {
                return Some(bits / 8);
            }
        }
        None
    }

    /// Whether the kernel has a function of this name (one the compiler did not inline).
    pub fn has_function(&self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }

    /// The value of the enumerator `name`, in whichever enum declares it.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        for id in 1..self.records.len() as u32 {
            let record = self.record(id)?;
            let (width, kind) = match record.kind {
                KIND_ENUM => (8, KIND_ENUM),
                KIND_ENUM64 => (12, KIND_ENUM64),
                _ => continue,
            };
            for i in 0..record.vlen {
                let at = record.tail + width * i;
                if self.name(read_u32(&self.data, at).ok()?) != name {
                    continue;
                }
                let low = read_u32(&self.data, at + 4).ok()?;
                return Some(if kind == KIND_ENUM64 {
                    let high = read_u32(&self.data, at + 8).ok()?;
                    ((u64::from(high) << 32) | u64::from(low)) as i64
                } else {
                    i64::from(low as i32)
                });
            }
        }
        None
    }
}

fn read_u32(data: &[u8], at: usize) -> Result<u32, BtfError> {
    let bytes = data.get(at..at + 4).ok_or(BtfError::Truncated(at))?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn record_at(data: &[u8], at: usize) -> Result<Record, BtfError> {
    let info = read_u32(data, at + 4)?;
    Ok(Record {
        name: read_u32(data, at)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        size_or_type: read_u32(data, at + 8)?,
        tail: at + 12,
    })
}

/// The size of a kind's tail after the common part.
fn tail_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | 12 | 16
        | KIND_TYPE_TAG => 0,
        other => return Err(BtfError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob built as the kernel lays it out: `int`, `struct inner { int a; int b; }`,
    /// `struct outer { int x; union { struct inner in; }; }` (the anonymous union at byte 8),
    /// `enum ids { first_id = 0, memory_cgrp_id = 4 }`.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |text: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(text.as_bytes());
            strings.push(0);
            at
        };
        let (int, inner, a, b, outer, x, input, ids, first, memory) = (
            name("int"),
            name("inner"),
            name("a"),
            name("b"),
            name("outer"),
            name("x"),
            name("in"),
            name("ids"),
            name("first_id"),
            name("memory_cgrp_id"),
        );
        let mut types = Vec::new();
        let mut word = |w: u32| types.extend_from_slice(&w.to_le_bytes());
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        // 1: int, 4 bytes
        word(int);
        word(info(KIND_INT, 0));
        word(4);
        word(32);
        // 2: struct inner { int a @0; int b @32 bits }
        word(inner);
        word(info(KIND_STRUCT, 2));
        word(8);
        for (member, bits) in [(a, 0), (b, 32)] {
            word(member);
            word(1);
            word(bits);
        }
        // 3: union { struct inner in; }
        word(0);
        word(info(KIND_UNION, 1));
        word(8);
        word(input);
        word(2);
        word(0);
        // 4: struct outer { int x @0; union (anonymous) @64 bits }
        word(outer);
        word(info(KIND_STRUCT, 2));
        word(16);
        word(x);
        word(1);
        word(0);
        word(0);
        word(3);
        word(64);
        // 5: enum ids
        word(ids);
        word(info(KIND_ENUM, 2));
        word(4);
        word(first);
        word(0);
        word(memory);
        word(4);
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn fields_are_found_through_anonymous_members() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.member_offset("inner", "b"), Some(4));
        assert_eq!(btf.member_offset("outer", "x"), Some(0));
        assert_eq!(btf.member_offset("outer", "in"), Some(8));
        assert_eq!(btf.member_offset("outer", "nope"), None);
        assert_eq!(btf.member_offset("absent", "x"), None);
        assert_eq!(btf.enum_value("memory_cgrp_id"), Some(4));
        assert_eq!(btf.enum_value("nope"), None);
    }

    #[test]
    fn bad_blobs_are_errors() {
        assert_eq!(Btf::parse(vec![0, 0]).err(), Some(BtfError::NotBtf));
        let mut short = blob();
        short.truncate(40);
        assert!(matches!(Btf::parse(short), Err(BtfError::Truncated(_))));
        assert!(Btf::parse(Vec::new()).is_err());
    }

    #[test]
    fn the_running_kernel_has_what_memtrace_follows() {
        // BTF is readable by anyone (memtrace's kernels have it; without, `serve` falls back).
        let btf = Btf::from_sys_fs().expect("the kernel's BTF");
        for (name, field) in [
            ("task_struct", "cgroups"),
            ("css_set", "subsys"),
            ("cgroup_subsys_state", "cgroup"),
            ("cgroup", "kn"),
            ("kernfs_node", "id"),
        ] {
            assert!(btf.member_offset(name, field).is_some(), "{name}.{field}");
        }
        assert!(btf.enum_value("memory_cgrp_id").is_some());
    }
}
