//! The `syscalls` object: entry programs (one per number of arguments) and one exit program,
//! attached to the `syscalls:sys_enter_*` / `sys_exit_*` tracepoints of each traced syscall (and
//! of no other, so untraced syscalls never run a memtrace program); the ring buffer of completed
//! calls; and the statistics the kernel keeps per syscall (`-c`) and per process (`serve`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::RawTracePoint,
};
use memtrace_common::{
    COMM_LEN, DropSource, globals, maps,
    stacks::{RECORD_STACK, StackWay},
    syscalls::RECORD_EXEC,
    syscalls::{
        ENTRY_PROGRAMS, EXIT_PROGRAM, MAX_TRACED, ProcSyscallCounts, ProcSyscallKey, RING_BYTES,
        STANDARD_ARGS_OFFSET, STANDARD_NR_OFFSET, STANDARD_RET_OFFSET, SyscallClass, SyscallStats,
        class_entry,
    },
};

use super::{
    Config, Loaded, MIN_RING_BYTES, Object, program_mut,
    ring::Ring,
    targets::{self, Filter},
    tracepoints::Tracepoints,
};
use crate::{
    aggregate::syscalls,
    decode::{self, DecodeError},
    error::Failure,
    sys::{refusal::kernel_refusal, tracefs::Format},
    syscalls::{Call, Syscall},
};

const CATEGORY: &str = "syscalls";

/// Fires when a task's name changes: traced threads' names are kept in their slots.
const RENAME: (&str, &str) = ("task", "task_rename");

/// What the `syscalls` object can lose: a call's slot, its record, or a followed child (a
/// missed child is a missed target).
pub const LOSSES: [DropSource; 3] = [
    DropSource::SyscallPendingFull,
    DropSource::SyscallRingFull,
    DropSource::TargetTableFull,
];

/// What it can lose besides, counting per process (`serve`).
pub const PROCESS_LOSS: DropSource = DropSource::SyscallProcFull;

/// What the kernel side keeps of each completed call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// Count per syscall only; send no record per call.
    pub count_only: bool,
    pub failed_only: bool,
    pub min_size: u64,
    /// Also count per process and syscall (`serve`).
    pub per_process: bool,
}

/// Which calls' user stacks are taken.
#[derive(Clone, Copy, Debug)]
pub struct StackOptions {
    /// A [`memtrace_common::syscalls::stacks_of`] value.
    pub of: u32,
    pub max_stacks: u32,
}

/// How the object is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub syscalls: Vec<Syscall>,
    pub kernel: KernelFilter,
    pub targets: Filter,
    /// Capacity of the table of traced threads.
    pub max_threads: u32,
    /// Capacity of the per-process table, in (process, syscall) pairs, when counting per
    /// process.
    pub max_process_keys: u32,
    /// With user stacks (`trace --stack`, `leaks`): which, and the capacity of the stack
    /// tables.
    pub stacks: Option<StackOptions>,
    /// With each call's kernel stack too (`trace --kernel-stack`).
    pub kernel_stacks: bool,
    /// With a record when a target runs `exec` (`leaks`).
    pub execs: bool,
}

/// Loads the object, sized for what `options` asks, and attaches its programs to each traced
/// syscall (with the hooks that free exited threads' slots, keep their names current, and
/// follow forks, as needed).
pub fn load(options: &Options) -> anyhow::Result<Loaded> {
    assert!(options.syscalls.len() <= MAX_TRACED as usize);
    let mut config = Config::default();
    options.targets.configure(&mut config)?;
    configure(&mut config, &options.syscalls, options.kernel)?;
    let filter = options.kernel;
    config
        .size(maps::SYSCALL_PENDING, options.max_threads)
        .size(
            maps::SYSCALL_EVENTS,
            if filter.count_only {
                MIN_RING_BYTES
            } else if options.stacks.is_some() {
                // Stacks sent whole share the ring: each is up to 20 KiB.
                RING_BYTES * 4
            } else {
                RING_BYTES
            },
        )
        .size(
            maps::SYSCALL_PROC_STATS,
            if filter.per_process {
                options.max_process_keys
            } else {
                1
            },
        );
    config.u32(globals::SYSCALL_EXECS, u32::from(options.execs));
    match options.stacks {
        Some(StackOptions { of, max_stacks }) => {
            config.u32(globals::SYSCALL_STACKS, of);
            super::stacks::configure(&mut config, max_stacks, super::stacks::way())?;
            if options.kernel_stacks {
                config
                    .u32(globals::SYSCALL_KERNEL_STACKS, 1)
                    .size(maps::KERNEL_STACKS, max_stacks);
            }
        }
        None => {
            super::stacks::configure(&mut config, 1, StackWay::Helpers)?;
            config.size(maps::STACK_SCRATCH, 1);
        }
    }
    let mut ebpf = super::load(Object::Syscalls, &config)?;
    super::forward_kernel_logs(&mut ebpf);
    let mut tracepoints = Tracepoints::default();
    if options.targets == (Filter::Targets { follow_forks: true }) {
        targets::attach_fork_follower(&mut ebpf, &mut tracepoints)?;
    }
    attach(
        &mut ebpf,
        &mut tracepoints,
        &options.syscalls,
        filter,
        options.stacks.is_some(),
    )?;
    if options.execs {
        let exec: &mut RawTracePoint = program_mut(&mut ebpf, "mt_sys_exec")?;
        exec.load()
            .map_err(|err| kernel_refusal(err, "load mt_sys_exec"))?;
        exec.attach("sched_process_exec")
            .map_err(|err| kernel_refusal(err, "attach the raw tracepoint sched_process_exec"))?;
    }
    Ok(Loaded { ebpf, tracepoints })
}

