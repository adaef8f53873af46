//! Classic tracepoints (`category:name`), attached through perf events memtrace opens itself so
//! that it can detach them fast.
//!
//! The kernel makes releasing a tracepoint's perf event slow (measured here, Linux 6.18):
//! detaching its program waits out an RCU tasks-trace grace period (~30 ms), and releasing the
//! event two more grace periods (~40 ms), that one event at a time under the kernel's
//! `event_mutex`. Closed one after the other, the 13 events of `trace` took a second. So at the
//! end every program is detached at once (the links closed in parallel share one grace
//! period: ~50 ms for all), and the events, now without programs, are released either here or,
//! for interactive commands, by a helper process once memtrace has exited (`super::release`).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    thread,
};

use aya::{Ebpf, programs::TracePoint, sys::SyscallError};

use super::{program_mut, release};
use crate::sys::{perf, refusal::kernel_refusal, tracefs};

/// How the events are released once their programs are detached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// By a helper process, after memtrace exits: a user waits for none of it.
    Background,
    /// Here, before returning (the daemon, whose stop nobody waits on interactively).
    Here,
}

/// The classic tracepoints a session attached.
#[derive(Default)]
pub struct Tracepoints {
    attached: Vec<Attached>,
}

struct Attached {
    /// The perf event of the tracepoint: releasing it unregisters memtrace's use of it.
    event: OwnedFd,
    /// The BPF link running the program on the event; `None` on kernels without perf links
    /// (before 5.15), where closing the event detaches the program too.
    link: Option<OwnedFd>,
}

impl Tracepoints {
    /// Loads `program` (unless loaded already) and runs it on `category:name`.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        category: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let hook: &mut TracePoint = program_mut(ebpf, program)?;
        if hook.fd().is_err() {
            hook.load()
                .map_err(|err| kernel_refusal(err, &format!("load {program}")))?;
        }
        let program_fd = hook.fd()?.as_fd();
        let id = tracefs::event_id(category, name)?;
        let attr = perf::Attr {
            sample_period: 1,
            wakeup_events: 1,
            ..perf::Attr::new(perf::TYPE_TRACEPOINT, id)
        };
        // One event serves every CPU: a tracepoint's programs run wherever it fires.
        let event = perf::open(&attr, perf::Scope::Cpu(0)).map_err(|io_error| {
            let err = SyscallError {
                call: "perf_event_open",
                io_error,
            };
            kernel_refusal(err, &format!("attach {category}:{name}"))
        })?;
        let link = match link_create(program_fd, &event) {
            Ok(link) => Some(link),
            // No BPF links for perf events on this kernel: the older ioctl.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                perf::set_bpf(&event, &program_fd.as_raw_fd()).map_err(|io_error| {
                    let err = SyscallError {
                        call: "PERF_EVENT_IOC_SET_BPF",
                        io_error,
                    };
                    kernel_refusal(err, &format!("attach {category}:{name}"))
                })?;
                None
            }
            Err(io_error) => {
                let err = SyscallError {
                    call: "bpf_link_create",
                    io_error,
                };
                return Err(kernel_refusal(err, &format!("attach {category}:{name}")));
            }
        };
        self.attached.push(Attached { event, link });
        Ok(())
    }

    /// Detaches every program at once, then releases the events as `how` says.
    pub fn release(mut self, how: Release) {
        let events = self.detach_programs();
        match how {
            Release::Background => release::in_background(events),
            Release::Here => drop(events),
        }
    }

    /// Closes every link at once (each waits out a grace period; in parallel they share one),
    /// and returns the events, which no program runs on any more.
    fn detach_programs(&mut self) -> Vec<OwnedFd> {
        let links: Vec<OwnedFd> = self
            .attached
            .iter_mut()
            .filter_map(|attached| attached.link.take())
            .collect();
        if links.len() > 1 {
            thread::scope(|scope| {
                for link in links {
                    scope.spawn(move || drop(link));
                }
            });
        } else {
            drop(links);
        }
        self.attached
            .drain(..)
            .map(|attached| attached.event)
            .collect()
    }
}

impl Drop for Tracepoints {
    /// Not released explicitly (an error ended the session): everything is released here.
    fn drop(&mut self) {
        drop(self.detach_programs());
    }
}

/// `BPF_LINK_CREATE` of a perf-event link: runs `program` on each occurrence of `event`.
fn link_create(program: BorrowedFd<'_>, event: &OwnedFd) -> io::Result<OwnedFd> {
    /// The `link_create` member of `union bpf_attr`, as far as a perf-event link needs it.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        bpf_cookie: u64,
    }
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PERF_EVENT: u32 = 41;
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: 0,
    };
    // SAFETY: bpf(2) with a valid attr of the size passed, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const attr,
            size_of::<LinkCreate>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
