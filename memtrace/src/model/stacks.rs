//! Stacks as memtrace reports them: a named frame, what could not be unwound or taught, and the
//! rows of a report of stacks (faults, calls, mappings and files).

use std::sync::Arc;

use serde::Serialize;

/// A frame as reports show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Named {
    /// The file the frame is in, as its process sees it (`null` outside any file).
    pub module: Option<String>,
    /// Offset in that file (or the address, without a file), as strace -k prints it.
    pub offset: u64,
    /// The function, if the file's symbols name it.
    pub symbol: Option<String>,
    /// Offset of the frame's address from the function's start.
    pub symbol_offset: Option<u64>,
    /// Source file and line, where debug information was found.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The file's GNU build id, in hex (for `--pprof`'s mappings; the kernel's for `[kernel]`).
    #[serde(skip)]
    pub build_id: Option<Arc<str>>,
}

impl Named {
    /// `function+0x1d` if named, else `module+0x1234`: one frame of a folded stack.
    pub fn short(&self) -> String {
        match (&self.symbol, &self.module) {
            (Some(symbol), _) => symbol.clone(),
            (None, Some(module)) => format!("{}+{:#x}", basename(module), self.offset),
            (None, None) => format!("[unknown] {:#x}", self.offset),
        }
    }

    /// strace -k's line: `module(function+0xoff) [0xoffset]`, and `file:line` when known.
    pub fn line(&self) -> String {
        let module = self.module.as_deref().unwrap_or("?");
        let symbol = match (&self.symbol, self.symbol_offset) {
            (Some(symbol), Some(offset)) => format!("{symbol}+{offset:#x}"),
            _ => String::new(),
        };
        let mut line = format!("{module}({symbol}) [{:#x}]", self.offset);
        if let Some(file) = &self.file {
            line.push_str(&format!(" {}", basename(file)));
            if let Some(number) = self.line {
                line.push_str(&format!(":{number}"));
            }
        }
        line
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Events whose stacks came out less than whole, and stacks the kernel could not be taught.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StackLosses {
    /// Stacks sent whole by the kernel (each the first event of a stack, or one it could not
    /// recognise).
    pub snapshots: u64,
    /// Events whose stack was cut short: an unreadable word, code without unwind
    /// information, or deeper than memtrace follows.
    pub cut_short: u64,
    /// Events at places whose stacks the kernel cannot be taught to recognise (more stack
    /// words than a recipe holds, or tables full): each is sent whole, and costs more.
    pub unrecognised: u64,
    /// Stacks sent whole by processes that had exited before memtrace could read their
    /// mappings (a process living a few milliseconds): shown as bare addresses.
    pub unmapped: u64,
}

/// One process's events on one stack.
#[derive(Serialize)]
pub struct StackRow {
    pub pid: u32,
    pub comm: String,
    pub minor: u64,
    pub major: u64,
    /// Innermost frame first.
    pub stack: Vec<Named>,
    /// Whether unwinding reached the stack's root; else the outermost frames are missing.
    pub complete: bool,
}

impl StackRow {
    pub fn total(&self) -> u64 {
        self.minor + self.major
    }
}

/// One syscall's calls from one stack (`trace -c --stack`).
#[derive(Serialize)]
pub struct CallStackRow {
    pub syscall: &'static str,
    pub pid: u32,
    pub comm: String,
    pub calls: u64,
    /// Bytes the calls were about (length argument, or the break's movement).
    pub bytes: u64,
    /// Innermost frame first.
    pub stack: Vec<Named>,
    pub complete: bool,
}

/// One process's faults in one mapping.
#[derive(Serialize)]
pub struct MappingRow {
    pub pid: u32,
    pub comm: String,
    /// Its file's path, a kernel name (`[heap]`, `[stack]`, `[vdso]`), `[anonymous]`, or
    /// `[inode N on MAJ:MIN]` for a file mapped by a process gone before memtrace read it.
    pub mapping: String,
    /// Whether it maps a file.
    pub file: bool,
    /// Its first address.
    pub start: u64,
    pub minor: u64,
    pub major: u64,
}

/// One file's faults, every process and mapping of it together.
#[derive(Serialize)]
pub struct FileRow {
    pub path: String,
    pub inode: u64,
    /// `MAJ:MIN` of its device.
    pub device: String,
    pub minor: u64,
    /// Pages read from storage: the file is being paged in.
    pub major: u64,
    /// How many processes faulted on it.
    pub processes: usize,
}
