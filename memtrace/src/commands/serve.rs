//! `memtrace serve`: the node daemon. Counts page faults, allocation syscalls and OOM kills of the
//! whole machine in the kernel (per process), and every tick turns what changed into Prometheus
//! counters labelled by command name and cgroup (or pid); `/metrics` only encodes them.
//!
//! Flow: flags → [`ServeConfig`] → load and attach everything once → drop every capability →
//! loop { tick: read the kernel's per-process tables, add the deltas, retire exited processes;
//! OOM records: resolve and count each kill, append it to `--events` } → SIGTERM/SIGINT: exit 0.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    routing::get,
};
use aya::{Ebpf, programs::ProgramInfo};
use memtrace_common::{
    faults::FaultKey,
    globals,
    syscalls::{ProcSyscallCounts, ProcSyscallKey, SyscallClass},
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at},
};

use crate::{
    aggregate::{cumulative::Deltas, faults::Counts},
    bpf::{self, Globals, oom::OomEvents, syscalls::KernelFilter, targets::Filter},
    cgroup::{self, MemoryHierarchy},
    cli::{SeriesLabel, ServeArgs},
    enrich::oom::KillResolver,
    error::{Failure, exit_code},
    output::{
        self,
        oom::OomOutput,
        prometheus::{self, Identity, Labels, Metrics},
    },
    privileges, procfs,
    syscalls::Syscall,
};

/// Validated `serve` flags.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub by: Vec<SeriesLabel>,
    pub max_series: usize,
    pub events: Option<PathBuf>,
    pub interval: Duration,
    pub bpf_stats: bool,
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
            events: args.events,
            interval: args.interval,
            bpf_stats: args.bpf_stats,
        }
    }
}

pub async fn execute(args: ServeArgs) -> anyhow::Result<u8> {
    let config = ServeConfig::from(args);
    // Bad input first, so it is reported as such whoever runs memtrace.
    let events = open_events(config.events.as_ref())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|err| Failure::Usage(format!("cannot listen on {}: {err}", config.listen)))?;
    if !config.listen.ip().is_loopback() {
        log::warn!(
            "serving on {}, which is not a loopback address: whoever reaches it can read the \
             names of this machine's processes",
            config.listen
        );
    }
    privileges::require()?;

    // The kernel's BPF statistics are on while this descriptor is open (needs CAP_SYS_ADMIN).
    let stats = config
        .bpf_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()
        .map_err(|err| Failure::NotPrivileged {
            missing: format!("CAP_SYS_ADMIN, to switch on the kernel's BPF statistics ({err})"),
        })?;
    let mut ebpf = load()?;
    let oom_events = OomEvents::open(&mut ebpf)?;
    if let Err(err) = privileges::drop_all() {
        log::warn!("could not drop capabilities: {err}");
    }

    let metrics = Metrics::new(
        &config.by,
        config.max_series,
        Syscall::DEFAULT.iter().map(|s| s.name()).collect(),
    );
    let registry = metrics.registry();

    // Read once (it parses /proc/self/mounts): the daemon labels by it, OOM kills resolve by it.
    let hierarchy = cgroup::memory_hierarchy();
    let mut daemon = Daemon {
        ebpf,
        metrics,
        hierarchy: hierarchy.clone(),
        processes: HashMap::new(),
        faults: Deltas::default(),
        syscalls: Deltas::default(),
        dropped: Deltas::default(),
        programs: Deltas::default(),
        program_stats: stats.is_some(),
        cpu_seconds: 0.0,
    };
    // A first reading before the first scrape: no scrape sees the series missing.
    daemon.tick()?;
    let health = Arc::new(AtomicU64::new(now_ms()));
    let server = tokio::spawn(serve_http(
        listener,
        registry,
        Arc::clone(&health),
        config.interval,
    ));
    eprintln!(
        "memtrace: serving metrics on http://{}/metrics (SIGTERM to stop)",
        config.listen
    );
    let mut kills = KillResolver::new(hierarchy, None);
    let mut run = Run {
        oom_events,
        events,
        events_path: config.events.clone(),
    };
    // The first reading was taken above.
    let mut ticker = interval_at(Instant::now() + config.interval, config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sigint = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                daemon.tick()?;
                health.store(now_ms(), Ordering::Relaxed);
            }
            batch = run.oom_events.next_batch() => {
                for kill in kills.resolve(batch?) {
                    let who = Identity {
                        pid: kill.victim.pid,
                        comm: kill.victim.comm.clone().unwrap_or_else(|| "unknown".into()),
                        cgroup: kill.cgroup.path.clone().unwrap_or_else(|| "unknown".into()),
                    };
                    let labels = daemon.metrics.labels_of(&who);
                    daemon.metrics.add_oom_kill(&labels);
                    run.record(&kill);
                }
            }
            _ = sighup.recv() => run.reopen(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    server.abort();
    Ok(exit_code::OK)
}

