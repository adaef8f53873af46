//! What ends a session from outside its own work: SIGINT (Ctrl-C), SIGTERM, the end of
//! `--duration`, its targets exiting; and why it ended, as the summary says.

use std::{future::pending, pin::Pin, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Sleep, sleep},
};

use super::targets::Watched;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Signal(i32),
    Duration,
    TargetsExited,
    CommandExited,
    OutputClosed,
    /// The job reached what it was asked for (`oom --count`).
    Count,
}

impl End {
    /// The summary's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            End::Signal(_) => "signal",
            End::Duration => "duration",
            End::TargetsExited => "targets_exited",
            End::CommandExited => "command_exited",
            End::OutputClosed => "output_closed",
            End::Count => "count",
        }
    }
}

/// Signals, caught from when the session opens (a Ctrl-C while the programs load, or right after
/// the start record, still ends it with a summary), and the deadline, from when it runs.
pub struct Endings {
    sigint: Signal,
    sigterm: Signal,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Endings {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn catch_signals() -> anyhow::Result<Endings> {
        Ok(Endings {
            sigint: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            deadline: None,
        })
    }

    /// `duration` runs from now.
    pub fn start_deadline(&mut self, duration: Option<Duration>) {
        self.deadline = duration.map(|duration| Box::pin(sleep(duration)));
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
