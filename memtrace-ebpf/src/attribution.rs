//! The `attribution` object: page faults counted per user stack, or per mapping. Programs on
//! the perf software events `minor-faults` / `major-faults` (sample period 1, where the kernel
//! counts each fault for its task) either hash the few stack words userspace said identify the
//! stack at that place (`stacks`, one program pair per way of taking stacks), and count the
//! fault under that stack in the kernel (a fault at a place or on a stack not yet known sends
//! its stack whole, once, for userspace to unwind); or look up the mapping that holds the
//! faulting address and count it there (`mt_map_*`).
#![no_std]
#![no_main]
// The atomic add is written in BPF assembly (see `atomic`).
#![feature(asm_experimental_arch)]

mod atomic;
mod drops;
mod record;
mod runtime;
mod stacks;
mod targets;

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_find_vma, bpf_get_current_task_btf},
    },
    macros::{map, perf_event},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use memtrace_common::{
    COMM_LEN, DropSource,
    stacks::{
        CachedMapping, EventKind, MAX_STACKS, MappingCount, MappingKey, PATH_PART_BYTES,
        PATH_PARTS, REGION_SHIFT, RegionKey, VM_GROWSDOWN, VmaLayout,
    },
};

/// Stacks sent whole; sized by userspace.
#[map(name = "STACK_SNAPSHOTS")]
static SNAPSHOTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Faults per mapping (`--by mapping|file`); allocated as mappings are met.
#[map(name = "MAPPING_COUNTS")]
static MAPPINGS: HashMap<MappingKey, MappingCount> =
    HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);

/// The mapping last found in each region of a process: most faults are counted from here,
/// without looking the mapping up (which costs an inter-processor interrupt to unlock).
#[map(name = "MAPPING_CACHE")]
static CACHE: LruHashMap<RegionKey, CachedMapping> = LruHashMap::with_max_entries(1, 0);

/// A new mapping's entry being built.
#[map(name = "MAPPING_SCRATCH")]
static NEW_MAPPING: PerCpuArray<MappingCount> = PerCpuArray::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static VMA_LAYOUT: Global<VmaLayout> = Global::new(VmaLayout {
    vm_start: 0,
    vm_end: 0,
    task_mm: 0,
    mm_lock_seq: 0,
    vm_flags: 0,
    vm_file: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    file_dentry: 0,
    dentry_name: 0,
    dentry_parent: 0,
});

/// memtrace's own process: never attributed (unwinding a stack faults, which would be sent).
#[unsafe(no_mangle)]
static SELF_TGID: Global<u32> = Global::new(0);

/// Faults per stack, with the helpers of Linux 5.17 (`stacks`).
#[perf_event]
pub fn mt_stack_minor(ctx: PerfEventContext) -> u32 {
    by_stack::<true>(&ctx, EventKind::MinorFault);
    // 0: the sample has been handled here; the kernel need not write it to a perf buffer.
    0
}

#[perf_event]
pub fn mt_stack_major(ctx: PerfEventContext) -> u32 {
    by_stack::<true>(&ctx, EventKind::MajorFault);
    0
}

/// Faults per stack, on older kernels (`stacks`).
#[perf_event]
pub fn mt_stack_minor_compat(ctx: PerfEventContext) -> u32 {
    by_stack::<false>(&ctx, EventKind::MinorFault);
    0
}

#[perf_event]
pub fn mt_stack_major_compat(ctx: PerfEventContext) -> u32 {
    by_stack::<false>(&ctx, EventKind::MajorFault);
    0
}

/// Faults per mapping.
#[perf_event]
pub fn mt_map_minor(ctx: PerfEventContext) -> u32 {
    by_mapping(&ctx, EventKind::MinorFault);
    0
}

#[perf_event]
pub fn mt_map_major(ctx: PerfEventContext) -> u32 {
    by_mapping(&ctx, EventKind::MajorFault);
    0
}

