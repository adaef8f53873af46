//! Knowing events' user stacks without unwinding in the kernel (see `memtrace_common::stacks`):
//! a known place's recipe names the stack words to hash; a hash userspace has confirmed is
//! counted here, anything else is copied whole to userspace, over the ring its object gives.
//!
//! Two ways to do it, by what the kernel offers (`memtrace_common::stacks::StackWay`), chosen
//! by the const parameter `HELPERS` of the programs that take stacks: with the helpers of Linux
//! 5.17 (`bpf_task_pt_regs` for the user registers, a `bpf_loop` to hash a copy), or with what
//! 5.8 has (the registers read from the top of the task's kernel stack, a bounded loop). A
//! program must not even contain the first way on an older kernel: a `bpf_loop` callback is a
//! function reference those kernels refuse before verifying anything.

use core::ffi::c_void;

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_task, bpf_get_smp_processor_id,
        bpf_probe_read_kernel, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_ringbuf_output, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use memtrace_common::{
    COMM_LEN, DropSource,
    stacks::{
        EventKind, MAX_STACKS, PAGE_BYTES, RECIPE_WORDS, RECORD_STACK, Recipe, SNAPSHOT_PAGES,
        STACK_BYTES, SiteKey, Snapshot, SnapshotHeader, StackKey, StackRef, THREAD_SIZES,
        USER_CODE_SEGMENT, USER_DATA_SEGMENT, hash_seed, hash_word,
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

/// A stack copy in progress, one per CPU (indexed by CPU): too big for a program's own stack.
/// An array rather than a per-CPU one so that an object that copies no stack sizes it to one
/// entry, which no CPU beyond the first finds (a per-CPU array has every CPU's copy).
#[map(name = "STACK_SCRATCH")]
static SCRATCH: Array<Snapshot> = Array::with_max_entries(1, 0);

#[inline(always)]
fn scratch() -> Option<*mut Snapshot> {
    // SAFETY: no preconditions.
    SCRATCH.get_ptr_mut(unsafe { bpf_get_smp_processor_id() })
}

/// `offsetof(struct task_struct, stack)`, from the kernel's BTF: where the older way finds the
/// task's kernel stack, whose top holds the user registers.
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: Global<u32> = Global::new(0);

/// The user registers of the current task: where it entered the kernel (a fault in user mode,
/// or the syscall during which the kernel faulted on user memory).
#[inline(always)]
#[allow(
    dead_code,
    reason = "the allocs object takes the registers from its probes' context"
)]
fn user_registers<const HELPERS: bool>() -> Option<(u64, u64, u64)> {
    if HELPERS {
        // SAFETY: helpers on the current task, which the kernel guarantees valid while it runs
        // this program; the registers are copied with a checked read.
        unsafe {
            let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
            let regs: pt_regs = bpf_probe_read_kernel(regs).ok()?;
            return Some((regs.rip, regs.rsp, regs.rbp));
        }
    }
    // What `task_pt_regs()` computes on x86-64: the registers saved on entry sit at the top of
    // the task's kernel stack (less 16 bytes of padding with FRED, 6.9+). The stack's size is
    // not in BTF (KASAN doubles it): each size and padding is tried until the saved segments
    // are the user's.
    // SAFETY: the current task, valid while it runs this program; every read is checked.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let stack: u64 = bpf_probe_read_kernel(
            task.wrapping_add(TASK_STACK_OFFSET.load() as usize)
                .cast::<u64>(),
        )
        .ok()?;
        for size in THREAD_SIZES {
            for padding in [0, 16] {
                let at = stack + size - padding - size_of::<pt_regs>() as u64;
                let regs: pt_regs = bpf_probe_read_kernel(at as *const pt_regs).ok()?;
                if regs.cs == USER_CODE_SEGMENT && regs.ss == USER_DATA_SEGMENT {
                    return Some((regs.rip, regs.rsp, regs.rbp));
                }
            }
        }
        None
    }
}

/// Identifies the current task's user stack for an event of `kind`: a stack userspace taught
/// is counted under its hash; any other is sent over `ring` (or counted pending under an
/// identical copy already sent).
#[inline(always)]
#[allow(
    dead_code,
    reason = "the allocs object takes the registers from its probes' context"
)]
pub fn identify<const HELPERS: bool>(
    tgid: u32,
    tid: u32,
    kind: EventKind,
    addr: u64,
    ring: &RingBuf,
) -> StackRef {
    match user_registers::<HELPERS>() {
        Some(registers) => identify_at::<HELPERS>(registers, tgid, tid, kind, addr, ring),
        None => StackRef::default(),
    }
}

