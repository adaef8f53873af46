//! User stacks behind events: snapshots the kernel sends are unwound here, the stack words that
//! identify each stack are taught back to the kernel (so it counts the next events itself),
//! and the counts, kernel's and ours, are put together per process and stack.
//!
//! See `memtrace_common::stacks` for why a recipe identifies a stack exactly.

pub mod maps;
pub mod modules;
pub mod symbols;
pub mod unwind;

use std::collections::{BTreeSet, HashMap, hash_map::Entry};

use framehop::x86_64::CacheX86_64;
use memtrace_common::{
    COMM_LEN,
    stacks::{
        EventKind, PAGE_BYTES, RECIPE_WORDS, Recipe, STACK_BYTES, SiteKey, SnapshotHeader,
        StackKey, StackRef, hash_seed, hash_word,
    },
};

use self::{
    modules::ModuleFiles,
    unwind::{ProcessUnwinder, StackCopy, Walk},
};
use crate::{model::stacks::StackLosses, sys::procfs};

/// A file a frame is in, by the path its process sees and the path memtrace opens it at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Module {
    pub path: String,
    pub open_path: String,
}

/// One frame, before symbolization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Index in [`Stacks::modules`], or `None` outside any file (JIT code, `[vdso]`).
    pub module: Option<u32>,
    /// Offset in the module's file (as strace -k prints it), or the address without a module.
    pub offset: u64,
    /// A return address (every frame but the innermost): it is looked up one byte before,
    /// inside the call.
    pub returns: bool,
}

/// A stack as unwound.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Whether unwinding reached the root (else it stopped short: see [`StackLosses`]).
    pub complete: bool,
}

/// Index in [`Stacks::stack`].
pub type StackId = u32;

/// What the kernel is taught; implemented by the loaded `attribution` object.
pub trait Teach {
    /// Sets the recipe of a place; false if the table is full.
    fn recipe(&mut self, site: SiteKey, recipe: &Recipe) -> bool;
    /// Creates the kernel's counter of a stack; false if the table is full.
    fn confirm(&mut self, key: StackKey) -> bool;
}

/// A process's counted stacks.
pub struct ProcessStacks {
    pub pid: u32,
    pub comm: String,
    /// Stack, then events of each kind ([`EventKind`] order).
    pub stacks: Vec<(StackId, [u64; 2])>,
}

struct Process {
    comm: String,
    unwinder: ProcessUnwinder,
    /// Where its files are opened from: empty, or its `/proc/PID/root`.
    root: String,
}

/// Per place, the union of the words its stacks' unwindings read, and whether they used the
/// frame pointer.
#[derive(Default)]
struct Place {
    words: Vec<u16>,
    uses_bp: bool,
    /// Set when the place needs more words than a recipe holds.
    hopeless: bool,
}

/// Everything learnt about the stacks of one session.
#[derive(Default)]
pub struct Stacks {
    files: ModuleFiles,
    modules: Vec<Module>,
    module_ids: HashMap<Module, u32>,
    processes: HashMap<u32, Process>,
    cache: CacheX86_64,
    stacks: Vec<Stack>,
    stack_ids: HashMap<Stack, StackId>,
    places: HashMap<SiteKey, Place>,
    /// The kernel's hashes, per process and kind, and the stack each stands for.
    known: HashMap<StackKey, StackId>,
    /// The whole copies' hashes the kernel counts pending events under, and their stacks.
    pending: HashMap<StackKey, StackId>,
    /// Events counted here: those whose stacks came whole.
    counted: HashMap<(u32, StackId), [u64; 2]>,
    pub losses: StackLosses,
}

