//! Where `faults` gets its counts, one of three: perf's counting events on explicit processes
//! (no program at all), the `faults` object's counting table, or the `attribution` object's
//! counts per stack or mapping summed per process. The job asks this one type, whichever it is.

use anyhow::Context as _;
use memtrace_common::{DropSource, faults::FaultKey, targets::TargetFlags};

use super::FaultsConfig;
use crate::{
    bpf::{
        self, Loaded, attribution,
        faults::{LOSSES, Options, Sample},
        targets::TargetTable,
        tracepoints::Release,
    },
    pipelines::attributed::Attributed,
    session::{Session, Target},
    sys::{
        counters::{self, OpenError, ProcessCounters},
        procfs,
    },
};

pub enum Source {
    /// Perf counting events on explicit processes.
    Counters(Vec<ProcessCounters>),
    /// The `faults` object's counting table.
    Kernel(Loaded),
    /// The `attribution` object: counts per stack or mapping, summed per process.
    Attribution(Box<Attributed>),
}

impl Source {
    /// The source the flags call for, with the session's targets registered and its command,
    /// if any, started.
    pub fn start(config: &FaultsConfig, session: &mut Session) -> anyhow::Result<Source> {
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
        Ok(source)
    }

    /// What counts, as the start record names it.
    pub fn counted_by(&self) -> &'static str {
        match self {
            Source::Counters(_) => "perf_counters",
            _ => "programs",
        }
    }

    /// The attributed counts, when faults are counted per stack or mapping.
    pub fn attributed(&mut self) -> Option<&mut Attributed> {
        match self {
            Source::Attribution(attributed) => Some(attributed),
            _ => None,
        }
    }

    /// One reading of every count.
    pub fn read(&mut self) -> anyhow::Result<Vec<Sample>> {
        match self {
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
    pub fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        match self {
            Source::Counters(_) => Ok(LOSSES.iter().map(|&source| (source, 0)).collect()),
            Source::Kernel(loaded) => bpf::faults::drops(&loaded.ebpf),
            Source::Attribution(attributed) => attribution::drops(&attributed.loaded.ebpf),
        }
    }

    /// Forgets a process (thread) that has exited and was read for the last time.
    pub fn retire(&mut self, key: FaultKey) -> anyhow::Result<()> {
        match self {
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
        Ok(())
    }

    pub fn release(self) {
        match self {
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
