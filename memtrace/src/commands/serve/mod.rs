//! `memtrace serve`: the node daemon. Counts page faults, allocation syscalls, memory stalls
//! (reclaim, compaction, throttling) and OOM kills of the whole machine in the kernel (per
//! process), and every tick turns what changed into Prometheus
//! counters labelled by command name and cgroup (or pid); `/metrics` only encodes them.
//!
//! Flow: flags → [`ServeConfig`] → the four kernel objects loaded and attached → every
//! capability dropped → the HTTP endpoint on its own thread (`http`) → the session runs the
//! daemon: each tick reads the kernel's per-process tables, adds the deltas and retires exited
//! processes (a failed reading is counted and logged, and the daemon goes on); each OOM kill is
//! resolved, counted and appended to `--events`; SIGHUP reopens that file → SIGTERM/SIGINT:
//! exit 0.
//!
//! For tests only: with `MEMTRACE_FAULT_INJECTION=DIR`, a file `DIR/stall-tick` stalls each
//! reading while it exists, and `DIR/fail-tick` makes each reading fail.

mod held;
mod http;
mod metrics;
mod profiles;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::programs::ProgramInfo;
use memtrace_common::{
    faults::MAX_FAULT_KEYS,
    pressure::StallKind,
    syscalls::{ProcSyscallCounts, SyscallClass},
};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval_at},
};

use self::{
    http::Health,
    metrics::{Identity, Labels, Metrics},
};
use crate::{
    aggregate::cumulative::Deltas,
    bpf::{self, oom::OomEvents, tracepoints::Release},
    cli::{SeriesLabel, ServeArgs},
    enrich::{
        cgroups::CgroupResolver,
        history::{self, HistorySampler},
        oom::KillResolver,
    },
    error::Failure,
    model::oom::OomRecord,
    output::{Format, Sink},
    pipelines::machine::{self, Machine},
    session::{self, End, Ending, Job, Session, Target},
    sys::{cgroup, privileges, procfs},
    syscalls::Syscall,
};

/// Validated `serve` flags.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    pub by: Vec<SeriesLabel>,
    pub max_series: usize,
    pub events: Option<PathBuf>,
    /// How far back each `--events` victim's history goes (zero: no history).
    pub history: Duration,
    pub interval: Duration,
    pub bpf_stats: bool,
    /// Capacity of the kernel's per-process tables (processes).
    pub max_processes: u32,
    /// `/debug/pprof/faults`'s stack table capacity, when profiles are served.
    pub profile_stacks: Option<u32>,
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        let mut by = args.by;
        by.sort_unstable();
        by.dedup();
        ServeConfig {
            listen: args.listen,
            by,
            max_series: usize::try_from(args.max_series).unwrap_or(usize::MAX),
            history: if args.events.is_some() {
                args.history
            } else {
                Duration::ZERO
            },
            events: args.events,
            interval: args.interval,
            bpf_stats: args.bpf_stats,
            max_processes: args.max_processes.unwrap_or(MAX_FAULT_KEYS),
            profile_stacks: args.profiles.then_some(args.profile_stacks),
        }
    }
}

pub async fn execute(args: ServeArgs) -> anyhow::Result<u8> {
    let config = ServeConfig::from(args);
    // Bad input first, so it is reported as such whoever runs memtrace.
    let events = open_events(config.events.as_ref())?;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|err| Failure::Usage(format!("cannot listen on {}: {err}", config.listen)))?;
    if !config.listen.ip().is_loopback() {
        log::warn!(
            "serving on {}, which is not a loopback address: whoever reaches it can read the \
             names of this machine's processes",
            config.listen
        );
    }
    // The daemon writes no report: its output is the endpoint (and --events).
    let session = Session::open(&session::Options {
        target: Target::System,
        format: Format::Human,
        output: None,
        duration: None,
    })?;
    let daemon = Daemon::start(&config, listener, events)?;
    eprintln!(
        "memtrace: serving metrics on http://{}/metrics (SIGTERM to stop)",
        config.listen
    );
    session.run(daemon).await
}

/// Where OOM kills are appended as JSON lines: `--events FILE`, `-` for stdout, or nowhere.
fn open_events(path: Option<&PathBuf>) -> Result<Option<Sink>, Failure> {
    path.map(|path| Sink::append(path, Format::Json))
        .transpose()
}

/// Test hooks (see the module's documentation); off unless the variable is set.
struct FaultInjection(Option<PathBuf>);

impl FaultInjection {
    fn from_env() -> FaultInjection {
        FaultInjection(std::env::var_os("MEMTRACE_FAULT_INJECTION").map(PathBuf::from))
    }

