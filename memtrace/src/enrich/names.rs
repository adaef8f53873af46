//! Which counted processes (or threads) still live, and what they are called now: from `/proc`
//! while they live, else from what the kernel recorded at their last `exec`.

use memtrace_common::faults::FaultKey;

use crate::{aggregate::faults::FaultAggregator, bpf::faults::Sample, sys::procfs};

/// Gives the aggregator a sample's current name (names change at `exec`).
pub fn refresh_comm(aggregator: &mut FaultAggregator, per_thread: bool, sample: &Sample) {
    let tid = per_thread.then_some(sample.key.tid);
    let comm = procfs::read_comm(sample.key.tgid, tid)
        .or_else(|| Some(sample.comm.clone()).filter(|comm| !comm.is_empty()));
    if let Some(comm) = comm {
        aggregator.set_comm(sample.key, comm);
    }
}

/// Whether the key's process (its thread, for a per-thread key) still exists.
pub fn is_alive(key: &FaultKey) -> bool {
    if key.tid == 0 {
        procfs::is_alive(key.tgid)
    } else {
        procfs::thread_exists(key.tgid, key.tid)
    }
}
