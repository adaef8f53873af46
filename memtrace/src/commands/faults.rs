//! `memtrace faults`: per-process minor/major page-fault rates, counted in the kernel.
//!
//! Flow: flags → [`FaultsConfig`] → globals → load and attach → register targets → every
//! interval read the counting table, turn it into rates, print → at the end, a summary.

use std::{
    collections::HashSet,
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::Ebpf;
use memtrace_common::{
    COMM_LEN, DropSource,
    faults::{FaultKey, MAX_FIXED_TARGETS},
    globals,
    targets::TargetFlags,
};
use tokio::time::{MissedTickBehavior, interval_at};

use super::lifecycle::{self, CommandOutcome, End, Endings, Watched};
use crate::{
    aggregate::faults::{Counts, FaultAggregator, Row, busiest},
    bpf::{
        self, Globals,
        targets::{self, Filter},
    },
    cli::FaultsArgs,
    error::Failure,
    output::{
        self, Timestamp,
        faults::{FaultsOutput, Start, Summary, Total},
    },
    pidfd::PidFd,
    privileges, procfs, spawn,
};

/// Rows per interval when not every target is shown.
const DEFAULT_TOP: usize = 10;

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    System,
    Pids(Vec<u32>),
    Comm(String),
    Command(Vec<String>),
}

/// Validated `faults` flags.
#[derive(Clone, Debug)]
pub struct FaultsConfig {
    pub target: Target,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub per_thread: bool,
    pub top: usize,
    pub json: bool,
    pub output: Option<PathBuf>,
}

impl TryFrom<FaultsArgs> for FaultsConfig {
    type Error = Failure;

    fn try_from(args: FaultsArgs) -> Result<Self, Failure> {
        let target = if !args.command.is_empty() {
            Target::Command(args.command)
        } else if let Some(comm) = args.comm {
            if comm.is_empty() || comm.len() >= COMM_LEN {
                return Err(Failure::Usage(format!(
                    "--comm `{comm}`: a command name has 1 to {} bytes (the kernel truncates longer ones)",
                    COMM_LEN - 1
                )));
            }
            Target::Comm(comm)
        } else if !args.pids.is_empty() {
            let mut pids = args.pids;
            pids.sort_unstable();
            pids.dedup();
            Target::Pids(pids)
        } else {
            Target::System
        };
        Ok(FaultsConfig {
            target,
            interval: args.interval,
            duration: args.duration,
            per_thread: args.threads,
            top: args.top.map_or(DEFAULT_TOP, |top| {
                usize::try_from(top).unwrap_or(usize::MAX)
            }),
            json: args.json,
            output: args.output,
        })
    }
}

impl FaultsConfig {
    fn filter(&self) -> Filter {
        match &self.target {
            Target::System => Filter::All,
            Target::Pids(_) => Filter::Targets {
                follow_forks: false,
            },
            Target::Command(_) => Filter::Targets { follow_forks: true },
            Target::Comm(name) => {
                let mut comm = [0; COMM_LEN];
                comm[..name.len()].copy_from_slice(name.as_bytes());
                Filter::Comm(comm)
            }
        }
    }

    fn describe(&self) -> (&'static str, String) {
        match &self.target {
            Target::System => ("system", "all processes".into()),
            Target::Pids(pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                ("pids", format!("PID {}", list.join(", ")))
            }
            Target::Comm(name) => ("comm", format!("processes named {name}")),
            Target::Command(argv) => (
                "command",
                format!("`{}` and its descendants", lifecycle::shell_words(argv)),
            ),
        }
    }

    /// Whether the targets are few and fixed enough to be counted in fixed slots, the kernel's
    /// fastest path (see [`MAX_FIXED_TARGETS`]).
    fn fixed_slots(&self) -> bool {
        matches!(&self.target, Target::Pids(pids) if pids.len() <= MAX_FIXED_TARGETS)
            && !self.per_thread
    }

    /// Whether each interval shows every target, rather than only the busiest few.
    fn shows_every_target(&self) -> bool {
        matches!(self.target, Target::Pids(_))
    }
}

pub async fn execute(args: FaultsArgs) -> anyhow::Result<u8> {
    let config = FaultsConfig::try_from(args)?;
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

/// One tracing session: the loaded programs, what they are watching, and the report so far.
struct Session<'a> {
    config: &'a FaultsConfig,
    ebpf: Ebpf,
    out: FaultsOutput,
    aggregator: FaultAggregator,
    watched: Watched,
    started: Instant,
}