/// The process of the current task, if its faults are attributed.
#[inline(always)]
fn attributed() -> Option<(u32, u32)> {
    let (tgid, tid) = targets::current_ids();
    (tgid != SELF_TGID.load() && targets::is_counted(tgid)).then_some((tgid, tid))
}

#[inline(always)]
fn by_stack<const HELPERS: bool>(ctx: &PerfEventContext, kind: EventKind) {
    if let Some((tgid, tid)) = attributed() {
        stacks::identify::<HELPERS>(tgid, tid, kind, fault_address(ctx), &SNAPSHOTS);
    }
}

#[inline(always)]
fn by_mapping(ctx: &PerfEventContext, kind: EventKind) {
    if let Some((tgid, _)) = attributed() {
        count_mapping(tgid, kind, fault_address(ctx));
    }
}

/// Counts a fault under the mapping holding its address: from the region's cached mapping if
/// the process's mappings have not changed since, else by looking it up.
#[inline(always)]
fn count_mapping(tgid: u32, kind: EventKind, addr: u64) {
    let seq = mappings_sequence();
    let region = RegionKey {
        tgid,
        _pad: 0,
        region: addr >> REGION_SHIFT,
    };
    if let Some(cached) = CACHE.get_ptr(region) {
        // SAFETY: a value pointer from a successful lookup, copied at once.
        let cached = unsafe { *cached };
        // An odd sequence: a writer is changing the mappings right now.
        if seq & 1 == 0 && cached.seq == seq && (cached.start..cached.end).contains(&addr) {
            let key = MappingKey {
                tgid,
                kind: kind as u32,
                start: cached.start,
                ino: cached.ino,
                dev: cached.dev,
                flags: cached.flags,
            };
            if let Some(value) = MAPPINGS.get_ptr_mut(key) {
                // SAFETY: a value pointer from a successful lookup, changed only atomically.
                unsafe { atomic::add(&raw mut (*value).count, 1) };
                return;
            }
        }
    }
    let mut found = Found {
        key: MappingKey {
            tgid,
            kind: kind as u32,
            ..MappingKey::default()
        },
        region,
        seq,
    };
    // SAFETY: the current task, valid while it runs this program; the callback only reads the
    // mapping through checked reads, and counts.
    let looked_up = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            mapping_found as *mut c_void,
            (&raw mut found).cast(),
            0,
        )
    };
    if looked_up != 0 {
        // The mapping lock was taken for writing (another thread maps or unmaps meanwhile).
        found.key.flags = MappingKey::UNKNOWN;
        count(&found.key, core::ptr::null());
    }
}

/// What the lookup's callback needs besides the mapping.
#[repr(C)]
struct Found {
    key: MappingKey,
    region: RegionKey,
    seq: u32,
}

/// The current process's `mm_lock_seq`, or 1 (odd: never cached) if it cannot be read or the
/// kernel keeps none.
#[inline(always)]
fn mappings_sequence() -> u32 {
    let layout = VMA_LAYOUT.load();
    if layout.mm_lock_seq == 0 {
        return 1;
    }
    // SAFETY: the current task; reads at offsets from the kernel's BTF, checked by the helper.
    unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>().cast_const();
        let mm = read_u64(task, layout.task_mm) as *const u8;
        if mm.is_null() {
            return 1;
        }
        bpf_probe_read_kernel(mm.wrapping_add(layout.mm_lock_seq as usize).cast::<u32>())
            .unwrap_or(1)
    }
}

/// Adds a fault to a mapping's count; a new mapping records its process's name and, for a
/// file, the file's path (`file`: the mapping's file, or null).
#[inline(always)]
fn count(key: &MappingKey, file: *const u8) {
    if let Some(value) = MAPPINGS.get_ptr_mut(key) {
        // SAFETY: a value pointer from a successful lookup, only ever changed atomically.
        unsafe { atomic::add(&raw mut (*value).count, 1) };
        return;
    }
    // Built in a per-CPU slot: it is too big for the program's stack.
    let Some(first) = NEW_MAPPING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot; programs do not nest on one CPU here.
    let first = unsafe { &mut *first };
    first.count = 1;
    first.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    first.path = [[0; PATH_PART_BYTES]; PATH_PARTS];
    if !file.is_null() {
        read_path(file, &mut first.path);
    }
    if MAPPINGS
        .insert(key, shared(first), u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return;
    }
    match MAPPINGS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(value) => unsafe { atomic::add(&raw mut (*value).count, 1) },
        None => drops::count(DropSource::MappingTableFull),
    }
}

