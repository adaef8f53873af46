//! The whole machine, counted in the kernel per process: page faults, allocation syscalls,
//! memory stalls and OOM kills, as `serve` exports them and `top` shows them. Each reading gives
//! what changed since the one before; a process that exits is retired from the kernel's tables.

use anyhow::Context as _;
use memtrace_common::{
    DropSource,
    faults::FaultKey,
    pressure::MAX_STALLERS,
    syscalls::{MAX_PENDING, ProcSyscallCounts, ProcSyscallKey},
};

use crate::{
    aggregate::{cumulative::Deltas, pressure::Kinds},
    bpf::{
        self, Loaded, oom::OomEvents, syscalls::KernelFilter, targets::Filter, tracepoints::Release,
    },
    model::faults::Counts,
    syscalls::Syscall,
};

/// What the machine's objects are loaded with.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Capacity of the kernel's per-process tables (processes).
    pub max_processes: u32,
    /// Whether the OOM object also reports new processes (for victims' histories).
    pub births: bool,
}

/// A process's faults since the last reading, with the name and memory cgroup the kernel
/// recorded for it (which outlive it).
pub struct ProcessFaults {
    pub tgid: u32,
    pub delta: Counts,
    pub comm: String,
    pub memcg: u64,
}

/// A process's stalls since the last reading, with what the kernel recorded for it.
pub struct ProcessStalls {
    pub tgid: u32,
    pub delta: Kinds,
    pub comm: String,
    pub memcg: u64,
}

/// What changed since the last reading.
#[derive(Default)]
pub struct Reading {
    pub faults: Vec<ProcessFaults>,
    /// Calls of one allocation syscall by one process.
    pub syscalls: Vec<(u32, Syscall, ProcSyscallCounts)>,
    pub stalls: Vec<ProcessStalls>,
    /// What the kernel could not record, per source (two objects can lose targets).
    pub dropped: Vec<(&'static str, u64)>,
}

/// The four kernel objects, loaded system-wide and counting only, and the last totals read.
pub struct Machine {
    faults: Loaded,
    syscalls: Loaded,
    oom: Loaded,
    pressure: Loaded,
    fault_counts: Deltas<FaultKey, Counts>,
    stall_counts: Deltas<u32, Kinds>,
    syscall_counts: Deltas<ProcSyscallKey, ProcSyscallCounts>,
    dropped: Deltas<&'static str, u64>,
}

impl Machine {
    /// Loads and attaches every object.
    pub fn load(options: Options) -> anyhow::Result<Machine> {
        // Each process's memory cgroup is recorded in the kernel with its counts, so that one
        // which exits before memtrace reads /proc still gets its cgroup.
        let memcg = bpf::memcg_layout("short-lived processes may have cgroup=\"unknown\"");
        let faults = bpf::faults::load(&bpf::faults::Options {
            filter: Filter::All,
            per_thread: false,
            max_keys: options.max_processes,
            only_targets: None,
            memcg,
        })?;
        let syscalls = bpf::syscalls::load(&bpf::syscalls::Options {
            syscalls: Syscall::DEFAULT.to_vec(),
            kernel: KernelFilter {
                count_only: true,
                failed_only: false,
                min_size: 0,
                per_process: true,
            },
            targets: Filter::All,
            max_threads: MAX_PENDING,
            max_process_keys: options.max_processes.saturating_mul(2),
            stacks: None,
            kernel_stacks: false,
            execs: false,
        })?;
        let oom = bpf::oom::load(&bpf::oom::layout()?, options.births)
            .context("attach oom:mark_victim and console")?;
        if !bpf::oom::console_sees_reports() {
            log::info!(
                "this kernel shows memtrace its OOM reports only when they reach a console: OOM \
                 victims' cgroups come from /proc"
            );
        }
        // Only processes that stall take an entry: fewer than those that fault.
        let pressure = bpf::pressure::load(&bpf::pressure::Options {
            filter: Filter::All,
            memcg,
            histograms: false,
            max_processes: options.max_processes.min(MAX_STALLERS),
            warn_missing: false,
        })?;
        Ok(Machine {
            faults,
            syscalls,
            oom,
            pressure,
            fault_counts: Deltas::default(),
            stall_counts: Deltas::default(),
            syscall_counts: Deltas::default(),
            dropped: Deltas::default(),
        })
    }

