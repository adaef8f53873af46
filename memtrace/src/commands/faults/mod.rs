//! `memtrace faults`: per-process minor/major page-fault rates, counted in the kernel.
//!
//! Explicit `--pid` targets are counted with perf's own counting events (`counters`): no program
//! runs on any fault. The whole system, `--comm`, `-- COMMAND` and `--threads` are counted by
//! the `faults` object's programs (`bpf::faults`); `--by` by the `attribution` object's
//! (`source` hides which). Either way, each interval reads the counts, turns them into rates,
//! names the rows (`enrich::names`), writes them and retires exited processes; the end is a
//! summary.

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
};
use tokio::time::{Interval, MissedTickBehavior, interval_at};

use crate::{
    aggregate::faults::{FaultAggregator, Row, busiest},
    bpf::{faults::Sample, targets::Filter},
    cli::{FaultsArgs, FaultsBy},
    enrich::names,
    error::Failure,
    model::{faults::Counts, time::Timestamp},
    output::{
        Sink,
        faults::{Command, Interval as IntervalRecord, Rate, Start, Summary, Total, Totals},
    },
    pipelines::attributed::Attribution,
    session::{self, End, Ending, Job, Session, Target},
    sys::procfs,
};

mod source;

use source::Source;

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
        let source = Source::start(config, session)?;

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
            counted_by: source.counted_by(),
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

    /// Takes a reading into the aggregator; returns every live key's row, and the samples.
    fn take_reading(&mut self, elapsed: Duration) -> anyhow::Result<(Vec<Row>, Vec<Sample>)> {
        let samples = self.source.read()?;
        for sample in &samples {
            if self.aggregator.comm(&sample.key).is_none() {
                names::refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
            }
        }
        let counts: Vec<(FaultKey, Counts)> = samples.iter().map(|s| (s.key, s.counts)).collect();
        let rows = self.aggregator.update(&counts, elapsed);
        Ok((rows, samples))
    }

    /// Forgets a process (thread) that has exited and was read for the last time.
    fn retire(&mut self, key: FaultKey) -> anyhow::Result<()> {
        self.source.retire(key)?;
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
        match self.source.attributed() {
            Some(attributed) => tokio::select! {
                _ = self.ticker.tick() => Ok(Wake::Tick),
                ready = attributed.readable() => ready.map(|()| Wake::Snapshots),
            },
            None => {
                self.ticker.tick().await;
                Ok(Wake::Tick)
            }
        }
    }

    /// One interval: a reading, its rows, and exited processes retired. Or stacks to learn.
    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        if let Some(attributed) = self.source.attributed() {
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
            .filter(|key| !names::is_alive(key))
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
            names::refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
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
        let dropped = self.source.drops()?;
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
        if let Some(attributed) = self.source.attributed() {
            attributed.drain();
        }
        // A last reading, complete for every target that has exited, with final names.
        let (_, samples) = self.take_reading(Duration::ZERO)?;
        for sample in &samples {
            names::refresh_comm(&mut self.aggregator, self.config.per_thread, sample);
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
        if let Some(attributed) = self.source.attributed() {
            attributed.report(
                sink,
                self.config.flamegraph.as_deref(),
                self.config.pprof.as_deref(),
                ending.duration,
            )?;
        }
        let dropped = self.source.drops()?;
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
        self.source.release();
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
