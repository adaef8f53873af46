//! Where and how reports are written. A command's report is a sequence of [`Record`]s (a start,
//! intervals or calls or kills, a summary) written to a [`Sink`] in one [`Format`]: human tables
//! and lines, or JSON lines. The modules below define each command's records.

pub mod faults;
pub mod folded;
pub mod leaks;
pub mod mappings;
pub mod oom;
pub mod pprof;
pub mod pressure;
pub mod prometheus;
pub mod stacks;
pub mod top;
pub mod trace;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use serde::Serialize;

use crate::error::Failure;

/// How a report is written. The attribution work adds folded stacks and flame graphs here, and
/// a live view belongs here too: each a way to write the same records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Tables and lines for people.
    Human,
    /// One JSON object per line, each with its `"type"` first (JSON Schemas in `docs/schemas/`).
    Json,
    /// Folded stacks only (`comm;outermost;...;innermost COUNT`): what flame graph tools read.
    Folded,
}

impl Format {
    pub fn json(json: bool) -> Format {
        if json { Format::Json } else { Format::Human }
    }

    /// The format of a report of stacks (`--folded`, `--json`, else tables), with the files
    /// written beside it (flame graph, profile) checked now: a path that cannot be written is a
    /// usage error before tracing.
    pub fn of_stacks(folded: bool, json: bool, files: &[Option<&Path>]) -> Result<Format, Failure> {
        for path in files.iter().flatten() {
            create_file(path)?;
        }
        Ok(if folded {
            Format::Folded
        } else {
            Format::json(json)
        })
    }
}

/// One thing a report says. Its JSON form is its `Serialize` (the sink puts `"type": TYPE`
/// first), its human form [`Record::human`]; neither knows where it is written.
pub trait Record: Serialize {
    /// The JSON `"type"`.
    const TYPE: &'static str;

    /// Writes the record for people. What is not the report itself (a banner, a closing line)
    /// goes to stderr, so that the report can be piped.
    fn human(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Writes the record's folded stacks, if it has any: nothing else is folded. What a
    /// record tells people on stderr (the banner) is still told.
    fn folded(&self, _out: &mut dyn Write) -> io::Result<()> {
        self.human(&mut io::sink())
    }
}

/// What a session traces, as its start record says it.
#[derive(Serialize)]
pub struct Targets {
    /// `"system"`, `"pids"`, `"comm"` or `"command"`.
    pub mode: &'static str,
    pub description: String,
    /// The explicit targets, or the spawned command's pid.
    pub pids: Vec<u32>,
}

/// Where a report goes, in its format. Buffered: a command flushes when what it wrote must be
/// seen at once (each interval, each kill, each batch of calls).
pub struct Sink {
    format: Format,
    out: BufWriter<Box<dyn Write>>,
}

/// A record with its type, as one JSON line has it.
#[derive(Serialize)]
struct Tagged<'a, R> {
    r#type: &'static str,
    #[serde(flatten)]
    record: &'a R,
}

impl Sink {
    /// Opens the destination: stdout, or a file created readable by owner and group only,
    /// since reports name other users' processes. A path that cannot be written is a usage
    /// error, found before anything needs privileges.
    pub fn open(path: Option<&Path>, format: Format) -> Result<Sink, Failure> {
        let out: Box<dyn Write> = match path {
            None => Box::new(io::stdout()),
            Some(path) => Box::new(create(path, false)?),
        };
        Ok(Sink::new(out, format))
    }

    /// Appends to a file (the daemon's events), created as `open` does, or to stdout for `-`.
    pub fn append(path: &Path, format: Format) -> Result<Sink, Failure> {
        if path.as_os_str() == "-" {
            return Sink::open(None, format);
        }
        Ok(Sink::new(Box::new(create(path, true)?), format))
    }

    pub fn new(out: Box<dyn Write>, format: Format) -> Sink {
        Sink {
            format,
            out: BufWriter::with_capacity(256 << 10, out),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes one record (buffered).
    pub fn emit<R: Record>(&mut self, record: &R) -> io::Result<()> {
        match self.format {
            Format::Human => record.human(&mut self.out),
            Format::Folded => record.folded(&mut self.out),
            Format::Json => {
                let tagged = Tagged {
                    r#type: R::TYPE,
                    record,
                };
                serde_json::to_writer(&mut self.out, &tagged)?;
                self.out.write_all(b"\n")
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Creates (or truncates) a report file as [`Sink::open`] does: a path that cannot be written
/// is a usage error, found at start rather than after tracing (`--flamegraph`, `--pprof`).
pub fn create_file(path: &Path) -> Result<std::fs::File, Failure> {
    create(path, false)
}

fn create(path: &Path, append: bool) -> Result<std::fs::File, Failure> {
    OpenOptions::new()
        .write(true)
        .append(append)
        .truncate(!append)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|err| Failure::Usage(format!("cannot write to {}: {err}", path.display())))
}

/// A size in KiB as people read it: `812K`, `12.3M`, `1.2G`.
pub fn size_kb(kib: u64) -> String {
    match kib {
        k if k < 1024 => format!("{k}K"),
        k if k < 1024 * 1024 => format!("{:.1}M", k as f64 / 1024.0),
        k => format!("{:.1}G", k as f64 / (1024.0 * 1024.0)),
    }
}

/// Drop counts as JSON has them: `{"source": count, ...}`.
pub fn drops_json<S: serde::Serializer>(
    dropped: &[(memtrace_common::DropSource, u64)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(dropped.len()))?;
    for (source, n) in dropped {
        map.serialize_entry(source.name(), n)?;
    }
    map.end()
}

/// Whether writing failed because the reader went away (`memtrace ... | head`).
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|err| err.kind() == io::ErrorKind::BrokenPipe)
}

/// A sink whose output tests read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub(crate) fn sink(format: Format) -> (Sink, Captured) {
        let captured = Captured::default();
        (Sink::new(Box::new(captured.clone()), format), captured)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.borrow().clone()).expect("UTF-8 output")
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size_kb(812), "812K");
        assert_eq!(size_kb(12_595), "12.3M");
        assert_eq!(size_kb(1_258_291), "1.2G");
    }

    #[derive(Serialize)]
    struct Example {
        n: u32,
    }

    impl Record for Example {
        const TYPE: &'static str = "example";

        fn human(&self, out: &mut dyn Write) -> io::Result<()> {
            writeln!(out, "n is {}", self.n)
        }
    }

    fn written(format: Format) -> String {
        let (mut sink, captured) = Captured::sink(format);
        sink.emit(&Example { n: 7 }).unwrap();
        sink.flush().unwrap();
        captured.text()
    }

    #[test]
    fn one_record_two_forms() {
        assert_eq!(written(Format::Human), "n is 7\n");
        assert_eq!(written(Format::Json), "{\"type\":\"example\",\"n\":7}\n");
    }
}
