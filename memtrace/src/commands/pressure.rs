//! `memtrace pressure`: how long processes stall for memory, timed in the kernel by the
//! `pressure` object, with the kernel's own pressure figures (PSI) beside. Each interval reads
//! the per-process stall table, groups it by process or memory cgroup, writes the rows that
//! stalled and retires exited processes; the end is a summary (totals, longest, histograms).

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context as _;
use memtrace_common::{DropSource, pressure::MAX_STALLERS, targets::TargetFlags};
use tokio::time::{Interval, MissedTickBehavior, interval_at};

use crate::{
    aggregate::pressure::{Kinds, Reading, Row, RowKey, StallAggregator, busiest},
    bpf::{
        self, Loaded,
        pressure::{Options, StallSample},
        targets::TargetTable,
        tracepoints::Release,
    },
    cli::{PressureArgs, PressureBy},
    enrich::cgroups::CgroupResolver,
    error::Failure,
    model::{cgroup::Version, time::Timestamp},
    output::{
        Format, Sink,
        pressure::{Interval as IntervalRecord, PsiReport, Shown, Start, Summary},
    },
    session::{self, End, Ending, Job, Session, Target},
    sys::{
        cgroup::{self, MemoryHierarchy},
        procfs::{self, Psi},
    },
};

/// Rows per interval when not every target is shown.
const DEFAULT_TOP: usize = 10;

/// The machine's memory pressure, where the kernel has PSI.
const PSI: &str = "/proc/pressure/memory";

/// Validated `pressure` flags.
#[derive(Clone, Debug)]
pub struct PressureConfig {
    pub session: session::Options,
    pub interval: Duration,
    pub by: PressureBy,
    pub histograms: bool,
    pub top: usize,
    pub max_processes: u32,
}

impl TryFrom<PressureArgs> for PressureConfig {
    type Error = Failure;

    fn try_from(args: PressureArgs) -> Result<Self, Failure> {
        Ok(PressureConfig {
            session: super::session_options(
                args.targets,
                args.comm,
                Format::json(args.report.json),
                args.report,
            )?,
            interval: args.interval,
            by: args.by,
            histograms: args.histogram,
            top: super::rows(args.top, DEFAULT_TOP),
            max_processes: args.max_processes.unwrap_or(MAX_STALLERS),
        })
    }
}

pub async fn execute(args: PressureArgs) -> anyhow::Result<u8> {
    let config = PressureConfig::try_from(args)?;
    let mut session = Session::open(&config.session)?;
    let job = Pressure::start(&config, &mut session)?;
    session.run(job).await
}

struct Pressure<'a> {
    config: &'a PressureConfig,
    loaded: Loaded,
    aggregator: StallAggregator,
    cgroups: CgroupResolver,
    /// The memory cgroup of each process seen (for process rows' JSON), until it exits.
    process_cgroups: HashMap<u32, Option<String>>,
    /// Each shown cgroup's `memory.pressure` (cgroup v2 only).
    cgroup_psi: HashMap<String, PsiSince>,
    /// The machine's, where the kernel has PSI.
    psi: Option<PsiSince>,
    ticker: Interval,
}

/// A pressure file's figures when first read and at the last report, for the stall time since
/// either.
struct PsiSince {
    first: Psi,
    last: Psi,
}

impl PsiSince {
    fn new(now: Psi) -> PsiSince {
        PsiSince {
            first: now,
            last: now,
        }
    }

    /// Since the last report (an interval), or since the first reading (the summary).
    fn report(&mut self, now: Psi, since_first: bool) -> PsiReport {
        let report = PsiReport::between(if since_first { &self.first } else { &self.last }, &now);
        self.last = now;
        report
    }
}

