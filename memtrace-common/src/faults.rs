//! Page-fault counting: the key and value of the in-kernel counting table.

/// Default capacity of the fault table (processes, or threads with `--threads`).
pub const MAX_FAULT_KEYS: u32 = 16_384;

/// Which process (and, when counting per thread, which thread) a count belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id, or 0 when counting per process.
    pub tid: u32,
}

/// Faults counted for one key, and its command name. One copy shared by every CPU, incremented
/// atomically: a per-CPU table would grow with the CPU count (50 MB at 192 CPUs), and a
/// process faulting on several CPUs at once is the rare case.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub minor: u64,
    pub major: u64,
    /// The command name: set when the key is created, rewritten at `exec`, so that a process
    /// which exits between two readings is still named.
    pub comm: [u8; crate::COMM_LEN],
    /// The process's memory cgroup (the kernel's id of its directory, its inode number),
    /// recorded like the name when [`MemcgLayout::enabled`]; else 0.
    pub memcg: u64,
}

/// Where to find a task's memory cgroup, from the kernel's BTF (offsets in bytes):
/// `task->cgroups->subsys[memory_index]->cgroup->kn->id`. The same path on cgroup v1 and v2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgLayout {
    /// Non-zero to record each process's memory cgroup (`serve`).
    pub enabled: u32,
    pub task_cgroups: u32,
    pub css_set_subsys: u32,
    /// `memory_cgrp_id`: the memory controller's index in `css_set.subsys`.
    pub memory_index: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub _pad: u32,
}

impl MemcgLayout {
    /// The layout as the bytes of the `MEMCG_LAYOUT` global.
    pub fn to_ne_bytes(&self) -> [u8; size_of::<MemcgLayout>()] {
        let words = [
            self.enabled,
            self.task_cgroups,
            self.css_set_subsys,
            self.memory_index,
            self.css_cgroup,
            self.cgroup_kn,
            self.kn_id,
            self._pad,
        ];
        let mut bytes = [0; size_of::<MemcgLayout>()];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }
}

const _: () = assert!(size_of::<FaultKey>() == 8);
const _: () = assert!(size_of::<FaultCounts>() == 40);
const _: () = assert!(size_of::<MemcgLayout>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `repr(C)`, made only of integers and byte arrays, with no padding bytes.
    unsafe impl aya::Pod for super::FaultKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultCounts {}
}
