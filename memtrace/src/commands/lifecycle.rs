//! How a tracing session ends, shared by the subcommands: the processes it watches, what ends
//! the session (a signal, `--duration`, the targets exiting), why it ended, and reaping a spawned
//! command (forwarding a signal first).

use std::{future::pending, pin::Pin, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Sleep, sleep},
};

use crate::{
    error::{Failure, exit_code},
    pidfd::PidFd,
    spawn::{CommandExit, Spawned},
};

/// How long a spawned command gets to exit after memtrace forwarded it a signal.
pub const COMMAND_GRACE: Duration = Duration::from_secs(2);

/// Why tracing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Signal(i32),
    Duration,
    TargetsExited,
    CommandExited,
    OutputClosed,
}

impl End {
    pub fn reason(self) -> &'static str {
        match self {
            End::Signal(_) => "signal",
            End::Duration => "duration",
            End::TargetsExited => "targets_exited",
            End::CommandExited => "command_exited",
            End::OutputClosed => "output_closed",
        }
    }
}

/// What ends a session from outside its own work: SIGINT (Ctrl-C), SIGTERM, the end of
/// `--duration`, and its targets exiting.
pub struct Endings {
    sigint: Signal,
    sigterm: Signal,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Endings {
    /// Catches SIGINT and SIGTERM from now on; `duration` runs from now too.
    pub fn install(duration: Option<Duration>) -> anyhow::Result<Endings> {
        Ok(Endings {
            sigint: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            deadline: duration.map(|duration| Box::pin(sleep(duration))),
        })
    }

    /// The first ending, when it comes: never, for a session with no duration and no target
    /// that can exit, but a signal. Safe to drop unfinished (e.g. in `select!`) and call again.
    pub async fn next(&mut self, watched: &Watched) -> End {
        let deadline = async {
            match self.deadline.as_mut() {
                Some(deadline) => deadline.await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = self.sigint.recv() => End::Signal(libc::SIGINT),
            _ = self.sigterm.recv() => End::Signal(libc::SIGTERM),
            () = deadline => End::Duration,
            end = watched.all_exited() => end,
        }
    }
}

/// Opens every explicit target: it proves each pid exists, and holds on to *that* process
/// (a pidfd, unlike a pid, cannot come to mean another process).
pub fn watch(pids: &[u32]) -> Result<Vec<PidFd>, Failure> {
    pids.iter()
        .map(|&pid| PidFd::open(pid).map_err(|_| Failure::NoSuchProcess(pid)))
        .collect()
}

/// A command line as a shell user would type it: words with spaces or quotes are quoted.
pub fn shell_words(argv: &[String]) -> String {
    let quote = |word: &String| {
        if word.is_empty()
            || word.contains(|c: char| c.is_whitespace() || "'\"\\$`&|;<>()*?".contains(c))
        {
            format!("'{}'", word.replace('\'', r"'\''"))
        } else {
            word.clone()
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// What a session watches for exit: its explicit target processes (held by pidfd) or the
/// command it spawned. With neither (system-wide, by name), targets never end the session.
#[derive(Default)]
pub struct Watched {
    pub pidfds: Vec<PidFd>,
    pub command: Option<Spawned>,
}

/// How the spawned command ended: its pid and exit.
pub type CommandOutcome = (u32, CommandExit);

impl Watched {
    /// Every target's pid, as the start record lists them.
    pub fn pids(&self) -> Vec<u32> {
        self.pidfds
            .iter()
            .map(PidFd::pid)
            .chain(self.command.as_ref().map(Spawned::pid))
            .collect()
    }

    /// Resolves when every explicit target, or the spawned command, has exited; never
    /// otherwise.
    async fn all_exited(&self) -> End {
        if let Some(command) = &self.command {
            let _ = command.pidfd.exited().await;
            return End::CommandExited;
        }
        if self.pidfds.is_empty() {
            return pending().await;
        }
        for pidfd in &self.pidfds {
            let _ = pidfd.exited().await;
        }
        End::TargetsExited
    }

    /// Reaps the spawned command; on a signal, forwards it first and gives it time to exit.
    /// `None` without a command, or if it is left running.
    pub async fn finish_command(&self, end: End) -> anyhow::Result<Option<CommandOutcome>> {
        let Some(command) = &self.command else {
            return Ok(None);
        };
        if let End::Signal(signal) = end {
            let _ = command.pidfd.signal(signal);
            if tokio::time::timeout(COMMAND_GRACE, command.pidfd.exited())
                .await
                .is_err()
            {
                log::warn!("command (pid {}) still running; leaving it", command.pid());
                return Ok(None);
            }
        } else if end != End::CommandExited {
            return Ok(None);
        }
        let exit = command.reap().context("reap the command")?;
        Ok(Some((command.pid(), exit)))
    }
}

/// memtrace's exit status: the command's, when it ran one to its end, else success.
pub fn exit_status(command: Option<CommandOutcome>) -> u8 {
    command.map_or(exit_code::OK, |(_, exit)| exit.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_shown_quoted() {
        let argv: Vec<String> = ["sh", "-c", "true & wait", "it's"]
            .map(String::from)
            .to_vec();
        assert_eq!(shell_words(&argv), r"sh -c 'true & wait' 'it'\''s'");
    }
}
