//! `memtrace leaks`: what the targets keep, by the stack that took it. Two levels, one job
//! each: the regions they map and keep (`mappings`, from the allocation syscalls), or the
//! blocks their allocator hands out and they do not free (`malloc`, uprobes).

mod malloc;
mod mappings;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use memtrace_common::{allocs::MAX_ALLOCATIONS, stacks::MAX_STACKS};
use tokio::time::{Interval, MissedTickBehavior, interval, interval_at};

use crate::{
    cli::LeaksArgs,
    error::Failure,
    output::{
        Sink, folded,
        leaks::{Leaks, Level},
    },
    session::{self, Ending, Session, Target},
};

/// How often the kernel's rings are drained when it has not signalled a backlog.
const POLL: Duration = Duration::from_millis(20);
/// Stacks per report by default.
const DEFAULT_TOP: usize = 10;

/// Validated `leaks` flags.
#[derive(Clone, Debug)]
pub struct LeaksConfig {
    pub session: session::Options,
    pub interval: Duration,
    pub min_age: Duration,
    pub top: usize,
    pub flamegraph: Option<PathBuf>,
    /// Where to write the final report as a pprof profile.
    pub pprof: Option<PathBuf>,
    pub max_stacks: u32,
    /// `--malloc`, with its options.
    pub malloc: Option<MallocOptions>,
}

/// How `--malloc` records.
#[derive(Clone, Debug)]
pub struct MallocOptions {
    pub sample: u32,
    pub min_size: u64,
    pub allocator: Option<PathBuf>,
    /// `--max-allocations`, if given (the default depends on the kernel: `max_allocations`).
    pub max_allocations: Option<u32>,
}

impl TryFrom<LeaksArgs> for LeaksConfig {
    type Error = Failure;

    fn try_from(args: LeaksArgs) -> Result<Self, Failure> {
        let format = super::stacks_format(&args.stack_files, &args.report)?;
        let session = super::session_options(args.targets, None, format, args.report)?;
        if session.target == Target::System {
            return Err(Failure::Usage(
                "leaks needs --pid PID or a COMMAND: every process's mappings would be too much"
                    .into(),
            ));
        }
        let malloc = args.malloc.then(|| MallocOptions {
            sample: args.sample.unwrap_or(1),
            min_size: args.min_size.unwrap_or(0),
            allocator: args.allocator,
            max_allocations: args.max_allocations,
        });
        Ok(LeaksConfig {
            session,
            interval: args.interval,
            min_age: args.min_age.unwrap_or_default(),
            top: super::rows(args.top, DEFAULT_TOP),
            flamegraph: args.stack_files.flamegraph,
            pprof: args.stack_files.pprof,
            max_stacks: args.max_stacks.unwrap_or(MAX_STACKS),
            malloc,
        })
    }
}

pub async fn execute(args: LeaksArgs) -> anyhow::Result<u8> {
    let config = LeaksConfig::try_from(args)?;
    let mut session = Session::open(&config.session)?;
    match &config.malloc {
        Some(options) => {
            let job = malloc::MallocJob::start(&config, options, &mut session)?;
            session.run(job).await
        }
        None => {
            let job = mappings::LeaksJob::start(&config, &mut session)?;
            session.run(job).await
        }
    }
}

/// The timers of a `leaks` job: draining the kernel's ring, and reporting every interval
/// (the first one interval from now).
fn timers(config: &LeaksConfig) -> (Interval, Interval) {
    let mut poll = interval(POLL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let first = tokio::time::Instant::now() + config.interval;
    let mut report = interval_at(first, config.interval);
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    (poll, report)
}

/// Writes a report and, for the final one (the session's `ending`), its flame graph (bytes
/// outstanding per stack) and its pprof profile, as the flags ask.
fn write(
    sink: &mut Sink,
    record: &Leaks,
    config: &LeaksConfig,
    ending: Option<&Ending>,
) -> anyhow::Result<()> {
    sink.emit(record)?;
    let Some(ending) = ending else {
        return Ok(sink.flush()?);
    };
    if let Some(path) = &config.pprof {
        // One allocation in N recorded: each sample stands for N.
        let period = config.malloc.as_ref().map_or(1, |malloc| malloc.sample);
        record
            .profile()
            .period(period)
            .ending_now(ending.duration)
            .write(path)?;
    }
    if let Some(path) = &config.flamegraph {
        let title = match record.level {
            Level::Mappings => "Bytes mapped and kept, by stack",
            Level::Malloc => "Bytes allocated and not freed, by stack",
        };
        folded::flamegraph(&record.folded_lines(), title, "bytes", path)
            .with_context(|| format!("draw the flame graph into {}", path.display()))?;
    }
    sink.flush()?;
    Ok(())
}

/// Live blocks the kernel's table holds: `--max-allocations`, else a million, or, where tables
/// are made whole at load (before Linux 6.1), an eighth of that (about 12 MiB).
pub fn max_allocations(asked: Option<u32>) -> u32 {
    asked.unwrap_or_else(|| {
        if crate::bpf::kernel::hash_maps_preallocated() {
            MAX_ALLOCATIONS / 8
        } else {
            MAX_ALLOCATIONS
        }
    })
}
