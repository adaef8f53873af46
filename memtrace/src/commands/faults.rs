//! `memtrace faults`: per-process minor/major page-fault rates, counted in the kernel.
//!
//! Explicit `--pid` targets are counted with perf's own counting events (`counters`): no program
//! runs on any fault. The whole system, `--comm`, `-- COMMAND` and `--threads` are counted by
//! the `faults` object's programs (`bpf::faults`). Either way, each interval reads the counts,
//! turns them into rates, writes the rows and retires exited processes; the end is a summary.

use std::{
    collections::HashSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use memtrace_common::{
    DropSource,
    faults::{FaultKey, MAX_FAULT_KEYS},
    stacks::MAX_STACKS,
    targets::TargetFlags,
};
use tokio::time::{Interval, MissedTickBehavior, interval_at};

use crate::pipelines::attributed::{Attributed, Attribution};
use crate::{
    aggregate::faults::{FaultAggregator, Row, busiest},
    bpf::{
        self, Loaded, attribution,
        faults::{LOSSES, Options, Sample},
        targets::{Filter, TargetTable},
        tracepoints::Release,
    },
    cli::{FaultsArgs, FaultsBy},
    error::Failure,
    model::faults::Counts,
    model::time::Timestamp,
    output::{
        Sink,
        faults::{Command, Interval as IntervalRecord, Rate, Start, Summary, Total, Totals},
    },
    session::{self, End, Ending, Job, Session, Target},
    sys::{
        counters::{self, OpenError, ProcessCounters},
        procfs,
    },
};

/// Rows per interval when not every target is shown.
const DEFAULT_TOP: usize = 10;

/// Validated `faults` flags.
#[derive(Clone, Debug)]
pub struct FaultsConfig {
    pub session: session::Options,
    pub interval: Duration,
    pub per_thread: bool,
    /// Show the VSZ column (JSON has it regardless).
    pub vsz: bool,
    pub top: usize,
    /// Capacity of the kernel's counting table.
    pub max_processes: u32,
    pub by: FaultsBy,
    /// Where to draw the flame graph of the stacks.
    pub flamegraph: Option<PathBuf>,
    /// Where to write the stacks as a pprof profile.
    pub pprof: Option<PathBuf>,
    /// Capacity of the kernel's stack tables.
    pub max_stacks: u32,
}

impl TryFrom<FaultsArgs> for FaultsConfig {
    type Error = Failure;

    fn try_from(args: FaultsArgs) -> Result<Self, Failure> {
        let by = if args.stacks {
            FaultsBy::Stack
        } else {
            args.by
        };
        if by == FaultsBy::Process
            && (args.stack_files.folded || args.stack_files.flamegraph.is_some())
        {
            return Err(Failure::Usage(
                "--folded and --flamegraph draw stacks: add --stacks".into(),
            ));
        }
        if args.stack_files.pprof.is_some() && by != FaultsBy::Stack {
            return Err(Failure::Usage(
                "--pprof writes the stacks: add --stacks (--by mapping and file have none)".into(),
            ));
        }
        let format = super::stacks_format(&args.stack_files, &args.report)?;
        Ok(FaultsConfig {
            session: super::session_options(args.targets, args.comm, format, args.report)?,
            interval: args.interval,
            per_thread: args.threads,
            vsz: args.vsz,
            top: super::rows(args.top, DEFAULT_TOP),
            max_processes: args.max_processes.unwrap_or(MAX_FAULT_KEYS),
            by,
            flamegraph: args.stack_files.flamegraph,
            pprof: args.stack_files.pprof,
            max_stacks: args.max_stacks.unwrap_or(MAX_STACKS),
        })
    }
}

impl FaultsConfig {
    /// What faults are attributed to, unless they are only counted per process.
    fn attribution(&self) -> Option<Attribution> {
        match self.by {
            FaultsBy::Process => None,
            FaultsBy::Stack => Some(Attribution::Stack),
            FaultsBy::Mapping => Some(Attribution::Mapping),
            FaultsBy::File => Some(Attribution::File),
        }
    }

    fn filter(&self) -> Filter {
        self.session.target.filter(false)
    }

    /// Whether the targets are counted by perf's counting events rather than a program per
    /// fault: explicit processes, each counted as a whole.
    fn counts_with_perf(&self) -> bool {
        matches!(self.session.target, Target::Pids(_))
            && !self.per_thread
            && self.by == FaultsBy::Process
    }

    /// Whether each interval shows every target, rather than only the busiest few.
    fn shows_every_target(&self) -> bool {
        matches!(self.session.target, Target::Pids(_))
    }
}

pub async fn execute(args: FaultsArgs) -> anyhow::Result<u8> {
    let config = FaultsConfig::try_from(args)?;
    let mut session = Session::open(&config.session)?;
    let job = Faults::start(&config, &mut session)?;
    session.run(job).await
}

/// Where the counts come from.
enum Source {
    /// Perf counting events on explicit processes.
    Counters(Vec<ProcessCounters>),
    /// The `faults` object's counting table.
    Kernel(Loaded),
    /// The `attribution` object: counts per stack or mapping, summed per process.
    Attribution(Box<Attributed>),
}

/// The `faults` job: a reading every interval.
struct Faults<'a> {
    config: &'a FaultsConfig,
    source: Source,
    aggregator: FaultAggregator,
    ticker: Interval,
    last: Instant,
}

