//! `memtrace leaks`, mapping level: the allocation syscalls of the targets (mmap, munmap,
//! mremap, brk) with their stacks, as `trace --stack` takes them, kept as each process's
//! outstanding regions; every interval, and at the end, the regions per stack with their bytes,
//! age and resident share.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use memtrace_common::{
    DropSource,
    syscalls::{MAX_PENDING_TARGETED, stacks_of},
    targets::TargetFlags,
};
use tokio::time::Interval;

use super::LeaksConfig;
use crate::{
    bpf::{
        self, Loaded,
        syscalls::{Item, KernelFilter, Options, Records, StackOptions},
        targets::TargetTable,
        tracepoints::Release,
    },
    leaks::{regions::Regions, resident},
    model::{leaks::LeakRow, time::Timestamp},
    output::{
        Sink,
        leaks::{Leaks, Level, Start},
    },
    pipelines::call_stacks::CallStacks,
    session::{End, Ending, Job, Session, Target},
    stacks::StackId,
    sys::clock::monotonic_ns,
    syscalls::{Call, Syscall},
};

/// Records handled before the loop looks at signals and timers again.
const BATCH: usize = 65_536;
/// The calls that map and unmap.
const SYSCALLS: [Syscall; 4] = [
    Syscall::Mmap,
    Syscall::Munmap,
    Syscall::Mremap,
    Syscall::Brk,
];
/// Bytes of a page: mappings are whole pages.
const PAGE: u64 = 4096;
/// mremap's flag that leaves the old range mapped.
const MREMAP_DONTUNMAP: u64 = 4;

pub struct LeaksJob<'a> {
    config: &'a LeaksConfig,
    loaded: Loaded,
    records: Records,
    stacks: CallStacks,
    /// Each process's outstanding regions, and its name.
    processes: BTreeMap<u32, (String, Regions)>,
    poll: Interval,
    report: Interval,
}

pub enum Wake {
    Records,
    Report,
}

impl<'a> LeaksJob<'a> {
    pub fn start(config: &'a LeaksConfig, session: &mut Session) -> anyhow::Result<LeaksJob<'a>> {
        let follow = matches!(config.session.target, Target::Command(_));
        let mut loaded = bpf::syscalls::load(&Options {
            syscalls: SYSCALLS.to_vec(),
            kernel: KernelFilter {
                count_only: false,
                failed_only: false,
                min_size: 0,
                per_process: false,
            },
            targets: config.session.target.filter(follow),
            max_threads: MAX_PENDING_TARGETED,
            max_process_keys: 1,
            // Only the calls that map need a stack: munmap's never shows.
            stacks: Some(StackOptions {
                of: stacks_of::MAPPING_CALLS,
                max_stacks: config.max_stacks,
            }),
            kernel_stacks: false,
            execs: true,
        })?;
        let flags = if follow {
            TargetFlags::COUNT | TargetFlags::FOLLOW
        } else {
            TargetFlags::COUNT
        };
        for pid in session.watched().pids() {
            loaded.ebpf.insert(pid, flags)?;
        }
        let records = Records::open(&mut loaded.ebpf)?;
        let stacks = CallStacks::open(&mut loaded.ebpf, false)?;
        if let Target::Command(argv) = &config.session.target {
            session.spawn(argv, &mut loaded.ebpf)?;
        }
        let start = Start {
            targets: session.targets(config.session.target.describe()),
            interval_s: config.interval.as_secs_f64(),
            level: Level::Mappings,
            allocators: Vec::new(),
            sample: None,
        };
        session.sink().emit(&start).context("write the report")?;
        let (poll, report) = super::timers(config);
        Ok(LeaksJob {
            config,
            loaded,
            records,
            stacks,
            processes: BTreeMap::new(),
            poll,
            report,
        })
    }

    /// Applies the calls waiting to the processes' regions; returns how many records were read.
    fn drain(&mut self) -> usize {
        let LeaksJob {
            records,
            stacks,
            processes,
            ..
        } = self;
        records.drain(BATCH, |item| match item {
            Item::Stack(bytes) => stacks.take(bytes),
            // A new address space: what the old one kept is gone with it.
            Item::Exec(pid) => {
                processes.remove(&pid);
            }
            Item::Call(Ok(call)) => {
                // The kernel takes the stacks of the calls that map, and only those.
                let stack = maps_memory(&call).then(|| stacks.of(&call)).flatten();
                let (comm, regions) = processes
                    .entry(call.pid)
                    .or_insert_with(|| (call.comm.clone(), Regions::default()));
                comm.clone_from(&call.comm);
                apply(regions, &call, stack);
            }
            Item::Call(Err(err)) => log::warn!("undecodable record from the kernel: {err}"),
        })
    }

    /// The outstanding regions per process and stack, most bytes first.
    fn report(&mut self) -> anyhow::Result<Vec<LeakRow>> {
        let now = monotonic_ns();
        let min_age_ns = u64::try_from(self.config.min_age.as_nanos()).unwrap_or(u64::MAX);
        let mut rows = Vec::new();
        for (&pid, (comm, regions)) in &self.processes {
            let mappings = resident::read(pid);
            let mut per_stack: HashMap<Option<StackId>, (u64, u64, Option<u64>, u64)> =
                HashMap::new();
            for (start, region) in regions.iter() {
                if now.saturating_sub(region.born_ns) < min_age_ns {
                    continue;
                }
                let entry = per_stack.entry(region.stack).or_insert((
                    0,
                    0,
                    mappings.as_ref().map(|_| 0),
                    u64::MAX,
                ));
                entry.0 += region.len;
                entry.1 += 1;
                if let (Some(resident), Some(mappings)) = (entry.2.as_mut(), &mappings) {
                    *resident += resident::of(mappings, start, region.len);
                }
                entry.3 = entry.3.min(region.born_ns);
            }
            for (stack, (bytes, count, resident_bytes, born)) in per_stack {
                let (frames, complete) = match stack {
                    Some(id) => (self.stacks.named(id), self.stacks.complete(id)),
                    None => (Vec::new(), false),
                };
                rows.push(LeakRow {
                    pid,
                    comm: comm.clone(),
                    bytes,
                    regions: Some(count),
                    blocks: None,
                    // None once the process has gone (its smaps with it).
                    resident_bytes: Some(resident_bytes),
                    oldest_s: now.saturating_sub(born) as f64 / 1e9,
                    stack: frames,
                    complete,
                });
            }
        }
        rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.pid.cmp(&b.pid)));
        Ok(rows)
    }

    /// Writes a report: an interval's, or with the session's `ending` the final one.
    fn emit(&mut self, sink: &mut Sink, ending: Option<&Ending>) -> anyhow::Result<()> {
        let rows = self.report()?;
        let dropped = self.drops()?;
        let record = Leaks {
            timestamp: Timestamp::now(),
            last: ending.is_some(),
            level: Level::Mappings,
            total_bytes: rows.iter().map(|row| row.bytes).sum(),
            total_regions: Some(rows.iter().filter_map(|row| row.regions).sum()),
            total_blocks: None,
            malloc: None,
            stacks: rows,
            losses: self.stacks.losses(),
            unknown_stacks: self.stacks.unknown(),
            dropped: &dropped,
            shown: self.config.top,
        };
        super::write(sink, &record, self.config, ending)
    }

    fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        bpf::syscalls::drops(&self.loaded.ebpf, false)
    }
}

