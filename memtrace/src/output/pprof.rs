//! Stacks as a pprof profile (`--pprof FILE`): perftools' `profile.proto`, gzipped, what `go tool
//! pprof`, Pyroscope, Parca and speedscope read. The protobuf is written here, by hand: the
//! format is a handful of messages of integers and string-table indexes.
//!
//! Frames keep what memtrace prints: a location's address is the frame's offset in its file (a
//! kernel frame's, its address), its mapping the file with its build id, its line the function
//! as memtrace named it with `file:line`. Each mapping says it is symbolized, so that pprof does
//! not name the frames again from the files (which it would do with addresses of its own idea).

use std::{
    collections::HashMap,
    io::Write as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use flate2::{Compression, write::GzEncoder};

use crate::model::stacks::Named;

/// What a sample's value counts, as pprof names it: `faults/count`, `bytes/bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleType {
    pub kind: &'static str,
    pub unit: &'static str,
}

impl SampleType {
    pub const fn new(kind: &'static str, unit: &'static str) -> SampleType {
        SampleType { kind, unit }
    }
}

/// `faults --stacks`: every fault, then the minor and the major ones apart.
pub const FAULTS: [SampleType; 3] = [
    SampleType::new("faults", "count"),
    SampleType::new("minor_faults", "count"),
    SampleType::new("major_faults", "count"),
];
/// `trace -c --stack`: calls, and the bytes they were about.
pub const CALLS: [SampleType; 2] = [
    SampleType::new("calls", "count"),
    SampleType::new("bytes", "bytes"),
];
/// `leaks`: bytes outstanding, and the regions they are in.
pub const LEAKED_REGIONS: [SampleType; 2] = [
    SampleType::new("bytes", "bytes"),
    SampleType::new("regions", "count"),
];
/// `leaks --malloc`: bytes outstanding, and the blocks they are in.
pub const LEAKED_BLOCKS: [SampleType; 2] = [
    SampleType::new("bytes", "bytes"),
    SampleType::new("blocks", "count"),
];

/// A profile being put together: strings, functions, locations and mappings each stored once.
pub struct Profile {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    sample_types: Vec<(i64, i64)>,
    samples: Vec<Sample>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<(String, Option<String>), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<LocationKey, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    period: i64,
    time_nanos: i64,
    duration_nanos: i64,
}

struct Sample {
    /// Innermost first, as pprof wants them.
    locations: Vec<u64>,
    values: Vec<i64>,
    /// String labels: key and value indexes.
    labels: Vec<(i64, i64)>,
}

/// A file frames are in (or the kernel), over the offsets its frames have.
struct Mapping {
    start: u64,
    limit: u64,
    filename: i64,
    build_id: i64,
    has_filenames: bool,
    has_line_numbers: bool,
}

/// A frame's place: its file and offset in it, and the name memtrace gave it (two processes
/// may see different files at one path).
#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    module: Option<String>,
    build_id: Option<String>,
    offset: u64,
    function: u64,
    line: i64,
}

struct Location {
    /// 0: outside any file.
    mapping: u64,
    address: u64,
    function: u64,
    line: i64,
}

struct Function {
    name: i64,
    filename: i64,
}

impl Profile {
    /// A profile whose samples have one value per `types`, the first of them the one pprof
    /// shows by default and the period's type.
    pub fn new(types: &[SampleType]) -> Profile {
        let mut profile = Profile {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            sample_types: Vec::new(),
            samples: Vec::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            period: 1,
            time_nanos: 0,
            duration_nanos: 0,
        };
        profile.sample_types = types
            .iter()
            .map(|t| (profile.string(t.kind), profile.string(t.unit)))
            .collect();
        profile
    }

    /// One event in `period` was recorded (`leaks --malloc --sample N`); 1 by default.
    pub fn period(mut self, period: u32) -> Profile {
        self.period = i64::from(period);
        self
    }

    /// The profile covers the `duration` that ends now.
    pub fn ending_now(mut self, duration: Duration) -> Profile {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.time_nanos = nanos(now.saturating_sub(duration));
        self.duration_nanos = nanos(duration);
        self
    }