    /// Stalls while `stall-tick` exists; fails if `fail-tick` does.
    fn before_reading(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.0 else { return Ok(()) };
        while dir.join("stall-tick").exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if dir.join("fail-tick").exists() {
            anyhow::bail!("injected failure ({})", dir.join("fail-tick").display());
        }
        Ok(())
    }
}

/// A process's labels, and the fault table's record (name, memory cgroup id) they came from.
struct Resolved {
    recorded: (String, u64),
    labels: Labels,
}

/// The daemon: what it holds in the kernel, and what it knows between ticks.
struct Daemon {
    machine: Machine,
    oom_events: OomEvents,
    kills: KillResolver,
    /// The likely victims' recent memory, for `--events` records.
    history: Option<HistorySampler>,
    events: Option<Sink>,
    events_path: Option<PathBuf>,
    metrics: Metrics,
    health: Arc<Health>,
    ticker: Interval,
    sighup: Signal,
    cgroups: CgroupResolver,
    /// Labels of each process seen, until it exits, with the name and memory cgroup the fault
    /// table recorded when they were resolved.
    processes: HashMap<u32, Resolved>,
    programs: Deltas<String, (u64, u64)>,
    /// The kernel's BPF statistics, on while this is held (`--bpf-stats`).
    program_stats: Option<std::os::fd::OwnedFd>,
    cpu_seconds: f64,
    failures: Failures,
    injection: FaultInjection,
}

/// Failed readings in a row, and when the last was logged.
#[derive(Default)]
struct Failures {
    in_a_row: u64,
    logged: Option<std::time::Instant>,
}

/// While readings keep failing, how often the log says so.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Drops every capability the readings do not need (CAP_BPF, where the kernel lets nobody else
/// read BPF maps).
fn drop_privileges(machine: &Machine) {
    match privileges::drop_all(|| bpf::faults::read(machine.faults()).is_ok()) {
        Ok(true) => log::info!(
            "this kernel lets no unprivileged process read BPF maps \
             (kernel.unprivileged_bpf_disabled): CAP_BPF kept, every other capability dropped"
        ),
        Ok(false) => {}
        Err(err) => log::warn!("could not drop capabilities: {err}"),
    }
}

/// What wakes the daemon.
enum Wake {
    Tick,
    Kills(Vec<OomRecord>),
    Sample,
    Reopen,
}