/// [`identify`], for a program that has the user registers (`ip`, `sp`, `bp`) at hand: a
/// uprobe's context is them.
#[inline(always)]
pub fn identify_at<const HELPERS: bool>(
    (ip, sp, bp): (u64, u64, u64),
    tgid: u32,
    tid: u32,
    kind: EventKind,
    addr: u64,
    ring: &RingBuf,
) -> StackRef {
    if let Some(hash) = known_hash(tgid, ip, sp, bp)
        && let Some(counter) = COUNTS.get_ptr_mut(StackKey {
            tgid,
            kind: kind as u32,
            hash,
        })
    {
        // SAFETY: a value pointer from a successful lookup, only ever changed atomically.
        unsafe { atomic::add(counter, 1) };
        return StackRef {
            hash,
            how: StackRef::KNOWN,
            kernel: 0,
        };
    }
    send::<HELPERS>(
        SnapshotHeader {
            record: RECORD_STACK,
            kind: kind as u32,
            tgid,
            tid,
            pages: 0,
            _pad: 0,
            ip,
            sp,
            bp,
            addr,
            pending: 0,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        },
        ring,
    )
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
    let scratch = scratch()?;
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
fn send<const HELPERS: bool>(header: SnapshotHeader, ring: &RingBuf) -> StackRef {
    let Some(scratch) = scratch() else {
        return StackRef::default();
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
            hash: if HELPERS {
                whole_hash(&header, copied)
            } else {
                whole_hash_bounded(&header, copied, &*pages)
            },
        };
        let waiting = StackRef {
            hash: key.hash,
            how: StackRef::PENDING,
            kernel: 0,
        };
        if let Some(count) = PENDING.get_ptr_mut(key) {
            atomic::add(count, 1);
            return waiting;
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
        // Always the whole record: a size that depended on the pages copied would make the
        // verifier check everything after this once per possible size.
        let sent = bpf_ringbuf_output(
            core::ptr::from_ref(ring).cast_mut().cast(),
            scratch.cast(),
            size_of::<Snapshot>() as u64,
            0,
        );
        if sent < 0 {
            let mut lost = 1;
            if pending != 0 {
                // Nothing will tell userspace what stack this hash is: the events other CPUs
                // counted under it meanwhile are lost with this one, and counted so; the next
                // event on this stack tries again.
                // A value pointer from a successful lookup, read at once (inside this block's
                // `unsafe`).
                lost += PENDING.get_ptr(key).map_or(0, |count| *count);
                let _ = PENDING.remove(key);
            }
            drops::count_n(DropSource::StackRingFull, lost);
            return StackRef::default();
        }
        if pending == 0 {
            // Sent, but with no hash to name it by: the record that follows comes right after.
            return StackRef::default();
        }
        waiting
    }
}

/// The hash of the registers and of every copied word unwinding could read (up to
/// [`STACK_BYTES`] above `sp`): copies with equal hashes unwind alike. A `bpf_loop`, so the
/// verifier checks one step rather than thousands.
#[inline(always)]
fn whole_hash(header: &SnapshotHeader, copied: u32) -> u64 {
    let mut walk = HashWalk {
        // Whole words: a stack pointer is 8-byte aligned, and the pages are.
        start: ((header.sp as usize) & (PAGE_BYTES - 1) & !7) as u64,
        end: (copied as usize * PAGE_BYTES) as u64,
        hash: hash_word(
            hash_seed(header.ip, header.sp, header.bp),
            u64::from(copied),
        ),
    };
    // SAFETY: the callback only reads this CPU's scratch and writes `walk`, which outlives the
    // call.
    unsafe {
        bpf_loop(
            (STACK_BYTES / 8) as u32,
            hash_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    walk.hash
}

/// [`whole_hash`] without `bpf_loop`, for older kernels: bounded loops, which the verifier
/// follows step by step (so it is checked in thousands of steps, once at load), eight words a
/// step. Every read's offset is the 64-byte block of `sp` (a mask, so the verifier knows its
/// range) plus the loop's own constant steps: it can prove each read inside the pages without
/// any check the compiler could find redundant and drop. Another function of the same words
/// than [`whole_hash`]: a whole hash is only ever compared with hashes the same program made.
#[inline(always)]
fn whole_hash_bounded(
    header: &SnapshotHeader,
    copied: u32,
    pages: &[u8; SNAPSHOT_PAGES * PAGE_BYTES],
) -> u64 {
    const BLOCK: usize = 64;
    const _: () = assert!(PAGE_BYTES - BLOCK + STACK_BYTES + BLOCK <= SNAPSHOT_PAGES * PAGE_BYTES);
    let start = (header.sp as usize) & (PAGE_BYTES - 1) & !7;
    let block = start & (PAGE_BYTES - BLOCK);
    let end = copied as usize * PAGE_BYTES;
    let mut hash = hash_word(
        hash_seed(header.ip, header.sp, header.bp),
        u64::from(copied),
    );
    let word = |at: usize| {
        // SAFETY: `at` is at most PAGE_BYTES - BLOCK + STACK_BYTES + BLOCK - 8, inside the
        // pages.
        unsafe { pages.as_ptr().add(at).cast::<u64>().read() }
    };
    // The words of sp's own block, from sp on.
    for i in 0..BLOCK / 8 {
        let at = block + 8 * i;
        if at + 8 > end {
            return hash;
        }
        if at >= start {
            hash = hash_word(hash, word(at));
        }
    }
    // Then whole blocks, past STACK_BYTES from sp (the last ends with the copy's pages).
    for k in 1..=STACK_BYTES / BLOCK {
        let at = block + k * BLOCK;
        if at + BLOCK > end {
            break;
        }
        for i in 0..BLOCK / 8 {
            hash = hash_word(hash, word(at + 8 * i));
        }
    }
    hash
}

/// The copy [`hash_step`] walks.
#[repr(C)]
struct HashWalk {
    start: u64,
    end: u64,
    hash: u64,
}

/// Word `index` of [`whole_hash`]: 1 stops the loop. The offset comes from the loop's index,
/// which the verifier does not track, so it checks this step once rather than per word.
extern "C" fn hash_step(index: u64, walk: *mut c_void) -> i64 {
    let walk = walk.cast::<HashWalk>();
    let Some(scratch) = scratch() else {
        return 1;
    };
    // SAFETY: `walk` is the caller's; the read is bounds-checked against the pages.
    unsafe {
        let at = ((*walk).start + 8 * index) as usize;
        if at + 8 > (*walk).end as usize || at > SNAPSHOT_PAGES * PAGE_BYTES - 8 {
            return 1;
        }
        let word = (*scratch).pages.as_ptr().add(at).cast::<u64>().read();
        (*walk).hash = hash_word((*walk).hash, word);
    }
    0
}
