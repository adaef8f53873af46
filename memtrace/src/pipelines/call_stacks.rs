//! The user stacks of traced calls (`trace --stack`, `leaks`): learnt from the stacks the
//! kernel sends whole on the calls' own ring, taught back to it, named, and counted per stack.

use std::collections::HashMap;

use memtrace_common::stacks::EventKind;

use crate::{
    bpf::stacks::{KernelStacks, StackTables},
    model::stacks::{CallStackRow, Named},
    output::stacks::CallStacks as CallStacksRecord,
    stacks::{StackId, Stacks, symbols::Symbols},
    syscalls::{Call, Syscall},
};

/// The calls' user stacks: learnt from the stacks the kernel sends whole (on the records' ring,
/// before their call), and taught back to it.
pub struct CallStacks {
    /// With `--kernel-stack`.
    kernel_stacks: Option<KernelStacks>,
    tables: StackTables,
    stacks: Stacks,
    symbols: Symbols,
    /// Per thread, the stack it last sent whole, for a call whose record names none (the
    /// kernel's pending table was full).
    last_sent: HashMap<u32, StackId>,
    /// `-c --stack`: calls and bytes per syscall, process and stack.
    counts: HashMap<(Syscall, u32, StackId), (u64, u64)>,
    /// Calls whose stack was not known.
    unknown: u64,
    /// `--kernel-stack`: calls the kernel gave no kernel stack for.
    kernel_missing: u64,
}

impl CallStacks {
    pub fn open(ebpf: &mut aya::Ebpf, kernel: bool) -> anyhow::Result<CallStacks> {
        let kernel_stacks = match kernel {
            true => Some(KernelStacks::open(ebpf)?),
            false => None,
        };
        Ok(CallStacks {
            kernel_stacks,
            tables: StackTables::open(ebpf)?,
            stacks: Stacks::default(),
            symbols: Symbols::default(),
            last_sent: HashMap::new(),
            counts: HashMap::new(),
            unknown: 0,
            kernel_missing: 0,
        })
    }

    pub fn take(&mut self, bytes: &[u8]) {
        if let Some((tid, id)) = self.stacks.take(bytes, &mut self.tables) {
            self.last_sent.insert(tid, id);
        }
    }

    /// The stack of a call.
    pub fn of(&mut self, call: &Call) -> Option<StackId> {
        let last = self.last_sent.remove(&call.tid);
        let id = self
            .stacks
            .lookup(call.pid, EventKind::Syscall, call.stack)
            .or(last);
        if id.is_none() {
            self.unknown += 1;
        }
        id
    }

    /// Whether a stack's unwinding reached its root.
    pub fn complete(&self, id: StackId) -> bool {
        self.stacks.stack(id).complete
    }

    /// What was lost learning stacks.
    pub fn losses(&self) -> crate::model::stacks::StackLosses {
        self.stacks.losses
    }

    /// Calls whose stack was not known.
    pub fn unknown(&self) -> u64 {
        self.unknown
    }

    /// The call's kernel frames, named, innermost first (none without `--kernel-stack`).
    pub fn kernel_frames(&mut self, call: &Call) -> Vec<Named> {
        let Some(kernel) = &mut self.kernel_stacks else {
            return Vec::new();
        };
        let frames = match call.stack.kernel {
            0 => Vec::new(),
            id => kernel.frames(id - 1),
        };
        if frames.is_empty() {
            if self.kernel_missing == 0 {
                log::warn!(
                    "a call came without its kernel stack: some kernels (Debian's 6.1 among \
                     them) give programs on syscall tracepoints only the user's registers, and \
                     no kernel stack; a full or colliding kernel stack table also does it (the \
                     summary counts the calls without one)"
                );
            }
            self.kernel_missing += 1;
        }
        frames
    }

    /// `--kernel-stack`: calls shown without a kernel stack.
    pub fn kernel_missing(&self) -> Option<u64> {
        self.kernel_stacks.as_ref().map(|_| self.kernel_missing)
    }

    /// A stack's frames, named.
    pub fn named(&mut self, id: StackId) -> Vec<Named> {
        self.symbols.stack(&self.stacks, id)
    }

    /// Counts a call under its stack (`-c --stack`).
    pub fn count(&mut self, call: &Call, stack: Option<StackId>) {
        let Some(id) = stack else {
            return;
        };
        let entry = self.counts.entry((call.syscall, call.pid, id)).or_default();
        entry.0 += 1;
        entry.1 += call.bytes();
    }

    /// Calls and bytes per syscall and stack, busiest first.
    pub fn report(&mut self) -> CallStacksRecord {
        let mut counts: Vec<_> = self.counts.iter().map(|(&k, &v)| (k, v)).collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rows = counts
            .into_iter()
            .map(|((syscall, pid, id), (calls, bytes))| CallStackRow {
                syscall: syscall.name(),
                pid,
                comm: self.stacks.comm(pid).unwrap_or_default().to_owned(),
                calls,
                bytes,
                stack: self.named(id),
                complete: self.stacks.stack(id).complete,
            })
            .collect();
        CallStacksRecord {
            stacks: rows,
            losses: self.stacks.losses,
            unknown_stacks: self.unknown,
        }
    }
}
