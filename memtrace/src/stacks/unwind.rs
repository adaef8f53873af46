//! Unwinding a copied stack with the unwind tables of what the process maps (framehop), and
//! noting which stack words the unwinding read: the words that identify the stack.

use std::ops::Range;

use framehop::{
    FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use memtrace_common::stacks::STACK_BYTES;

use super::{
    maps::{self, Mapping},
    modules::{Bytes, ModuleFiles},
};

/// Frames followed at most: deeper stacks are shown cut short.
pub const MAX_FRAMES: usize = 128;

/// A stack as the kernel copied it: whole pages from the one holding `sp`.
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub pages: &'a [u8],
}

impl StackCopy<'_> {
    fn first_page(&self) -> u64 {
        self.sp & !(memtrace_common::stacks::PAGE_BYTES as u64 - 1)
    }

    /// The word at `address`, if the copy holds it and it is within reach of a recipe.
    pub fn word(&self, address: u64) -> Option<u64> {
        if address < self.sp || address + 8 > self.sp + STACK_BYTES as u64 {
            return None;
        }
        let at = usize::try_from(address - self.first_page()).ok()?;
        let bytes = self.pages.get(at..at + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// The result of one unwinding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The instruction pointer, then each return address, innermost first.
    pub addresses: Vec<u64>,
    /// Stack addresses read, in order.
    pub reads: Vec<u64>,
    /// Whether it reached the stack's root (else it stopped: unreadable word, no unwind
    /// information, too deep).
    pub complete: bool,
}

/// A process's address space as far as unwinding needs it.
pub struct ProcessUnwinder {
    pub mappings: Vec<Mapping>,
    unwinder: UnwinderX86_64<Bytes>,
    /// Executable file mappings that got a module.
    modules: Vec<Range<u64>>,
    /// Addresses of the entry points of the files mapped (their `_start`).
    entries: Vec<u64>,
}

/// Bytes of an entry point's code within which a frame is the root: `_start` calls on at once.
const ENTRY_CODE: u64 = 64;

impl ProcessUnwinder {
    /// Reads the process's mappings and the unwind tables of its executable files. `root`
    /// prefixes paths (the process's `/proc/PID/root` when it lives in another mount
    /// namespace).
    pub fn new(pid: u32, root: &str, files: &mut ModuleFiles) -> ProcessUnwinder {
        let mappings = maps::read(pid).unwrap_or_default();
        let mut unwinder = UnwinderX86_64::new();
        let mut modules = Vec::new();
        let mut entries = Vec::new();
        for mapping in mappings.iter().filter(|m| m.executable && m.is_file()) {
            let Some(file) = files.get(&format!("{root}{}", mapping.path), mapping.inode) else {
                continue;
            };
            let Some(base) = file.base_address(mapping.start, mapping.offset) else {
                continue;
            };
            unwinder.add_module(Module::new(
                mapping.path.clone(),
                mapping.start..mapping.end,
                base,
                file.sections.clone(),
            ));
            modules.push(mapping.start..mapping.end);
            entries.push(base + file.entry);
        }
        ProcessUnwinder {
            mappings,
            unwinder,
            modules,
            entries,
        }
    }

    /// Whether `address` is in code whose unwind tables are known.
    pub fn knows(&self, address: u64) -> bool {
        self.modules.iter().any(|range| range.contains(&address))
    }

    pub fn mapping_of(&self, address: u64) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.contains(address))
    }

    /// Unwinds a copied stack.
    pub fn walk(&self, cache: &mut CacheX86_64, stack: &StackCopy) -> Walk {
        let mut reads = Vec::new();
        let mut read = |address: u64| {
            reads.push(address);
            stack.word(address).ok_or(())
        };
        let mut addresses = Vec::new();
        let complete = {
            let mut frames = self.unwinder.iter_frames(
                stack.ip,
                UnwindRegsX86_64::new(stack.ip, stack.sp, stack.bp),
                cache,
                &mut read,
            );
            loop {
                if addresses.len() == MAX_FRAMES {
                    break false;
                }
                match frames.next() {
                    Ok(Some(FrameAddress::InstructionPointer(address))) => addresses.push(address),
                    Ok(Some(FrameAddress::ReturnAddress(address))) => addresses.push(address.get()),
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            }
        };
        // `_start` has no caller: unwind tables rarely say so, and what lies above it is the
        // process's arguments, not a frame.
        let root = addresses.iter().position(|&address| {
            self.entries
                .iter()
                .any(|&entry| (entry..entry + ENTRY_CODE).contains(&address))
        });
        let complete = match root {
            Some(root) => {
                addresses.truncate(root + 1);
                true
            }
            None => complete,
        };
        Walk {
            addresses,
            reads,
            complete,
        }
    }
}