impl<'a> Faults<'a> {
    /// Sets up counting (targets registered, the command started), and writes the start.
    fn start(config: &'a FaultsConfig, session: &mut Session) -> anyhow::Result<Faults<'a>> {
        let pids = session.watched().pids();
        let mut source = match count_with_perf(config, &pids)? {
            Some(counters) => Source::Counters(counters),
            None if let Some(attribution) = config.attribution() => {
                let mut attributed =
                    Attributed::load(config.filter(), attribution, config.max_stacks)?;
                for &pid in &pids {
                    attributed.loaded.ebpf.insert(pid, TargetFlags::COUNT)?;
                }
                Source::Attribution(Box::new(attributed))
            }
            None => {
                let mut loaded = bpf::faults::load(&Options {
                    filter: config.filter(),
                    per_thread: config.per_thread,
                    max_keys: config.max_processes,
                    only_targets: config.counts_with_perf().then_some(pids.len() as u32),
                    memcg: None,
                })?;
                for &pid in &pids {
                    loaded.ebpf.insert(pid, TargetFlags::COUNT)?;
                    bpf::faults::register(&mut loaded.ebpf, pid, config.per_thread)?;
                }
                Source::Kernel(loaded)
            }
        };
        if let Target::Command(argv) = &config.session.target {
            match &mut source {
                Source::Kernel(loaded) => session.spawn(argv, &mut loaded.ebpf)?,
                Source::Attribution(attributed) => {
                    session.spawn(argv, &mut attributed.loaded.ebpf)?
                }
                Source::Counters(_) => {}
            }
        }

        let mut aggregator = FaultAggregator::default();
        if !config.per_thread {
            for &pid in &pids {
                let comm = procfs::read_comm(pid, None).unwrap_or_default();
                aggregator.track(FaultKey { tgid: pid, tid: 0 }, comm);
            }
        }
        let start = Start {
            targets: session.targets(config.session.target.describe()),
            interval_s: config.interval.as_secs_f64(),
            per_thread: config.per_thread,
            counted_by: match source {
                Source::Counters(_) => "perf_counters",
                _ => "programs",
            },
            vsz: config.vsz,
        };
        session.sink().emit(&start).context("write the report")?;

        let now = Instant::now();
        let mut ticker = interval_at((now + config.interval).into(), config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Faults {
            config,
            source,
            aggregator,
            ticker,
            last: now,
        })
    }

    /// One reading of every count.
    fn read(&mut self) -> anyhow::Result<Vec<Sample>> {
        match &mut self.source {
            Source::Counters(counters) => counters
                .iter()
                .map(|process| {
                    Ok(Sample {
                        key: FaultKey {
                            tgid: process.pid(),
                            tid: 0,
                        },
                        counts: process.read().with_context(|| {
                            format!("read the fault counters of process {}", process.pid())
                        })?,
                        comm: String::new(),
                        memcg: 0,
                    })
                })
                .collect(),
            Source::Kernel(loaded) => bpf::faults::read(&loaded.ebpf),
            Source::Attribution(attributed) => attributed.samples(),
        }
    }

    /// What could not be counted so far (nothing, with perf's counters).
    fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        match &self.source {
            Source::Counters(_) => Ok(LOSSES.iter().map(|&source| (source, 0)).collect()),
            Source::Kernel(loaded) => bpf::faults::drops(&loaded.ebpf),
            Source::Attribution(attributed) => attribution::drops(&attributed.loaded.ebpf),
        }
    }