impl Stacks {
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    pub fn stack(&self, id: StackId) -> &Stack {
        &self.stacks[id as usize]
    }

    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.processes.get(&pid).map(|p| p.comm.as_str())
    }

    /// Takes one snapshot record: unwinds it, counts its event, and teaches the kernel.
    /// Returns the thread it came from and its stack.
    pub fn take(&mut self, record: &[u8], kernel: &mut dyn Teach) -> Option<(u32, StackId)> {
        let header = read_header(record)?;
        let kind = EventKind::from_u32(header.kind)?;
        let pages = &record[size_of::<SnapshotHeader>()..];
        let pages = &pages[..pages.len().min(header.pages as usize * PAGE_BYTES)];
        let stack = StackCopy {
            ip: header.ip,
            sp: header.sp,
            bp: header.bp,
            pages,
        };
        self.losses.snapshots += 1;
        let walk = self.walk(&header, &stack);
        if !walk.complete {
            self.losses.cut_short += 1;
        }
        let frames = self.frames(header.tgid, &walk.addresses);
        let id = self.intern(Stack {
            frames,
            complete: walk.complete,
        });
        // Faults are counted per stack here; calls are counted by whoever reads their records.
        if let Some(count) = self
            .counted
            .entry((header.tgid, id))
            .or_default()
            .get_mut(kind as usize)
        {
            *count += 1;
        }
        if header.pending != 0 {
            let key = StackKey {
                tgid: header.tgid,
                kind: header.kind,
                hash: header.pending,
            };
            self.pending.insert(key, id);
        }
        if !self.teach(&header, kind, &stack, &walk, id, kernel) {
            self.losses.unrecognised += 1;
        }
        Some((header.tid, id))
    }

    /// Takes over the kernel's counts of an exited process (`kernel`: its entries only), so
    /// that its entries can be deleted there; returns the places whose recipes go with them.
    pub fn absorb(&mut self, pid: u32, kernel: &KernelCounts) -> Vec<SiteKey> {
        for (table, ids) in [
            (&kernel.known, &mut self.known),
            (&kernel.pending, &mut self.pending),
        ] {
            for (key, n) in table {
                let (Some(id), Some(kind)) = (ids.remove(key), EventKind::from_u32(key.kind))
                else {
                    continue;
                };
                if let Some(count) = self
                    .counted
                    .entry((pid, id))
                    .or_default()
                    .get_mut(kind as usize)
                {
                    *count += n;
                }
            }
        }
        let sites: Vec<SiteKey> = self
            .places
            .keys()
            .filter(|site| site.tgid == pid)
            .copied()
            .collect();
        for site in &sites {
            self.places.remove(site);
        }
        sites
    }

    /// The stack an event's [`StackRef`] names, if it was learnt.
    pub fn lookup(&self, tgid: u32, kind: EventKind, stack: StackRef) -> Option<StackId> {
        let key = StackKey {
            tgid,
            kind: kind as u32,
            hash: stack.hash,
        };
        match stack.how {
            StackRef::KNOWN => self.known.get(&key).copied(),
            StackRef::PENDING => self.pending.get(&key).copied(),
            _ => None,
        }
    }

    /// Unwinds, reading the process's mappings again once if the code is not known (a library
    /// loaded since, or a process met for the first time).
    fn walk(&mut self, header: &SnapshotHeader, stack: &StackCopy) -> Walk {
        let pid = header.tgid;
        let fresh = !self.processes.contains_key(&pid);
        let read = fresh || !self.processes[&pid].unwinder.knows(header.ip);
        if read {
            self.read_mappings(header, fresh);
        }
        let walk = self.walk_known(header, stack);
        // A return address in code not known when the mappings were read: a library loaded
        // since (dlopen). Read them again once (unless just read), rather than teach a stack
        // cut at it.
        let process = &self.processes[&pid];
        if !read
            && walk.addresses[1..]
                .iter()
                .any(|&address| process.unwinder.mapping_of(address).is_none())
        {
            self.read_mappings(header, false);
            return self.walk_known(header, stack);
        }
        walk
    }

    /// Reads (again) a process's mappings and the unwind tables of its files.
    fn read_mappings(&mut self, header: &SnapshotHeader, fresh: bool) {
        let pid = header.tgid;
        {
            let root = if fresh {
                own_root(pid)
            } else {
                self.processes[&pid].root.clone()
            };
            let unwinder = ProcessUnwinder::new(pid, &root, &mut self.files);
            let comm = procfs::comm_from_bytes(&header.comm[..COMM_LEN]);
            // A process that is gone keeps what was learnt while it lived.
            if fresh || !unwinder.mappings.is_empty() {
                self.processes.insert(
                    pid,
                    Process {
                        comm,
                        unwinder,
                        root,
                    },
                );
            }
        }
    }

    /// Unwinds with the mappings as last read.
    fn walk_known(&mut self, header: &SnapshotHeader, stack: &StackCopy) -> Walk {
        let process = self.processes.get_mut(&header.tgid).expect("read before");
        process.comm = procfs::comm_from_bytes(&header.comm[..COMM_LEN]);
        if process.unwinder.mappings.is_empty() {
            self.losses.unmapped += 1;
        }
        process.unwinder.walk(&mut self.cache, stack)
    }

    /// Turns addresses into frames: module and file offset, while the mappings are known.
    fn frames(&mut self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(addresses.len());
        for (i, &address) in addresses.iter().enumerate() {
            let process = &self.processes[&pid];
            let mapping = process.unwinder.mapping_of(address).cloned();
            let frame = match mapping {
                // Files, and the regions the kernel names (`[vdso]`); not anonymous memory.
                Some(mapping) if mapping.is_file() || mapping.path.starts_with('[') => {
                    let module = Module {
                        open_path: if mapping.is_file() {
                            format!("{}{}", process.root, mapping.path)
                        } else {
                            String::new()
                        },
                        path: mapping.path.clone(),
                    };
                    let next = u32::try_from(self.modules.len()).unwrap_or(u32::MAX);
                    let id = *self.module_ids.entry(module.clone()).or_insert(next);
                    if id == next {
                        self.modules.push(module);
                    }
                    Frame {
                        module: Some(id),
                        offset: mapping.file_offset(address),
                        returns: i > 0,
                    }
                }
                _ => Frame {
                    module: None,
                    offset: address,
                    returns: i > 0,
                },
            };
            frames.push(frame);
        }
        frames
    }

    fn intern(&mut self, stack: Stack) -> StackId {
        match self.stack_ids.entry(stack) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                let id = StackId::try_from(self.stacks.len()).unwrap_or(StackId::MAX);
                self.stacks.push(entry.key().clone());
                entry.insert(id);
                id
            }
        }
    }

    /// Teaches the kernel to recognise this stack at this place. False if it cannot.
    fn teach(
        &mut self,
        header: &SnapshotHeader,
        kind: EventKind,
        stack: &StackCopy,
        walk: &Walk,
        id: StackId,
        kernel: &mut dyn Teach,
    ) -> bool {
        let Some(words) = word_indexes(header.sp, &walk.reads) else {
            return false;
        };
        let uses_bp = self.uses_bp(header, stack, walk);
        let site = SiteKey {
            tgid: header.tgid,
            _pad: 0,
            ip: header.ip,
            sp: header.sp,
        };
        let place = self.places.entry(site).or_default();
        if place.hopeless {
            return false;
        }
        let before = (place.words.len(), place.uses_bp);
        for word in words {
            if !place.words.contains(&word) {
                place.words.push(word);
            }
        }
        place.uses_bp |= uses_bp;
        if place.words.len() > RECIPE_WORDS {
            place.hopeless = true;
            return false;
        }
        if (place.words.len(), place.uses_bp) != before || before.0 == 0 {
            let mut recipe = Recipe {
                len: place.words.len() as u32,
                window: 8 * (u32::from(*place.words.iter().max().unwrap_or(&0)) + 1),
                uses_bp: u32::from(place.uses_bp),
                _pad: 0,
                words: [0; RECIPE_WORDS],
            };
            recipe.words[..place.words.len()].copy_from_slice(&place.words);
            if !kernel.recipe(site, &recipe) {
                return false;
            }
        }
        let mut hash = hash_seed(
            header.ip,
            header.sp,
            if place.uses_bp { header.bp } else { 0 },
        );
        for &word in &place.words {
            let value = stack.word(header.sp + 8 * u64::from(word));
            hash = hash_word(hash, value.unwrap_or(0));
        }
        let key = StackKey {
            tgid: header.tgid,
            kind: kind as u32,
            hash,
        };
        if self.known.insert(key, id).is_none() {
            return kernel.confirm(key);
        }
        true
    }

    /// Whether the frame pointer register took part: the same unwinding with another value in
    /// it reads or finds something else.
    fn uses_bp(&mut self, header: &SnapshotHeader, stack: &StackCopy, walk: &Walk) -> bool {
        let other = StackCopy {
            bp: stack.bp ^ 0x5555_5555_5555_5550,
            ..*stack
        };
        let process = &self.processes[&header.tgid];
        process.unwinder.walk(&mut self.cache, &other) != *walk
    }

    /// Every process's stacks with their counts: the kernel's (read from its tables: counted
    /// on known stacks, and pending on stacks sent whole) added to those counted here. Busiest
    /// process first, busiest stack first.
    pub fn report(&self, kernel: &KernelCounts) -> Vec<ProcessStacks> {
        let mut counts: HashMap<(u32, StackId), [u64; 2]> = self.counted.clone();
        for (table, ids) in [
            (&kernel.known, &self.known),
            (&kernel.pending, &self.pending),
        ] {
            for (key, n) in table {
                let (Some(&id), Some(kind)) = (ids.get(key), EventKind::from_u32(key.kind)) else {
                    continue;
                };
                if let Some(count) = counts
                    .entry((key.tgid, id))
                    .or_default()
                    .get_mut(kind as usize)
                {
                    *count += n;
                }
            }
        }
        let mut by_process: HashMap<u32, Vec<(StackId, [u64; 2])>> = HashMap::new();
        for ((pid, id), n) in counts {
            by_process.entry(pid).or_default().push((id, n));
        }
        let mut report: Vec<ProcessStacks> = by_process
            .into_iter()
            .map(|(pid, mut stacks)| {
                stacks.sort_by_key(|&(id, n)| (std::cmp::Reverse(n[0] + n[1]), id));
                ProcessStacks {
                    pid,
                    comm: self.comm(pid).unwrap_or_default().to_owned(),
                    stacks,
                }
            })
            .collect();
        report.sort_by_key(|p| (std::cmp::Reverse(total(p)), p.pid));
        report
    }
}

