//! Page faults of explicit target processes, counted the way `perf stat -p` counts them: perf's
//! own counting events on each thread the process has when counting starts, inherited by the
//! threads it creates later but not by the processes it forks, so each total is the process's
//! own. No program runs on any fault, of the targets or of anyone else.

use std::{collections::BTreeSet, fs, io, os::fd::OwnedFd};

use crate::{error::Failure, model::faults::Counts, sys::perf};

/// The counters of one process.
pub struct ProcessCounters {
    pid: u32,
    threads: Vec<ThreadCounters>,
}

struct ThreadCounters {
    minor: OwnedFd,
    major: OwnedFd,
}

/// Whether this kernel can limit a counter's inheritance to threads (`inherit_thread`, Linux
/// 5.13+), asked of memtrace's own thread: elsewhere EINVAL could mean something else.
pub fn inherit_thread_supported() -> bool {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() } as u32;
    match ThreadCounters::open(me) {
        Ok(_) => true,
        Err(err) => err.raw_os_error() != Some(libc::EINVAL),
    }
}

/// Why a process's counters could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no such process: {0}")]
    Gone(u32),
    #[error("counting the faults of process {pid}: {source}")]
    Kernel { pid: u32, source: io::Error },
}

/// Rescans of a process's threads before giving up on one that keeps creating threads faster
/// than counters are opened (each rescan only meets threads made by uncounted ones).
const MAX_SCANS: usize = 64;

impl ProcessCounters {
    /// Opens counters on every thread of `pid`. A thread created by a thread that had no counter
    /// yet inherits none, so the threads are listed again until none lacks one.
    pub fn open(pid: u32) -> Result<ProcessCounters, OpenError> {
        let mut counted = BTreeSet::new();
        let mut threads = Vec::new();
        for _ in 0..MAX_SCANS {
            let tids = list_threads(pid).map_err(|_| OpenError::Gone(pid))?;
            let new: Vec<u32> = tids.difference(&counted).copied().collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                counted.insert(tid);
                match ThreadCounters::open(tid) {
                    Ok(counters) => threads.push(counters),
                    // Exited since it was listed: its faults are in no counter, as they would
                    // be in no later /proc reading either.
                    Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(source) => return Err(OpenError::Kernel { pid, source }),
                }
            }
        }
        if threads.is_empty() {
            return Err(OpenError::Gone(pid));
        }
        Ok(ProcessCounters { pid, threads })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's faults since counting began, its exited threads' included (an exited
    /// thread's counter keeps its final count; an inherited one is added to its parent's).
    pub fn read(&self) -> io::Result<Counts> {
        let mut counts = Counts::default();
        for thread in &self.threads {
            counts.minor += perf::read_count(&thread.minor)?;
            counts.major += perf::read_count(&thread.major)?;
        }
        Ok(counts)
    }
}

impl ThreadCounters {
    fn open(tid: u32) -> io::Result<ThreadCounters> {
        let counter = |config| {
            let attr = perf::Attr {
                flags: perf::flags::INHERIT | perf::flags::INHERIT_THREAD,
                ..perf::Attr::new(perf::TYPE_SOFTWARE, config)
            };
            perf::open(&attr, perf::Scope::Task(tid))
        };
        Ok(ThreadCounters {
            minor: counter(perf::COUNT_SW_PAGE_FAULTS_MIN)?,
            major: counter(perf::COUNT_SW_PAGE_FAULTS_MAJ)?,
        })
    }
}

/// The thread ids of a process, from `/proc/PID/task`.
fn list_threads(pid: u32) -> io::Result<BTreeSet<u32>> {
    Ok(fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Two descriptors per thread: raises the soft limit on open files to the hard one, as perf
/// does, so that a process with thousands of threads can be counted.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

impl OpenError {
    /// The error a user sees: no such process (exit 4), not privileged (exit 3), or as it is.
    pub fn explained(self) -> anyhow::Error {
        match self {
            OpenError::Gone(pid) => Failure::NoSuchProcess(pid).into(),
            OpenError::Kernel { pid, source } => crate::sys::refusal::kernel_refusal(
                aya::sys::SyscallError {
                    call: "perf_event_open",
                    io_error: source,
                },
                &format!("count the faults of process {pid}"),
            ),
        }
    }
}
