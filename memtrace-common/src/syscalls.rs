//! Allocation syscalls: the record one completed call sends to userspace, the per-syscall
//! statistics counted in the kernel for `-c`, and the limits both sides agree on.

/// Syscall numbers index the class array; every traced one is below this.
pub const MAX_SYSCALL_NR: u32 = 512;

/// Syscalls traced at once, at most: each has its own slot in the per-CPU statistics array,
/// which is sized by them rather than by syscall numbers (a per-CPU array grows with the CPU
/// count: 512 numbers would be 6 MiB at 192 CPUs, 16 slots are 192 KiB).
pub const MAX_TRACED: u32 = 16;

/// Default capacity of the table of traced threads (each keeps a slot for its calls in
/// progress while it lives): the whole system's threads.
pub const MAX_PENDING: u32 = 16_384;

/// The same with explicit targets (and what they fork): their threads only.
pub const MAX_PENDING_TARGETED: u32 = 4_096;

/// Default capacity of the table of each process's last known program break.
pub const MAX_BREAKS: u32 = 8_192;

/// Size of the ring buffer carrying [`SyscallRecord`]s (a power of two pages).
pub const RING_BYTES: u32 = 8 << 20;

/// The ring's size when no record is sent (`-c`, `serve`): the kernel's minimum, one page.
pub const IDLE_RING_BYTES: u32 = 4096;

/// Records a CPU writes between two wake-ups of userspace (~256 KiB of them); between, userspace
/// finds them on its next short timer tick, so that a burst costs one wake-up, not one per call.
/// Counted per CPU rather than asking the ring how full it is: that reads the position userspace
/// writes, a cache line bounced between CPUs on every call.
pub const WAKEUP_RECORDS: u32 = (256 << 10) / size_of::<SyscallRecord>() as u32;

/// Arguments a syscall can have.
pub const MAX_ARGS: usize = 6;

/// The `kind` tag of a [`SyscallRecord`], first in every ring-buffer record.
pub const RECORD_SYSCALL: u32 = 1;

/// The `kind` tag of an [`ExecRecord`] (`crate::stacks::RECORD_STACK` is 2).
pub const RECORD_EXEC: u32 = 3;

/// A traced process ran `exec`: its address space is new (`leaks` forgets its regions). Sent
/// only when asked for, in order with the process's calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRecord {
    /// Always [`RECORD_EXEC`].
    pub kind: u32,
    pub tgid: u32,
}

/// The entry program for syscalls of each number of arguments (index): each loads exactly its
/// syscalls' arguments, so a record's unused argument slots are zero. One program cannot serve
/// them all: the kernel refuses to attach a program that may load past the end of a tracepoint's
/// record, and a syscall's record ends after its own arguments.
pub const ENTRY_PROGRAMS: [&str; MAX_ARGS + 1] = [
    "mt_sys_enter0",
    "mt_sys_enter1",
    "mt_sys_enter2",
    "mt_sys_enter3",
    "mt_sys_enter4",
    "mt_sys_enter5",
    "mt_sys_enter6",
];

/// The exit program. With `_stack` after a name, and the way's suffix
/// (`crate::stacks::StackWay::suffix`), the form of an entry or exit program that takes stacks.
pub const EXIT_PROGRAM: &str = "mt_sys_exit";

/// Where the fields of `syscalls:sys_enter_*` / `sys_exit_*` records sit on mainline kernels:
/// `__syscall_nr` after the 8-byte common header, then the arguments (or `ret`) from the next
/// 8-byte boundary. The programs load fields at these offsets straight from the record, which
/// the verifier allows only at constant offsets; on a kernel whose layout differs (some patched
/// kernels grow the common header) they copy each field from the offset its tracefs `format`
/// gives instead, a helper call each.
pub const STANDARD_NR_OFFSET: u32 = 8;
pub const STANDARD_ARGS_OFFSET: u32 = 16;
pub const STANDARD_RET_OFFSET: u32 = 16;

/// How the kernel treats a syscall number: the low byte of its `SYSCALL_CLASSES` entry, set by
/// userspace (which knows this architecture's numbers); 0 means not traced. The next byte is the
/// syscall's statistics slot ([`class_entry`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallClass {
    Untraced = 0,
    /// No size to speak of (mlockall, shmat, ...).
    Other = 1,
    /// The second argument is a length (mprotect, madvise, mlock, msync, ...).
    Sized = 2,
    Mmap = 3,
    Munmap = 4,
    Mremap = 5,
    Brk = 6,
}