/// Whether a completed call mapped memory: a region with a stack.
fn maps_memory(call: &Call) -> bool {
    call.errno().is_none()
        && match call.syscall {
            Syscall::Mmap | Syscall::Mremap => true,
            Syscall::Brk => call.brk_growth().is_some_and(|growth| growth > 0),
            _ => false,
        }
}

/// What a completed call did to the regions.
fn apply(regions: &mut Regions, call: &Call, stack: Option<StackId>) {
    if call.errno().is_some() {
        return;
    }
    let pages = |len: u64| len.div_ceil(PAGE) * PAGE;
    let at = call.start_ns;
    match call.syscall {
        Syscall::Mmap => regions.map(call.ret as u64, pages(call.args[1]), stack, at),
        Syscall::Munmap => regions.unmap(call.args[0], pages(call.args[1])),
        // MREMAP_DONTUNMAP leaves the old range mapped: a new region, as a mapping.
        Syscall::Mremap if call.args[3] & MREMAP_DONTUNMAP != 0 => {
            regions.map(call.ret as u64, pages(call.args[2]), stack, at)
        }
        Syscall::Mremap => regions.remap(
            (call.args[0], pages(call.args[1])),
            (call.ret as u64, pages(call.args[2])),
            stack,
            at,
        ),
        Syscall::Brk => match (call.prev_brk, call.brk_growth()) {
            (Some(prev), Some(growth)) if growth > 0 => {
                regions.map(prev, growth.unsigned_abs(), stack, at)
            }
            (Some(_), Some(growth)) if growth < 0 => {
                regions.unmap(call.ret as u64, growth.unsigned_abs())
            }
            _ => {}
        },
        _ => {}
    }
}

impl Job for LeaksJob<'_> {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        tokio::select! {
            ready = self.records.backlog() => { ready?; Ok(Wake::Records) }
            _ = self.poll.tick() => Ok(Wake::Records),
            _ = self.report.tick() => Ok(Wake::Report),
        }
    }

    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        self.drain();
        if let Wake::Report = wake {
            self.emit(sink, None).context("write the report")?;
        }
        Ok(None)
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        if ending.end != End::OutputClosed {
            while self.drain() == BATCH {}
        }
        self.emit(sink, Some(ending)).context("write the report")
    }

    fn release(self) {
        drop(self.records);
        self.loaded.release(Release::Background);
    }
}