impl<'a> Session<'a> {
    fn start(
        config: &'a FaultsConfig,
        out: Box<dyn io::Write>,
        watched: Vec<PidFd>,
    ) -> anyhow::Result<Self> {
        let filter = config.filter();
        let mut globals = Globals::default();
        filter.configure(&mut globals)?;
        globals
            .u32(globals::PER_THREAD, u32::from(config.per_thread))
            .u32(globals::FIXED_TARGETS, u32::from(config.fixed_slots()));

        let mut ebpf = bpf::load(&globals)?;
        bpf::forward_kernel_logs(&mut ebpf);
        bpf::faults::attach(&mut ebpf)?;
        if filter == (Filter::Targets { follow_forks: true }) {
            bpf::targets::attach_fork_follower(&mut ebpf)?;
        }

        let mut aggregator = FaultAggregator::default();
        let named: Vec<(u32, String)> = watched
            .iter()
            .map(|pidfd| {
                let pid = pidfd.pid();
                (pid, procfs::read_comm(pid, None).unwrap_or_default())
            })
            .collect();
        if config.fixed_slots() {
            bpf::faults::fix_targets(&mut ebpf, &named)?;
        }
        for (pid, comm) in named {
            targets::insert(&mut ebpf, pid, TargetFlags::COUNT)?;
            if !config.per_thread {
                if !config.fixed_slots() {
                    bpf::faults::register(&mut ebpf, pid, &comm)?;
                }
                aggregator.track(FaultKey { tgid: pid, tid: 0 }, comm);
            }
        }
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
        let mut out = FaultsOutput::new(out, config.json, config.per_thread);
        out.start(&Start {
            mode,
            description: &description,
            pids: &pids,
            interval_s: config.interval.as_secs_f64(),
            per_thread: config.per_thread,
        })
        .context("write the report")?;

        Ok(Session {
            config,
            ebpf,
            out,
            aggregator,
            watched,
            started: Instant::now(),
        })
    }

    async fn run(&mut self) -> anyhow::Result<u8> {
        let mut endings = Endings::install(self.config.duration)?;
        let mut ticker = interval_at(
            (self.started + self.config.interval).into(),
            self.config.interval,
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = self.started;

        let end = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now();
                    match self.report_interval(now - last) {
                        Ok(()) => last = now,
                        Err(err) if output::is_closed(&err) => break End::OutputClosed,
                        Err(err) => return Err(err),
                    }
                }
                end = endings.next(&self.watched) => break end,
            }
        };

        let command = self.watched.finish_command(end).await?;
        // A last reading, complete for every target that has exited.
        let samples = self.read_samples()?;
        self.aggregator.update(&samples, Duration::ZERO);
        self.refresh_comms(samples.iter().map(|(key, _)| *key));
        let summary = self.summary(end, command)?;
        if let Err(err) = self.out.summary(&summary)
            && err.kind() != io::ErrorKind::BrokenPipe
        {
            return Err(err).context("write the summary");
        }
        Ok(lifecycle::exit_status(command))
    }

    /// Reads the counting table, prints one interval, and retires exited processes.
    fn report_interval(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        // Liveness is judged *before* reading, so a retired key's final count is in this read.
        let exited: Vec<_> = self
            .aggregator
            .live_keys()
            .into_iter()
            .filter(|key| !key_is_alive(key))
            .collect();
        let samples = self.read_samples()?;
        let rows = self.aggregator.update(&samples, elapsed);
        let rows = if self.config.shows_every_target() {
            rows
        } else {
            busiest(rows, self.config.top)
        };
        self.refresh_comms(rows.iter().map(|row| row.key));
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
        let dropped = fault_losses(&self.ebpf)?;
        self.out
            .interval(Timestamp::now(), elapsed.as_secs_f64(), &rows, &dropped)
            .context("write the report")?;
        warn_about_drops(&dropped);

        let read: HashSet<FaultKey> = samples.iter().map(|(key, _)| *key).collect();
        for key in exited.into_iter().filter(|key| read.contains(key)) {
            bpf::faults::remove(&mut self.ebpf, &key)?;
            if !procfs::is_alive(key.tgid) {
                // Forgotten entirely, so that a new process reusing the pid is not taken for it.
                bpf::faults::forget_comm(&mut self.ebpf, key.tgid)?;
                targets::remove(&mut self.ebpf, key.tgid)?;
            }
            self.aggregator.retire(key);
        }
        Ok(())
    }

    fn read_samples(&mut self) -> anyhow::Result<Vec<(FaultKey, Counts)>> {
        let samples = bpf::faults::read(&self.ebpf)?;
        for (key, _) in &samples {
            if self.aggregator.comm(key).is_none() {
                self.refresh_comms(std::iter::once(*key));
            }
        }
        Ok(samples)
    }

    /// Re-reads names (they change at `exec`): from /proc while the process lives, else the
    /// name the kernel recorded at its last `exec`.
    fn refresh_comms(&mut self, keys: impl Iterator<Item = FaultKey>) {
        for key in keys {
            let tid = self.config.per_thread.then_some(key.tid);
            let comm = procfs::read_comm(key.tgid, tid)
                .or_else(|| bpf::faults::kernel_comm(&mut self.ebpf, key.tgid));
            if let Some(comm) = comm {
                self.aggregator.set_comm(key, comm);
            }
        }
    }

    fn summary(&self, end: End, command: Option<CommandOutcome>) -> anyhow::Result<Summary> {
        let totals: Vec<Total> = self
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
        let dropped = fault_losses(&self.ebpf)?;
        Ok(Summary {
            time: Timestamp::now(),
            duration_s: self.started.elapsed().as_secs_f64(),
            reason: end.reason(),
            totals,
            dropped,
            command,
        })
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
            log::warn!("{n} events not counted so far: {}", source.name());
        }
    }
}

/// What the kernel side failed to record that bears on fault counts.
fn fault_losses(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    Ok(bpf::faults::drops(ebpf)?
        .into_iter()
        .filter(|&(source, _)| {
            matches!(
                source,
                DropSource::FaultTableFull | DropSource::TargetTableFull
            )
        })
        .collect())
}