/// Which calls' user stacks the `syscalls` object takes (its `SYSCALL_STACKS` global).
pub mod stacks_of {
    pub const NONE: u32 = 0;
    /// Every call's, at its entry (`trace --stack`).
    pub const EVERY_CALL: u32 = 1;
    /// Only those of calls that mapped memory (mmap, mremap, a growing brk), once they have
    /// succeeded, at their exit (`leaks`): the stack of a munmap, of a failure or of a
    /// shrinking brk is never shown, so it is never taken.
    pub const MAPPING_CALLS: u32 = 2;
}

/// The `SYSCALL_CLASSES` entry of a traced syscall: its class and its statistics slot.
pub const fn class_entry(class: SyscallClass, slot: u32) -> u32 {
    class as u32 | (slot << 8)
}

/// The class (as its `u32` value) of a `SYSCALL_CLASSES` entry.
pub const fn class_of(entry: u32) -> u32 {
    entry & 0xff
}

/// The statistics slot of a `SYSCALL_CLASSES` entry.
pub const fn slot_of(entry: u32) -> u32 {
    entry >> 8
}

/// The memory a successful call mapped (`up`) and unmapped (`down`), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

/// The byte rule, one for the kernel's counters and for userspace: mmap maps its length,
/// munmap unmaps its length, mremap maps or unmaps the difference of its lengths by its sign,
/// brk by the direction the break moved; other calls move nothing. `class` is a
/// [`SyscallClass`] as `u32`, `len` and `new_len` the call's second and third arguments.
#[inline(always)]
pub fn bytes_moved(class: u32, len: u64, new_len: u64, brk_growth: i64) -> Moved {
    let (up, down) = if class == SyscallClass::Mmap as u32 {
        (len, 0)
    } else if class == SyscallClass::Munmap as u32 {
        (0, len)
    } else if class == SyscallClass::Mremap as u32 {
        if new_len > len {
            (new_len - len, 0)
        } else {
            (0, len - new_len)
        }
    } else if class == SyscallClass::Brk as u32 {
        if brk_growth > 0 {
            (brk_growth as u64, 0)
        } else {
            (0, brk_growth.unsigned_abs())
        }
    } else {
        (0, 0)
    };
    Moved { up, down }
}

/// The bytes a call is about, as `--min-size` measures them: its length argument, the larger of
/// mremap's two lengths, or how far brk moved the break (arguments as [`bytes_moved`]'s).
#[inline(always)]
pub fn bytes_about(class: u32, len: u64, new_len: u64, brk_growth: i64) -> u64 {
    if class == SyscallClass::Brk as u32 {
        brk_growth.unsigned_abs()
    } else if class == SyscallClass::Mremap as u32 {
        if len > new_len { len } else { new_len }
    } else if class == SyscallClass::Other as u32 {
        0
    } else {
        len
    }
}

/// `PendingCall::nr` of a thread's slot between calls: its last call has been reported.
pub const NO_CALL: u32 = u32::MAX;

/// A traced thread's slot: its syscall entry, kept until the exit, and its name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCall {
    /// `bpf_ktime_get_ns()` at entry.
    pub start_ns: u64,
    pub nr: u32,
    pub _pad: u32,
    pub args: [u64; MAX_ARGS],
    /// The thread's command name: read when the slot is made, rewritten when the thread is
    /// renamed (`exec`, `prctl(PR_SET_NAME)`, a write to its `comm` file), so that no call
    /// pays for reading it.
    pub comm: [u8; crate::COMM_LEN],
    /// The call's user stack (`trace --stack`), taken at entry.
    pub stack: crate::stacks::StackRef,
}

/// One completed call, as it crosses to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecord {
    /// Always [`RECORD_SYSCALL`].
    pub kind: u32,
    /// The syscall number (the kernel's, for this architecture).
    pub nr: u32,
    /// Process id (tgid).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// The thread's command name, NUL-padded (see [`PendingCall::comm`]).
    pub comm: [u8; crate::COMM_LEN],
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at entry.
    pub start_ns: u64,
    pub latency_ns: u64,
    pub args: [u64; MAX_ARGS],
    /// The raw return value: `-errno` on failure.
    pub ret: i64,
    /// For `brk`: the process's break before this call, or 0 if unknown. Otherwise 0.
    pub prev_brk: u64,
    /// The call's user stack (`trace --stack`; else none).
    pub stack: crate::stacks::StackRef,
}

