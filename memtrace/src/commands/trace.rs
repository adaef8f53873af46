//! `memtrace trace`: strace-like tracing of the allocation syscalls, paired and filtered in the
//! kernel.
//!
//! Flow: flags → [`TraceConfig`] → the `syscalls` object loaded (record layouts from tracefs,
//! filters, tables sized by the flags) and attached → targets registered (or the command
//! spawned) → the ring buffer drained into lines or JSON until the session ends → the kernel's
//! per-syscall statistics as the summary.

use std::{io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use memtrace_common::{
    DropSource,
    stacks::MAX_STACKS,
    syscalls::{MAX_PENDING, MAX_PENDING_TARGETED, stacks_of},
    targets::TargetFlags,
};
use tokio::time::{Interval, MissedTickBehavior, interval};

use crate::{
    bpf::{
        self, Loaded,
        syscalls::{Item, KernelFilter, Options, Records, StackOptions},
        targets::{Filter, TargetTable},
        tracepoints::Release,
    },
    cli::TraceArgs,
    enrich::fds,
    error::Failure,
    output::{
        self, Format, Sink,
        trace::{CallRecord, Start, Summary},
    },
    pipelines::call_stacks::CallStacks,
    session::{self, End, Ending, Job, Session, Target},
    sys::clock::WallClock,
    syscalls::{self, Syscall},
};

/// How often the ring buffer is drained when the kernel has not signalled a backlog.
const POLL: Duration = Duration::from_millis(20);
/// How often losses are checked for, to warn while tracing.
const DROP_CHECK: Duration = Duration::from_secs(1);
/// Records handled before the loop looks at signals and timers again.
const BATCH: usize = 65_536;

/// Validated `trace` flags.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub session: session::Options,
    pub follow: bool,
    pub syscalls: Vec<Syscall>,
    pub filter: KernelFilter,
    /// Capacity of the kernel's table of traced threads.
    pub max_threads: u32,
    /// `-c`: only a summary at the end (with `stacks`, per stack, from the records).
    pub summary: bool,
    /// With each call's user stack, and this capacity of the kernel's stack tables.
    pub stacks: Option<u32>,
    /// With each call's kernel stack too.
    pub kernel_stacks: bool,
    /// `-c --stack`: where to write the calls per stack as a pprof profile.
    pub pprof: Option<PathBuf>,
}

impl TryFrom<TraceArgs> for TraceConfig {
    type Error = Failure;

    fn try_from(args: TraceArgs) -> Result<Self, Failure> {
        let syscalls = syscalls::parse_list(&args.syscalls)?;
        if args.follow && args.targets.pids.is_empty() && args.targets.command.is_empty() {
            return Err(Failure::Usage(
                "-f/--follow follows the children of --pid targets (a COMMAND is always followed; \
                 without a target every process is traced already)"
                    .into(),
            ));
        }
        if let Some(path) = &args.pprof {
            if !(args.summary && args.stack) {
                return Err(Failure::Usage(
                    "--pprof writes the calls counted per stack: add -c --stack (-c -k)".into(),
                ));
            }
            output::create_file(path)?;
        }
        let session = super::session_options(
            args.targets,
            None,
            Format::json(args.report.json),
            args.report,
        )?;
        let default_threads = match session.target {
            Target::System => MAX_PENDING,
            _ => MAX_PENDING_TARGETED,
        };
        Ok(TraceConfig {
            follow: args.follow || matches!(session.target, Target::Command(_)),
            session,
            syscalls,
            filter: KernelFilter {
                // Per stack, the calls are counted here, from their records.
                count_only: args.summary && !args.stack,
                failed_only: args.failed,
                min_size: args.min_size.unwrap_or(0),
                per_process: false,
            },
            max_threads: args.max_threads.unwrap_or(default_threads),
            summary: args.summary,
            kernel_stacks: args.kernel_stack,
            stacks: args.stack.then(|| args.max_stacks.unwrap_or(MAX_STACKS)),
            pprof: args.pprof,
        })
    }
}

impl TraceConfig {
    fn filter(&self) -> Filter {
        self.session.target.filter(self.follow)
    }

    fn describe(&self) -> (&'static str, String) {
        let (mode, description) = self.session.target.describe();
        let follow = matches!(self.session.target, Target::Pids(_)) && self.follow;
        (
            mode,
            format!(
                "{description}{}",
                if follow { " and their children" } else { "" }
            ),
        )
    }
}

pub async fn execute(args: TraceArgs) -> anyhow::Result<u8> {
    let config = TraceConfig::try_from(args)?;
    let mut session = Session::open(&config.session)?;
    let job = Trace::start(&config, &mut session)?;
    session.run(job).await
}

/// The `trace` job: drains the calls the kernel completed.
struct Trace<'a> {
    config: &'a TraceConfig,
    loaded: Loaded,
    /// `None` with `-c`: no record crosses.
    records: Option<Records>,
    /// With `--stack`.
    stacks: Option<CallStacks>,
    clock: WallClock,
    poll: Interval,
    drop_check: Interval,
    received: u64,
    undecodable: u64,
    lost_warned: u64,
}

/// What wakes the job.
enum Wake {
    Records,
    DropCheck,
}

