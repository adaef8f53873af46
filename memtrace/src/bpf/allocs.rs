//! The `allocs` object (`leaks --malloc`): its uprobes attached to each target's allocator, its
//! table of live blocks read in batches, and the stacks it sends whole.

use std::{
    collections::HashMap as StdHashMap,
    num::NonZeroU32,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{
        RawTracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
use memtrace_common::{
    DropSource,
    allocs::{ALLOC_RING_BYTES, AllocKey, AllocStats, Allocation, Shape},
    globals, maps,
    stacks::StackWay,
    targets::TargetFlags,
};

use super::{
    Config, Object,
    stacks::SnapshotTables,
    targets::{self, Filter, TargetTable as _},
    tracepoints::{Release, Tracepoints},
};
use crate::{
    leaks::allocator::{Allocator, FUNCTIONS, Role},
    sys::refusal::kernel_refusal,
};

/// What the object loses.
pub const LOSSES: [DropSource; 3] = [
    DropSource::AllocTableFull,
    DropSource::StackRingFull,
    DropSource::TargetTableFull,
];

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
    /// Which processes are targets: `follow_forks` for a command's descendants.
    pub filter: Filter,
}

/// The loaded object: its programs are attached per target with [`Allocs::attach`].
pub struct Allocs {
    ebpf: Ebpf,
    /// The fork follower, when descendants are followed.
    tracepoints: Tracepoints,
    follow: bool,
    pub snapshots: SnapshotTables,
    /// `ALLOCATIONS`, read in batches (which aya does not offer).
    blocks: MapData,
    /// Each traced process's uprobes, by program. An ended process's stay until memtrace
    /// ends: taking a uprobe off waits on the kernel (~85 ms each here, one at a time, under
    /// the lock that putting one on takes too), and children stopped at their `exec` must not
    /// wait behind that.
    links: StdHashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

/// The entry program of an allocator function: those of allocating functions take stacks, in
/// this kernel's way (`super::stacks::way`).
fn entry_program(role: Role) -> &'static str {
    let (helpers, reads) = match role {
        Role::Frees => return "mt_free",
        Role::Allocates(Shape::Malloc) => ("mt_malloc", "mt_malloc_compat"),
        Role::Allocates(Shape::Calloc) => ("mt_calloc", "mt_calloc_compat"),
        Role::Allocates(Shape::Realloc) => ("mt_realloc", "mt_realloc_compat"),
        Role::Allocates(Shape::ReallocArray) => ("mt_reallocarray", "mt_reallocarray_compat"),
        Role::Allocates(Shape::Memalign) => ("mt_memalign", "mt_memalign_compat"),
        Role::Allocates(Shape::PosixMemalign) => ("mt_posix_memalign", "mt_posix_memalign_compat"),
        Role::Allocates(Shape::Pvalloc) => ("mt_pvalloc", "mt_pvalloc_compat"),
    };
    match super::stacks::way() {
        StackWay::Helpers => helpers,
        StackWay::Reads => reads,
    }
}

/// Every uprobe program of the object: the entry program of each allocator function (some
/// share one), and the return program.
fn programs() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FUNCTIONS
        .iter()
        .map(|&(_, role)| entry_program(role))
        .collect();
    names.push(RETURN_PROGRAM);
    names.sort_unstable();
    names.dedup();
    names
}