/// Per-syscall totals of completed calls (per CPU; userspace combines them). Per CPU because
/// every traced call updates them (min and max need no atomics there), and the array is small.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    /// Smallest latency; meaningless while `calls` is 0.
    pub min_ns: u64,
    pub max_ns: u64,
    /// Bytes newly mapped (mmap, shmat: 0, mremap growth).
    pub mapped: u64,
    /// Bytes unmapped (munmap, mremap shrinkage).
    pub unmapped: u64,
    /// Net change of the program break (brk), in bytes.
    pub brk_growth: i64,
}

/// Capacity of the per-process statistics table (process × syscall pairs), for `serve`.
pub const MAX_PROC_SYSCALLS: u32 = 32_768;

/// Key of the per-process statistics (`SYSCALL_PROC_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcSyscallKey {
    pub tgid: u32,
    pub nr: u32,
}

/// One process's counts for one syscall, shared by every CPU and incremented atomically (a
/// per-CPU table of 32,768 keys would be 200 MB at 192 CPUs). Bytes are split by direction, so
/// that counters only ever grow: `up` is mapped / brk growth / mremap growth, `down` is unmapped
/// / brk shrinkage / mremap shrinkage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSyscallCounts {
    pub calls: u64,
    pub errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

const _: () = assert!(size_of::<ProcSyscallKey>() == 8);
const _: () = assert!(size_of::<ProcSyscallCounts>() == 32);
const _: () = assert!(size_of::<PendingCall>() == 96);
const _: () = assert!(size_of::<SyscallRecord>() == 128);
const _: () = assert!(size_of::<SyscallStats>() == 64);

/// Whether a raw return value is an error (`-4095..=-1`, as the kernel's `IS_ERR_VALUE`).
pub const fn is_error(ret: i64) -> bool {
    ret < 0 && ret >= -4095
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, integers only, padding made explicit (`_pad`).
    unsafe impl aya::Pod for super::PendingCall {}
    // SAFETY: `repr(C)`, integers and a byte array only, with no implicit padding (checked size).
    unsafe impl aya::Pod for super::SyscallRecord {}
    // SAFETY: `repr(C)`, integers only, no padding.
    unsafe impl aya::Pod for super::SyscallStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcSyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcSyscallCounts {}
}

const _: () = assert!(size_of::<ExecRecord>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(class: SyscallClass, len: u64, new_len: u64, brk: i64) -> (u64, u64) {
        let m = bytes_moved(class as u32, len, new_len, brk);
        (m.up, m.down)
    }

    #[test]
    fn each_call_moves_memory_its_own_way() {
        assert_eq!(moved(SyscallClass::Mmap, 4096, 0, 0), (4096, 0));
        assert_eq!(moved(SyscallClass::Munmap, 8192, 0, 0), (0, 8192));
        assert_eq!(moved(SyscallClass::Mremap, 4096, 12288, 0), (8192, 0));
        assert_eq!(moved(SyscallClass::Mremap, 12288, 4096, 0), (0, 8192));
        assert_eq!(moved(SyscallClass::Brk, 0, 0, 135168), (135168, 0));
        assert_eq!(moved(SyscallClass::Brk, 0, 0, -4096), (0, 4096));
        assert_eq!(moved(SyscallClass::Sized, 4096, 0, 0), (0, 0));
    }

    #[test]
    fn a_call_is_about_its_length_or_the_breaks_move() {
        let about =
            |class: SyscallClass, len, new_len, brk| bytes_about(class as u32, len, new_len, brk);
        assert_eq!(about(SyscallClass::Sized, 4096, 7, 0), 4096);
        assert_eq!(about(SyscallClass::Mremap, 4096, 12288, 0), 12288);
        assert_eq!(about(SyscallClass::Brk, 0, 0, -4096), 4096);
        assert_eq!(about(SyscallClass::Other, 4096, 0, 0), 0);
    }
}
