//! `memtrace leaks --malloc`: uprobes on each target's allocator keep its live blocks in a
//! kernel table (`bpf::allocs`); every interval, and at the end, the table is read in batches
//! and summed per process and stack. Only each new stack's first copy crosses the ring.

use std::collections::HashMap;

use anyhow::Context as _;
use memtrace_common::{
    allocs::{ProcessRecord, RECORD_PROCESS},
    stacks::EventKind,
};
use tokio::time::Interval;

use super::{LeaksConfig, MallocOptions};
use crate::{
    bpf::allocs::{Allocs, Options},
    leaks::{
        allocator::{self, Allocator},
        blocks::{Outstanding, Sums},
    },
    model::{leaks::LeakRow, time::Timestamp},
    output::{
        Sink,
        leaks::{Leaks, Level, MallocCounts, Start, TracedAllocator},
    },
    session::{End, Ending, Job, Session, Target, spawn},
    stacks::{StackId, Stacks, symbols::Symbols},
    sys::clock::monotonic_ns,
};

/// Descendants of a command given uprobes, at most: each process's 17 take ~1.5 s of the
/// kernel's time to release (at memtrace's end, in the background).
const MAX_FOLLOWED: usize = 8;

pub struct MallocJob<'a> {
    config: &'a LeaksConfig,
    allocs: Allocs,
    stacks: Stacks,
    symbols: Symbols,
    /// Each target and the allocator traced in it.
    traced: Vec<(u32, Allocator)>,
    /// A started command's pid, until its mappings show the allocator traced is its own.
    unchecked: Option<u32>,
    /// Descendants traced, and those not, past [`MAX_FOLLOWED`].
    followed: usize,
    unfollowed: u64,
    poll: Interval,
    report: Interval,
}

pub enum Wake {
    Snapshots,
    Report,
}

