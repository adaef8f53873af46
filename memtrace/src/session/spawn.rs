//! Running `-- COMMAND`: start it, wait for it without polling, and collect the kernel's own
//! account of it (`wait4`'s rusage) along with its exit status.
//!
//! The caller makes the command a traced target *at birth*: before spawning, it marks memtrace
//! itself as followed in the kernel, so the in-kernel fork hook registers the child inside
//! `fork()`, before it runs a single instruction. No window is missed, and nothing has to be
//! stopped and resumed.

use std::{
    ffi::CString,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::PathBuf,
    process::Command,
};

use anyhow::Context as _;

use memtrace_common::targets::TargetFlags;

use crate::{
    bpf::targets::TargetTable,
    error::{Failure, exit_code},
    model::command::CommandExit,
    sys::pidfd::PidFd,
};

/// A command memtrace started.
pub struct Spawned {
    pub pidfd: PidFd,
}

fn spawn(argv: &[String]) -> Result<Spawned, anyhow::Error> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Failure::Usage("empty command after `--`".into()))?;
    let child = Command::new(program).args(args).spawn().map_err(|err| {
        let code = match err.kind() {
            io::ErrorKind::NotFound => exit_code::COMMAND_NOT_FOUND,
            _ => exit_code::COMMAND_NOT_EXECUTABLE,
        };
        Failure::CommandFailed {
            command: program.clone(),
            reason: err.to_string(),
            code,
        }
    })?;
    // The std handle is dropped without waiting: `reap` collects the child with its rusage.
    let pidfd = PidFd::open(child.id())?;
    Ok(Spawned { pidfd })
}

/// Starts the command as a counted, followed target from birth: memtrace marks itself followed
/// (but not counted), so the kernel's fork hook registers the child inside `fork()`, before it
/// runs. The fork follower (`bpf::targets::attach_fork_follower`) must be attached.
pub fn spawn_as_target(table: &mut dyn TargetTable, argv: &[String]) -> anyhow::Result<Spawned> {
    let me = std::process::id();
    table.insert(me, TargetFlags::FOLLOW)?;
    let spawned = spawn(argv);
    table.remove(me)?;
    let spawned = spawned?;
    if !table.contains(spawned.pid())? {
        anyhow::bail!(
            "the kernel did not register the command (pid {}) as a target",
            spawned.pid()
        );
    }
    Ok(spawned)
}

/// A command forked but held before its `exec`, so that what is attached to its pid (uprobes,
/// `leaks --malloc`) is in place before its first instruction. Between `fork` and `exec` the
/// child only reads a pipe, resets its signals and execs: nothing that allocates.
pub struct Held {
    pid: u32,
    /// The parts [`Held::release`] hands on; all `None` once released.
    pidfd: Option<PidFd>,
    command: String,
    /// Written to let the child go on; closed (memtrace gone), it makes the child exit.
    gate: Option<OwnedFd>,
    /// Closed by a successful `exec`; carries its errno otherwise.
    exec_errors: Option<OwnedFd>,
}