    /// The OOM object's stream of kills (opened once).
    pub fn oom_events(&mut self) -> anyhow::Result<OomEvents> {
        OomEvents::open(&mut self.oom.ebpf)
    }

    /// The OOM object's stream of new processes (with `births` only).
    pub fn new_processes(&mut self) -> anyhow::Result<bpf::oom::NewProcesses> {
        bpf::oom::NewProcesses::open(&mut self.oom.ebpf)
    }

    /// The fault object: the one every other user of the tables can be asked through.
    pub fn faults(&self) -> &aya::Ebpf {
        &self.faults.ebpf
    }

    /// The stall object, for the stall totals of victims' histories.
    pub fn pressure(&self) -> &aya::Ebpf {
        &self.pressure.ebpf
    }

    /// Every object, for their programs' statistics.
    pub fn objects(&self) -> [&aya::Ebpf; 4] {
        [
            &self.faults.ebpf,
            &self.syscalls.ebpf,
            &self.oom.ebpf,
            &self.pressure.ebpf,
        ]
    }

    /// What the kernel counted since the last reading.
    pub fn read(&mut self) -> anyhow::Result<Reading> {
        let faults = bpf::faults::read(&self.faults.ebpf)?
            .into_iter()
            .map(|sample| ProcessFaults {
                tgid: sample.key.tgid,
                delta: self.fault_counts.update(sample.key, sample.counts),
                comm: sample.comm,
                memcg: sample.memcg,
            })
            .collect();
        let syscalls = bpf::syscalls::proc_stats(&self.syscalls.ebpf)?
            .into_iter()
            .filter_map(|(key, counts)| {
                let delta = self.syscall_counts.update(key, counts);
                Some((key.tgid, Syscall::from_nr(key.nr)?, delta))
            })
            .collect();
        let stalls = bpf::pressure::read(&self.pressure.ebpf)?
            .into_iter()
            .map(|sample| ProcessStalls {
                tgid: sample.tgid,
                delta: self
                    .stall_counts
                    .update(sample.tgid, Kinds::from_kernel(&sample.kinds)),
                comm: sample.comm,
                memcg: sample.memcg,
            })
            .collect();
        let dropped = self
            .drops()?
            .into_iter()
            .map(|(source, n)| (source.name(), self.dropped.update(source.name(), n)))
            .collect();
        Ok(Reading {
            faults,
            syscalls,
            stalls,
            dropped,
        })
    }

    /// What every object could not record, summed per source.
    fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        let mut sums: Vec<(DropSource, u64)> = Vec::new();
        let readings = [
            bpf::faults::drops(&self.faults.ebpf)?,
            bpf::syscalls::drops(&self.syscalls.ebpf, true)?,
            bpf::drops::read(&self.oom.ebpf, &bpf::oom::LOSSES)?,
            bpf::pressure::drops(&self.pressure.ebpf)?,
        ];
        for (source, n) in readings.into_iter().flatten() {
            match sums.iter_mut().find(|(known, _)| *known == source) {
                Some((_, sum)) => *sum += n,
                None => sums.push((source, n)),
            }
        }
        Ok(sums)
    }

    /// The name and memory cgroup the fault table recorded for a process.
    pub fn recorded(&self, tgid: u32) -> Option<(String, u64)> {
        bpf::faults::kernel_record(&self.faults.ebpf, tgid)
    }

    /// Forgets an exited process in every kernel table, and its last totals.
    pub fn retire(&mut self, pid: u32) -> anyhow::Result<()> {
        let key = FaultKey { tgid: pid, tid: 0 };
        bpf::faults::remove(&mut self.faults.ebpf, &key)?;
        self.fault_counts.forget(&key);
        bpf::pressure::remove(&mut self.pressure.ebpf, pid)?;
        self.stall_counts.forget(&pid);
        for syscall in Syscall::DEFAULT {
            let key = ProcSyscallKey {
                tgid: pid,
                nr: syscall.nr(),
            };
            bpf::syscalls::forget_process(&mut self.syscalls.ebpf, &key)?;
            self.syscall_counts.forget(&key);
        }
        Ok(())
    }

    /// Detaches everything, without waiting on the kernel (`bpf::tracepoints::Release`).
    pub fn release(self, how: Release) {
        for loaded in [self.faults, self.syscalls, self.oom, self.pressure] {
            loaded.release(how);
        }
    }
}