impl<'a> Trace<'a> {
    fn start(config: &'a TraceConfig, session: &mut Session) -> anyhow::Result<Trace<'a>> {
        let mut loaded = bpf::syscalls::load(&Options {
            syscalls: config.syscalls.clone(),
            kernel: config.filter,
            targets: config.filter(),
            max_threads: config.max_threads,
            max_process_keys: 1,
            stacks: config.stacks.map(|max_stacks| StackOptions {
                of: stacks_of::EVERY_CALL,
                max_stacks,
            }),
            kernel_stacks: config.kernel_stacks,
            execs: false,
        })?;
        let flags = if config.follow {
            TargetFlags::COUNT | TargetFlags::FOLLOW
        } else {
            TargetFlags::COUNT
        };
        for pid in session.watched().pids() {
            loaded.ebpf.insert(pid, flags)?;
        }
        let records = if config.filter.count_only {
            None
        } else {
            Some(Records::open(&mut loaded.ebpf)?)
        };
        let stacks = match config.stacks {
            Some(_) => Some(CallStacks::open(&mut loaded.ebpf, config.kernel_stacks)?),
            None => None,
        };
        if let Target::Command(argv) = &config.session.target {
            session.spawn(argv, &mut loaded.ebpf)?;
        }
        let start = Start {
            targets: session.targets(config.describe()),
            syscalls: &config.syscalls,
        };
        session.sink().emit(&start).context("write the report")?;
        let mut poll = interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drop_check = interval(DROP_CHECK);
        drop_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Trace {
            config,
            loaded,
            records,
            stacks,
            clock: WallClock::now(),
            poll,
            drop_check,
            received: 0,
            undecodable: 0,
            lost_warned: 0,
        })
    }

    /// Writes the waiting calls (up to one batch), then flushes; returns how many were read.
    fn drain(&mut self, sink: &mut Sink) -> io::Result<usize> {
        let Some(records) = self.records.as_mut() else {
            return Ok(0);
        };
        let mut result = Ok(());
        let (clock, received, undecodable) =
            (self.clock, &mut self.received, &mut self.undecodable);
        let mut stacks = self.stacks.as_mut();
        let summary_only = self.config.summary;
        let n = records.drain(BATCH, |item| match item {
            Item::Stack(bytes) => {
                if let Some(stacks) = stacks.as_mut() {
                    stacks.take(bytes);
                }
            }
            Item::Call(Ok(mut call)) => {
                *received += 1;
                let stack = stacks.as_mut().and_then(|stacks| stacks.of(&call));
                let kernel = stacks
                    .as_mut()
                    .map(|stacks| stacks.kernel_frames(&call))
                    .unwrap_or_default();
                if summary_only {
                    if let Some(stacks) = stacks.as_mut() {
                        stacks.count(&call, stack);
                    }
                    return;
                }
                fds::name_fd(&mut call);
                if result.is_ok() {
                    let stack = stack.map(|id| {
                        let mut frames = kernel;
                        frames.extend(stacks.as_mut().map(|s| s.named(id)).unwrap_or_default());
                        frames
                    });
                    result = sink.emit(&CallRecord {
                        ts_ns: clock.unix_ns(call.start_ns),
                        call: &call,
                        stack: stack.as_deref(),
                    });
                }
            }
            Item::Exec(_) => {}
            Item::Call(Err(err)) => {
                *undecodable += 1;
                log::warn!("undecodable record from the kernel: {err}");
            }
        });
        result?;
        sink.flush()?;
        Ok(n)
    }

    fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        bpf::syscalls::drops(&self.loaded.ebpf, false)
    }

    fn warn_about_drops(&mut self) -> anyhow::Result<()> {
        let lost: u64 = self.drops()?.iter().map(|&(_, n)| n).sum();
        if lost > self.lost_warned {
            log::warn!("{lost} syscall records lost so far (the reader fell behind)");
            self.lost_warned = lost;
        }
        Ok(())
    }
}

impl Job for Trace<'_> {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        let backlog = async {
            match self.records.as_mut() {
                Some(records) => records.backlog().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = backlog => { ready?; Ok(Wake::Records) }
            _ = self.poll.tick() => Ok(Wake::Records),
            _ = self.drop_check.tick() => Ok(Wake::DropCheck),
        }
    }

    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        match wake {
            Wake::Records => {
                self.drain(sink).context("write the report")?;
            }
            Wake::DropCheck => self.warn_about_drops()?,
        }
        Ok(None)
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        // Every call the targets completed is in the ring by now: take the rest.
        if ending.end != End::OutputClosed {
            while self.drain(sink).context("write the report")? == BATCH {}
        }
        if let (Some(stacks), true) = (&mut self.stacks, self.config.summary) {
            let report = stacks.report();
            sink.emit(&report)?;
            if let Some(path) = &self.config.pprof {
                report.profile().ending_now(ending.duration).write(path)?;
            }
        }
        let stats = bpf::syscalls::stats(&self.loaded.ebpf, &self.config.syscalls)?;
        let dropped = self.drops()?;
        sink.emit(&Summary {
            duration_s: ending.duration.as_secs_f64(),
            reason: ending.end.reason(),
            records: self.received,
            undecodable: self.undecodable,
            syscalls: &stats,
            dropped: &dropped,
            kernel_stacks_missing: self.stacks.as_ref().and_then(|s| s.kernel_missing()),
            command: ending.command,
            table: self.config.summary,
        })?;
        Ok(())
    }

    fn release(self) {
        drop(self.records);
        self.loaded.release(Release::Background);
    }
}
