//! Reading an object's drop counters: events its programs saw but could not record (a full
//! table or ring buffer), per source, summed over CPUs.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use memtrace_common::{DropSource, maps};

/// The counts of `sources` (the ones this object can lose), in that order.
pub fn read(ebpf: &Ebpf, sources: &[DropSource]) -> anyhow::Result<Vec<(DropSource, u64)>> {
    let array: PerCpuArray<&MapData, u64> = super::map(ebpf, maps::DROPS)?;
    sources
        .iter()
        .map(|&source| {
            let per_cpu = array.get(&(source as u32), 0)?;
            Ok((source, per_cpu.iter().sum()))
        })
        .collect()
}