/// Reads the traced syscalls' record layouts from tracefs and sets the programs' globals.
fn configure(
    config: &mut Config,
    syscalls: &[Syscall],
    filter: KernelFilter,
) -> Result<(), Failure> {
    let mut layout: Option<(u32, u32, u32)> = None;
    for &syscall in syscalls {
        let found = layout_of(syscall)?;
        match layout {
            None => layout = Some(found),
            // One program serves every syscall, so the common fields must sit at one place.
            Some(first) if first != found => {
                return Err(Failure::KernelUnsupported {
                    what: format!(
                        "one record layout for every syscalls:sys_*_{}",
                        syscall.name()
                    ),
                    hint: format!("offsets {found:?} differ from {first:?}"),
                });
            }
            Some(_) => {}
        }
    }
    if let Some((nr, args, ret)) = layout {
        let standard = (nr, args, ret)
            == (
                STANDARD_NR_OFFSET,
                STANDARD_ARGS_OFFSET,
                STANDARD_RET_OFFSET,
            );
        if !standard {
            log::info!(
                "syscall records at offsets {:?}, not the standard ones: fields are copied",
                (nr, args, ret)
            );
        }
        config
            .u32(globals::SYSCALL_NR_OFFSET, nr)
            .u32(globals::SYSCALL_ARGS_OFFSET, args)
            .u32(globals::SYSCALL_RET_OFFSET, ret)
            .u32(globals::SYSCALL_DIRECT_READS, u32::from(standard));
    }
    if !filter.count_only {
        let rename = Format::read(RENAME.0, RENAME.1)?;
        config
            .u32(globals::RENAME_PID_OFFSET, rename.offset("pid", 4)?)
            .u32(
                globals::RENAME_COMM_OFFSET,
                rename.offset("newcomm", COMM_LEN as u32)?,
            );
    }
    config
        .u32(globals::SYSCALL_COUNT_ONLY, u32::from(filter.count_only))
        .u32(globals::SYSCALL_FAILED_ONLY, u32::from(filter.failed_only))
        .bytes(globals::SYSCALL_MIN_SIZE, &filter.min_size.to_ne_bytes())
        .u32(globals::SELF_TGID, std::process::id())
        .u32(globals::SYSCALL_PER_PROCESS, u32::from(filter.per_process));
    Ok(())
}

/// (`__syscall_nr` offset, first argument's offset, `ret` offset) of one syscall's records,
/// checking that its arguments are consecutive 8-byte fields, as the entry program reads them.
fn layout_of(syscall: Syscall) -> Result<(u32, u32, u32), Failure> {
    let enter = Format::read(CATEGORY, &format!("sys_enter_{}", syscall.name()))?;
    let exit = Format::read(CATEGORY, &format!("sys_exit_{}", syscall.name()))?;
    let nr = enter.offset("__syscall_nr", 4)?;
    if exit.offset("__syscall_nr", 4)? != nr {
        return Err(Failure::KernelUnsupported {
            what: format!(
                "the expected layout of syscalls:sys_exit_{}",
                syscall.name()
            ),
            hint: "`__syscall_nr` at a different offset than at entry".into(),
        });
    }
    let ret = exit.offset("ret", 8)?;
    // Arguments follow the number, 8-byte aligned; with none (munlockall), where they would be.
    let mut first = (nr + 4).next_multiple_of(8);
    for (i, name) in syscall.arg_names().iter().enumerate() {
        let offset = enter.offset(name, 8)?;
        if i == 0 {
            first = offset;
        } else if offset != first + 8 * i as u32 {
            return Err(Failure::KernelUnsupported {
                what: format!(
                    "the expected layout of syscalls:sys_enter_{}",
                    syscall.name()
                ),
                hint: format!("argument `{name}` is not where the ones before it lead"),
            });
        }
    }
    Ok((nr, first, ret))
}