impl<'a> MallocJob<'a> {
    pub fn start(
        config: &'a LeaksConfig,
        options: &MallocOptions,
        session: &mut Session,
    ) -> anyhow::Result<MallocJob<'a>> {
        let follow = matches!(config.session.target, Target::Command(_));
        let mut allocs = Allocs::load(&Options {
            max_allocations: super::max_allocations(options.max_allocations),
            max_stacks: config.max_stacks,
            min_size: options.min_size,
            sample: options.sample,
            filter: config.session.target.filter(follow),
        })?;
        let forced = options.allocator.as_deref();
        let mut traced = Vec::new();
        let mut unchecked = None;
        match &config.session.target {
            Target::Command(argv) => {
                let program = argv.first().map(String::as_str).unwrap_or_default();
                let path = spawn::resolve_program(program)?;
                let allocator = allocator::of_program(forced.unwrap_or(&path), forced.is_some())?;
                let held = spawn::spawn_held(argv, &path)?;
                allocs.attach(held.pid(), &allocator)?;
                unchecked = Some(held.pid());
                traced.push((held.pid(), allocator));
                session.adopt(held.release()?);
            }
            _ => {
                for pid in session.watched().pids() {
                    let allocator = allocator::of_process(pid, forced)?;
                    allocs.attach(pid, &allocator)?;
                    traced.push((pid, allocator));
                }
            }
        }
        let start = Start {
            targets: session.targets(config.session.target.describe()),
            interval_s: config.interval.as_secs_f64(),
            level: Level::Malloc,
            allocators: traced
                .iter()
                .map(|(pid, allocator)| TracedAllocator {
                    pid: *pid,
                    file: allocator.shown.clone(),
                    functions: allocator.functions.iter().map(|f| f.name).collect(),
                })
                .collect(),
            sample: (options.sample > 1).then_some(options.sample),
        };
        session.sink().emit(&start).context("write the report")?;
        let (poll, report) = super::timers(config);
        Ok(MallocJob {
            config,
            allocs,
            stacks: Stacks::default(),
            symbols: Symbols::default(),
            traced,
            unchecked,
            followed: 0,
            unfollowed: 0,
            poll,
            report,
        })
    }

    /// Learns the new stacks waiting, and follows the command's new processes;
    /// returns how many records were read.
    fn drain(&mut self) -> anyhow::Result<usize> {
        let MallocJob { allocs, stacks, .. } = self;
        let mut processes = Vec::new();
        let n = allocs
            .snapshots
            .drain(|bytes, teach| match decode_process(bytes) {
                Some(record) => processes.push(record),
                None => {
                    stacks.take(bytes, teach);
                }
            });
        for record in processes {
            self.follow(record)?;
        }
        Ok(n)
    }

    /// A followed child is given the command's allocator's uprobes before it runs its `exec`
    /// (up to [`MAX_FOLLOWED`] of them).
    fn follow(&mut self, record: ProcessRecord) -> anyhow::Result<()> {
        let pid = record.pid;
        let MallocJob { allocs, traced, .. } = self;
        // The command's own, first in the list.
        let Some((_, allocator)) = traced.first() else {
            return Ok(());
        };
        if self.followed >= MAX_FOLLOWED {
            if self.unfollowed == 0 {
                log::warn!(
                    "not following more than {MAX_FOLLOWED} processes with --malloc (pid {pid} \
                     and later ones are not traced): each process's uprobes take ~1.5 s of the \
                     kernel's time to take off"
                );
            }
            self.unfollowed += 1;
            return self.allocs.release_child(pid);
        }
        // A child gone already has nothing to trace.
        match allocs.attach(pid, allocator) {
            Ok(_) => self.followed += 1,
            Err(err) => log::debug!("following pid {pid}: {err:#}"),
        }
        self.allocs.release_child(pid)
    }

    /// Once a started command has mapped its allocator, warns if it is not the one traced
    /// (another C library, or an allocator library loaded some other way).
    fn check_command(&mut self) {
        let Some(pid) = self.unchecked else { return };
        let Some((_, traced)) = self.traced.iter().find(|(p, _)| *p == pid) else {
            return;
        };
        // Until its exec, the child is a copy of memtrace.
        let exe = |pid: &str| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe(&pid.to_string()) == exe("self") {
            return;
        }
        // Not mapped yet (its dynamic linker is at work), or gone: look again later.
        let Ok(own) = allocator::of_process(pid, None) else {
            return;
        };
        self.unchecked = None;
        if own.inode != traced.inode {
            log::warn!(
                "the command (pid {pid}) allocates with {}, not {}: its blocks are not seen; \
                 name it with --allocator",
                own.shown,
                traced.shown
            );
        }
    }

    /// The live blocks per process and stack, most bytes first; and the blocks whose stack is
    /// not known.
    fn rows(&mut self) -> anyhow::Result<(Vec<LeakRow>, u64)> {
        let now = monotonic_ns();
        let min_age_ns = u64::try_from(self.config.min_age.as_nanos()).unwrap_or(u64::MAX);
        let mut sums = Sums::new(now, min_age_ns);
        self.allocs.blocks(|key, block| sums.add(key, block))?;
        let mut per_stack: HashMap<(u32, Option<StackId>), Outstanding> = HashMap::new();
        for ((pid, stack), outstanding) in sums.per_stack {
            let id = self.stacks.lookup(pid, EventKind::Allocation, stack);
            per_stack.entry((pid, id)).or_default().add(&outstanding);
        }
        let mut unknown = 0;
        let mut rows = Vec::with_capacity(per_stack.len());
        for ((pid, id), outstanding) in per_stack {
            let (stack, complete) = match id {
                Some(id) => (self.named(id), self.stacks.stack(id).complete),
                None => {
                    unknown += outstanding.blocks;
                    (Vec::new(), false)
                }
            };
            rows.push(LeakRow {
                pid,
                comm: self.comm(pid),
                bytes: outstanding.bytes,
                regions: None,
                blocks: Some(outstanding.blocks),
                resident_bytes: None,
                oldest_s: now.saturating_sub(outstanding.oldest_ns) as f64 / 1e9,
                stack,
                complete,
            });
        }
        rows.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(a.pid.cmp(&b.pid))
                .then(b.oldest_s.total_cmp(&a.oldest_s))
        });
        Ok((rows, unknown))
    }

    fn named(&mut self, id: StackId) -> Vec<crate::model::stacks::Named> {
        self.symbols.stack(&self.stacks, id)
    }

    fn comm(&self, pid: u32) -> String {
        self.stacks
            .comm(pid)
            .map(str::to_owned)
            .or_else(|| crate::sys::procfs::read_comm(pid, None))
            .unwrap_or_default()
    }

    /// Writes a report: an interval's, or with the session's `ending` the final one.
    fn emit(&mut self, sink: &mut Sink, ending: Option<&Ending>) -> anyhow::Result<()> {
        let (rows, unknown) = self.rows()?;
        let stats = self.allocs.stats()?;
        let dropped = self.allocs.drops()?;
        let record = Leaks {
            timestamp: Timestamp::now(),
            last: ending.is_some(),
            level: Level::Malloc,
            total_bytes: rows.iter().map(|row| row.bytes).sum(),
            total_regions: None,
            total_blocks: Some(rows.iter().filter_map(|row| row.blocks).sum()),
            malloc: Some(MallocCounts {
                allocations: stats.allocations,
                recorded: stats.recorded,
                failed: stats.failed,
                frees: stats.frees,
                unmatched_frees: stats.unmatched_frees,
                unpaired_returns: stats.orphan_returns,
                lost_returns: stats.lost_returns,
                unfollowed_processes: self.unfollowed,
                table_bytes: self.allocs.table_bytes(),
            }),
            stacks: rows,
            losses: self.stacks.losses,
            unknown_stacks: unknown,
            dropped: &dropped,
            shown: self.config.top,
        };
        super::write(sink, &record, self.config, ending)
    }
}

/// A followed process's birth, if the record is one (else it is a stack).
fn decode_process(bytes: &[u8]) -> Option<ProcessRecord> {
    let bytes = bytes.get(..size_of::<ProcessRecord>())?;
    // SAFETY: `ProcessRecord` is plain integers, `repr(C)` without padding; any bytes of its
    // size are a valid value, read unaligned.
    let record = unsafe { bytes.as_ptr().cast::<ProcessRecord>().read_unaligned() };
    (record.kind == RECORD_PROCESS).then_some(record)
}

impl Job for MallocJob<'_> {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        tokio::select! {
            ready = self.allocs.snapshots.readable() => { ready?; Ok(Wake::Snapshots) }
            _ = self.poll.tick() => Ok(Wake::Snapshots),
            _ = self.report.tick() => Ok(Wake::Report),
        }
    }

    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        self.drain()?;
        self.check_command();
        if let Wake::Report = wake {
            self.emit(sink, None).context("write the report")?;
        }
        Ok(None)
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        if ending.end != End::OutputClosed {
            while self.drain()? > 0 {}
        }
        self.emit(sink, Some(ending)).context("write the report")
    }

    fn release(self) {
        // Closing every uprobe's link takes the breakpoints out of the targets at once.
        self.allocs.release();
    }
}
