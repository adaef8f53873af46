//! Types and names shared by memtrace's kernel programs and its userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding, carries no `bool`, and is checked for
//! size at compile time, so both sides agree byte for byte. Map and global names live here once so
//! that the loader and the programs cannot drift apart.
#![no_std]

pub mod allocs;
pub mod faults;
pub mod oom;
pub mod pressure;
pub mod stacks;
pub mod syscalls;
pub mod targets;

/// Size in bytes of a kernel task command name (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// The kernel objects, one per hook family, each with only its own maps: a command loads the
/// ones it uses and creates no other map (`memtrace/build.rs` embeds them by these names).
pub mod objects {
    /// Page faults: the fault events' programs, the counting table, exec and fork hooks.
    pub const FAULTS: &str = "faults";
    /// Allocation syscalls: entry/exit programs, calls in progress, records, statistics.
    pub const SYSCALLS: &str = "syscalls";
    /// OOM kills: `oom:mark_victim` and the kernel's OOM report.
    pub const OOM: &str = "oom";
    /// Memory pressure: reclaim, compaction and throttling stalls, per process.
    pub const PRESSURE: &str = "pressure";
    /// Attribution: page faults by user stack (and by mapping), stacks copied for unwinding.
    pub const ATTRIBUTION: &str = "attribution";
    /// Allocator calls (`leaks --malloc`): uprobes on malloc and its kin, live allocations.
    pub const ALLOCS: &str = "allocs";
}

/// Names of the global variables userspace sets before load (`EbpfLoader::override_global`).
pub mod globals {
    /// `u32`: a [`crate::targets::FilterMode`] value.
    pub const FILTER_MODE: &str = "FILTER_MODE";
    /// `[u8; COMM_LEN]`: the command name matched by [`crate::targets::FilterMode::Comm`].
    pub const FILTER_COMM: &str = "FILTER_COMM";
    /// `u32`: non-zero to count faults per thread rather than per process.
    pub const PER_THREAD: &str = "PER_THREAD";
    /// [`crate::faults::MemcgLayout`]: how to find a task's memory cgroup (`serve`).
    pub const MEMCG_LAYOUT: &str = "MEMCG_LAYOUT";
    /// `u32`: byte offset of `pid` in the `task:task_newtask` record (from its tracefs format).
    pub const NEWTASK_PID_OFFSET: &str = "NEWTASK_PID_OFFSET";
    /// `u32`: byte offset of `clone_flags` in the `task:task_newtask` record.
    pub const NEWTASK_FLAGS_OFFSET: &str = "NEWTASK_FLAGS_OFFSET";
    /// `u32`: byte offset of `__syscall_nr` in `syscalls:sys_enter_*` / `sys_exit_*` records.
    pub const SYSCALL_NR_OFFSET: &str = "SYSCALL_NR_OFFSET";
    /// `u32`: byte offset of the first argument in `syscalls:sys_enter_*` records (the others
    /// follow, 8 bytes apart; userspace checks that in each traced syscall's format).
    pub const SYSCALL_ARGS_OFFSET: &str = "SYSCALL_ARGS_OFFSET";
    /// `u32`: byte offset of `ret` in `syscalls:sys_exit_*` records.
    pub const SYSCALL_RET_OFFSET: &str = "SYSCALL_RET_OFFSET";
    /// `u32`: non-zero when the three offsets above are the standard ones
    /// ([`crate::syscalls::STANDARD_NR_OFFSET`], ...): fields are then loaded straight from the
    /// record rather than copied with a helper.
    pub const SYSCALL_DIRECT_READS: &str = "SYSCALL_DIRECT_READS";
    /// `u32`: byte offset of `pid` in the `task:task_rename` record (from its tracefs format).
    pub const RENAME_PID_OFFSET: &str = "RENAME_PID_OFFSET";
    /// `u32`: byte offset of `newcomm` in the `task:task_rename` record.
    pub const RENAME_COMM_OFFSET: &str = "RENAME_COMM_OFFSET";
    /// `u32`: non-zero to count calls per syscall only, sending no record per call (`-c`).
    pub const SYSCALL_COUNT_ONLY: &str = "SYSCALL_COUNT_ONLY";
    /// `u32`: non-zero to keep only failed calls (`--failed`).
    pub const SYSCALL_FAILED_ONLY: &str = "SYSCALL_FAILED_ONLY";
    /// `u64`: keep only calls whose size is at least this many bytes (`--min-size`).
    pub const SYSCALL_MIN_SIZE: &str = "SYSCALL_MIN_SIZE";
    /// `u32`: memtrace's own process id, never traced (its output would feed its input).
    pub const SELF_TGID: &str = "SELF_TGID";
    /// `u32`: non-zero to also count per process and syscall in `SYSCALL_PROC_STATS` (`serve`).
    pub const SYSCALL_PER_PROCESS: &str = "SYSCALL_PER_PROCESS";
    /// [`crate::stacks::VmaLayout`]: where a mapping's start, flags and file are.
    pub const VMA_LAYOUT: &str = "VMA_LAYOUT";
    /// `offsetof(struct task_struct, stack)`, for programs that take stacks the older way.
    pub const TASK_STACK_OFFSET: &str = "TASK_STACK_OFFSET";
    /// `u32`: which traced calls' user stacks to take ([`crate::syscalls::stacks_of`]).
    pub const SYSCALL_STACKS: &str = "SYSCALL_STACKS";
    /// `u32`: non-zero to send an exec record when a traced process runs `exec` (`leaks`).
    pub const SYSCALL_EXECS: &str = "SYSCALL_EXECS";
    /// `u32`: non-zero to take each traced call's kernel stack too (`trace --kernel-stack`).
    pub const SYSCALL_KERNEL_STACKS: &str = "SYSCALL_KERNEL_STACKS";
    /// [`crate::oom::OomLayout`]: field offsets of `oom:mark_victim`.
    pub const OOM_LAYOUT: &str = "OOM_LAYOUT";
    /// `u64`: record only allocations of at least this many bytes (`leaks --min-size`).
    pub const ALLOC_MIN_SIZE: &str = "ALLOC_MIN_SIZE";
    /// `u32`: record one allocation in this many, at random (`leaks --sample`); 1 for all.
    pub const ALLOC_SAMPLE: &str = "ALLOC_SAMPLE";
    /// `u64`: bytes of a memory page (`pvalloc` rounds to whole pages).
    pub const ALLOC_PAGE_BYTES: &str = "ALLOC_PAGE_BYTES";
}

