//! Faults by mapping and by file (`faults --by mapping|file`): tables for people, JSON, and
//! folded lines (`comm;mapping COUNT`) for flame graph tools.

use std::io::{self, Write};

use serde::Serialize;

use super::folded;
use super::{
    Record,
    stacks::{write_lines, write_more},
};
use crate::model::stacks::{FileRow, MappingRow};

/// Rows a table shows before saying how many more there are.
const ROWS: usize = 30;

#[derive(Serialize)]
pub struct Mappings {
    pub mappings: Vec<MappingRow>,
}

impl Mappings {
    pub fn folded_lines(&self) -> Vec<String> {
        self.mappings
            .iter()
            .map(|row| {
                format!(
                    "{} {}",
                    folded::stack(&row.comm, std::iter::once(row.mapping.as_str())),
                    row.minor + row.major
                )
            })
            .collect()
    }
}

impl Record for Mappings {
    const TYPE: &'static str = "mappings";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "\nFaults by mapping:\n{:>8} {:<16} {:>10} {:>8}  MAPPING",
            "PID", "COMM", "MINOR", "MAJOR"
        )?;
        for row in self.mappings.iter().take(ROWS) {
            writeln!(
                out,
                "{:>8} {:<16} {:>10} {:>8}  {}",
                row.pid, row.comm, row.minor, row.major, row.mapping
            )?;
        }
        write_more(
            out,
            self.mappings.len(),
            ROWS,
            "mappings (--json lists all)",
        )
    }

    fn folded(&self, out: &mut dyn Write) -> io::Result<()> {
        write_lines(out, &self.folded_lines())
    }
}

#[derive(Serialize)]
pub struct Files {
    pub files: Vec<FileRow>,
    /// Faults on anonymous memory, for scale.
    pub anonymous_minor: u64,
    pub anonymous_major: u64,
}

impl Files {
    pub fn folded_lines(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|row| {
                format!(
                    "{} {}",
                    folded::stack("files", std::iter::once(row.path.as_str())),
                    row.minor + row.major
                )
            })
            .collect()
    }
}

impl Record for Files {
    const TYPE: &'static str = "files";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "\nFaults by file (most major faults first):\n{:>8} {:>10} {:>6}  FILE",
            "MAJOR", "MINOR", "PROCS"
        )?;
        for row in self.files.iter().take(ROWS) {
            writeln!(
                out,
                "{:>8} {:>10} {:>6}  {}",
                row.major, row.minor, row.processes, row.path
            )?;
        }
        write_more(out, self.files.len(), ROWS, "files (--json lists all)")?;
        writeln!(
            out,
            "{:>8} {:>10} {:>6}  [anonymous memory]",
            self.anonymous_major, self.anonymous_minor, ""
        )
    }

    fn folded(&self, out: &mut dyn Write) -> io::Result<()> {
        write_lines(out, &self.folded_lines())
    }
}
