//! The records of a `memtrace leaks` report: a start, the outstanding mappings per stack every
//! interval, and the same at the end (for a command: what it still had mapped when it exited).

use std::io::{self, Write};

use memtrace_common::DropSource;
use serde::Serialize;

use super::{
    Record, Targets, Timestamp, drops_json, size_kb,
    stacks::{fold, write_frames, write_lines, write_more},
    unix_seconds,
};
use crate::stacks::{StackLosses, symbols::Named};

/// What is watched, told once at the start.
#[derive(Serialize)]
pub struct Start {
    #[serde(flatten)]
    pub targets: Targets,
    pub interval_s: f64,
}

impl Record for Start {
    const TYPE: &'static str = "start";

    fn human(&self, _out: &mut dyn Write) -> io::Result<()> {
        eprintln!(
            "memtrace: watching what {} maps and keeps (Ctrl-C to stop)",
            self.targets.description
        );
        Ok(())
    }
}

/// One process's outstanding regions mapped by one stack.
#[derive(Serialize)]
pub struct LeakRow {
    pub pid: u32,
    pub comm: String,
    pub bytes: u64,
    pub regions: u64,
    /// Resident bytes of those regions (`null` once the process has exited).
    pub resident_bytes: Option<u64>,
    /// Age of the oldest, in seconds.
    pub oldest_s: f64,
    /// Innermost frame first; empty when the stack could not be known.
    pub stack: Vec<Named>,
    pub complete: bool,
}

/// The outstanding mappings, most bytes first.
#[derive(Serialize)]
pub struct Leaks<'a> {
    #[serde(serialize_with = "unix_seconds")]
    pub timestamp: Timestamp,
    /// The last report: at the end of tracing (for a command, its state when it exited).
    #[serde(rename = "final")]
    pub last: bool,
    pub total_bytes: u64,
    pub total_regions: u64,
    /// Every stack with regions outstanding (the table shows `shown`).
    pub stacks: Vec<LeakRow>,
    pub losses: StackLosses,
    /// Calls whose stack could not be known (their regions count under an empty stack).
    pub unknown_stacks: u64,
    #[serde(serialize_with = "drops_json")]
    pub dropped: &'a [(DropSource, u64)],
    #[serde(skip)]
    pub shown: usize,
}

impl Leaks<'_> {
    /// One folded line per distinct stack as named: bytes outstanding, most first.
    pub fn folded_lines(&self) -> Vec<String> {
        fold(
            self.stacks
                .iter()
                .map(|row| (row.comm.as_str(), row.stack.as_slice(), row.bytes)),
        )
    }
}

impl Record for Leaks<'_> {
    const TYPE: &'static str = "leaks";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let when = if self.last {
            "At the end".to_owned()
        } else {
            self.timestamp.local_hms()
        };
        writeln!(
            out,
            "\n{when}: {} mapped and kept in {} regions",
            size_kb(self.total_bytes / 1024),
            self.total_regions
        )?;
        for row in self.stacks.iter().take(self.shown) {
            let resident = row
                .resident_bytes
                .map_or_else(|| "-".to_owned(), |bytes| size_kb(bytes / 1024));
            writeln!(
                out,
                "\n{} in {} regions ({resident} resident, oldest {:.1} s) in {}[{}]",
                size_kb(row.bytes / 1024),
                row.regions,
                row.oldest_s,
                row.comm,
                row.pid
            )?;
            write_frames(out, &row.stack, row.complete)?;
        }
        write_more(
            out,
            self.stacks.len(),
            self.shown,
            "stacks (--json lists all)",
        )?;
        for &(source, n) in self.dropped {
            if n > 0 {
                writeln!(out, "dropped: {n} ({})", source.name())?;
            }
        }
        Ok(())
    }

    fn folded(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.last {
            write_lines(out, &self.folded_lines())?;
        }
        Ok(())
    }
}
