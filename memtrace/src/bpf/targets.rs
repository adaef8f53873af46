//! The in-kernel target set of an object that filters by target (`faults`, `syscalls`): which
//! processes its programs count, and following the processes they fork (`task:task_newtask`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use memtrace_common::{
    COMM_LEN, globals, maps,
    targets::{FilterMode, MAX_TARGETS},
};

use super::{Config, tracepoints::Tracepoints};
use crate::{error::Failure, sys::tracefs};

const NEWTASK: (&str, &str) = ("task", "task_newtask");

/// What the kernel programs count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Processes registered in the target table (explicit pids, a spawned command's tree).
    Targets {
        follow_forks: bool,
    },
    Comm([u8; COMM_LEN]),
}

impl Filter {
    /// Sets the filter's globals and sizes the target table (one entry when it is not used),
    /// reading the fork hook's layout from tracefs if it is needed.
    pub fn configure(&self, config: &mut Config) -> Result<(), Failure> {
        match self {
            Filter::All => {
                config
                    .u32(globals::FILTER_MODE, FilterMode::All as u32)
                    .size(maps::TARGETS, 1);
            }
            Filter::Comm(comm) => {
                config
                    .u32(globals::FILTER_MODE, FilterMode::Comm as u32)
                    .bytes(globals::FILTER_COMM, comm)
                    .size(maps::TARGETS, 1);
            }
            Filter::Targets { follow_forks } => {
                config
                    .u32(globals::FILTER_MODE, FilterMode::Targets as u32)
                    .size(maps::TARGETS, MAX_TARGETS);
                if *follow_forks {
                    let format = tracefs::Format::read(NEWTASK.0, NEWTASK.1)?;
                    config
                        .u32(globals::NEWTASK_PID_OFFSET, format.offset("pid", 4)?)
                        .u32(
                            globals::NEWTASK_FLAGS_OFFSET,
                            format.offset("clone_flags", 8)?,
                        );
                }
            }
        }
        Ok(())
    }
}

/// Attaches the fork follower, so that children of followed processes become targets.
pub fn attach_fork_follower(ebpf: &mut Ebpf, tracepoints: &mut Tracepoints) -> anyhow::Result<()> {
    tracepoints.attach(ebpf, "mt_newtask", NEWTASK.0, NEWTASK.1)
}

/// The target table of a loaded object: what a session registers its targets in, and how a
/// spawned command becomes a target at birth.
pub trait TargetTable {
    /// Adds (or updates) a target with [`memtrace_common::targets::TargetFlags`] bits.
    fn insert(&mut self, pid: u32, flags: u32) -> anyhow::Result<()>;
    /// Removes a target; one never registered, or already gone, is no target either way.
    fn remove(&mut self, pid: u32) -> anyhow::Result<()>;
    /// Whether the table holds this process.
    fn contains(&mut self, pid: u32) -> anyhow::Result<bool>;
}

impl TargetTable for Ebpf {
    fn insert(&mut self, pid: u32, flags: u32) -> anyhow::Result<()> {
        table(self)?
            .insert(pid, flags, 0)
            .with_context(|| format!("register process {pid} as a target"))
    }

    fn remove(&mut self, pid: u32) -> anyhow::Result<()> {
        super::deleted(table(self)?.remove(&pid))
            .with_context(|| format!("unregister target {pid}"))
    }

    fn contains(&mut self, pid: u32) -> anyhow::Result<bool> {
        Ok(table(self)?.get(&pid, 0).is_ok())
    }
}

fn table(ebpf: &mut Ebpf) -> anyhow::Result<HashMap<&mut MapData, u32, u32>> {
    super::map_mut(ebpf, maps::TARGETS)
}