    /// Adds a stack (innermost frame first) with its values (one per sample type) and string
    /// labels (`pid`, `comm`, ...).
    pub fn add(&mut self, frames: &[Named], values: &[u64], labels: &[(&str, &str)]) {
        debug_assert_eq!(values.len(), self.sample_types.len());
        let locations = frames.iter().map(|frame| self.location(frame)).collect();
        let values = values
            .iter()
            .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
            .collect();
        let labels = labels
            .iter()
            .map(|&(key, value)| (self.string(key), self.string(value)))
            .collect();
        self.samples.push(Sample {
            locations,
            values,
            labels,
        });
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_owned());
        self.string_ids.insert(text.to_owned(), id);
        id
    }

    fn location(&mut self, frame: &Named) -> u64 {
        // Unnamed frames are named as the folded stacks name them (`libc.so.6+0x2724a`), so
        // that pprof's graphs and the flame graphs agree.
        let name = frame.short();
        let function = self.function(&name, frame.file.as_deref().unwrap_or(""));
        let line = frame.line.map_or(0, i64::from);
        let key = LocationKey {
            module: frame.module.clone(),
            build_id: frame.build_id.as_deref().map(str::to_owned),
            offset: frame.offset,
            function,
            line,
        };
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let mapping = match &frame.module {
            Some(module) => self.mapping(module, frame),
            None => 0,
        };
        self.locations.push(Location {
            mapping,
            address: frame.offset,
            function,
            line,
        });
        let id = self.locations.len() as u64;
        self.location_ids.insert(key, id);
        id
    }

    fn function(&mut self, name: &str, filename: &str) -> u64 {
        let key = (self.string(name), self.string(filename));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        self.functions.push(Function {
            name: key.0,
            filename: key.1,
        });
        let id = self.functions.len() as u64;
        self.function_ids.insert(key, id);
        id
    }

    /// The frame's file as a mapping, grown to cover the frame's offset.
    fn mapping(&mut self, module: &str, frame: &Named) -> u64 {
        let key = (
            module.to_owned(),
            frame.build_id.as_deref().map(str::to_owned),
        );
        let id = match self.mapping_ids.get(&key) {
            Some(&id) => id,
            None => {
                let filename = self.string(module);
                let build_id = self.string(frame.build_id.as_deref().unwrap_or(""));
                self.mappings.push(Mapping {
                    start: frame.offset,
                    limit: frame.offset.saturating_add(1),
                    filename,
                    build_id,
                    has_filenames: false,
                    has_line_numbers: false,
                });
                let id = self.mappings.len() as u64;
                self.mapping_ids.insert(key, id);
                id
            }
        };
        let mapping = &mut self.mappings[id as usize - 1];
        mapping.start = mapping.start.min(frame.offset);
        mapping.limit = mapping.limit.max(frame.offset.saturating_add(1));
        mapping.has_filenames |= frame.file.is_some();
        mapping.has_line_numbers |= frame.line.is_some();
        id
    }

    /// The profile as `profile.proto` bytes (not compressed).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Message::default();
        for &(kind, unit) in &self.sample_types {
            out.message(1, &value_type(kind, unit));
        }
        for sample in &self.samples {
            let mut m = Message::default();
            m.packed(1, sample.locations.iter().copied());
            m.packed(2, sample.values.iter().map(|&v| v as u64));
            for &(key, value) in &sample.labels {
                let mut label = Message::default();
                label.int(1, key);
                label.int(2, value);
                m.message(3, &label);
            }
            out.message(2, &m);
        }
        for (i, mapping) in self.mappings.iter().enumerate() {
            let mut m = Message::default();
            m.uint(1, i as u64 + 1);
            m.uint(2, mapping.start);
            m.uint(3, mapping.limit);
            // Addresses are file offsets: the mapping's first address is that offset in the file.
            m.uint(4, mapping.start);
            m.int(5, mapping.filename);
            m.int(6, mapping.build_id);
            // memtrace named every frame it could; pprof could not do better from the file.
            m.bool(7, true);
            m.bool(8, mapping.has_filenames);
            m.bool(9, mapping.has_line_numbers);
            out.message(3, &m);
        }
        for (i, location) in self.locations.iter().enumerate() {
            let mut m = Message::default();
            m.uint(1, i as u64 + 1);
            m.uint(2, location.mapping);
            m.uint(3, location.address);
            let mut line = Message::default();
            line.uint(1, location.function);
            line.int(2, location.line);
            m.message(4, &line);
            out.message(4, &m);
        }
        for (i, function) in self.functions.iter().enumerate() {
            let mut m = Message::default();
            m.uint(1, i as u64 + 1);
            m.int(2, function.name);
            m.int(3, function.name);
            m.int(4, function.filename);
            out.message(5, &m);
        }
        for string in &self.strings {
            // Every entry, the empty one first: indexes are positions.
            out.bytes(6, string.as_bytes());
        }
        out.int(9, self.time_nanos);
        out.int(10, self.duration_nanos);
        if let Some(&(kind, unit)) = self.sample_types.first() {
            out.message(11, &value_type(kind, unit));
            out.int(12, self.period);
            out.int(14, kind);
        }
        out.0
    }

    /// The profile, gzipped, as served over HTTP.
    pub fn gzipped(&self) -> std::io::Result<Vec<u8>> {
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&self.encode())?;
        gzip.finish()
    }

    /// Writes the profile, gzipped, into `path` (created at start, so writable).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = super::create_file(path)?;
        let mut gzip = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
        gzip.write_all(&self.encode())
            .and_then(|()| gzip.finish()?.flush())
            .with_context(|| format!("write the profile into {}", path.display()))
    }
}