/// Names of the maps userspace reads and writes.
pub mod maps {
    /// Hash: [`crate::faults::FaultKey`] → [`crate::faults::FaultCounts`] (the `faults` object).
    pub const FAULT_COUNTS: &str = "FAULT_COUNTS";
    /// Hash: process id → [`crate::targets::TargetFlags`] bits (`faults` and `syscalls`).
    pub const TARGETS: &str = "TARGETS";
    /// Per-CPU array indexed by [`crate::DropSource`]: events the kernel side could not record
    /// (every object has its own).
    pub const DROPS: &str = "DROPS";
    /// Hash: thread id → [`crate::syscalls::PendingCall`], the traced calls in progress.
    pub const SYSCALL_PENDING: &str = "SYSCALL_PENDING";
    /// LRU hash: process id → its program break after its last `brk`.
    pub const SYSCALL_BREAKS: &str = "SYSCALL_BREAKS";
    /// Array indexed by syscall number: its class and statistics slot
    /// ([`crate::syscalls::class_entry`]).
    pub const SYSCALL_CLASSES: &str = "SYSCALL_CLASSES";
    /// Per-CPU array indexed by statistics slot: [`crate::syscalls::SyscallStats`].
    pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
    /// Ring buffer of [`crate::syscalls::SyscallRecord`]s.
    pub const SYSCALL_EVENTS: &str = "SYSCALL_EVENTS";
    /// Hash: [`crate::syscalls::ProcSyscallKey`] → [`crate::syscalls::ProcSyscallCounts`],
    /// filled only with `SYSCALL_PER_PROCESS`.
    pub const SYSCALL_PROC_STATS: &str = "SYSCALL_PROC_STATS";
    /// Per-CPU array of one `u32`: records a CPU wrote since it last woke userspace.
    pub const SYSCALL_UNSIGNALLED: &str = "SYSCALL_UNSIGNALLED";
    /// Ring buffer of [`crate::oom::OomVictim`] and [`crate::oom::OomText`] records.
    pub const OOM_EVENTS: &str = "OOM_EVENTS";
    /// Ring buffer (`oom` object): the process of each `exec`, drained at each history sample.
    pub const NEW_PROCESSES: &str = "NEW_PROCESSES";
    /// LRU hash: thread running the OOM killer → where it is in its report.
    pub const OOM_STATE: &str = "OOM_STATE";
    /// Array of one `u64`: the last OOM invocation number handed out.
    pub const OOM_SEQ: &str = "OOM_SEQ";
    /// Hash: process id → [`crate::pressure::StallCounts`].
    pub const STALLS: &str = "STALLS";
    /// Hash: thread id → [`crate::pressure::StallStarts`], the stalls under way.
    pub const STALL_STARTS: &str = "STALL_STARTS";
    /// Per-CPU array indexed by [`crate::pressure::StallKind`]: a
    /// [`crate::pressure::Histogram`] each.
    pub const STALL_HISTOGRAMS: &str = "STALL_HISTOGRAMS";
    /// Hash: [`crate::stacks::SiteKey`] → [`crate::stacks::Recipe`], written by userspace.
    pub const STACK_RECIPES: &str = "STACK_RECIPES";
    /// Hash: [`crate::stacks::StackKey`] → `u64` events; entries created by userspace once it
    /// knows the stack.
    pub const STACK_COUNTS: &str = "STACK_COUNTS";
    /// Hash: [`crate::stacks::StackKey`] (with a whole copy's hash) → `u64` events waiting for
    /// the stack userspace is unwinding.
    pub const STACK_PENDING: &str = "STACK_PENDING";
    /// Array indexed by CPU: a [`crate::stacks::Snapshot`] being built (one entry when the
    /// object copies no stack).
    pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
    /// LRU hash: [`crate::stacks::RegionKey`] → [`crate::stacks::CachedMapping`], the mapping
    /// last found in each region (`faults --by mapping|file`).
    pub const MAPPING_CACHE: &str = "MAPPING_CACHE";
    /// Stack trace map: the kernel stacks of traced calls (`trace --kernel-stack`).
    pub const KERNEL_STACKS: &str = "KERNEL_STACKS";
    /// Hash: [`crate::stacks::MappingKey`] → `u64` faults (`faults --by mapping|file`).
    pub const MAPPING_COUNTS: &str = "MAPPING_COUNTS";
    /// Ring buffer of stack snapshots ([`crate::stacks::SnapshotHeader`] and pages).
    pub const STACK_SNAPSHOTS: &str = "STACK_SNAPSHOTS";
    /// Hash: [`crate::allocs::AllocKey`] → [`crate::allocs::Allocation`], the live allocations
    /// (`leaks --malloc`).
    pub const ALLOCATIONS: &str = "ALLOCATIONS";
    /// LRU hash: thread id → [`crate::allocs::AllocCall`], its allocation call in progress.
    pub const ALLOC_CALLS: &str = "ALLOC_CALLS";
    /// Per-CPU array of one [`crate::allocs::AllocStats`].
    pub const ALLOC_STATS: &str = "ALLOC_STATS";
    /// Hash: process id → 0: followed processes not yet given their uprobes (stopped at their
    /// `exec` until they are).
    pub const ALLOC_AWAITED: &str = "ALLOC_AWAITED";
    /// Hash: process id → when it last ran `exec` (`bpf_ktime_get_ns`): its blocks born before
    /// are its old image's.
    pub const ALLOC_EXECS: &str = "ALLOC_EXECS";
}