impl Allocs {
    /// Loads the object (and its `exec` hook); nothing is traced until [`Allocs::attach`].
    pub fn load(options: &Options) -> anyhow::Result<Allocs> {
        let mut config = Config::default();
        options.filter.configure(&mut config)?;
        // Uprobes have the user registers in their context: no task layout needed.
        super::stacks::configure_tables(&mut config, options.max_stacks)?;
        config
            .size(maps::STACK_SNAPSHOTS, ALLOC_RING_BYTES)
            .size(maps::ALLOCATIONS, options.max_allocations)
            .bytes(globals::ALLOC_MIN_SIZE, &options.min_size.to_ne_bytes())
            .u32(globals::ALLOC_SAMPLE, options.sample)
            .bytes(globals::ALLOC_PAGE_BYTES, &page_bytes().to_ne_bytes());
        let mut ebpf = super::load(Object::Allocs, &config)?;
        super::forward_kernel_logs(&mut ebpf);
        for name in programs() {
            let program: &mut UProbe = super::program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|err| kernel_refusal(err, &format!("load {name}")))?;
        }
        for (name, tracepoint) in [
            ("mt_alloc_exec", "sched_process_exec"),
            ("mt_alloc_exit", "sched_process_exit"),
        ] {
            let program: &mut RawTracePoint = super::program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|err| kernel_refusal(err, &format!("load {name}")))?;
            program
                .attach(tracepoint)
                .map_err(|err| kernel_refusal(err, &format!("attach {tracepoint}")))?;
        }
        let mut tracepoints = Tracepoints::default();
        let follow = options.filter == (Filter::Targets { follow_forks: true });
        if follow {
            targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
        }
        let snapshots = SnapshotTables::open(&mut ebpf)?;
        let map = ebpf
            .take_map(maps::ALLOCATIONS)
            .context("the BPF object has no ALLOCATIONS map")?;
        let Map::HashMap(blocks) = map else {
            anyhow::bail!("ALLOCATIONS is not a hash map");
        };
        Ok(Allocs {
            ebpf,
            tracepoints,
            follow,
            snapshots,
            blocks,
            links: StdHashMap::new(),
        })
    }

    /// Puts the uprobes on `allocator`'s functions for process `pid` alone (its threads
    /// included); returns how many functions are traced. Every return probe goes on before
    /// any entry probe: a call whose entry is seen always has its return seen.
    pub fn attach(&mut self, pid: u32, allocator: &Allocator) -> anyhow::Result<usize> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
        let flags = match self.follow {
            true => TargetFlags::COUNT | TargetFlags::FOLLOW,
            false => TargetFlags::COUNT,
        };
        self.ebpf.insert(pid, flags)?;
        let links = self.links.entry(pid).or_default();
        let returns = allocator
            .functions
            .iter()
            .filter(|f| f.role != Role::Frees)
            .map(|f| (f, "uretprobe", RETURN_PROGRAM));
        let entries = allocator
            .functions
            .iter()
            .map(|f| (f, "uprobe", entry_program(f.role)));
        for (function, kind, name) in returns.chain(entries) {
            let at = UProbeAttachLocation::AbsoluteOffset(function.offset);
            let program: &mut UProbe = super::program_mut(&mut self.ebpf, name)?;
            let link = program.attach(at, &allocator.file, scope).map_err(|err| {
                let what = format!("put a {kind} on {} in {}", function.name, allocator.shown);
                kernel_refusal(err, &what)
            })?;
            links.push((name, link));
        }
        Ok(allocator.functions.len())
    }

    /// A followed child has its uprobes: it may run its `exec` (it is stopped there if it got
    /// that far first).
    pub fn release_child(&mut self, pid: u32) -> anyhow::Result<()> {
        let mut awaited: HashMap<&mut MapData, u32, u32> =
            super::map_mut(&mut self.ebpf, maps::ALLOC_AWAITED)?;
        // Whoever deletes the entry decides: here, before the child's exec claimed it (no
        // stop comes, or the exec's program undoes its own); else the child has stopped
        // itself (or is about to: a continue discards a pending stop), and is continued here.
        if awaited.remove(&pid).is_err() {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        Ok(())
    }

    /// Detaches everything: the uprobes and hooks at once, the fork follower's tracepoint in
    /// the background.
    pub fn release(self) {
        // A child stopped at its exec, waiting for uprobes it will no longer get, goes on.
        if let Ok(awaited) = super::entries::<u32, u32>(&self.ebpf, maps::ALLOC_AWAITED) {
            for (pid, _) in awaited {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            }
        }
        let Allocs {
            ebpf, tracepoints, ..
        } = self;
        tracepoints.release(Release::Background);
        // Each uprobe's release waits on the kernel (~85 ms here, one at a time: 1.5 s for a
        // process's 17). Copies of the links go to a helper that closes them after memtrace
        // has exited; closing memtrace's own is then instant.
        let links = super::release::links_of_this_process();
        drop(ebpf);
        super::release::in_background(links);
    }

    /// Hands every live block the kernel holds to `each`, read in batches (a few syscalls for
    /// a million, and never all of them in memory at once). Blocks of a process's image before
    /// its last `exec` are not live: they are left out. Once the process has exited (and so
    /// can allocate nothing more at their addresses) they are deleted, with its exec time.
    pub fn blocks(&mut self, mut each: impl FnMut(&AllocKey, &Allocation)) -> anyhow::Result<()> {
        let execs: StdHashMap<u32, u64> = super::entries(&self.ebpf, maps::ALLOC_EXECS)?
            .into_iter()
            .collect();
        let exited: std::collections::HashSet<u32> = execs
            .keys()
            .copied()
            .filter(|&tgid| !crate::sys::procfs::is_alive(tgid))
            .collect();
        let mut stale = Vec::new();
        read_batched(self.blocks.fd().as_fd(), |key, block| {
            match execs.get(&key.tgid) {
                Some(&exec) if block.born_ns < exec => {
                    if exited.contains(&key.tgid) {
                        stale.push(*key);
                    }
                }
                _ => each(key, block),
            }
        })
        .context("read ALLOCATIONS")?;
        if let Err(err) = delete_batched(self.blocks.fd().as_fd(), &stale) {
            log::warn!("could not delete exited processes' old blocks: {err}");
            return Ok(());
        }
        let mut table: HashMap<&mut MapData, u32, u64> =
            super::map_mut(&mut self.ebpf, maps::ALLOC_EXECS)?;
        for tgid in exited {
            let _ = table.remove(&tgid);
        }
        Ok(())
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
        memlock_of(self.blocks.fd().as_fd())
    }
}

