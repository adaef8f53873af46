//! `memtrace trace`: strace-like tracing of the allocation syscalls, paired and filtered in the
//! kernel.
//!
//! Flow: flags → [`TraceConfig`] → globals (record layouts from tracefs, filters) → load and
//! attach → register targets (or spawn the command) → drain the ring buffer into lines or JSON
//! until the targets exit or a signal → the kernel's per-syscall statistics as the summary.

use std::{io, path::PathBuf, time::Duration, time::Instant};

use anyhow::Context as _;
use aya::Ebpf;
use memtrace_common::{DropSource, targets::TargetFlags};
use tokio::time::{MissedTickBehavior, interval};

use super::lifecycle::{self, End, Endings, Watched};
use crate::{
    bpf::{
        self, Globals,
        syscalls::{KernelFilter, Records},
        targets::{self, Filter},
    },
    cli::TraceArgs,
    error::Failure,
    output::{
        self,
        trace::{self as out, Start, Summary, TraceOutput, WallClock},
    },
    pidfd::PidFd,
    privileges, spawn,
    syscalls::{self, Syscall},
};

/// How often the ring buffer is drained when the kernel has not signalled a backlog.
const POLL: Duration = Duration::from_millis(20);
/// How often losses are checked for, to warn while tracing.
const DROP_CHECK: Duration = Duration::from_secs(1);
/// Records handled before the loop looks at signals and timers again.
const BATCH: usize = 65_536;

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    System,
    Pids(Vec<u32>),
    Command(Vec<String>),
}

/// Validated `trace` flags.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub target: Target,
    pub follow: bool,
    pub syscalls: Vec<Syscall>,
    pub filter: KernelFilter,
    pub json: bool,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
}

impl TryFrom<TraceArgs> for TraceConfig {
    type Error = Failure;

    fn try_from(args: TraceArgs) -> Result<Self, Failure> {
        let syscalls = syscalls::parse_list(&args.syscalls)?;
        if args.follow && args.pids.is_empty() && args.command.is_empty() {
            return Err(Failure::Usage(
                "-f/--follow follows the children of --pid targets (a COMMAND is always followed; \
                 without a target every process is traced already)"
                    .into(),
            ));
        }
        let target = if !args.command.is_empty() {
            Target::Command(args.command)
        } else if !args.pids.is_empty() {
            let mut pids = args.pids;
            pids.sort_unstable();
            pids.dedup();
            Target::Pids(pids)
        } else {
            Target::System
        };
        Ok(TraceConfig {
            follow: args.follow || matches!(target, Target::Command(_)),
            target,
            syscalls,
            filter: KernelFilter {
                count_only: args.summary,
                failed_only: args.failed,
                min_size: args.min_size.unwrap_or(0),
                per_process: false,
            },
            json: args.json,
            output: args.output,
            duration: args.duration,
        })
    }
}

impl TraceConfig {
    fn filter(&self) -> Filter {
        match self.target {
            Target::System => Filter::All,
            _ => Filter::Targets {
                follow_forks: self.follow,
            },
        }
    }

    fn describe(&self) -> (&'static str, String) {
        match &self.target {
            Target::System => ("system", "all processes".into()),
            Target::Pids(pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                let follow = if self.follow {
                    " and their children"
                } else {
                    ""
                };
                ("pids", format!("PID {}{follow}", list.join(", ")))
            }
            Target::Command(argv) => (
                "command",
                format!("`{}` and its descendants", lifecycle::shell_words(argv)),
            ),
        }
    }
}

pub async fn execute(args: TraceArgs) -> anyhow::Result<u8> {
    let config = TraceConfig::try_from(args)?;
    // Every usage error (exit 2) comes before the privilege check, so it needs no root.
    let out = output::open(config.output.as_deref())?;
    privileges::require()?;
    let watched = match &config.target {
        Target::Pids(pids) => lifecycle::watch(pids)?,
        _ => Vec::new(),
    };
    let mut session = Session::start(&config, out, watched)?;
    session.run().await
}

/// One tracing session: the loaded programs, the targets, and the report so far.
struct Session<'a> {
    config: &'a TraceConfig,
    ebpf: Ebpf,
    records: Option<Records>,
    out: TraceOutput,
    watched: Watched,
    started: Instant,
    received: u64,
    undecodable: u64,
    lost_warned: u64,
}

