//! The `pressure` object: raw tracepoints on the kernel's reclaim and compaction stalls and on
//! reclaim throttling, the per-process stall table they fill, and their histograms.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::RawTracePoint,
};
use memtrace_common::{
    DropSource,
    faults::MemcgLayout,
    globals, maps,
    pressure::{HISTOGRAM_SLOTS, Histogram, MAX_STALLING, Stall, StallCounts, StallKind},
};

use super::{
    Config, Loaded, Object, program_mut,
    targets::{self, Filter},
    tracepoints::Tracepoints,
};
use crate::sys::{procfs, refusal::kernel_refusal};

/// What the `pressure` object can lose.
pub const LOSSES: [DropSource; 3] = [
    DropSource::StallTableFull,
    DropSource::StallStartFull,
    DropSource::TargetTableFull,
];

/// Its programs and the raw tracepoints they run on.
const HOOKS: [(&str, &str); 7] = [
    ("mt_direct_begin", "mm_vmscan_direct_reclaim_begin"),
    ("mt_direct_end", "mm_vmscan_direct_reclaim_end"),
    ("mt_memcg_begin", "mm_vmscan_memcg_reclaim_begin"),
    ("mt_memcg_end", "mm_vmscan_memcg_reclaim_end"),
    ("mt_compact_begin", "mm_compaction_begin"),
    ("mt_compact_end", "mm_compaction_end"),
    ("mt_throttled", "mm_vmscan_throttled"),
];

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub filter: Filter,
    /// Where the programs find a process's memory cgroup, to record it (`--by cgroup`, serve).
    pub memcg: Option<MemcgLayout>,
    pub histograms: bool,
    /// Capacity of the per-process table.
    pub max_processes: u32,
    /// Warn of a hook this kernel lacks (`pressure` itself); other commands that time stalls on
    /// the side say so only under `-v`.
    pub warn_missing: bool,
}

/// Loads the object and attaches what this kernel has of its hooks; a missing one is one
/// warning (or an `-v` note), and its kind stays at zero.
pub fn load(options: &Options) -> anyhow::Result<Loaded> {
    let mut config = Config::default();
    options.filter.configure(&mut config)?;
    config
        .u32("WITH_HISTOGRAMS", u32::from(options.histograms))
        .size(maps::STALLS, options.max_processes)
        // Tasks in a stall at once: no more than the processes counted, in practice.
        .size(maps::STALL_STARTS, MAX_STALLING.min(options.max_processes))
        .size(
            maps::STALL_HISTOGRAMS,
            if options.histograms {
                StallKind::COUNT as u32
            } else {
                1
            },
        );
    if let Some(layout) = options.memcg {
        config.bytes(globals::MEMCG_LAYOUT, &layout.to_ne_bytes());
    }
    let mut ebpf = super::load(Object::Pressure, &config)?;
    super::forward_kernel_logs(&mut ebpf);
    let mut missing = Vec::new();
    for (name, tracepoint) in HOOKS {
        let program: &mut RawTracePoint = program_mut(&mut ebpf, name)?;
        program
            .load()
            .map_err(|err| kernel_refusal(err, &format!("load {name}")))?;
        if let Err(err) = program.attach(tracepoint) {
            log::debug!("raw tracepoint {tracepoint}: {err}");
            missing.push(tracepoint);
        }
    }
    if missing.len() == HOOKS.len() {
        return Err(crate::error::Failure::KernelUnsupported {
            what: "the vmscan and compaction tracepoints".into(),
            hint: "this kernel has none of them (CONFIG_TRACEPOINTS, CONFIG_COMPACTION)".into(),
        }
        .into());
    }
    if !missing.is_empty() {
        let level = match options.warn_missing {
            true => log::Level::Warn,
            false => log::Level::Info,
        };
        log::log!(
            level,
            "this kernel lacks {}: those stalls are not counted",
            missing.join(", ")
        );
    }
    let mut tracepoints = Tracepoints::default();
    if options.filter == (Filter::Targets { follow_forks: true }) {
        targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
    }
    Ok(Loaded { ebpf, tracepoints })
}

/// One process's stalls, as the table holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallSample {
    pub tgid: u32,
    pub kinds: [Stall; StallKind::COUNT],
    /// The name and memory cgroup the kernel recorded at its first stall.
    pub comm: String,
    pub memcg: u64,
}

/// Reads the whole stall table.
pub fn read(ebpf: &Ebpf) -> anyhow::Result<Vec<StallSample>> {
    let entries = super::entries::<u32, StallCounts>(ebpf, maps::STALLS)?;
    Ok(entries
        .into_iter()
        .map(|(tgid, counts)| StallSample {
            tgid,
            kinds: counts.kinds,
            comm: procfs::comm_from_bytes(&counts.comm),
            memcg: counts.memcg,
        })
        .collect())
}

/// Every process's stall time so far, all kinds together, in nanoseconds.
pub fn totals(ebpf: &Ebpf) -> anyhow::Result<std::collections::HashMap<u32, u64>> {
    Ok(read(ebpf)?
        .into_iter()
        .map(|sample| {
            let ns = sample.kinds.iter().map(|stall| stall.total_ns).sum();
            (sample.tgid, ns)
        })
        .collect())
}

/// Each kind's histogram, summed over CPUs (zeros without `histograms`).
pub fn histograms(ebpf: &Ebpf) -> anyhow::Result<[Histogram; StallKind::COUNT]> {
    let array: PerCpuArray<&MapData, Histogram> = super::map(ebpf, maps::STALL_HISTOGRAMS)?;
    let mut sums = [[0u64; HISTOGRAM_SLOTS]; StallKind::COUNT];
    for kind in StallKind::ALL {
        let Ok(per_cpu) = array.get(&(kind as u32), 0) else {
            continue;
        };
        for histogram in per_cpu.iter() {
            for (sum, n) in sums[kind as usize].iter_mut().zip(histogram) {
                *sum += n;
            }
        }
    }
    Ok(sums)
}

/// Deletes an exited process's stalls (read for the last time before).
pub fn remove(ebpf: &mut Ebpf, tgid: u32) -> anyhow::Result<()> {
    let mut table: HashMap<&mut MapData, u32, StallCounts> = super::map_mut(ebpf, maps::STALLS)?;
    super::deleted(table.remove(&tgid))
        .map_err(|err| anyhow::Error::new(err).context("delete from STALLS"))
}

pub fn drops(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    super::drops::read(ebpf, &LOSSES)
}
