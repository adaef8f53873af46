//! The records of a `memtrace leaks` report: a start, the outstanding mappings (or, with
//! `--malloc`, blocks) per stack every interval, and the same at the end (for a command: what
//! it still had when it exited).

use std::io::{self, Write};

use memtrace_common::DropSource;
use serde::Serialize;

use super::{
    Record, Targets, drops_json,
    pprof::{self, Profile},
    size_kb,
    stacks::{fold, write_frames, write_lines, write_more},
};
use crate::model::{
    leaks::LeakRow,
    stacks::StackLosses,
    time::{Timestamp, unix_seconds},
};

/// What `leaks` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Mapped regions, from the allocation syscalls.
    Mappings,
    /// The allocator's blocks (`--malloc`).
    Malloc,
}

/// The allocator traced with `--malloc`, per process.
#[derive(Serialize)]
pub struct TracedAllocator {
    pub pid: u32,
    /// The file its functions are in, as the process sees it.
    pub file: String,
    pub functions: Vec<&'static str>,
}

/// What is watched, told once at the start.
#[derive(Serialize)]
pub struct Start {
    #[serde(flatten)]
    pub targets: Targets,
    pub interval_s: f64,
    pub level: Level,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocators: Vec<TracedAllocator>,
    /// `--sample N`: one allocation in N is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
}

impl Record for Start {
    const TYPE: &'static str = "start";

    fn human(&self, _out: &mut dyn Write) -> io::Result<()> {
        match self.level {
            Level::Mappings => eprintln!(
                "memtrace: watching what {} maps and keeps (Ctrl-C to stop)",
                self.targets.description
            ),
            Level::Malloc => {
                eprintln!(
                    "memtrace: watching what {} allocates and does not free (Ctrl-C to stop)",
                    self.targets.description
                );
                for allocator in &self.allocators {
                    eprintln!(
                        "memtrace: pid {}: {} ({})",
                        allocator.pid,
                        allocator.file,
                        allocator.functions.join(", ")
                    );
                }
                if let Some(n) = self.sample {
                    eprintln!("memtrace: recording one allocation in {n}, at random");
                }
            }
        }
        Ok(())
    }
}

/// What the allocator programs saw (`--malloc`), since attaching.
#[derive(Serialize)]
pub struct MallocCounts {
    /// Calls that returned a block.
    pub allocations: u64,
    /// Of those, recorded (the others: sampled out, smaller than --min-size, or dropped).
    pub recorded: u64,
    /// Calls that returned no block (out of memory, or invalid arguments).
    pub failed: u64,
    pub frees: u64,
    /// Frees of blocks memtrace did not record: allocated before it attached, sampled out,
    /// smaller than --min-size, or dropped.
    pub unmatched_frees: u64,
    /// Returns whose call's entry was not seen (calls under way when memtrace attached).
    pub unpaired_returns: u64,
    /// Calls whose return was never seen (a thread left the allocator by longjmp).
    pub lost_returns: u64,
    /// A command's descendants not traced (past the 8 followed).
    pub unfollowed_processes: u64,
    /// Kernel bytes of the live-blocks table.
    pub table_bytes: Option<u64>,
}

/// The outstanding mappings (or blocks), most bytes first.
#[derive(Serialize)]
pub struct Leaks<'a> {
    #[serde(serialize_with = "unix_seconds")]
    pub timestamp: Timestamp,
    /// The last report: at the end of tracing (for a command, its state when it exited).
    #[serde(rename = "final")]
    pub last: bool,
    pub level: Level,
    pub total_bytes: u64,
    /// Mapping level: regions in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_regions: Option<u64>,
    /// `--malloc`: blocks in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_blocks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malloc: Option<MallocCounts>,
    /// Every stack with regions outstanding (the table shows `shown`).
    pub stacks: Vec<LeakRow>,
    pub losses: StackLosses,
    /// Mapping level: calls whose stack could not be known; `--malloc`: live blocks whose stack
    /// could not be known. Both count under an empty stack.
    pub unknown_stacks: u64,
    #[serde(serialize_with = "drops_json")]
    pub dropped: &'a [(DropSource, u64)],
    #[serde(skip)]
    pub shown: usize,
}

/// Bytes for people: exact below 10 KiB (small blocks matter), else in KiB or more.
fn size_bytes(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        size_kb(bytes / 1024)
    }
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

    /// The report as a pprof profile: bytes and regions (or blocks) outstanding, per stack and
    /// process; a stack that could not be known has no frames.
    pub fn profile(&self) -> Profile {
        let types = match self.level {
            Level::Mappings => &pprof::LEAKED_REGIONS,
            Level::Malloc => &pprof::LEAKED_BLOCKS,
        };
        let mut profile = Profile::new(types);
        for row in &self.stacks {
            let pid = row.pid.to_string();
            let count = row.regions.or(row.blocks).unwrap_or_default();
            profile.add(
                &row.stack,
                &[row.bytes, count],
                &[("pid", &pid), ("comm", &row.comm)],
            );
        }
        profile
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
        let (done, count, unit) = match self.level {
            Level::Mappings => ("mapped and kept", self.total_regions, "regions"),
            Level::Malloc => ("allocated and not freed", self.total_blocks, "blocks"),
        };
        writeln!(
            out,
            "\n{when}: {} {done} in {} {unit}",
            size_bytes(self.total_bytes),
            count.unwrap_or_default(),
        )?;
        for row in self.stacks.iter().take(self.shown) {
            let detail = match row.resident_bytes {
                Some(resident) => {
                    let resident = resident.map_or_else(|| "-".to_owned(), size_bytes);
                    format!("{resident} resident, ")
                }
                None => String::new(),
            };
            writeln!(
                out,
                "\n{} in {} {unit} ({detail}oldest {:.1} s) in {}[{}]",
                size_bytes(row.bytes),
                row.regions.or(row.blocks).unwrap_or_default(),
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
        if let Some(counts) = &self.malloc
            && self.last
        {
            writeln!(
                out,
                "\n{} allocations ({} recorded, {} failed), {} frees ({} of blocks allocated \
                 before attaching or not recorded)",
                counts.allocations,
                counts.recorded,
                counts.failed,
                counts.frees,
                counts.unmatched_frees
            )?;
        }
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