    /// Takes a reading into the aggregator; returns every live key's row, and the samples.
    fn take_reading(&mut self, elapsed: Duration) -> anyhow::Result<(Vec<Row>, Vec<Sample>)> {
        let samples = self.read()?;
        for sample in &samples {
            if self.aggregator.comm(&sample.key).is_none() {
                refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
            }
        }
        let counts: Vec<(FaultKey, Counts)> = samples.iter().map(|s| (s.key, s.counts)).collect();
        let rows = self.aggregator.update(&counts, elapsed);
        Ok((rows, samples))
    }

    /// Forgets a process (thread) that has exited and was read for the last time.
    fn retire(&mut self, key: FaultKey) -> anyhow::Result<()> {
        match &mut self.source {
            Source::Counters(counters) => counters.retain(|process| process.pid() != key.tgid),
            Source::Kernel(loaded) => {
                bpf::faults::remove(&mut loaded.ebpf, &key)?;
                if !procfs::is_alive(key.tgid) {
                    // Unregistered, so that a new process reusing the pid is not taken for it.
                    loaded.ebpf.remove(key.tgid)?;
                }
            }
            Source::Attribution(attributed) => attributed.retire(key.tgid)?,
        }
        self.aggregator.retire(key);
        Ok(())
    }
}

/// What wakes the `faults` job.
enum Wake {
    /// An interval's end.
    Tick,
    /// Stacks sent by the kernel (with `--stacks`).
    Snapshots,
}