/// `BPF_MAP_LOOKUP_BATCH`, from the kernel's `enum bpf_cmd` (uapi, stable since 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_DELETE_BATCH`, likewise.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
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
fn read_batched(
    fd: BorrowedFd,
    mut each: impl FnMut(&AllocKey, &Allocation),
) -> std::io::Result<()> {
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
        let end = match err {
            None => false,
            // The end of the table, with the last entries.
            Some(err) if err.raw_os_error() == Some(libc::ENOENT) => true,
            Some(err) => return Err(err),
        };
        let n = (attr.count as usize).min(BATCH);
        for (key, value) in keys[..n].iter().zip(&values[..n]) {
            each(key, value);
        }
        if end {
            return Ok(());
        }
        position[0] = position[1];
        first = false;
    }
}

/// Deletes `keys` from a hash map of `AllocKey`s by `BPF_MAP_DELETE_BATCH`; keys already gone
/// (freed meanwhile) are skipped.
fn delete_batched(fd: BorrowedFd, keys: &[AllocKey]) -> std::io::Result<()> {
    let mut left = keys;
    while !left.is_empty() {
        let chunk = &left[..left.len().min(BATCH)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points to `count` keys of the map's key size, alive for the
        // call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let deleted = (attr.count as usize).min(chunk.len());
        if rc == 0 {
            left = &left[chunk.len()..];
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err);
        }
        // The batch stops at a key that is gone: skip it.
        left = &left[(deleted + 1).min(left.len())..];
    }
    Ok(())
}

/// Bytes of a memory page.
fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// A BPF map's `memlock` bytes, from its descriptor's fdinfo.
fn memlock_of(fd: BorrowedFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("memlock:"))?
        .trim()
        .parse()
        .ok()
}