/// Loads every program the daemon needs, system-wide and counting only, and attaches them.
fn load() -> anyhow::Result<Ebpf> {
    let mut globals = Globals::default();
    Filter::All.configure(&mut globals)?;
    globals.u32(globals::PER_THREAD, 0);
    let filter = KernelFilter {
        count_only: true,
        failed_only: false,
        min_size: 0,
        per_process: true,
    };
    bpf::syscalls::configure(&mut globals, &Syscall::DEFAULT, filter)?;
    let layout = bpf::oom::layout()?;
    globals.bytes(globals::OOM_LAYOUT, &layout.to_ne_bytes());

    let mut ebpf = bpf::load(&globals)?;
    bpf::forward_kernel_logs(&mut ebpf);
    bpf::faults::attach(&mut ebpf)?;
    bpf::syscalls::attach(&mut ebpf, &Syscall::DEFAULT, filter)?;
    bpf::oom::attach(&mut ebpf).context("attach oom:mark_victim and printk:console")?;
    Ok(ebpf)
}

/// Where OOM kills are appended as JSON lines: `--events FILE`, `-` for stdout, or nowhere.
fn open_events(path: Option<&PathBuf>) -> Result<Option<OomOutput>, Failure> {
    let Some(path) = path else { return Ok(None) };
    let out = if path.as_os_str() == "-" {
        output::open(None)?
    } else {
        output::open_append(path)?
    };
    Ok(Some(OomOutput::new(out, true)))
}

/// The OOM side of the loop: the kernel's records and where kills are appended.
struct Run {
    oom_events: OomEvents,
    events: Option<OomOutput>,
    events_path: Option<PathBuf>,
}

impl Run {
    fn record(&mut self, kill: &output::oom::Kill) {
        if let Some(events) = &mut self.events
            && let Err(err) = events.kill(kill)
        {
            log::warn!("cannot append the OOM kill to the events file: {err}");
        }
    }

    /// SIGHUP: reopen the events file, so log rotation can move the old one away.
    fn reopen(&mut self) {
        match open_events(self.events_path.as_ref()) {
            Ok(events) => self.events = events,
            Err(err) => log::warn!("cannot reopen the events file: {err}"),
        }
    }
}

/// What the daemon knows between ticks.
struct Daemon {
    ebpf: Ebpf,
    metrics: Metrics,
    hierarchy: Option<MemoryHierarchy>,
    /// Labels of each process seen, until it exits.
    processes: HashMap<u32, Labels>,
    faults: Deltas<FaultKey, Counts>,
    syscalls: Deltas<ProcSyscallKey, ProcSyscallCounts>,
    dropped: Deltas<&'static str, u64>,
    programs: Deltas<String, (u64, u64)>,
    /// Whether the kernel's BPF statistics are on (`--bpf-stats`): else there is nothing to read.
    program_stats: bool,
    cpu_seconds: f64,
}