impl Job for Faults<'_> {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        match &mut self.source {
            Source::Attribution(attributed) => tokio::select! {
                _ = self.ticker.tick() => Ok(Wake::Tick),
                ready = attributed.readable() => ready.map(|()| Wake::Snapshots),
            },
            _ => {
                self.ticker.tick().await;
                Ok(Wake::Tick)
            }
        }
    }

    /// One interval: a reading, its rows, and exited processes retired. Or stacks to learn.
    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        if let Source::Attribution(attributed) = &mut self.source {
            attributed.drain();
        }
        if let Wake::Snapshots = wake {
            return Ok(None);
        }
        let now = Instant::now();
        let elapsed = now - self.last;
        // Liveness is judged *before* reading, so a retired key's final count is in this read.
        let exited: Vec<FaultKey> = self
            .aggregator
            .live_keys()
            .into_iter()
            .filter(|key| !key_is_alive(key))
            .collect();
        let (rows, samples) = self.take_reading(elapsed)?;
        let rows = if self.config.shows_every_target() {
            rows
        } else {
            busiest(rows, self.config.top)
        };
        // Names change at `exec`: the rows shown get theirs read again.
        let shown: HashSet<FaultKey> = rows.iter().map(|row| row.key).collect();
        for sample in samples.iter().filter(|s| shown.contains(&s.key)) {
            refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
        }
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|mut row| {
                row.comm = self
                    .aggregator
                    .comm(&row.key)
                    .unwrap_or_default()
                    .to_owned();
                row
            })
            .collect();
        let dropped = self.drops()?;
        sink.emit(&IntervalRecord {
            timestamp: Timestamp::now(),
            interval_s: elapsed.as_secs_f64(),
            processes: rows
                .iter()
                .map(|row| Rate::of(row, self.config.per_thread, procfs::memory_kb(row.key.tgid)))
                .collect(),
            dropped: &dropped,
            show_vsz: self.config.vsz,
        })?;
        sink.flush()?;
        warn_about_drops(&dropped);
        self.last = now;
        let read: HashSet<FaultKey> = samples.iter().map(|sample| sample.key).collect();
        for key in exited.into_iter().filter(|key| read.contains(key)) {
            self.retire(key)?;
        }
        Ok(None)
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        if let Source::Attribution(attributed) = &mut self.source {
            attributed.drain();
        }
        // A last reading, complete for every target that has exited, with final names.
        let (_, samples) = self.take_reading(Duration::ZERO)?;
        for sample in &samples {
            refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
        }
        let processes: Vec<Total> = self
            .aggregator
            .totals()
            .into_iter()
            .map(|(key, comm, counts)| Total {
                pid: key.tgid,
                tid: self.config.per_thread.then_some(key.tid),
                comm,
                minor: counts.minor,
                major: counts.major,
            })
            .collect();
        let total = processes
            .iter()
            .fold(Totals { minor: 0, major: 0 }, |t, p| Totals {
                minor: t.minor + p.minor,
                major: t.major + p.major,
            });
        // The stacks (or mappings) come before the summary, always a report's last record.
        if let Source::Attribution(attributed) = &mut self.source {
            attributed.report(
                sink,
                self.config.flamegraph.as_deref(),
                self.config.pprof.as_deref(),
                ending.duration,
            )?;
        }
        let dropped = self.drops()?;
        sink.emit(&Summary {
            timestamp: Timestamp::now(),
            duration_s: ending.duration.as_secs_f64(),
            reason: ending.end.reason(),
            processes,
            total,
            dropped: &dropped,
            command: ending.command.map(Command::of),
            per_thread: self.config.per_thread,
        })?;
        Ok(())
    }

    fn release(self) {
        match self.source {
            Source::Kernel(loaded) => loaded.release(Release::Background),
            Source::Attribution(attributed) => attributed.release(),
            Source::Counters(_) => {}
        }
    }
}

/// Perf's counting events for explicit processes counted whole; `None` when the programs must
/// count instead (other targets, per thread, or a kernel before 5.13).
fn count_with_perf(
    config: &FaultsConfig,
    pids: &[u32],
) -> anyhow::Result<Option<Vec<ProcessCounters>>> {
    if !config.counts_with_perf() {
        return Ok(None);
    }
    if !counters::inherit_thread_supported() {
        log::info!(
            "this kernel cannot count a process's new threads without its children \
             (inherit_thread, Linux 5.13+): counting with a program per fault"
        );
        return Ok(None);
    }
    counters::raise_open_files_limit();
    pids.iter()
        .map(|&pid| ProcessCounters::open(pid).map_err(OpenError::explained))
        .collect::<anyhow::Result<_>>()
        .map(Some)
}

/// A key's current name: from /proc while it lives, else the one the kernel recorded at its
/// last `exec`.
fn refresh_comm(aggregator: &mut FaultAggregator, per_thread: bool, sample: &Sample) {
    let tid = per_thread.then_some(sample.key.tid);
    let comm = procfs::read_comm(sample.key.tgid, tid)
        .or_else(|| Some(sample.comm.clone()).filter(|comm| !comm.is_empty()));
    if let Some(comm) = comm {
        aggregator.set_comm(sample.key, comm);
    }
}

fn key_is_alive(key: &FaultKey) -> bool {
    if key.tid == 0 {
        procfs::is_alive(key.tgid)
    } else {
        procfs::thread_exists(key.tgid, key.tid)
    }
}

fn warn_about_drops(dropped: &[(DropSource, u64)]) {
    for &(source, n) in dropped {
        if n > 0 {
            let hint = match source {
                DropSource::FaultTableFull => "; raise the table with --max-processes",
                _ => "",
            };
            log::warn!("{n} events not counted so far: {}{hint}", source.name());
        }
    }
}
