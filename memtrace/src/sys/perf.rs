//! The kernel's perf events, opened directly: tracepoint events for the programs memtrace
//! attaches to classic tracepoints (`bpf::tracepoints`), and counting software events for
//! `faults --pid` (`counters`). Only what memtrace uses of `perf_event_attr` is declared.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `PERF_TYPE_SOFTWARE` and `PERF_TYPE_TRACEPOINT`.
pub const TYPE_SOFTWARE: u32 = 1;
pub const TYPE_TRACEPOINT: u32 = 2;

/// `PERF_COUNT_SW_PAGE_FAULTS_MIN` / `_MAJ`: counted in `mm_account_fault()`, where the kernel
/// increments a task's `min_flt` / `maj_flt`.
pub const COUNT_SW_PAGE_FAULTS_MIN: u64 = 5;
pub const COUNT_SW_PAGE_FAULTS_MAJ: u64 = 6;

/// Bits of `perf_event_attr`'s flag word.
pub mod flags {
    /// Counted also in the tasks the target creates.
    pub const INHERIT: u64 = 1 << 1;
    /// With `INHERIT`: only in the threads it creates, not in new processes (Linux 5.13+).
    pub const INHERIT_THREAD: u64 = 1 << 35;
}

/// `perf_event_attr` up to `config2` (`PERF_ATTR_SIZE_VER1`); the kernel zero-extends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub kind: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
}

const _: () = assert!(size_of::<Attr>() == 72);

impl Attr {
    pub fn new(kind: u32, config: u64) -> Attr {
        Attr {
            kind,
            size: size_of::<Attr>() as u32,
            config,
            ..Attr::default()
        }
    }
}

/// Which tasks and CPUs an event watches.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// One task (thread id), on whichever CPU it runs.
    Task(u32),
    /// Every task, on one CPU.
    Cpu(u32),
}

/// `PERF_FLAG_FD_CLOEXEC`.
const FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `perf_event_open(2)`, close-on-exec.
pub fn open(attr: &Attr, scope: Scope) -> io::Result<OwnedFd> {
    let (pid, cpu) = match scope {
        Scope::Task(tid) => (tid as libc::pid_t, -1),
        Scope::Cpu(cpu) => (-1, cpu as libc::c_int),
    };
    // SAFETY: a valid attr that outlives the call; no group fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const Attr,
            pid,
            cpu,
            -1,
            FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `PERF_EVENT_IOC_ENABLE`, `PERF_EVENT_IOC_SET_BPF`.
const IOC_ENABLE: libc::c_ulong = 0x2400;
const IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// Runs a BPF program on each occurrence of the event (kernels without BPF links).
pub fn set_bpf(event: &OwnedFd, program: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: a perf event descriptor and a program descriptor, both ours.
    let rc = unsafe { libc::ioctl(event.as_raw_fd(), IOC_SET_BPF, program.as_raw_fd()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(event.as_raw_fd(), IOC_ENABLE, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The value of a counting event (`read_format` 0): its count, including the tasks it was
/// inherited by.
pub fn read_count(event: &OwnedFd) -> io::Result<u64> {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own.
    let n = unsafe { libc::read(event.as_raw_fd(), (&raw mut value).cast(), size_of::<u64>()) };
    match n {
        8 => Ok(value),
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Err(io::Error::other(format!(
            "short read of a perf counter ({n} bytes)"
        ))),
    }
}