/// Marks the traced syscalls in the kernel (class and statistics slot), then loads the programs
/// they need (the forms that take stacks if `stacks`) and attaches them to each traced
/// syscall's entry and exit tracepoints; with records to send (not `count_only`), also the hook
/// that keeps the threads' names current.
fn attach(
    ebpf: &mut Ebpf,
    tracepoints: &mut Tracepoints,
    syscalls: &[Syscall],
    filter: KernelFilter,
    stacks: bool,
) -> anyhow::Result<()> {
    {
        let mut classes: Array<&mut MapData, u32> = super::map_mut(ebpf, maps::SYSCALL_CLASSES)?;
        for (slot, &syscall) in syscalls.iter().enumerate() {
            debug_assert_ne!(syscall.class(), SyscallClass::Untraced);
            classes
                .set(syscall.nr(), class_entry(syscall.class(), slot as u32), 0)
                .with_context(|| format!("mark {} as traced", syscall.name()))?;
        }
    }
    let thread_exit: &mut RawTracePoint = program_mut(ebpf, "mt_thread_exit")?;
    thread_exit
        .load()
        .map_err(|err| kernel_refusal(err, "load mt_thread_exit"))?;
    thread_exit
        .attach("sched_process_exit")
        .map_err(|err| kernel_refusal(err, "attach the raw tracepoint sched_process_exit"))?;
    if !filter.count_only {
        tracepoints.attach(ebpf, "mt_sys_rename", RENAME.0, RENAME.1)?;
    }
    let form = |program: &str| match stacks {
        true => super::stacks::program(&format!("{program}_stack")),
        false => program.to_owned(),
    };
    let exit = form(EXIT_PROGRAM);
    for &syscall in syscalls {
        let entry = form(ENTRY_PROGRAMS[syscall.arg_names().len()]);
        let name = syscall.name();
        tracepoints.attach(ebpf, &entry, CATEGORY, &format!("sys_enter_{name}"))?;
        tracepoints.attach(ebpf, &exit, CATEGORY, &format!("sys_exit_{name}"))?;
    }
    Ok(())
}

/// The kernel's per-syscall statistics, for the syscalls called at least once. `syscalls` is
/// the traced set, in the order `load` gave them their slots.
pub fn stats(ebpf: &Ebpf, syscalls: &[Syscall]) -> anyhow::Result<Vec<(Syscall, SyscallStats)>> {
    let array: PerCpuArray<&MapData, SyscallStats> = super::map(ebpf, maps::SYSCALL_STATS)?;
    let mut rows = Vec::new();
    for (slot, &syscall) in syscalls.iter().enumerate() {
        let per_cpu = array
            .get(&(slot as u32), 0)
            .with_context(|| format!("read the statistics of {}", syscall.name()))?;
        if let Some(totals) = syscalls::combine(per_cpu.iter()) {
            rows.push((syscall, totals));
        }
    }
    Ok(rows)
}

/// The per-process counts (`KernelFilter::per_process`): cumulative since each key was first
/// seen.
pub fn proc_stats(ebpf: &Ebpf) -> anyhow::Result<Vec<(ProcSyscallKey, ProcSyscallCounts)>> {
    super::entries(ebpf, maps::SYSCALL_PROC_STATS)
}

/// Deletes an exited process's per-process counts (read for the last time before).
pub fn forget_process(ebpf: &mut Ebpf, key: &ProcSyscallKey) -> anyhow::Result<()> {
    let mut table: HashMap<&mut MapData, ProcSyscallKey, ProcSyscallCounts> =
        super::map_mut(ebpf, maps::SYSCALL_PROC_STATS)?;
    super::deleted(table.remove(key))
        .map_err(|err| anyhow::Error::new(err).context("delete from SYSCALL_PROC_STATS"))
}

/// Events the object could not record, per source ([`LOSSES`], and [`PROCESS_LOSS`] when
/// counting per process).
pub fn drops(ebpf: &Ebpf, per_process: bool) -> anyhow::Result<Vec<(DropSource, u64)>> {
    let mut sources = LOSSES.to_vec();
    if per_process {
        sources.push(PROCESS_LOSS);
    }
    super::drops::read(ebpf, &sources)
}

/// One record of the ring: a completed call, the stack of a call (sent whole before it), or a
/// process's `exec`.
pub enum Item<'a> {
    Call(Result<Call, DecodeError>),
    Stack(&'a [u8]),
    Exec(u32),
}

/// The ring buffer of completed calls, readable from tokio.
pub struct Records {
    ring: Ring,
}

impl Records {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<Records> {
        Ok(Records {
            ring: Ring::open(ebpf, maps::SYSCALL_EVENTS)?,
        })
    }

    /// Resolves when the kernel signals a backlog (it does not wake the reader per record; the
    /// caller also drains on a short timer).
    pub async fn backlog(&mut self) -> anyhow::Result<()> {
        self.ring.readable().await
    }

    /// Decodes the records waiting, in order, at most `max`, handing each to `each`; returns
    /// how many.
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(Item)) -> usize {
        self.ring.drain(max, |item| match decode::kind(item) {
            Ok(RECORD_STACK) => each(Item::Stack(item)),
            Ok(RECORD_EXEC) => each(Item::Exec(decode::syscalls::exec(item))),
            _ => each(Item::Call(decode::syscalls::call(item))),
        })
    }
}