/// Forks `argv` (its program found at `path`, by [`resolve_program`]), held before `exec`
/// until [`Held::release`]. Dropped unreleased, or if memtrace dies first, the child exits
/// without running the command.
pub fn spawn_held(argv: &[String], path: &std::path::Path) -> anyhow::Result<Held> {
    let (program, _) = argv
        .split_first()
        .ok_or_else(|| Failure::Usage("empty command after `--`".into()))?;
    let cstring = |text: &[u8]| {
        CString::new(text).map_err(|_| Failure::Usage(format!("a NUL byte in `{program}`")))
    };
    let path_c = cstring(path.as_os_str().as_bytes())?;
    let args: Vec<CString> = argv
        .iter()
        .map(|arg| cstring(arg.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let (gate_read, gate) = pipe()?;
    let (exec_errors, errors_write) = pipe()?;
    // SAFETY: the child runs only async-signal-safe calls (read, signal, sigprocmask, execv,
    // write, _exit) on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error()).context("fork the command");
    }
    if pid == 0 {
        // SAFETY: as above; every pointer was built before the fork and stays valid.
        unsafe {
            // With the parent's the only write end left, its death is an end of file here.
            libc::close(gate.as_raw_fd());
            libc::close(exec_errors.as_raw_fd());
            let mut byte = 0u8;
            let read = loop {
                let read = libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1);
                if read >= 0 || *libc::__errno_location() != libc::EINTR {
                    break read;
                }
            };
            if read != 1 {
                libc::_exit(exit_code::RUNTIME as i32);
            }
            // Rust ignores SIGPIPE, and an ignored signal stays ignored across exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execv(path_c.as_ptr(), arg_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(errors_write.as_raw_fd(), (&raw const errno).cast(), 4);
            libc::_exit(exit_code::COMMAND_NOT_EXECUTABLE as i32);
        }
    }
    drop((gate_read, errors_write));
    let pid = pid as u32;
    let pidfd = PidFd::open(pid).context("open the command's pidfd")?;
    Ok(Held {
        pid,
        pidfd: Some(pidfd),
        command: program.clone(),
        gate: Some(gate),
        exec_errors: Some(exec_errors),
    })
}

impl Held {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the command run its `exec`; fails as a shell would if it cannot.
    pub fn release(mut self) -> anyhow::Result<Spawned> {
        let (Some(pidfd), Some(gate), Some(exec_errors)) =
            (self.pidfd.take(), self.gate.take(), self.exec_errors.take())
        else {
            anyhow::bail!("the command was released twice");
        };
        let mut gate = std::fs::File::from(gate);
        gate.write_all(&[1]).context("release the command")?;
        drop(gate);
        let mut errno = [0u8; 4];
        let read = std::fs::File::from(exec_errors)
            .read(&mut errno)
            .unwrap_or(0);
        let spawned = Spawned { pidfd };
        if read == 4 {
            let err = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
            let _ = spawned.reap();
            return Err(Failure::CommandFailed {
                command: std::mem::take(&mut self.command),
                reason: err.to_string(),
                code: exit_code::COMMAND_NOT_EXECUTABLE,
            }
            .into());
        }
        Ok(spawned)
    }
}

impl Drop for Held {
    /// Never released (memtrace failed first): the child must not run the command.
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            let _ = pidfd.signal(libc::SIGKILL);
            let _ = Spawned { pidfd }.reap();
        }
    }
}

/// The file `program` names, searched in `PATH` as a shell does when it has no slash.
pub fn resolve_program(program: &str) -> Result<PathBuf, Failure> {
    let not_found = || Failure::CommandFailed {
        command: program.to_owned(),
        reason: "not found".into(),
        code: exit_code::COMMAND_NOT_FOUND,
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match path.exists() {
            true => Ok(path),
            false => Err(not_found()),
        };
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(not_found)
}

/// A pipe whose ends close on `exec`.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid two-int buffer.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("create a pipe");
    }
    // SAFETY: the kernel just handed us both descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    /// Reaps the exited command. Call after `pidfd.exited()` resolved.
    pub fn reap(&self) -> io::Result<CommandExit> {
        let mut status = 0;
        // SAFETY: all-zero is a valid rusage; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child's pid and valid out-pointers.
        let rc = unsafe { libc::wait4(self.pid() as libc::pid_t, &mut status, 0, &mut usage) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CommandExit {
            code: exit_code_of(status),
            minor_faults: usage.ru_minflt as u64,
            major_faults: usage.ru_majflt as u64,
        })
    }
}

fn exit_code_of(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.saturating_add(libc::WTERMSIG(status) as u8)
    } else {
        exit_code::RUNTIME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_shell_conventions() {
        assert_eq!(exit_code_of(3 << 8), 3);
        assert_eq!(exit_code_of(libc::SIGKILL), 128 + 9);
    }
}
