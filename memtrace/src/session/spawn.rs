//! Running `-- COMMAND`: start it, wait for it without polling, and collect the kernel's own
//! account of it (`wait4`'s rusage) along with its exit status.
//!
//! The caller makes the command a traced target *at birth*: before spawning, it marks memtrace
//! itself as followed in the kernel, so the in-kernel fork hook registers the child inside
//! `fork()`, before it runs a single instruction. No window is missed, and nothing has to be
//! stopped and resumed.

use std::{io, process::Command};

use memtrace_common::targets::TargetFlags;

use crate::{
    bpf::targets::TargetTable,
    error::{Failure, exit_code},
    pidfd::PidFd,
};

/// A command memtrace started.
pub struct Spawned {
    pub pidfd: PidFd,
}

/// How the command ended, with the kernel's fault counters for it and its reaped descendants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandExit {
    /// The exit status, or 128 + the signal number if a signal killed it (as shells report).
    pub code: u8,
    pub minor_faults: u64,
    pub major_faults: u64,
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