fn value_type(kind: i64, unit: i64) -> Message {
    let mut m = Message::default();
    m.int(1, kind);
    m.int(2, unit);
    m
}

/// A protobuf message being written. Fields at their default (0, false) are left out, as proto3
/// writes them.
#[derive(Default)]
struct Message(Vec<u8>);

/// Wire types.
const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }

    fn uint(&mut self, field: u64, value: u64) {
        if value != 0 {
            self.key(field, VARINT);
            self.varint(value);
        }
    }

    /// An `int64`: negative numbers as their two's complement, ten bytes.
    fn int(&mut self, field: u64, value: i64) {
        self.uint(field, value as u64);
    }

    fn bool(&mut self, field: u64, value: bool) {
        self.uint(field, u64::from(value));
    }

    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        self.key(field, LENGTH_DELIMITED);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn message(&mut self, field: u64, message: &Message) {
        self.bytes(field, &message.0);
    }

    /// A repeated integer field, packed (what proto3 writes, and pprof reads either way).
    fn packed(&mut self, field: u64, values: impl Iterator<Item = u64>) {
        let mut inner = Message::default();
        for value in values {
            inner.varint(value);
        }
        if !inner.0.is_empty() {
            self.message(field, &inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// A protobuf field as read back: its number and its value.
    #[derive(Debug, PartialEq)]
    enum Field {
        Int(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value
    }

    /// A message's fields, in order.
    fn fields(bytes: &[u8]) -> Vec<(u64, Field)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let key = read_varint(bytes, &mut at);
            let field = match key & 7 {
                0 => Field::Int(read_varint(bytes, &mut at)),
                2 => {
                    let len = read_varint(bytes, &mut at) as usize;
                    at += len;
                    Field::Bytes(bytes[at - len..at].to_vec())
                }
                wire => panic!("wire type {wire} is never written"),
            };
            out.push((key >> 3, field));
        }
        out
    }

    fn all(message: &[(u64, Field)], number: u64) -> Vec<&Field> {
        message
            .iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, f)| f)
            .collect()
    }

    fn int(message: &[(u64, Field)], number: u64) -> u64 {
        match all(message, number).as_slice() {
            [] => 0,
            [Field::Int(v)] => *v,
            other => panic!("field {number}: {other:?}"),
        }
    }

    fn sub(field: &Field) -> Vec<(u64, Field)> {
        match field {
            Field::Bytes(bytes) => fields(bytes),
            Field::Int(_) => panic!("not a message"),
        }
    }

    fn packed(field: &Field) -> Vec<u64> {
        let Field::Bytes(bytes) = field else {
            panic!("not packed")
        };
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            out.push(read_varint(bytes, &mut at));
        }
        out
    }

    fn frame(symbol: Option<&str>, offset: u64, line: Option<u32>) -> Named {
        Named {
            module: Some("/usr/bin/prog".into()),
            offset,
            symbol: symbol.map(str::to_owned),
            symbol_offset: symbol.map(|_| 4),
            file: line.map(|_| "/src/prog.c".into()),
            line,
            build_id: Some("abcd01".into()),
        }
    }

    #[test]
    fn varints_are_base_128_low_group_first() {
        let mut m = Message::default();
        m.varint(1);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(m.0[..3], [0x01, 0xac, 0x02]);
        assert_eq!(m.0.len(), 3 + 10);
        m.0.clear();
        m.int(3, -1);
        assert_eq!(m.0.len(), 1 + 10, "int64 -1 takes ten bytes");
        m.0.clear();
        m.uint(5, 0);
        m.bool(7, false);
        assert!(m.0.is_empty(), "defaults are left out");
    }

    #[test]
    fn a_profile_reads_back_with_its_strings_stacks_and_files() {
        let mut profile = Profile::new(&[
            SampleType::new("faults", "count"),
            SampleType::new("major_faults", "count"),
        ]);
        let main = frame(Some("main"), 0x1243, Some(77));
        let touch = frame(Some("touch"), 0x14a7, Some(28));
        let unnamed = Named {
            module: Some("/lib/libc.so.6".into()),
            offset: 0x2724a,
            ..Named::default()
        };
        profile.add(
            &[touch, main.clone(), unnamed],
            &[2000, 3],
            &[("pid", "42"), ("comm", "prog")],
        );
        profile.add(&[main], &[5, 0], &[("pid", "42"), ("comm", "prog")]);
        let bytes = profile.encode();
        let top = fields(&bytes);

        let strings: Vec<String> = all(&top, 6)
            .into_iter()
            .map(|f| match f {
                Field::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
                Field::Int(_) => panic!("a string"),
            })
            .collect();
        assert_eq!(strings[0], "", "string 0 is the empty string");
        let text = |i: u64| strings[i as usize].as_str();

        let types: Vec<(&str, &str)> = all(&top, 1)
            .into_iter()
            .map(|f| {
                let m = sub(f);
                (text(int(&m, 1)), text(int(&m, 2)))
            })
            .collect();
        assert_eq!(types, [("faults", "count"), ("major_faults", "count")]);
        assert_eq!(text(int(&top, 14)), "faults", "the default sample type");
        assert_eq!(int(&top, 12), 1, "period");

        let samples = all(&top, 2);
        assert_eq!(samples.len(), 2);
        let first = sub(samples[0]);
        assert_eq!(packed(all(&first, 1)[0]), [1, 2, 3], "innermost first");
        assert_eq!(packed(all(&first, 2)[0]), [2000, 3]);
        let labels: Vec<(&str, &str)> = all(&first, 3)
            .into_iter()
            .map(|f| {
                let m = sub(f);
                (text(int(&m, 1)), text(int(&m, 2)))
            })
            .collect();
        assert_eq!(labels, [("pid", "42"), ("comm", "prog")]);
        let second = sub(samples[1]);
        assert_eq!(packed(all(&second, 1)[0]), [2], "main's location, once");

        let functions: Vec<(u64, &str, &str)> = all(&top, 5)
            .into_iter()
            .map(|f| {
                let m = sub(f);
                assert_eq!(int(&m, 2), int(&m, 3), "system name as name");
                (int(&m, 1), text(int(&m, 2)), text(int(&m, 4)))
            })
            .collect();
        assert_eq!(
            functions,
            [
                (1, "touch", "/src/prog.c"),
                (2, "main", "/src/prog.c"),
                (3, "libc.so.6+0x2724a", "")
            ]
        );

        let locations: Vec<(u64, u64, u64, u64, u64)> = all(&top, 4)
            .into_iter()
            .map(|f| {
                let m = sub(f);
                let line = sub(all(&m, 4)[0]);
                (
                    int(&m, 1),
                    int(&m, 2),
                    int(&m, 3),
                    int(&line, 1),
                    int(&line, 2),
                )
            })
            .collect();
        assert_eq!(
            locations,
            [
                (1, 1, 0x14a7, 1, 28),
                (2, 1, 0x1243, 2, 77),
                (3, 2, 0x2724a, 3, 0)
            ]
        );

        let mappings: Vec<Vec<(u64, Field)>> = all(&top, 3).into_iter().map(sub).collect();
        assert_eq!(mappings.len(), 2);
        let prog = &mappings[0];
        assert_eq!(int(prog, 1), 1);
        assert_eq!(
            (int(prog, 2), int(prog, 3), int(prog, 4)),
            (0x1243, 0x14a8, 0x1243)
        );
        assert_eq!(text(int(prog, 5)), "/usr/bin/prog");
        assert_eq!(text(int(prog, 6)), "abcd01");
        assert_eq!((int(prog, 7), int(prog, 8), int(prog, 9)), (1, 1, 1));
        let libc = &mappings[1];
        assert_eq!(text(int(libc, 5)), "/lib/libc.so.6");
        assert_eq!(int(libc, 6), 0, "no build id");
        assert_eq!((int(libc, 7), int(libc, 8), int(libc, 9)), (1, 0, 0));
    }

    #[test]
    fn the_file_is_gzipped_protobuf() {
        let mut profile = Profile::new(&[SampleType::new("bytes", "bytes")])
            .period(100)
            .ending_now(Duration::from_secs(2));
        profile.add(&[], &[4096], &[]);
        let path =
            std::env::temp_dir().join(format!("memtrace-pprof-{}.pb.gz", std::process::id()));
        profile.write(&path).unwrap();
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
            .read_to_end(&mut decoded)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(decoded, profile.encode());
        let top = fields(&decoded);
        assert_eq!(int(&top, 10), 2_000_000_000, "duration");
        assert!(
            int(&top, 9) > 1_600_000_000 * 1_000_000_000,
            "time, since the epoch"
        );
        assert_eq!(int(&top, 12), 100, "period");
        let sample = sub(all(&top, 2)[0]);
        assert!(
            all(&sample, 1).is_empty(),
            "an unknown stack has no location"
        );
    }
}
