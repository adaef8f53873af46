//! The `faults` object: its programs on the perf software events `minor-faults` and
//! `major-faults` of every online CPU, the `exec` hook that keeps counted processes' names
//! current, the fork follower for a spawned command, and the counting table they fill.

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{
        RawTracePoint,
        perf_event::{PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use memtrace_common::{
    DropSource,
    faults::{FaultCounts, FaultKey, MemcgLayout},
    globals, maps,
};

use super::{
    Config, Loaded, Object, program_mut,
    targets::{self, Filter},
    tracepoints::Tracepoints,
};
use crate::{
    model::faults::Counts,
    sys::{procfs, refusal::kernel_refusal},
};

/// What the `faults` object loses that bears on fault counts.
pub const LOSSES: [DropSource; 2] = [DropSource::FaultTableFull, DropSource::TargetTableFull];

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub filter: Filter,
    pub per_thread: bool,
    /// Capacity of the counting table: processes (threads with `per_thread`).
    pub max_keys: u32,
    /// With explicit target processes only (none followed, whole processes): how many. Both
    /// tables are then sized to them (the programs count here instead of perf's counters on
    /// kernels before 5.13).
    pub only_targets: Option<u32>,
    /// Where the programs find a process's memory cgroup, to record it with its counts
    /// (`serve`); `None` records none.
    pub memcg: Option<MemcgLayout>,
}

/// Where a task's memory cgroup is, from the kernel's BTF; `None` if a field is missing.
pub fn memcg_layout(btf: &crate::sys::btf::Btf) -> Option<MemcgLayout> {
    Some(MemcgLayout {
        enabled: 1,
        task_cgroups: btf.member_offset("task_struct", "cgroups")?,
        css_set_subsys: btf.member_offset("css_set", "subsys")?,
        memory_index: u32::try_from(btf.enum_value("memory_cgrp_id")?).ok()?,
        css_cgroup: btf.member_offset("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kn_id: btf.member_offset("kernfs_node", "id")?,
        _pad: 0,
    })
}

/// Loads the object and attaches its programs: the fault programs on every online CPU, the
/// `exec` hook, and the fork follower when the filter follows forks.
pub fn load(options: &Options) -> anyhow::Result<Loaded> {
    let mut config = Config::default();
    options.filter.configure(&mut config)?;
    config
        .u32(globals::PER_THREAD, u32::from(options.per_thread))
        .size(maps::FAULT_COUNTS, options.max_keys);
    if let Some(targets) = options.only_targets {
        config
            .size(maps::FAULT_COUNTS, targets.max(1))
            .size(maps::TARGETS, targets.max(1));
    }
    if let Some(layout) = options.memcg {
        config.bytes(globals::MEMCG_LAYOUT, &layout.to_ne_bytes());
    }
    let mut ebpf = super::load(Object::Faults, &config)?;
    super::forward_kernel_logs(&mut ebpf);

    let exec: &mut RawTracePoint = program_mut(&mut ebpf, "mt_exec")?;
    exec.load()
        .map_err(|err| kernel_refusal(err, "load mt_exec"))?;
    exec.attach("sched_process_exec")
        .map_err(|err| kernel_refusal(err, "attach the raw tracepoint sched_process_exec"))?;

    attach_fault_programs(&mut ebpf, "mt_fault_minor", "mt_fault_major")?;
    let mut tracepoints = Tracepoints::default();
    if options.filter == (Filter::Targets { follow_forks: true }) {
        targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
    }
    Ok(Loaded { ebpf, tracepoints })
}

/// Loads two programs and attaches them to the perf software events `minor-faults` and
/// `major-faults` of every online CPU: they run on every fault, where the kernel counts it.
pub fn attach_fault_programs(ebpf: &mut Ebpf, minor: &str, major: &str) -> anyhow::Result<()> {
    let cpus = online_cpus()
        .map_err(|(path, err)| anyhow::Error::new(err).context(format!("read {path}")))?;
    for (name, event) in [
        (minor, SoftwareEvent::PageFaultsMin),
        (major, SoftwareEvent::PageFaultsMaj),
    ] {
        let program: &mut PerfEvent = program_mut(ebpf, name)?;
        program
            .load()
            .map_err(|err| kernel_refusal(err, &format!("load {name}")))?;
        for &cpu in &cpus {
            // Period 1: the program runs on every fault, exactly where the kernel counts it.
            program
                .attach(
                    PerfEventConfig::Software(event),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(1),
                    false,
                )
                .map_err(|err| kernel_refusal(err, &format!("attach {name} on CPU {cpu}")))?;
        }
    }
    Ok(())
}

/// One key's counts, as the table holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub key: FaultKey,
    pub counts: Counts,
    /// The name the kernel recorded (at the key's first fault, or its last `exec`).
    pub comm: String,
    /// The memory cgroup it recorded likewise (its directory's inode number), or 0.
    pub memcg: u64,
}

/// Reads the whole counting table.
pub fn read(ebpf: &Ebpf) -> anyhow::Result<Vec<Sample>> {
    let entries = super::entries::<FaultKey, FaultCounts>(ebpf, maps::FAULT_COUNTS)?;
    Ok(entries
        .into_iter()
        .map(|(key, value)| Sample {
            key,
            counts: Counts {
                minor: value.minor,
                major: value.major,
            },
            comm: procfs::comm_from_bytes(&value.comm),
            memcg: value.memcg,
        })
        .collect())
}

/// The name and memory cgroup the kernel recorded for a process (as of its last `exec`).
pub fn kernel_record(ebpf: &Ebpf, tgid: u32) -> Option<(String, u64)> {
    let table: HashMap<&MapData, FaultKey, FaultCounts> =
        super::map(ebpf, maps::FAULT_COUNTS).ok()?;
    let value = table.get(&FaultKey { tgid, tid: 0 }, 0).ok()?;
    Some((procfs::comm_from_bytes(&value.comm), value.memcg))
}

/// Registers an explicit target process in the counting table itself, as the kernel does for
/// a followed child: for whole processes, the programs only count processes that have an
/// entry (one lookup filters and counts). Per thread, entries come with each thread's first
/// fault.
pub fn register(ebpf: &mut Ebpf, tgid: u32, per_thread: bool) -> anyhow::Result<()> {
    if per_thread {
        return Ok(());
    }
    let mut table: HashMap<&mut MapData, FaultKey, FaultCounts> =
        super::map_mut(ebpf, maps::FAULT_COUNTS)?;
    let mut comm = [0u8; memtrace_common::COMM_LEN];
    if let Some(name) = procfs::read_comm(tgid, None) {
        let bytes = name.as_bytes();
        let n = bytes.len().min(comm.len() - 1);
        comm[..n].copy_from_slice(&bytes[..n]);
    }
    let zero = FaultCounts {
        minor: 0,
        major: 0,
        comm,
        memcg: 0,
    };
    table
        .insert(FaultKey { tgid, tid: 0 }, zero, 0)
        .map_err(|err| anyhow::Error::new(err).context(format!("count process {tgid}")))
}

/// Deletes a retired key, so the table does not fill with exited processes.
pub fn remove(ebpf: &mut Ebpf, key: &FaultKey) -> anyhow::Result<()> {
    let mut table: HashMap<&mut MapData, FaultKey, FaultCounts> =
        super::map_mut(ebpf, maps::FAULT_COUNTS)?;
    super::deleted(table.remove(key))
        .map_err(|err| anyhow::Error::new(err).context("delete from FAULT_COUNTS"))
}

/// Events the object could not count, per source.
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    super::drops::read(ebpf, &LOSSES)
}
