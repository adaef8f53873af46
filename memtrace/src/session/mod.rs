//! The session every command runs in. One place opens the report and checks privileges and
//! targets, starts `-- COMMAND` as a target from birth, runs the command's job until something
//! ends the session (a signal, `--duration`, the targets exiting, the reader going away, the job
//! itself), reaps the command, has the job write its summary, releases the kernel side, and
//! returns the exit status. Each command supplies only its [`Job`].

pub mod endings;
pub mod spawn;
pub mod targets;

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::Context as _;
pub use endings::End;
use endings::Endings;
pub use targets::{Target, Watched};

use crate::{
    bpf::targets::TargetTable,
    error::exit_code,
    model::command::CommandOutcome,
    output::{self, Format, Sink},
    sys::privileges,
};

/// What a command does inside a session; the session does the rest.
pub trait Job {
    /// What the job waits for between two pieces of work (a tick, kernel records, ...).
    type Work;

    /// Waits for the next piece of work. Cancel-safe: the session drops it unfinished when
    /// something else ends the session.
    fn next(&mut self) -> impl Future<Output = anyhow::Result<Self::Work>>;

    /// Does one piece of work, writing what it finds; `Some(end)` ends the session.
    fn work(&mut self, work: Self::Work, sink: &mut Sink) -> anyhow::Result<Option<End>>;

    /// After the end, the command reaped: the last reading and the summary.
    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()>;

    /// Detaches every program and releases the kernel side (`bpf::tracepoints`).
    fn release(self);
}

/// How the session ended, for the summary.
pub struct Ending {
    pub end: End,
    /// The spawned command's pid and exit, when it ran to its end.
    pub command: Option<CommandOutcome>,
    /// How long the session ran (from the start record).
    pub duration: Duration,
}

/// What every command's flags say of its session.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub format: Format,
    /// `-o FILE`, else stdout.
    pub output: Option<PathBuf>,
    /// `--duration`, else until something else ends it.
    pub duration: Option<Duration>,
}

pub struct Session {
    sink: Sink,
    watched: Watched,
    endings: Endings,
    duration: Option<Duration>,
}

impl Session {
    /// Everything a command checks before touching the kernel, in this order: the report's
    /// destination (a usage error, exit 2, is found without privileges), privileges (exit 3),
    /// the explicit target processes (exit 4).
    pub fn open(options: &Options) -> anyhow::Result<Session> {
        let sink = Sink::open(options.output.as_deref(), options.format)?;
        privileges::require()?;
        let watched = Watched::open(&options.target)?;
        Ok(Session {
            sink,
            watched,
            endings: Endings::catch_signals()?,
            duration: options.duration,
        })
    }

    pub fn watched(&self) -> &Watched {
        &self.watched
    }

    pub fn sink(&mut self) -> &mut Sink {
        &mut self.sink
    }

    /// The start record's account of the targets: `(mode, description)`, and their pids.
    pub fn targets(&self, (mode, description): (&'static str, String)) -> output::Targets {
        output::Targets {
            mode,
            description,
            pids: self.watched.pids(),
        }
    }

    /// Starts `-- COMMAND` as a counted, followed target from birth (see [`spawn`]).
    pub fn spawn(&mut self, argv: &[String], table: &mut dyn TargetTable) -> anyhow::Result<()> {
        self.watched.command = Some(spawn::spawn_as_target(table, argv)?);
        Ok(())
    }

    /// Watches a command started by the caller (`spawn::spawn_held`) as the session's own.
    pub fn adopt(&mut self, command: spawn::Spawned) {
        self.watched.command = Some(command);
    }

    /// Runs `job` until an ending, then finishes as the module says; returns memtrace's exit
    /// status: the command's, when it ran one to its end, else success.
    pub async fn run(mut self, mut job: impl Job) -> anyhow::Result<u8> {
        self.sink.flush().context("write the report")?;
        let started = std::time::Instant::now();
        let mut endings = self.endings;
        endings.start_deadline(self.duration);
        let end = loop {
            tokio::select! {
                work = job.next() => match job.work(work?, &mut self.sink) {
                    Ok(None) => {}
                    Ok(Some(end)) => break end,
                    Err(err) if output::is_closed(&err) => break End::OutputClosed,
                    Err(err) => return Err(err),
                },
                end = endings.next(&self.watched) => break end,
            }
        };
        let command = self.watched.finish_command(end).await?;
        let ending = Ending {
            end,
            command,
            duration: started.elapsed(),
        };
        let finished = job
            .finish(&ending, &mut self.sink)
            .and_then(|()| Ok(self.sink.flush()?));
        job.release();
        match finished {
            Err(err) if !output::is_closed(&err) => Err(err.context("write the summary")),
            _ => Ok(command.map_or(exit_code::OK, |(_, exit)| exit.code)),
        }
    }
}