impl Daemon {
    fn start(
        config: &ServeConfig,
        listener: std::net::TcpListener,
        events: Option<Sink>,
    ) -> anyhow::Result<Daemon> {
        // The kernel's BPF statistics are on while this descriptor is open (needs CAP_SYS_ADMIN).
        let program_stats = config
            .bpf_stats
            .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
            .transpose()
            .map_err(|err| Failure::NotPrivileged {
                missing: format!("CAP_SYS_ADMIN, to switch on the kernel's BPF statistics ({err})"),
            })?;
        let mut machine = Machine::load(machine::Options {
            max_processes: config.max_processes,
            births: !config.history.is_zero(),
        })?;
        let oom_events = machine.oom_events()?;
        if config.profile_stacks.is_some() {
            log::info!(
                "--profiles: capabilities kept, for the profiles' programs and other users' stacks"
            );
        } else {
            drop_privileges(&machine);
        }
        let metrics = Metrics::new(
            &config.by,
            config.max_series,
            Syscall::DEFAULT.iter().map(|s| s.name()).collect(),
        );
        // Read once (it parses /proc/self/mounts): the daemon labels by it, OOM kills resolve by it.
        let hierarchy = cgroup::memory_hierarchy();
        let history = if config.history.is_zero() {
            None
        } else {
            let new_processes = machine.new_processes()?;
            Some(HistorySampler::new(
                config.history,
                hierarchy.clone(),
                new_processes,
            ))
        };
        let health = Arc::new(Health::new(config.interval));
        let mut ticker = interval_at(Instant::now() + config.interval, config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut daemon = Daemon {
            machine,
            oom_events,
            kills: KillResolver::new(hierarchy.clone(), None),
            history,
            events,
            events_path: config.events.clone(),
            metrics,
            health: Arc::clone(&health),
            ticker,
            sighup: signal(SignalKind::hangup()).context("install the SIGHUP handler")?,
            cgroups: CgroupResolver::new(hierarchy),
            processes: HashMap::new(),
            programs: Deltas::default(),
            program_stats,
            cpu_seconds: 0.0,
            failures: Failures::default(),
            injection: FaultInjection::from_env(),
        };
        // A first reading before the first scrape: no scrape sees the series missing.
        daemon.tick();
        http::spawn(
            listener,
            daemon.metrics.registry(),
            daemon.metrics.scrapers(),
            health,
            config.profile_stacks.map(profiles::Profiler::new),
        )?;
        Ok(daemon)
    }

    /// One reading; a failure is counted, logged and shown by `/healthz`, never fatal. While
    /// readings keep failing, the log says so once a minute rather than at every tick.
    fn tick(&mut self) {
        match self.read() {
            Ok(()) => {
                if self.failures.in_a_row > 0 {
                    log::warn!(
                        "reading the kernel's counters works again, after {} failed readings",
                        self.failures.in_a_row
                    );
                }
                self.failures = Failures::default();
                self.health.read_ok();
                self.metrics
                    .set_last_reading(crate::model::time::Timestamp::now().unix);
            }
            Err(err) => {
                self.failures.in_a_row += 1;
                let now = std::time::Instant::now();
                if self
                    .failures
                    .logged
                    .is_none_or(|logged| now - logged >= FAILURE_LOG_EVERY)
                {
                    log::warn!(
                        "reading the kernel's counters failed ({} in a row): {err:#}",
                        self.failures.in_a_row
                    );
                    self.failures.logged = Some(now);
                }
                self.metrics.add_failed_reading();
                self.health.read_failed(&err);
            }
        }
    }

    /// Adds what the kernel counted since the last reading, then retires exited processes.
    fn read(&mut self) -> anyhow::Result<()> {
        self.injection.before_reading()?;
        self.cgroups.new_reading();
        // Judged *before* reading, so an exited process's final counts are in this reading.
        let exited: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();

        let now = std::time::Instant::now();
        let reading = self.machine.read()?;
        for sample in reading.faults {
            let labels = self.labels(sample.tgid, Some((&sample.comm, sample.memcg)), true);
            self.metrics
                .add_faults(&labels, sample.delta.minor, sample.delta.major);
        }
        for (tgid, syscall, delta) in reading.syscalls {
            let labels = self.labels(tgid, None, false);
            self.metrics
                .add_syscalls(&labels, syscall.name(), delta.calls, delta.errors);
            for (op, bytes) in byte_ops(syscall, delta) {
                self.metrics.add_bytes(&labels, op, bytes);
            }
        }
        for sample in reading.stalls {
            let labels = self.labels(sample.tgid, Some((&sample.comm, sample.memcg)), false);
            for kind in StallKind::ALL {
                let stalls = sample.delta.of(kind);
                let seconds = stalls.total_ns as f64 / 1e9;
                self.metrics
                    .add_stalls(&labels, kind.name(), stalls.count, seconds);
            }
        }
        for (source, delta) in reading.dropped {
            self.metrics.add_dropped(source, delta);
        }
        if self.program_stats.is_some() {
            let infos: Vec<(String, ProgramInfo)> = self
                .machine
                .objects()
                .into_iter()
                .flat_map(|ebpf| ebpf.programs())
                .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?)))
                .collect();
            for (name, info) in infos {
                self.add_program(name, &info);
            }
        }
        if let Ok((cpu, resident)) = procfs::own_usage() {
            self.metrics
                .add_own_usage((cpu - self.cpu_seconds).max(0.0), resident);
            self.cpu_seconds = cpu;
        }
        for pid in exited {
            self.retire(pid)?;
        }
        self.metrics.release_held(now);
        self.metrics.set_bookkeeping(self.processes.len());
        Ok(())
    }

    fn add_program(&mut self, name: String, info: &ProgramInfo) {
        let stats = (info.run_time().as_nanos() as u64, info.run_count());
        let (nanos, runs) = self.programs.update(name.clone(), stats);
        self.metrics
            .add_program_run(&name, nanos as f64 / 1e9, runs);
    }

    /// The labels of a process: from /proc while it lives, else from what the kernel recorded
    /// of its name and memory cgroup (`recorded`, or the fault table's). Resolved once, and
    /// again when the fault table's record changes (`from_faults`): the kernel rewrites it at
    /// `exec`, when a process started by a shell or a container runtime takes its name and, by
    /// then, its cgroup.
    fn labels(&mut self, pid: u32, recorded: Option<(&str, u64)>, from_faults: bool) -> Labels {
        if let Some(resolved) = self.processes.get(&pid)
            && (!from_faults
                || recorded.is_some_and(|(comm, memcg)| {
                    resolved.recorded.0 == comm && resolved.recorded.1 == memcg
                }))
        {
            return resolved.labels.clone();
        }
        let recorded = match recorded {
            Some((comm, memcg)) => Some((comm.to_owned(), memcg)),
            None => self.machine.recorded(pid),
        };
        let (recorded_comm, recorded_memcg) = recorded.unwrap_or_default();
        let comm = procfs::read_comm(pid, None)
            .or_else(|| Some(recorded_comm.clone()).filter(|comm| !comm.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        let cgroup = self
            .cgroups
            .path_of(pid, recorded_memcg)
            .unwrap_or_else(|| "unknown".into());
        let labels = self.metrics.labels_of(&Identity { pid, comm, cgroup });
        let resolved = Resolved {
            recorded: (recorded_comm, recorded_memcg),
            labels: labels.clone(),
        };
        if let Some(old) = self.processes.insert(pid, resolved)
            && old.labels != labels
            && self.metrics.per_process()
        {
            self.metrics.forget(&old.labels);
        }
        labels
    }

    /// Forgets an exited process everywhere: kernel tables, deltas, and its series if per pid.
    fn retire(&mut self, pid: u32) -> anyhow::Result<()> {
        self.machine.retire(pid)?;
        if let Some(resolved) = self.processes.remove(&pid)
            && self.metrics.per_process()
        {
            self.metrics.forget(&resolved.labels);
        }
        Ok(())
    }

    /// Resolves, counts and appends each kill of a batch.
    fn record_kills(&mut self, batch: Vec<OomRecord>) {
        for mut kill in self.kills.resolve(batch) {
            if let Some(history) = &self.history {
                history.complete(&mut kill);
            }
            let who = Identity {
                pid: kill.victim.pid,
                comm: kill.victim.comm.clone().unwrap_or_else(|| "unknown".into()),
                cgroup: kill.cgroup.path.clone().unwrap_or_else(|| "unknown".into()),
            };
            let labels = self.metrics.labels_of(&who);
            self.metrics.add_oom_kill(&labels);
            if let Some(events) = &mut self.events
                && let Err(err) = events.emit(&kill).and_then(|()| events.flush())
            {
                log::warn!("cannot append the OOM kill to the events file: {err}");
            }
        }
    }

    /// One sample of the likely victims (exited processes' stalls are retired with their counts).
    fn sample(&mut self) {
        let Some(history) = &mut self.history else {
            return;
        };
        let stalls = bpf::pressure::totals(self.machine.pressure())
            .inspect_err(|err| log::debug!("stall times for the history: {err:#}"))
            .ok();
        history.sample(stalls);
    }

    /// SIGHUP: reopen the events file, so log rotation can move the old one away.
    fn reopen(&mut self) {
        match open_events(self.events_path.as_ref()) {
            Ok(events) => self.events = events,
            Err(err) => log::warn!("cannot reopen the events file: {err}"),
        }
    }
}

impl Job for Daemon {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        tokio::select! {
            _ = self.ticker.tick() => Ok(Wake::Tick),
            batch = self.oom_events.next_batch() => Ok(Wake::Kills(batch?)),
            () = history::next_sample(&mut self.history) => Ok(Wake::Sample),
            _ = self.sighup.recv() => Ok(Wake::Reopen),
        }
    }

    fn work(&mut self, wake: Wake, _sink: &mut Sink) -> anyhow::Result<Option<End>> {
        match wake {
            Wake::Tick => self.tick(),
            Wake::Kills(batch) => self.record_kills(batch),
            Wake::Sample => self.sample(),
            Wake::Reopen => self.reopen(),
        }
        Ok(None)
    }

    fn finish(&mut self, _ending: &Ending, _sink: &mut Sink) -> anyhow::Result<()> {
        Ok(())
    }

    /// Released here: nobody waits on a stopping daemon at a prompt, and a helper left behind
    /// would outlive its service.
    fn release(self) {
        drop(self.oom_events);
        self.machine.release(Release::Here);
    }
}

/// The byte counters one syscall's counts feed.
fn byte_ops(syscall: Syscall, delta: ProcSyscallCounts) -> Vec<(&'static str, u64)> {
    match syscall.class() {
        SyscallClass::Mmap => vec![("mmap", delta.bytes_up)],
        SyscallClass::Munmap => vec![("munmap", delta.bytes_down)],
        SyscallClass::Brk => vec![
            ("brk_grow", delta.bytes_up),
            ("brk_shrink", delta.bytes_down),
        ],
        SyscallClass::Mremap => vec![("mremap", delta.bytes_up + delta.bytes_down)],
        _ => Vec::new(),
    }
}
