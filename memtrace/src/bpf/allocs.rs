//! The `allocs` object (`leaks --malloc`): its uprobes attached to each target's allocator, its
//! table of live blocks read in batches, and the stacks it sends whole.

use std::{
    collections::HashMap as StdHashMap,
    num::NonZeroU32,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{RawTracePoint, UProbe, uprobe::UProbeScope},
};
use memtrace_common::{
    DropSource,
    allocs::{ALLOC_RING_BYTES, AllocKey, AllocStats, Allocation, Shape},
    globals, maps,
};

use super::{Config, Object, stacks::SnapshotTables};
use crate::leaks::allocator::{Allocator, Role};

/// What the object loses.
pub const LOSSES: [DropSource; 2] = [DropSource::AllocTableFull, DropSource::StackRingFull];

/// The program every return goes to.
const RETURN_PROGRAM: &str = "mt_alloc_return";

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub max_allocations: u32,
    pub max_stacks: u32,
    /// Record only blocks of at least this many bytes.
    pub min_size: u64,
    /// Record one allocation in this many.
    pub sample: u32,
}

/// The loaded object: its programs are attached per target with [`Allocs::attach`].
pub struct Allocs {
    ebpf: Ebpf,
    pub snapshots: SnapshotTables,
    /// A second descriptor of `ALLOCATIONS`, for batch reads (aya has none).
    blocks_fd: OwnedFd,
    blocks: HashMap<MapData, AllocKey, Allocation>,
}

/// The entry program of an allocator function.
fn entry_program(role: Role) -> &'static str {
    match role {
        Role::Frees => "mt_free",
        Role::Allocates(Shape::Malloc) => "mt_malloc",
        Role::Allocates(Shape::Calloc) => "mt_calloc",
        Role::Allocates(Shape::Realloc) => "mt_realloc",
        Role::Allocates(Shape::ReallocArray) => "mt_reallocarray",
        Role::Allocates(Shape::Memalign) => "mt_memalign",
        Role::Allocates(Shape::PosixMemalign) => "mt_posix_memalign",
        Role::Allocates(Shape::Pvalloc) => "mt_pvalloc",
    }
}

/// Every uprobe program of the object.
const PROGRAMS: [&str; 9] = [
    "mt_malloc",
    "mt_calloc",
    "mt_realloc",
    "mt_reallocarray",
    "mt_memalign",
    "mt_posix_memalign",
    "mt_pvalloc",
    "mt_free",
    RETURN_PROGRAM,
];