impl Daemon {
    /// Adds what the kernel counted since the last tick, then retires exited processes.
    fn tick(&mut self) -> anyhow::Result<()> {
        // Judged *before* reading, so an exited process's final counts are in this reading.
        let exited: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();

        for (key, counts) in bpf::faults::read(&self.ebpf)? {
            let delta = self.faults.update(key, counts);
            let labels = self.labels(key.tgid);
            self.metrics.add_faults(&labels, delta.minor, delta.major);
        }
        for (key, counts) in bpf::syscalls::proc_stats(&self.ebpf)? {
            let delta = self.syscalls.update(key, counts);
            let Some(syscall) = Syscall::from_nr(key.nr) else {
                continue;
            };
            let labels = self.labels(key.tgid);
            self.metrics
                .add_syscalls(&labels, syscall.name(), delta.calls, delta.errors);
            for (op, bytes) in byte_ops(syscall, delta) {
                self.metrics.add_bytes(&labels, op, bytes);
            }
        }
        for (source, n) in bpf::faults::drops(&self.ebpf)? {
            let delta = self.dropped.update(source.name(), n);
            self.metrics.add_dropped(source.name(), delta);
        }
        let infos: Vec<(String, ProgramInfo)> = if self.program_stats {
            self.ebpf
                .programs()
                .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?)))
                .collect()
        } else {
            Vec::new()
        };
        for (name, info) in infos {
            self.add_program(name, &info);
        }
        if let Ok((cpu, resident)) = procfs::own_usage() {
            self.metrics
                .add_own_usage((cpu - self.cpu_seconds).max(0.0), resident);
            self.cpu_seconds = cpu;
        }
        for pid in exited {
            self.retire(pid)?;
        }
        self.metrics.set_bookkeeping(self.processes.len());
        Ok(())
    }

    fn add_program(&mut self, name: String, info: &ProgramInfo) {
        let now = (info.run_time().as_nanos() as u64, info.run_count());
        let (nanos, runs) = self.programs.update(name.clone(), now);
        self.metrics
            .add_program_run(&name, nanos as f64 / 1e9, runs);
    }

    /// The labels of a process, resolved once: from /proc while it lives, else from what the
    /// kernel recorded of its name.
    fn labels(&mut self, pid: u32) -> Labels {
        if let Some(labels) = self.processes.get(&pid) {
            return labels.clone();
        }
        let comm = procfs::read_comm(pid, None)
            .or_else(|| bpf::faults::kernel_comm(&mut self.ebpf, pid))
            .unwrap_or_else(|| "unknown".into());
        let cgroup = self
            .hierarchy
            .as_ref()
            .and_then(|h| cgroup::read_proc_cgroup(pid, h.version))
            .unwrap_or_else(|| "unknown".into());
        let labels = self.metrics.labels_of(&Identity { pid, comm, cgroup });
        self.processes.insert(pid, labels.clone());
        labels
    }

    /// Forgets an exited process everywhere: kernel tables, deltas, and its series if per pid.
    fn retire(&mut self, pid: u32) -> anyhow::Result<()> {
        let key = FaultKey { tgid: pid, tid: 0 };
        bpf::faults::remove(&mut self.ebpf, &key)?;
        bpf::faults::forget_comm(&mut self.ebpf, pid)?;
        self.faults.forget(&key);
        for syscall in Syscall::DEFAULT {
            let key = ProcSyscallKey {
                tgid: pid,
                nr: syscall.nr(),
            };
            bpf::syscalls::forget_process(&mut self.ebpf, &key)?;
            self.syscalls.forget(&key);
        }
        if let Some(labels) = self.processes.remove(&pid)
            && self.metrics.per_process()
        {
            self.metrics.forget(&labels);
        }
        Ok(())
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

/// OpenMetrics for scrapers that ask for it (Prometheus does), else the classic text format.
fn metrics_response(
    registry: &Registry,
    headers: &HeaderMap,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match prometheus::openmetrics(registry) {
        Ok(text) if wants_openmetrics => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus::classic_text(&text),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode the metrics\n".to_owned(),
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `/metrics` and `/healthz`, until the task is aborted.
async fn serve_http(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<AtomicU64>,
    interval: Duration,
) -> io::Result<()> {
    let stale_ms = (interval.as_millis() as u64).saturating_mul(3).max(3000);
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let registry = Arc::clone(&registry);
                async move { metrics_response(&registry, &headers) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let fresh = now_ms().saturating_sub(health.load(Ordering::Relaxed)) <= stale_ms;
                async move {
                    if fresh {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "kernel counters not read lately\n",
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}
