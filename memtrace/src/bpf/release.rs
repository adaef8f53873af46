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
    // Two pipes: the helper says on `ready` when it holds nothing of memtrace's but the events
    // (so that memtrace exits only then, and a reader of its output sees the end at once); it
    // waits on `go` until memtrace has dropped its own copies of the events, so that the last
    // reference, whose release is the slow part, is the helper's.
    let (Some((ready_read, ready_write)), Some((go_read, go_write))) = (pipe(), pipe()) else {
        drop(events);
        return;
    };
    // Everything the child uses is prepared before `fork`: after it, only async-signal-safe
    // calls are allowed (this process may have other threads).
    let mut keep: Vec<RawFd> = events.iter().map(AsRawFd::as_raw_fd).collect();
    keep.extend([ready_write, go_read]);
    keep.sort_unstable();
    // SAFETY: fork has no preconditions; the child below only makes raw system calls.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child: close_range, setsid, prctl, read, write, close and _exit are
        // system calls, safe after fork; `keep` was allocated before it.
        unsafe { helper(&keep, ready_write, go_read) }
    }
    // Not the last references to the events if the helper holds them: closing these is
    // instant; if fork failed, they are released here.
    let count = events.len();
    drop(events);
    // SAFETY: closing our ends of the pipes (the helper sees `go` end); reading one byte into a
    // buffer we own, which returns when the helper writes, or exits.
    unsafe {
        libc::close(ready_write);
        libc::close(go_read);
        libc::close(go_write);
        if pid > 0 {
            let mut byte = 0u8;
            libc::read(ready_read, (&raw mut byte).cast(), 1);
            log::debug!("releasing {count} tracepoint events in the background (pid {pid})");
        }
        libc::close(ready_read);
    }
}

/// Copies of every BPF link this process holds (uprobes' among them), for [`in_background`]:
/// while a copy lives, closing the original is instant.
pub fn links_of_this_process() -> Vec<OwnedFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for entry in entries.flatten() {
        let is_link = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link");
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_link {
            continue;
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor this process holds returns a new one (or
        // -1), which nothing else owns.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy >= 0 {
            // SAFETY: as above.
            links.push(unsafe { std::os::fd::FromRawFd::from_raw_fd(copy) });
        }
    }
    links
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Option<(RawFd, RawFd)> {
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills the two descriptors of the array it is given.
    (unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } == 0).then_some((ends[0], ends[1]))
}

/// The helper: keeps nothing but the events (not memtrace's output, which its reader would
/// otherwise wait on; not its maps or programs, which would outlive it), says so on `ready`,
/// waits for `go` to end, closes the events, exits.
///
/// # Safety
/// Call only in the child of `fork`, with `keep` sorted (the events, `ready` and `go`).
unsafe fn helper(keep: &[RawFd], ready: RawFd, go: RawFd) -> ! {
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
        libc::write(ready, [1u8].as_ptr().cast(), 1);
        libc::close(ready);
        let mut byte = 0u8;
        libc::read(go, (&raw mut byte).cast(), 1);
        libc::close(go);
        for &fd in keep.iter().filter(|&&fd| fd != ready && fd != go) {
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
