//! The in-kernel target set: which processes the programs count, and following the processes
//! they fork (`task:task_newtask`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::TracePoint,
};
use memtrace_common::{COMM_LEN, globals, maps, targets::FilterMode};

use crate::{error::Failure, tracefs};

use super::{Globals, kernel_refusal, program_mut};

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
    /// Sets the filter's globals, reading the fork hook's layout from tracefs if it is needed.
    pub fn configure(&self, globals: &mut Globals) -> Result<(), Failure> {
        match self {
            Filter::All => {
                globals.u32(globals::FILTER_MODE, FilterMode::All as u32);
            }
            Filter::Comm(comm) => {
                globals
                    .u32(globals::FILTER_MODE, FilterMode::Comm as u32)
                    .bytes(globals::FILTER_COMM, comm);
            }
            Filter::Targets { follow_forks } => {
                globals.u32(globals::FILTER_MODE, FilterMode::Targets as u32);
                if *follow_forks {
                    let format = tracefs::Format::read(NEWTASK.0, NEWTASK.1)?;
                    globals
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
pub fn attach_fork_follower(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let program: &mut TracePoint = program_mut(ebpf, "mt_newtask")?;
    program
        .load()
        .map_err(|err| kernel_refusal(err, "load the fork follower"))?;
    program
        .attach(NEWTASK.0, NEWTASK.1)
        .map_err(|err| kernel_refusal(err, "attach task:task_newtask"))?;
    Ok(())
}

fn table(ebpf: &mut Ebpf) -> anyhow::Result<HashMap<&mut MapData, u32, u32>> {
    let map = ebpf
        .map_mut(maps::TARGETS)
        .context("the BPF object has no TARGETS map")?;
    HashMap::try_from(map).context("TARGETS map")
}

/// Adds (or updates) a target with [`memtrace_common::targets::TargetFlags`] bits.
pub fn insert(ebpf: &mut Ebpf, pid: u32, flags: u32) -> anyhow::Result<()> {
    table(ebpf)?
        .insert(pid, flags, 0)
        .with_context(|| format!("register process {pid} as a target"))
}

pub fn remove(ebpf: &mut Ebpf, pid: u32) -> anyhow::Result<()> {
    // Never registered, or already gone: either way it is no longer a target.
    super::deleted(table(ebpf)?.remove(&pid)).with_context(|| format!("unregister target {pid}"))
}

/// Whether the table holds this process.
pub fn contains(ebpf: &mut Ebpf, pid: u32) -> anyhow::Result<bool> {
    Ok(table(ebpf)?.get(&pid, 0).is_ok())
}
