//! The page-fault programs: attached to the perf software events `minor-faults` and
//! `major-faults` on every online CPU, and the per-CPU counting table they fill.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        RawTracePoint,
        perf_event::{PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::{nr_cpus, online_cpus},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    faults::{FaultCounts, FaultKey, FixedPids, MAX_FIXED_TARGETS},
    maps,
};

use super::{kernel_refusal, program_mut};
use crate::aggregate::faults::Counts;

/// Loads both fault programs and attaches each to its event on every online CPU, with the
/// `exec` hook that keeps the names of counted processes current.
pub fn attach(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let exec: &mut RawTracePoint = program_mut(ebpf, "mt_exec")?;
    exec.load()
        .map_err(|err| kernel_refusal(err, "load mt_exec"))?;
    exec.attach("sched_process_exec")
        .map_err(|err| kernel_refusal(err, "attach the raw tracepoint sched_process_exec"))?;

    let cpus = online_cpus()
        .map_err(|(path, err)| anyhow::Error::new(err).context(format!("read {path}")))?;
    for (name, event) in [
        ("mt_fault_minor", SoftwareEvent::PageFaultsMin),
        ("mt_fault_major", SoftwareEvent::PageFaultsMaj),
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

/// Reads the whole counting table and the fixed slots in use, summing each key over CPUs.
pub fn read(ebpf: &Ebpf) -> anyhow::Result<Vec<(FaultKey, Counts)>> {
    let mut samples = read_fixed(ebpf)?;
    let map = ebpf
        .map(maps::FAULT_COUNTS)
        .context("the BPF object has no FAULT_COUNTS map")?;
    let table: PerCpuHashMap<&MapData, FaultKey, FaultCounts> = PerCpuHashMap::try_from(map)?;
    for entry in table.iter() {
        let (key, per_cpu) = match entry {
            Ok(entry) => entry,
            // The entry was deleted between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(err) => return Err(err).context("read FAULT_COUNTS"),
        };
        samples.push((key, sum_over_cpus(&per_cpu)));
    }
    Ok(samples)
}

fn sum_over_cpus(per_cpu: &PerCpuValues<FaultCounts>) -> Counts {
    per_cpu.iter().fold(Counts::default(), |sum, value| Counts {
        minor: sum.minor + value.minor,
        major: sum.major + value.major,
    })
}

fn fixed_pids(ebpf: &Ebpf) -> anyhow::Result<FixedPids> {
    let map = ebpf
        .map(maps::FAULT_FIXED_PIDS)
        .context("the BPF object has no FAULT_FIXED_PIDS map")?;
    let array: Array<&MapData, FixedPids> = Array::try_from(map)?;
    array.get(&0, 0).context("read FAULT_FIXED_PIDS")
}

fn set_fixed_pids(ebpf: &mut Ebpf, pids: FixedPids) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(maps::FAULT_FIXED_PIDS)
        .context("the BPF object has no FAULT_FIXED_PIDS map")?;
    let mut array: Array<&mut MapData, FixedPids> = Array::try_from(map)?;
    array.set(0, pids, 0).context("write FAULT_FIXED_PIDS")
}

/// The processes counted in fixed slots, with their counts.
fn read_fixed(ebpf: &Ebpf) -> anyhow::Result<Vec<(FaultKey, Counts)>> {
    let pids = fixed_pids(ebpf)?;
    if pids.iter().all(|&pid| pid == 0) {
        return Ok(Vec::new());
    }
    let map = ebpf
        .map(maps::FAULT_FIXED_COUNTS)
        .context("the BPF object has no FAULT_FIXED_COUNTS map")?;
    let slots: PerCpuArray<&MapData, FaultCounts> = PerCpuArray::try_from(map)?;
    let mut samples = Vec::new();
    for (slot, &pid) in pids.iter().enumerate().filter(|&(_, &pid)| pid != 0) {
        let per_cpu = slots
            .get(&(slot as u32), 0)
            .context("read FAULT_FIXED_COUNTS")?;
        samples.push((FaultKey { tgid: pid, tid: 0 }, sum_over_cpus(&per_cpu)));
    }
    Ok(samples)
}

/// Gives each target a fixed slot (for at most [`MAX_FIXED_TARGETS`], counted per process, in
/// `FIXED_TARGETS` mode) and records its name.
pub fn fix_targets(ebpf: &mut Ebpf, targets: &[(u32, String)]) -> anyhow::Result<()> {
    anyhow::ensure!(
        targets.len() <= MAX_FIXED_TARGETS,
        "{} targets for {MAX_FIXED_TARGETS} fixed slots",
        targets.len()
    );
    let mut pids = FixedPids::default();
    for (slot, (pid, comm)) in targets.iter().enumerate() {
        pids[slot] = *pid;
        remember_comm(ebpf, *pid, comm)?;
    }
    set_fixed_pids(ebpf, pids)
}

fn comms(ebpf: &mut Ebpf) -> anyhow::Result<HashMap<&mut MapData, u32, [u8; COMM_LEN]>> {
    let map = ebpf
        .map_mut(maps::COMMS)
        .context("the BPF object has no COMMS map")?;
    HashMap::try_from(map).context("COMMS map")
}

/// The name the kernel recorded for a process (current as of its last `exec`).
pub fn kernel_comm(ebpf: &mut Ebpf, tgid: u32) -> Option<String> {
    let comm = comms(ebpf).ok()?.get(&tgid, 0).ok()?;
    Some(crate::procfs::comm_from_bytes(&comm))
}

/// Forgets the name of an exited process.
pub fn forget_comm(ebpf: &mut Ebpf, tgid: u32) -> anyhow::Result<()> {
    super::deleted(comms(ebpf)?.remove(&tgid)).context("delete from COMMS")
}

/// Registers a target process with zero counts and its name. In per-process target mode the
/// kernel counts only processes present in the table (one lookup filters and counts).
pub fn register(ebpf: &mut Ebpf, pid: u32, comm: &str) -> anyhow::Result<()> {
    let cpus =
        nr_cpus().map_err(|(path, err)| anyhow::Error::new(err).context(format!("read {path}")))?;
    let zeros =
        PerCpuValues::try_from(vec![FaultCounts::default(); cpus]).context("per-CPU zeros")?;
    let map = ebpf
        .map_mut(maps::FAULT_COUNTS)
        .context("the BPF object has no FAULT_COUNTS map")?;
    let mut table: PerCpuHashMap<&mut MapData, FaultKey, FaultCounts> =
        PerCpuHashMap::try_from(map)?;
    table
        .insert(FaultKey { tgid: pid, tid: 0 }, zeros, 0)
        .with_context(|| format!("register process {pid} for counting"))?;
    remember_comm(ebpf, pid, comm)
}

/// Records a target's name, kept current at `exec` by the kernel.
fn remember_comm(ebpf: &mut Ebpf, pid: u32, comm: &str) -> anyhow::Result<()> {
    let mut name = [0u8; COMM_LEN];
    let len = comm.len().min(COMM_LEN - 1);
    name[..len].copy_from_slice(&comm.as_bytes()[..len]);
    comms(ebpf)?
        .insert(pid, name, 0)
        .context("record the target's name")
}

/// Deletes a retired key, so the table does not fill with exited processes; a fixed slot is
/// freed instead, so that a process reusing the pid is not counted in it.
pub fn remove(ebpf: &mut Ebpf, key: &FaultKey) -> anyhow::Result<()> {
    let mut pids = fixed_pids(ebpf)?;
    if key.tid == 0
        && let Some(slot) = pids.iter_mut().find(|pid| **pid == key.tgid)
    {
        *slot = 0;
        return set_fixed_pids(ebpf, pids);
    }
    let map = ebpf
        .map_mut(maps::FAULT_COUNTS)
        .context("the BPF object has no FAULT_COUNTS map")?;
    let mut table: PerCpuHashMap<&mut MapData, FaultKey, FaultCounts> =
        PerCpuHashMap::try_from(map)?;
    super::deleted(table.remove(key)).context("delete from FAULT_COUNTS")
}

/// Events the kernel side could not record, per source, summed over CPUs.
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    let map = ebpf
        .map(maps::DROPS)
        .context("the BPF object has no DROPS map")?;
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    DropSource::ALL
        .iter()
        .map(|&source| {
            let per_cpu = array.get(&(source as u32), 0).context("read DROPS")?;
            Ok((source, per_cpu.iter().sum()))
        })
        .collect()
}
