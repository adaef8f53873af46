//! The `attribution` object: page faults counted per user stack in the kernel, stacks it does
//! not know yet sent whole over a ring buffer, and what userspace teaches it back
//! (`crate::stacks`).

use anyhow::Context as _;
use aya::{Ebpf, maps::MapData};
use memtrace_common::{
    DropSource, globals, maps,
    stacks::{MappingCount, MappingKey, StackWay, VmaLayout},
};

use super::{
    Config, Loaded, MIN_RING_BYTES, Object,
    targets::{self, Filter},
    tracepoints::Tracepoints,
};

/// What the object loses.
pub const LOSSES: [DropSource; 3] = [
    DropSource::StackRingFull,
    DropSource::MappingTableFull,
    DropSource::TargetTableFull,
];

/// Regions (2 MiB of a process's addresses) whose mapping the kernel remembers: 1.2 MiB.
const MAPPING_CACHE_REGIONS: u32 = 16_384;

/// What faults are attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Stack,
    /// The mapping holding the address, with where the kernel keeps what a mapping is.
    Mapping(VmaLayout),
}

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub filter: Filter,
    pub by: By,
    /// Capacity of the recipe and counting tables.
    pub max_stacks: u32,
    /// Bytes of the snapshot ring (a power of two, at least a page).
    pub ring_bytes: u32,
}

/// Loads the object and attaches its programs to the fault events of every CPU (and the fork
/// follower when the filter follows forks).
pub fn load(options: &Options) -> anyhow::Result<Loaded> {
    let mut config = Config::default();
    options.filter.configure(&mut config)?;
    config.u32(globals::SELF_TGID, std::process::id());
    let (minor, major) = match options.by {
        By::Stack => {
            super::stacks::configure(&mut config, options.max_stacks, super::stacks::way())?;
            config
                .size(maps::STACK_SNAPSHOTS, options.ring_bytes)
                .size(maps::MAPPING_COUNTS, 1)
                .size(maps::MAPPING_CACHE, 1);
            (
                super::stacks::program("mt_stack_minor"),
                super::stacks::program("mt_stack_major"),
            )
        }
        By::Mapping(layout) => {
            super::stacks::configure(&mut config, 1, StackWay::Helpers)?;
            config
                .size(maps::STACK_SCRATCH, 1)
                .size(maps::STACK_SNAPSHOTS, MIN_RING_BYTES)
                .size(maps::MAPPING_COUNTS, options.max_stacks)
                .size(maps::MAPPING_CACHE, MAPPING_CACHE_REGIONS)
                .bytes(globals::VMA_LAYOUT, &layout.to_ne_bytes());
            ("mt_map_minor".to_owned(), "mt_map_major".to_owned())
        }
    };
    let mut ebpf = super::load(Object::Attribution, &config)?;
    super::forward_kernel_logs(&mut ebpf);
    super::faults::attach_fault_programs(&mut ebpf, &minor, &major)?;
    let mut tracepoints = Tracepoints::default();
    if options.filter == (Filter::Targets { follow_forks: true }) {
        targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
    }
    Ok(Loaded { ebpf, tracepoints })
}

/// Where the kernel keeps what a mapping is, from its BTF; `None` if a field is missing. Kernels
/// before 6.4 keep no sequence of a process's mapping changes (`mm_lock_seq`): then no mapping
/// is remembered between faults, and each is looked up.
pub fn vma_layout(btf: &crate::sys::btf::Btf) -> Option<VmaLayout> {
    let mm_lock_seq = btf
        .member_offset("mm_struct", "mm_lock_seq")
        .and_then(|seq| Some(seq + btf.member_offset("seqcount", "sequence")?));
    if mm_lock_seq.is_none() {
        log::info!("this kernel keeps no mm_lock_seq: every fault's mapping is looked up");
    }
    Some(VmaLayout {
        vm_start: btf.member_offset("vm_area_struct", "vm_start")?,
        vm_end: btf.member_offset("vm_area_struct", "vm_end")?,
        task_mm: btf.member_offset("task_struct", "mm")?,
        mm_lock_seq: mm_lock_seq.unwrap_or(0),
        vm_flags: btf.member_offset("vm_area_struct", "vm_flags")?,
        vm_file: btf.member_offset("vm_area_struct", "vm_file")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        inode_ino: btf.member_offset("inode", "i_ino")?,
        inode_sb: btf.member_offset("inode", "i_sb")?,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        file_dentry: btf.member_offset("file", "f_path")? + btf.member_offset("path", "dentry")?,
        dentry_name: btf.member_offset("dentry", "d_name")? + btf.member_offset("qstr", "name")?,
        dentry_parent: btf.member_offset("dentry", "d_parent")?,
    })
}

/// Deletes an exited process's mappings, whose counts userspace has taken over.
pub fn forget_mappings(ebpf: &mut Ebpf, keys: &[MappingKey]) -> anyhow::Result<()> {
    let mut table: aya::maps::HashMap<&mut MapData, MappingKey, MappingCount> =
        super::map_mut(ebpf, maps::MAPPING_COUNTS)?;
    for key in keys {
        super::deleted(table.remove(key)).context("delete from MAPPING_COUNTS")?;
    }
    Ok(())
}

/// Faults per process, kind and mapping, with what the kernel recorded of each.
pub fn mapping_counts(ebpf: &Ebpf) -> anyhow::Result<Vec<(MappingKey, MappingCount)>> {
    super::entries(ebpf, maps::MAPPING_COUNTS)
}

/// Events the object could not attribute, per source.
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<Vec<(DropSource, u64)>> {
    super::drops::read(ebpf, &LOSSES)
}