/// Why the kernel side failed to record something. Each has its own slot in [`maps::DROPS`], so
/// no loss is ever silent.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropSource {
    /// A fault was seen but its process (or thread) had no room in `FAULT_COUNTS`.
    FaultTableFull = 0,
    /// A child of a followed process was created but had no room in `TARGETS`.
    TargetTableFull = 1,
    /// A traced syscall began but its thread had no room in `SYSCALL_PENDING`.
    SyscallPendingFull = 2,
    /// A completed syscall's record found the ring buffer full.
    SyscallRingFull = 3,
    /// An OOM victim or OOM report fragment found the `OOM_EVENTS` ring buffer full.
    OomRingFull = 4,
    /// A completed syscall's process had no room in `SYSCALL_PROC_STATS` (`serve`).
    SyscallProcFull = 5,
    /// A stall's process had no room in `STALLS`.
    StallTableFull = 6,
    /// A stall began but its task had no room in `STALL_STARTS`: it went untimed.
    StallStartFull = 7,
    /// An `exec` found the `NEW_PROCESSES` ring buffer full: its process is sampled for OOM
    /// histories only from the next scan.
    NewProcessRingFull = 8,
    /// An event's stack had to be sent whole but found the ring full: the event (and those on
    /// the same stack counted meanwhile) is lost, counted here only.
    StackRingFull = 9,
    /// A fault's mapping had no room in `MAPPING_COUNTS`.
    MappingTableFull = 10,
    /// An allocation found `ALLOCATIONS` full: it is not reported (its free is unmatched).
    AllocTableFull = 11,
}

impl DropSource {
    pub const COUNT: u32 = 12;
    pub const ALL: [DropSource; Self::COUNT as usize] = [
        DropSource::FaultTableFull,
        DropSource::TargetTableFull,
        DropSource::SyscallPendingFull,
        DropSource::SyscallRingFull,
        DropSource::OomRingFull,
        DropSource::SyscallProcFull,
        DropSource::StallTableFull,
        DropSource::StallStartFull,
        DropSource::NewProcessRingFull,
        DropSource::StackRingFull,
        DropSource::MappingTableFull,
        DropSource::AllocTableFull,
    ];

    /// A stable, machine-friendly name (used in JSON output).
    pub const fn name(self) -> &'static str {
        match self {
            DropSource::FaultTableFull => "fault_table_full",
            DropSource::TargetTableFull => "target_table_full",
            DropSource::SyscallPendingFull => "syscall_pending_full",
            DropSource::SyscallRingFull => "syscall_ring_full",
            DropSource::OomRingFull => "oom_ring_full",
            DropSource::SyscallProcFull => "syscall_proc_full",
            DropSource::StallTableFull => "stall_table_full",
            DropSource::StallStartFull => "stall_start_full",
            DropSource::NewProcessRingFull => "new_process_ring_full",
            DropSource::StackRingFull => "stack_ring_full",
            DropSource::MappingTableFull => "mapping_table_full",
            DropSource::AllocTableFull => "alloc_table_full",
        }
    }
}
