//! Releasing perf events after memtrace has exited. Once their programs are detached, what
//! remains of the kernel's work is unregistering each event (~40 ms each here, one at a time
//! under its `event_mutex`); a user waiting at a prompt should not wait for that. A forked
//! helper keeps only the events, closes them and exits; memtrace exits at once.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The helper's name, as `ps` shows it while it runs (under a second).
const NAME: &[u8] = b"memtrace-detach\0";

/// Hands `events` to a helper process that closes them; closes them here if it cannot start.
pub fn in_background(events: Vec<OwnedFd>) {
    if events.is_empty() {
        return;
    }
    // Everything the child uses is prepared before `fork`: after it, only async-signal-safe
    // calls are allowed (this process may have other threads).
    let mut keep: Vec<RawFd> = events.iter().map(AsRawFd::as_raw_fd).collect();
    keep.sort_unstable();
    // SAFETY: fork has no preconditions; the child below only makes raw system calls.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: in the child: close_range, setsid, prctl, close and _exit are system
            // calls, safe after fork; `keep` was allocated before it.
            unsafe { helper(&keep) }
        }
        pid if pid > 0 => {
            log::debug!(
                "releasing {} tracepoint events in the background (pid {pid})",
                events.len()
            );
            // Not the last references to the events: closing these is instant.
            drop(events);
        }
        _ => drop(events),
    }
}

/// The helper: keeps nothing but the events (not memtrace's output, which its reader would
/// otherwise wait on; not its maps or programs, which would outlive it), closes them, exits.
///
/// # Safety
/// Call only in the child of `fork`, with `keep` sorted.
unsafe fn helper(keep: &[RawFd]) -> ! {
    // SAFETY: plain system calls on this process's own descriptors and attributes.
    unsafe {
        let mut from: libc::c_uint = 0;
        for &fd in keep {
            if fd as libc::c_uint > from {
                close_range(from, fd as libc::c_uint - 1);
            }
            from = fd as libc::c_uint + 1;
        }
        close_range(from, libc::c_uint::MAX);
        // Out of the terminal's process group: a Ctrl-C meant for the shell is not for it.
        libc::setsid();
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        for &fd in keep {
            libc::close(fd);
        }
        libc::_exit(0)
    }
}

/// `close_range(2)` (Linux 5.9+), or one `close` each where it is missing.
unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: closing descriptors of this process.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
            return;
        }
        for fd in first..=last.min(first.saturating_add(65_536)) {
            libc::close(fd as libc::c_int);
        }
    }
}
