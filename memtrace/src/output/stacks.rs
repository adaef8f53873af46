//! The stacks report: each process's events per user stack, as a table of stacks for people,
//! JSON, or folded lines.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use super::folded;
use super::{
    Record,
    pprof::{self, Profile},
};
use crate::model::stacks::{CallStackRow, Named, StackLosses, StackRow};

/// Stacks a table shows before saying how many more there are.
const STACK_ROWS: usize = 20;

/// Every stack of the session, busiest first.
#[derive(Serialize)]
pub struct Stacks {
    pub stacks: Vec<StackRow>,
    /// Stacks cut short, sent whole, or not taught to the kernel.
    pub losses: StackLosses,
    /// Frames in a file that its symbols did not name.
    pub unnamed_frames: u64,
}

impl Stacks {
    /// One folded line per distinct stack as named: faults, busiest first.
    pub fn folded_lines(&self) -> Vec<String> {
        fold(
            self.stacks
                .iter()
                .map(|row| (row.comm.as_str(), row.stack.as_slice(), row.total())),
        )
    }

    /// The stacks as a pprof profile: faults, minor and major, per stack and process.
    pub fn profile(&self) -> Profile {
        let mut profile = Profile::new(&pprof::FAULTS);
        for row in &self.stacks {
            let pid = row.pid.to_string();
            profile.add(
                &row.stack,
                &[row.total(), row.minor, row.major],
                &[("pid", &pid), ("comm", &row.comm)],
            );
        }
        profile
    }
}

/// Folded lines of named stacks (process name, frames innermost first, count): one line per
/// distinct stack as named (stacks that differ only in what symbols cannot tell apart are
/// added together), busiest first.
pub fn fold<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [Named], u64)>) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (comm, stack, count) in rows {
        let names: Vec<String> = stack.iter().map(Named::short).collect();
        *counts
            .entry(folded::stack(comm, names.iter().map(String::as_str)))
            .or_default() += count;
    }
    let mut lines: Vec<(String, u64)> = counts.into_iter().collect();
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    lines
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

impl Record for Stacks {
    const TYPE: &'static str = "stacks";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let all: u64 = self.stacks.iter().map(StackRow::total).sum();
        writeln!(
            out,
            "\nStacks: {} distinct, {all} faults ({} stacks sent whole, {} cut short, {} \
             unrecognised, {} of exited processes, {} frames unnamed)",
            self.stacks.len(),
            self.losses.snapshots,
            self.losses.cut_short,
            self.losses.unrecognised,
            self.losses.unmapped,
            self.unnamed_frames,
        )?;
        for row in self.stacks.iter().take(STACK_ROWS) {
            let share = if all > 0 {
                100.0 * row.total() as f64 / all as f64
            } else {
                0.0
            };
            writeln!(
                out,
                "\n{} faults ({} minor, {} major, {share:.1}%) in {}[{}]",
                row.total(),
                row.minor,
                row.major,
                row.comm,
                row.pid
            )?;
            write_frames(out, &row.stack, row.complete)?;
        }
        write_more(
            out,
            self.stacks.len(),
            STACK_ROWS,
            "stacks (--json or --folded list all)",
        )
    }

    fn folded(&self, out: &mut dyn Write) -> io::Result<()> {
        write_lines(out, &self.folded_lines())
    }
}

/// A stack's frames under what they belong to, one a line, and the mark of one cut short.
pub fn write_frames(out: &mut dyn Write, frames: &[Named], complete: bool) -> io::Result<()> {
    for frame in frames {
        writeln!(out, " > {}", frame.line())?;
    }
    if !complete {
        writeln!(out, " > [cut short: the next frame could not be unwound]")?;
    }
    Ok(())
}

/// How many rows a table left out, if any: `... and N more WHAT`.
pub fn write_more(out: &mut dyn Write, rows: usize, shown: usize, what: &str) -> io::Result<()> {
    if rows > shown {
        writeln!(out, "\n... and {} more {what}", rows - shown)?;
    }
    Ok(())
}

/// Folded lines, one a line.
pub fn write_lines(out: &mut dyn Write, lines: &[String]) -> io::Result<()> {
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Calls per syscall and stack, busiest first.
#[derive(Serialize)]
pub struct CallStacks {
    pub stacks: Vec<CallStackRow>,
    pub losses: StackLosses,
    /// Calls whose stack could not be known (it could not be copied or sent).
    pub unknown_stacks: u64,
}

impl CallStacks {
    /// The stacks as a pprof profile: calls and bytes, per syscall, stack and process.
    pub fn profile(&self) -> Profile {
        let mut profile = Profile::new(&pprof::CALLS);
        for row in &self.stacks {
            let pid = row.pid.to_string();
            profile.add(
                &row.stack,
                &[row.calls, row.bytes],
                &[("syscall", row.syscall), ("pid", &pid), ("comm", &row.comm)],
            );
        }
        profile
    }
}

impl Record for CallStacks {
    const TYPE: &'static str = "stacks";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "Stacks: {} distinct ({} sent whole, {} cut short, {} of exited processes, {} calls \
             without a stack)",
            self.stacks.len(),
            self.losses.snapshots,
            self.losses.cut_short,
            self.losses.unmapped,
            self.unknown_stacks
        )?;
        for row in self.stacks.iter().take(STACK_ROWS) {
            writeln!(
                out,
                "\n{} {} calls, {} bytes in {}[{}]",
                row.calls, row.syscall, row.bytes, row.comm, row.pid
            )?;
            write_frames(out, &row.stack, row.complete)?;
        }
        write_more(
            out,
            self.stacks.len(),
            STACK_ROWS,
            "stacks (--json lists all)",
        )?;
        writeln!(out)
    }
}