/// What the kernel's tables counted.
#[derive(Default)]
pub struct KernelCounts {
    /// On stacks userspace taught it.
    pub known: Vec<(StackKey, u64)>,
    /// On stacks on their way to userspace, by the whole copy's hash.
    pub pending: Vec<(StackKey, u64)>,
}

/// A process's events, all stacks and kinds.
pub fn total(process: &ProcessStacks) -> u64 {
    process.stacks.iter().map(|(_, n)| n[0] + n[1]).sum()
}

fn read_header(record: &[u8]) -> Option<SnapshotHeader> {
    let bytes = record.get(..size_of::<SnapshotHeader>())?;
    // SAFETY: `SnapshotHeader` is plain integers, `repr(C)` without padding; any bytes of its
    // size are a valid value, read unaligned.
    Some(unsafe { bytes.as_ptr().cast::<SnapshotHeader>().read_unaligned() })
}

/// The stack words (8-byte indexes above `sp`) an unwinding read, first read first, if a recipe
/// can name them all.
fn word_indexes(sp: u64, reads: &[u64]) -> Option<Vec<u16>> {
    let mut words = Vec::new();
    let mut seen = BTreeSet::new();
    for &address in reads {
        let Some(offset) = address.checked_sub(sp) else {
            // Below the stack pointer: never readable, the same for every stack here.
            continue;
        };
        if offset >= STACK_BYTES as u64 {
            continue;
        }
        if offset % 8 != 0 {
            return None;
        }
        let word = u16::try_from(offset / 8).ok()?;
        if seen.insert(word) {
            words.push(word);
        }
    }
    Some(words)
}

/// `/proc/PID/root` when the process sees another root than memtrace, else empty.
fn own_root(pid: u32) -> String {
    let theirs = std::fs::read_link(format!("/proc/{pid}/root"));
    let ours = std::fs::read_link("/proc/self/root");
    match (theirs, ours) {
        (Ok(theirs), Ok(ours)) if theirs == ours => String::new(),
        _ => format!("/proc/{pid}/root"),
    }
}
