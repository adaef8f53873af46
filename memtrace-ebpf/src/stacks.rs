//! Counting events per user stack without unwinding in the kernel (see
//! `memtrace_common::stacks`): a known place's recipe names the stack words to hash; a hash
//! userspace has confirmed is counted here, anything else is copied whole to userspace.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_probe_read_kernel, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_ringbuf_output, bpf_task_pt_regs},
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    stacks::{
        EventKind, MAX_STACKS, PAGE_BYTES, RECIPE_WORDS, Recipe, SNAPSHOT_PAGES, STACK_BYTES,
        SiteKey, Snapshot, SnapshotHeader, StackKey, hash_seed, hash_word,
    },
};

use crate::{atomic, drops};

/// Written by userspace only; allocated as places are learnt.
#[map(name = "STACK_RECIPES")]
static RECIPES: HashMap<SiteKey, Recipe> = HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);

/// Shared by every CPU (counts added atomically); entries created by userspace.
#[map(name = "STACK_COUNTS")]
static COUNTS: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);

/// Events whose stack is on its way to userspace, by the whole copy's hash.
#[map(name = "STACK_PENDING")]
static PENDING: HashMap<StackKey, u64> = HashMap::with_max_entries(MAX_STACKS, BPF_F_NO_PREALLOC);

/// Sized by userspace.
#[map(name = "STACK_SNAPSHOTS")]
static SNAPSHOTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// A stack copy in progress, per CPU: too big for the program's own stack.
#[map(name = "STACK_SCRATCH")]
static SCRATCH: PerCpuArray<Snapshot> = PerCpuArray::with_max_entries(1, 0);

/// The user registers of the current task: where it entered the kernel (a fault in user mode,
/// or the syscall during which the kernel faulted on user memory).
#[inline(always)]
fn user_registers() -> Option<(u64, u64, u64)> {
    // SAFETY: helpers on the current task, which the kernel guarantees valid while it runs this
    // program; the registers are copied with a checked read.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let regs: pt_regs = bpf_probe_read_kernel(regs).ok()?;
        Some((regs.rip, regs.rsp, regs.rbp))
    }
}

/// Counts one event of `kind` under its user stack, or sends the stack to userspace.
#[inline(always)]
pub fn count(tgid: u32, tid: u32, kind: EventKind, addr: u64) {
    let Some((ip, sp, bp)) = user_registers() else {
        return;
    };
    if let Some(hash) = known_hash(tgid, ip, sp, bp)
        && let Some(counter) = COUNTS.get_ptr_mut(StackKey {
            tgid,
            kind: kind as u32,
            hash,
        })
    {
        // SAFETY: a value pointer from a successful lookup, only ever changed atomically.
        unsafe { atomic::add(counter, 1) };
        return;
    }
    send(SnapshotHeader {
        tgid,
        tid,
        kind: kind as u32,
        pages: 0,
        ip,
        sp,
        bp,
        addr,
        pending: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
}

/// The stack's hash by the recipe of its place, if the place has one.
#[inline(always)]
fn known_hash(tgid: u32, ip: u64, sp: u64, bp: u64) -> Option<u64> {
    let recipe = RECIPES.get_ptr(SiteKey {
        tgid,
        _pad: 0,
        ip,
        sp,
    })?;
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: map value pointers from successful lookups; the scratch is this CPU's own.
    unsafe {
        let window = (*recipe).window as usize;
        if window == 0 || window > STACK_BYTES {
            return None;
        }
        let words = &mut (*scratch).pages;
        bpf_probe_read_user_buf(sp as *const u8, &mut words[..window]).ok()?;
        let len = (*recipe).len as usize;
        let mut hash = hash_seed(ip, sp, if (*recipe).uses_bp != 0 { bp } else { 0 });
        for i in 0..RECIPE_WORDS {
            if i >= len {
                break;
            }
            let index = ((*recipe).words[i] as usize) & (STACK_BYTES / 8 - 1);
            let word = words.as_ptr().add(index * 8).cast::<u64>().read_unaligned();
            hash = hash_word(hash, word);
        }
        Some(hash)
    }
}

/// Copies the stack, from the page holding `sp`, and sends it with `header`, unless an
/// identical copy is already on its way: then the event is counted as pending under it. A
/// stack that cannot be sent is counted as a drop.
#[inline(always)]
fn send(header: SnapshotHeader) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let first_page = header.sp & !(PAGE_BYTES as u64 - 1);
    // SAFETY: the scratch is this CPU's own; every copy and read stays inside its pages.
    unsafe {
        let pages = &mut (*scratch).pages;
        let mut copied = 0u32;
        for page in 0..SNAPSHOT_PAGES {
            let from = first_page + (page * PAGE_BYTES) as u64;
            let to = &mut pages[page * PAGE_BYTES..(page + 1) * PAGE_BYTES];
            // The stack's top is the end of its mapping: the first page that cannot be read.
            if bpf_probe_read_user_buf(from as *const u8, to).is_err() {
                break;
            }
            copied += 1;
        }
        let key = StackKey {
            tgid: header.tgid,
            kind: header.kind,
            hash: whole_hash(&header, pages, copied),
        };
        if let Some(waiting) = PENDING.get_ptr_mut(key) {
            atomic::add(waiting, 1);
            return;
        }
        // This event travels with its copy; the next identical ones wait under its hash.
        let pending = if PENDING.insert(key, 0, u64::from(BPF_NOEXIST)).is_ok() {
            key.hash
        } else {
            0
        };
        (*scratch).header = SnapshotHeader {
            pages: copied,
            pending,
            ..header
        };
        let size = size_of::<SnapshotHeader>() + copied as usize * PAGE_BYTES;
        if size > size_of::<Snapshot>() {
            return;
        }
        let sent = bpf_ringbuf_output(
            (&raw const SNAPSHOTS).cast_mut().cast(),
            scratch.cast(),
            size as u64,
            0,
        );
        if sent < 0 {
            drops::count(DropSource::StackRingFull);
            if pending != 0 {
                // Nothing will tell userspace what stack this hash is.
                let _ = PENDING.remove(key);
            }
        }
    }
}

/// The hash of the registers and of every copied word unwinding could read (up to
/// [`STACK_BYTES`] above `sp`): copies with equal hashes unwind alike.
#[inline(always)]
fn whole_hash(
    header: &SnapshotHeader,
    pages: &[u8; SNAPSHOT_PAGES * PAGE_BYTES],
    copied: u32,
) -> u64 {
    let start = (header.sp as usize) & (PAGE_BYTES - 1);
    let end = copied as usize * PAGE_BYTES;
    let mut hash = hash_word(
        hash_seed(header.ip, header.sp, header.bp),
        u64::from(copied),
    );
    for i in 0..STACK_BYTES / 8 {
        let at = start + 8 * i;
        if at + 8 > end || at + 8 > pages.len() {
            break;
        }
        // SAFETY: bounds checked just above.
        let word = unsafe { pages.as_ptr().add(at).cast::<u64>().read_unaligned() };
        hash = hash_word(hash, word);
    }
    hash
}