impl Allocs {
    /// Loads the object (and its `exec` hook); nothing is traced until [`Allocs::attach`].
    pub fn load(options: &Options) -> anyhow::Result<Allocs> {
        let mut config = Config::default();
        super::stacks::configure(&mut config, options.max_stacks)?;
        config
            .size(maps::STACK_SNAPSHOTS, ALLOC_RING_BYTES)
            .size(maps::ALLOCATIONS, options.max_allocations)
            .bytes(globals::ALLOC_MIN_SIZE, &options.min_size.to_ne_bytes())
            .u32(globals::ALLOC_SAMPLE, options.sample);
        let mut ebpf = super::load(Object::Allocs, &config)?;
        super::forward_kernel_logs(&mut ebpf);
        for name in PROGRAMS {
            let program: &mut UProbe = super::program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|err| super::kernel_refusal(err, &format!("load {name}")))?;
        }
        let exec: &mut RawTracePoint = super::program_mut(&mut ebpf, "mt_alloc_exec")?;
        exec.load()
            .map_err(|err| super::kernel_refusal(err, "load mt_alloc_exec"))?;
        exec.attach("sched_process_exec")
            .map_err(|err| super::kernel_refusal(err, "attach sched_process_exec"))?;
        let snapshots = SnapshotTables::open(&mut ebpf)?;
        let map = ebpf
            .take_map(maps::ALLOCATIONS)
            .context("the BPF object has no ALLOCATIONS map")?;
        let Map::HashMap(data) = map else {
            anyhow::bail!("ALLOCATIONS is not a hash map");
        };
        let blocks_fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicate the ALLOCATIONS descriptor")?;
        let blocks = HashMap::try_from(Map::HashMap(data)).context("ALLOCATIONS map")?;
        Ok(Allocs {
            ebpf,
            snapshots,
            blocks_fd,
            blocks,
        })
    }

    /// Puts the uprobes on `allocator`'s functions for process `pid` alone (its threads
    /// included); returns how many functions are traced.
    pub fn attach(&mut self, pid: u32, allocator: &Allocator) -> anyhow::Result<usize> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        let mut execs: HashMap<&mut MapData, u32, u64> =
            super::map_mut(&mut self.ebpf, maps::ALLOC_EXECS)?;
        // Present (at 0) so that its exec is noted.
        execs.insert(pid, 0, 0).context("add to ALLOC_EXECS")?;
        for function in &allocator.functions {
            let offset =
                aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(function.offset);
            let name = entry_program(function.role);
            let program: &mut UProbe = super::program_mut(&mut self.ebpf, name)?;
            program
                .attach(offset, &allocator.file, scope)
                .map_err(|err| {
                    super::kernel_refusal(
                        err,
                        &format!("put a uprobe on {} in {}", function.name, allocator.shown),
                    )
                })?;
            if function.role == Role::Frees {
                continue;
            }
            let offset =
                aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(function.offset);
            let program: &mut UProbe = super::program_mut(&mut self.ebpf, RETURN_PROGRAM)?;
            program
                .attach(offset, &allocator.file, scope)
                .map_err(|err| {
                    super::kernel_refusal(
                        err,
                        &format!(
                            "put a uretprobe on {} in {}",
                            function.name, allocator.shown
                        ),
                    )
                })?;
        }
        Ok(allocator.functions.len())
    }

    /// Every live block the kernel holds, read in batches (a few syscalls for a million).
    pub fn blocks(&self) -> anyhow::Result<Vec<(AllocKey, Allocation)>> {
        read_batched(&self.blocks_fd).context("read ALLOCATIONS")
    }

    /// Deletes blocks (of an address space an `exec` replaced).
    pub fn forget(&mut self, keys: &[AllocKey]) -> anyhow::Result<()> {
        for key in keys {
            super::deleted(self.blocks.remove(key)).context("delete from ALLOCATIONS")?;
        }
        Ok(())
    }

    /// When each traced process last ran `exec` (0: not since attaching).
    pub fn execs(&self) -> anyhow::Result<StdHashMap<u32, u64>> {
        Ok(super::entries::<u32, u64>(&self.ebpf, maps::ALLOC_EXECS)?
            .into_iter()
            .collect())
    }

    /// What the programs saw, summed over CPUs.
    pub fn stats(&self) -> anyhow::Result<AllocStats> {
        let array: PerCpuArray<&MapData, AllocStats> = super::map(&self.ebpf, maps::ALLOC_STATS)?;
        let mut total = AllocStats::default();
        for stats in array.get(&0, 0).context("read ALLOC_STATS")?.iter() {
            total.add(stats);
        }
        Ok(total)
    }

    /// What the object could not record, per source.
    pub fn drops(&self) -> anyhow::Result<Vec<(DropSource, u64)>> {
        super::drops::read(&self.ebpf, &LOSSES)
    }

    /// Bytes the kernel holds for the live-blocks table (its `memlock` figure).
    pub fn table_bytes(&self) -> Option<u64> {
        memlock_of(&self.blocks_fd)
    }
}

/// `BPF_MAP_LOOKUP_BATCH`, from the kernel's `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries per batch.
const BATCH: usize = 16_384;

/// The batch part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash map of `AllocKey` → `Allocation`, by `BPF_MAP_LOOKUP_BATCH`.
fn read_batched(fd: &OwnedFd) -> std::io::Result<Vec<(AllocKey, Allocation)>> {
    let mut entries = Vec::new();
    let mut keys = vec![AllocKey::default(); BATCH];
    let mut values = vec![Allocation::default(); BATCH];
    // The hash table's batch position is a bucket index (4 bytes); 8 are room enough.
    let mut position = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                position[0..].as_ptr() as u64
            },
            out_batch: position[1..].as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points to buffers of `count` keys and values of the map's
        // sizes, and to two 8-byte positions, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        entries.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match err {
            None => {}
            // The end of the table.
            Some(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Some(err) => return Err(err),
        }
        position[0] = position[1];
        first = false;
    }
}

/// A BPF map's `memlock` bytes, from its descriptor's fdinfo.
fn memlock_of(fd: &OwnedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}