/// The `memory.pressure` of every cgroup of a v2 hierarchy, by path: what each row's PSI over
/// the session is counted from (a cgroup that stalls later would otherwise count only from its
/// first showing).
fn every_cgroup_psi(hierarchy: &MemoryHierarchy) -> HashMap<String, PsiSince> {
    let mut found = HashMap::new();
    let mut pending = vec![String::new()];
    while let Some(path) = pending.pop() {
        let dir = hierarchy.dir(&path);
        if let Some(psi) = procfs::read_psi(&dir.join("memory.pressure")) {
            let shown = if path.is_empty() {
                "/".to_owned()
            } else {
                path.clone()
            };
            found.insert(shown, PsiSince::new(psi));
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(format!("{path}/{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

impl<'a> Pressure<'a> {
    fn start(config: &'a PressureConfig, session: &mut Session) -> anyhow::Result<Pressure<'a>> {
        let by_cgroup = config.by == PressureBy::Cgroup;
        // By cgroup, each process's memory cgroup is recorded at its first stall, so that one
        // gone before the next reading is still grouped right.
        let memcg = by_cgroup
            .then(|| bpf::memcg_layout("processes gone before a reading are grouped as unknown"))
            .flatten();
        let mut loaded = bpf::pressure::load(&Options {
            filter: config.session.target.filter(false),
            memcg,
            histograms: config.histograms,
            max_processes: config.max_processes,
            warn_missing: true,
        })?;
        let pids = session.watched().pids();
        for &pid in &pids {
            loaded.ebpf.insert(pid, TargetFlags::COUNT)?;
        }
        if let Target::Command(argv) = &config.session.target {
            session.spawn(argv, &mut loaded.ebpf)?;
        }
        let mut aggregator = StallAggregator::default();
        let cgroups = CgroupResolver::new(cgroup::memory_hierarchy());
        if !by_cgroup {
            for &pid in &pids {
                let comm = procfs::read_comm(pid, None).unwrap_or_default();
                aggregator.track(RowKey::Process(pid), comm);
            }
        }
        let start = Start {
            targets: session.targets(config.session.target.describe()),
            interval_s: config.interval.as_secs_f64(),
            by: if by_cgroup { "cgroup" } else { "process" },
            histograms: config.histograms,
        };
        session.sink().emit(&start).context("write the report")?;
        let psi = procfs::read_psi(Path::new(PSI)).map(PsiSince::new);
        let cgroup_psi = cgroups
            .hierarchy()
            .filter(|hierarchy| hierarchy.version == Version::V2)
            .map(every_cgroup_psi)
            .unwrap_or_default();
        let now = tokio::time::Instant::now();
        let mut ticker = interval_at(now + config.interval, config.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Pressure {
            config,
            loaded,
            aggregator,
            cgroups,
            process_cgroups: HashMap::new(),
            cgroup_psi,
            psi,
            ticker,
        })
    }

    /// One reading of the stall table, as rows; and the processes in it that have exited.
    fn take_reading(&mut self) -> anyhow::Result<(Vec<Row>, Vec<u32>)> {
        // Liveness judged before reading, so an exited process's final stalls are in it.
        let exited: Vec<u32> = self
            .process_cgroups
            .keys()
            .copied()
            .filter(|&pid| !procfs::is_alive(pid))
            .collect();
        self.cgroups.new_reading();
        let samples = bpf::pressure::read(&self.loaded.ebpf)?;
        let readings: Vec<Reading> = samples.iter().map(|sample| self.reading(sample)).collect();
        Ok((self.aggregator.update(&readings), exited))
    }

    fn reading(&mut self, sample: &StallSample) -> Reading {
        let cgroup = match self.process_cgroups.get(&sample.tgid) {
            Some(known) => known.clone(),
            None => {
                let path = self.cgroups.path_of(sample.tgid, sample.memcg);
                self.process_cgroups.insert(sample.tgid, path.clone());
                path
            }
        };
        let row = match self.config.by {
            PressureBy::Process => RowKey::Process(sample.tgid),
            PressureBy::Cgroup => RowKey::Cgroup(cgroup.unwrap_or_else(|| "unknown".into())),
        };
        let comm = procfs::read_comm(sample.tgid, None).unwrap_or_else(|| sample.comm.clone());
        Reading {
            tgid: sample.tgid,
            row,
            comm,
            cumulative: Kinds::from_kernel(&sample.kinds),
            max_ns: sample.kinds.map(|stall| stall.max_ns),
        }
    }

    fn retire(&mut self, exited: Vec<u32>) -> anyhow::Result<()> {
        for pid in exited {
            bpf::pressure::remove(&mut self.loaded.ebpf, pid)?;
            self.aggregator.forget(pid);
            self.process_cgroups.remove(&pid);
        }
        Ok(())
    }

    fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        bpf::pressure::drops(&self.loaded.ebpf)
    }

    /// Rows as shown, with their cgroups and PSI figures.
    fn shown<'r>(&'r self, rows: &'r [Row], psis: Vec<Option<PsiReport>>) -> Vec<Shown<'r>> {
        rows.iter()
            .zip(psis)
            .map(|(row, psi)| Shown {
                row,
                cgroup: self.cgroup_of(row),
                psi,
            })
            .collect()
    }

    /// A row's cgroup's own PSI (cgroup v2's `memory.pressure`) since its last showing, or since
    /// the session began.
    fn row_psi(&mut self, row: &Row, since_start: bool) -> Option<PsiReport> {
        let hierarchy = self.cgroups.hierarchy()?;
        if hierarchy.version != Version::V2 {
            return None;
        }
        let cgroup = match &row.key {
            RowKey::Cgroup(path) => path.clone(),
            RowKey::Process(pid) => self.process_cgroups.get(pid)?.clone()?,
        };
        let now = procfs::read_psi(&hierarchy.dir(&cgroup).join("memory.pressure"))?;
        // Every cgroup of the start was read then: one not among them was made since, and all
        // its stall time is the session's.
        let since = self
            .cgroup_psi
            .entry(cgroup)
            .or_insert_with(|| PsiSince::new(Psi::default()));
        Some(since.report(now, since_start))
    }

    /// The machine's PSI since the last interval, or since the session began.
    fn machine_psi(&mut self, since_start: bool) -> Option<PsiReport> {
        let now = procfs::read_psi(Path::new(PSI))?;
        Some(self.psi.as_mut()?.report(now, since_start))
    }

    /// The memory cgroup of a process row, for its JSON.
    fn cgroup_of(&self, row: &Row) -> Option<&str> {
        match row.key {
            RowKey::Process(pid) => self.process_cgroups.get(&pid)?.as_deref(),
            RowKey::Cgroup(_) => None,
        }
    }
}

impl Job for Pressure<'_> {
    type Work = ();

    async fn next(&mut self) -> anyhow::Result<()> {
        self.ticker.tick().await;
        Ok(())
    }

    fn work(&mut self, (): (), sink: &mut Sink) -> anyhow::Result<Option<End>> {
        let (rows, exited) = self.take_reading()?;
        let rows = if matches!(self.config.session.target, Target::Pids(_))
            && self.config.by == PressureBy::Process
        {
            rows
        } else {
            busiest(rows, self.config.top)
        };
        let psi = self.machine_psi(false);
        let dropped = self.drops()?;
        let psis: Vec<Option<PsiReport>> =
            rows.iter().map(|row| self.row_psi(row, false)).collect();
        sink.emit(&IntervalRecord {
            timestamp: Timestamp::now(),
            interval_s: self.config.interval.as_secs_f64(),
            rows: self.shown(&rows, psis),
            psi,
            dropped: &dropped,
        })?;
        sink.flush()?;
        for &(source, n) in &dropped {
            if n > 0 {
                log::warn!("{n} stalls not counted so far: {}", source.name());
            }
        }
        self.retire(exited)?;
        Ok(None)
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        self.take_reading()?;
        let rows = self.aggregator.totals();
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|row| row.total.0.iter().any(|s| s.count > 0))
            .collect();
        let psi = self.machine_psi(true);
        let histograms = if self.config.histograms {
            Some(bpf::pressure::histograms(&self.loaded.ebpf)?)
        } else {
            None
        };
        let dropped = self.drops()?;
        let psis: Vec<Option<PsiReport>> = rows.iter().map(|row| self.row_psi(row, true)).collect();
        sink.emit(&Summary {
            timestamp: Timestamp::now(),
            duration_s: ending.duration.as_secs_f64(),
            reason: ending.end.reason(),
            rows: self.shown(&rows, psis),
            psi,
            histograms: histograms.as_ref(),
            dropped: &dropped,
            command: ending.command,
        })?;
        Ok(())
    }

    fn release(self) {
        self.loaded.release(Release::Background);
    }
}