impl<'a> Session<'a> {
    fn start(
        config: &'a TraceConfig,
        out: Box<dyn io::Write>,
        watched: Vec<PidFd>,
    ) -> anyhow::Result<Self> {
        let filter = config.filter();
        let mut globals = Globals::default();
        filter.configure(&mut globals)?;
        bpf::syscalls::configure(&mut globals, &config.syscalls, config.filter)?;

        let mut ebpf = bpf::load(&globals)?;
        bpf::forward_kernel_logs(&mut ebpf);
        if config.follow {
            targets::attach_fork_follower(&mut ebpf)?;
        }
        let flags = if config.follow {
            TargetFlags::COUNT | TargetFlags::FOLLOW
        } else {
            TargetFlags::COUNT
        };
        for pidfd in &watched {
            targets::insert(&mut ebpf, pidfd.pid(), flags)?;
        }
        let records = if config.filter.count_only {
            None
        } else {
            Some(Records::open(&mut ebpf)?)
        };
        bpf::syscalls::attach(&mut ebpf, &config.syscalls, config.filter)?;
        let command = match &config.target {
            Target::Command(argv) => Some(spawn::spawn_as_target(&mut ebpf, argv)?),
            _ => None,
        };

        let (mode, description) = config.describe();
        let watched = Watched {
            pidfds: watched,
            command,
        };
        let pids = watched.pids();
        let mut out =
            TraceOutput::new(out, config.json, config.filter.count_only, WallClock::now());
        out.start(&Start {
            mode,
            description: &description,
            pids: &pids,
            syscalls: &config.syscalls,
        })
        .context("write the report")?;

        Ok(Session {
            config,
            ebpf,
            records,
            out,
            watched,
            started: Instant::now(),
            received: 0,
            undecodable: 0,
            lost_warned: 0,
        })
    }

    async fn run(&mut self) -> anyhow::Result<u8> {
        let mut endings = Endings::install(self.config.duration)?;
        let mut poll = interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drop_check = interval(DROP_CHECK);
        drop_check.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let end = loop {
            let backlog = async {
                match self.records.as_mut() {
                    Some(records) => records.backlog().await,
                    None => std::future::pending().await,
                }
            };
            let drain = tokio::select! {
                ready = backlog => { ready?; true }
                _ = poll.tick() => true,
                _ = drop_check.tick() => { self.warn_about_drops()?; false }
                end = endings.next(&self.watched) => break end,
            };
            if drain {
                match self.drain() {
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break End::OutputClosed,
                    Err(err) => return Err(err).context("write the report"),
                }
            }
        };

        let command = self.watched.finish_command(end).await?;
        // Every call the targets completed is in the ring by now: take the rest.
        if end != End::OutputClosed {
            loop {
                match self.drain() {
                    Ok(BATCH) => continue,
                    Ok(_) => break,
                    Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break,
                    Err(err) => return Err(err).context("write the report"),
                }
            }
        }
        let summary = Summary {
            duration_s: self.started.elapsed().as_secs_f64(),
            reason: end.reason(),
            records: self.received,
            undecodable: self.undecodable,
            syscalls: bpf::syscalls::stats(&self.ebpf, &self.config.syscalls)?,
            dropped: bpf::faults::drops(&self.ebpf)?
                .into_iter()
                .filter(|&(source, _)| out::is_syscall_loss(source))
                .collect(),
            command,
        };
        if let Err(err) = self.out.summary(&summary)
            && err.kind() != io::ErrorKind::BrokenPipe
        {
            return Err(err).context("write the summary");
        }
        Ok(lifecycle::exit_status(command))
    }

    /// Writes the waiting calls (up to one batch), then flushes; returns how many were read.
    fn drain(&mut self) -> io::Result<usize> {
        let Some(records) = self.records.as_mut() else {
            return Ok(0);
        };
        let mut result = Ok(());
        let (out, received, undecodable) =
            (&mut self.out, &mut self.received, &mut self.undecodable);
        let n = records.drain(BATCH, |record| match record {
            Ok(call) => {
                *received += 1;
                if result.is_ok() {
                    result = out.call(&call);
                }
            }
            Err(err) => {
                *undecodable += 1;
                log::warn!("undecodable record from the kernel: {err}");
            }
        });
        result?;
        out.flush()?;
        Ok(n)
    }

    fn warn_about_drops(&mut self) -> anyhow::Result<()> {
        let lost: u64 = bpf::faults::drops(&self.ebpf)?
            .into_iter()
            .filter(|&(source, _)| is_loss(source))
            .map(|(_, n)| n)
            .sum();
        if lost > self.lost_warned {
            log::warn!("{lost} syscall records lost so far (the reader fell behind)");
            self.lost_warned = lost;
        }
        Ok(())
    }
}

fn is_loss(source: DropSource) -> bool {
    out::is_syscall_loss(source)
}
