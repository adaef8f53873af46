//! How a tracing session ends, shared by the subcommands: what ends it (a signal, `--duration`,
//! the targets exiting), why it ended, and reaping a spawned command (forwarding a signal first).

use std::{future::pending, pin::Pin, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Sleep, sleep},
};

use crate::{
    error::Failure,
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
    pub async fn next(&mut self, watched: &[PidFd], command: Option<&Spawned>) -> End {
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
            end = all_exited(watched, command) => end,
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

/// Resolves when every explicit target, or the spawned command, has exited; never otherwise.
async fn all_exited(watched: &[PidFd], command: Option<&Spawned>) -> End {
    if let Some(command) = command {
        let _ = command.pidfd.exited().await;
        return End::CommandExited;
    }
    if watched.is_empty() {
        return pending().await;
    }
    for pidfd in watched {
        let _ = pidfd.exited().await;
    }
    End::TargetsExited
}

/// Reaps the spawned command; on a signal, forwards it first and gives it time to exit.
pub async fn finish_command(
    command: Option<&Spawned>,
    end: End,
) -> anyhow::Result<Option<CommandExit>> {
    let Some(command) = command else {
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
    Ok(Some(command.reap().context("reap the command")?))
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
