//! The page-fault programs: attached to the perf software events `minor-faults` and
//! `major-faults` on every online CPU, and the per-CPU counting table they fill.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        RawTracePoint,
        perf_event::{PerfEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::{nr_cpus, online_cpus},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    faults::{FaultCounts, FaultKey},
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

/// Reads the whole counting table, summing each key over CPUs.
pub fn read(ebpf: &Ebpf) -> anyhow::Result<Vec<(FaultKey, Counts)>> {
    let map = ebpf
        .map(maps::FAULT_COUNTS)
        .context("the BPF object has no FAULT_COUNTS map")?;
    let table: PerCpuHashMap<&MapData, FaultKey, FaultCounts> = PerCpuHashMap::try_from(map)?;
    let mut samples = Vec::new();
    for entry in table.iter() {
        let (key, per_cpu) = match entry {
            Ok(entry) => entry,
            // The entry was deleted between listing its key and reading it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(err) => return Err(err).context("read FAULT_COUNTS"),
        };
        let counts = per_cpu.iter().fold(Counts::default(), |sum, value| Counts {
            minor: sum.minor + value.minor,
            major: sum.major + value.major,
        });
        samples.push((key, counts));
    }
    Ok(samples)
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
    let mut name = [0u8; COMM_LEN];
    let len = comm.len().min(COMM_LEN - 1);
    name[..len].copy_from_slice(&comm.as_bytes()[..len]);
    comms(ebpf)?
        .insert(pid, name, 0)
        .context("record the target's name")
}

/// Deletes a retired key, so the table does not fill with exited processes.
pub fn remove(ebpf: &mut Ebpf, key: &FaultKey) -> anyhow::Result<()> {
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