/// The slot by reference: the map copies it from there (by value, it would be copied onto the
/// program's stack, which it does not fit).
#[inline(always)]
fn shared(slot: &mut MappingCount) -> &MappingCount {
    slot
}

/// The names of a file's dentry and its parents, innermost first, up to its filesystem's root.
#[inline(always)]
fn read_path(file: *const u8, path: &mut [[u8; PATH_PART_BYTES]; PATH_PARTS]) {
    let layout = VMA_LAYOUT.load();
    // SAFETY: reads at offsets from the kernel's BTF, each checked by the helper.
    unsafe {
        let mut dentry = read_u64(file, layout.file_dentry) as *const u8;
        for part in path.iter_mut() {
            if dentry.is_null() {
                break;
            }
            let name = read_u64(dentry, layout.dentry_name) as *const u8;
            if name.is_null() || bpf_probe_read_kernel_str_bytes(name, part).is_err() {
                break;
            }
            let parent = read_u64(dentry, layout.dentry_parent) as *const u8;
            if parent == dentry {
                break;
            }
            dentry = parent;
        }
    }
}

/// The `u64` at `offset` of a kernel object, 0 if it cannot be read.
///
/// # Safety
/// Only reads, through the checked helper.
#[inline(always)]
unsafe fn read_u64(base: *const u8, offset: u32) -> u64 {
    // SAFETY: the helper checks the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<u64>()).unwrap_or(0) }
}

/// `bpf_find_vma`'s callback: what the mapping is, and its count; the region remembers it.
extern "C" fn mapping_found(_task: *mut c_void, vma: *mut c_void, found: *mut c_void) -> i64 {
    let layout = VMA_LAYOUT.load();
    let vma = vma.cast::<u8>().cast_const();
    let found = found.cast::<Found>();
    // SAFETY: reads at offsets from the kernel's BTF, each checked by the helper; `found` is
    // the caller's.
    unsafe {
        let key = &mut (*found).key;
        key.start = read_u64(vma, layout.vm_start);
        if read_u64(vma, layout.vm_flags) & VM_GROWSDOWN != 0 {
            key.flags = MappingKey::GROWS_DOWN;
        }
        let file = read_u64(vma, layout.vm_file) as *const u8;
        if !file.is_null() {
            let inode = read_u64(file, layout.file_inode) as *const u8;
            if !inode.is_null() {
                key.ino = read_u64(inode, layout.inode_ino);
                let sb = read_u64(inode, layout.inode_sb) as *const u8;
                if !sb.is_null() {
                    key.dev = bpf_probe_read_kernel(
                        sb.wrapping_add(layout.sb_dev as usize).cast::<u32>(),
                    )
                    .unwrap_or(0);
                }
            }
        }
        if (*found).seq & 1 == 0 {
            let cached = CachedMapping {
                start: key.start,
                end: read_u64(vma, layout.vm_end),
                ino: key.ino,
                dev: key.dev,
                flags: key.flags,
                seq: (*found).seq,
                _pad: 0,
            };
            let _ = CACHE.insert((*found).region, cached, 0);
        }
        // Counted here, while the mapping (and its file) cannot go away.
        count(key, file);
    }
    0
}

/// The faulting address: the sample's `addr`, which the fault events carry.
#[inline(always)]
fn fault_address(ctx: &PerfEventContext) -> u64 {
    // SAFETY: a context load the verifier checks (and rewrites to the sample's address).
    unsafe { (*ctx.ctx).addr }
}

/// Every new target is counted from its first fault: nothing to prepare.
#[inline(always)]
pub fn on_new_target(_tgid: u32) -> bool {
    true
}
