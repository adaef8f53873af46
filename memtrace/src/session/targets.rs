//! What a session traces, and what it watches for exit: the whole system, processes by name,
//! explicit processes (held by pidfd), or a command it starts.

use std::future::pending;

use anyhow::Context as _;

use super::{End, spawn::Spawned};
use memtrace_common::COMM_LEN;

use crate::{
    bpf::targets::Filter, error::Failure, model::command::CommandOutcome, sys::pidfd::PidFd,
};

/// How long a spawned command gets to exit after memtrace forwarded it a signal.
pub const COMMAND_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every process.
    System,
    /// These running processes (deduplicated, sorted).
    Pids(Vec<u32>),
    /// Every process with this command name, including ones started later.
    Comm(String),
    /// A command memtrace starts, with its descendants.
    Command(Vec<String>),
}

impl Target {
    /// The target the flags name: a command, else processes by name, else explicit ones, else
    /// the whole system (the parser has already refused flags that exclude each other).
    pub fn from_flags(
        command: Vec<String>,
        comm: Option<String>,
        pids: Vec<u32>,
    ) -> Result<Target, Failure> {
        if !command.is_empty() {
            return Ok(Target::Command(command));
        }
        if let Some(comm) = comm {
            if comm.is_empty() || comm.len() >= COMM_LEN {
                return Err(Failure::Usage(format!(
                    "--comm `{comm}`: a command name has 1 to {} bytes (the kernel truncates longer ones)",
                    COMM_LEN - 1
                )));
            }
            return Ok(Target::Comm(comm));
        }
        if pids.is_empty() {
            return Ok(Target::System);
        }
        let mut pids = pids;
        pids.sort_unstable();
        pids.dedup();
        Ok(Target::Pids(pids))
    }

    /// How the kernel programs filter for it: `follow_pids` also follows what explicit
    /// processes fork (a command is always followed).
    pub fn filter(&self, follow_pids: bool) -> Filter {
        match self {
            Target::System => Filter::All,
            Target::Pids(_) => Filter::Targets {
                follow_forks: follow_pids,
            },
            Target::Command(_) => Filter::Targets { follow_forks: true },
            Target::Comm(name) => {
                let mut comm = [0; COMM_LEN];
                comm[..name.len()].copy_from_slice(name.as_bytes());
                Filter::Comm(comm)
            }
        }
    }

    /// The start record's `mode` and a description for people.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Target::System => ("system", "all processes".into()),
            Target::Pids(pids) => {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                ("pids", format!("PID {}", list.join(", ")))
            }
            Target::Comm(name) => ("comm", format!("processes named {name}")),
            Target::Command(argv) => (
                "command",
                format!("`{}` and its descendants", shell_words(argv)),
            ),
        }
    }
}

/// What a session watches for exit: its explicit target processes (held by pidfd) or the
/// command it spawned. With neither (system-wide, by name), targets never end the session.
#[derive(Default)]
pub struct Watched {
    pub pidfds: Vec<PidFd>,
    pub command: Option<Spawned>,
}

impl Watched {
    /// Opens every explicit target: it proves each pid exists (exit 4 if not), and holds on to
    /// *that* process (a pidfd, unlike a pid, cannot come to mean another process).
    pub fn open(target: &Target) -> Result<Watched, Failure> {
        let pids: &[u32] = match target {
            Target::Pids(pids) => pids,
            _ => &[],
        };
        let pidfds = pids
            .iter()
            .map(|&pid| PidFd::open(pid).map_err(|_| Failure::NoSuchProcess(pid)))
            .collect::<Result<_, _>>()?;
        Ok(Watched {
            pidfds,
            command: None,
        })
    }

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
    pub(super) async fn all_exited(&self) -> End {
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
    pub(super) async fn finish_command(&self, end: End) -> anyhow::Result<Option<CommandOutcome>> {
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

    #[test]
    fn flags_name_one_target() {
        let command = vec!["ls".to_owned()];
        assert_eq!(
            Target::from_flags(command.clone(), None, vec![]).unwrap(),
            Target::Command(command)
        );
        assert_eq!(
            Target::from_flags(vec![], None, vec![3, 1, 3]).unwrap(),
            Target::Pids(vec![1, 3])
        );
        assert_eq!(
            Target::from_flags(vec![], None, vec![]).unwrap(),
            Target::System
        );
        assert!(Target::from_flags(vec![], Some(String::new()), vec![]).is_err());
        assert!(Target::from_flags(vec![], Some("x".repeat(16)), vec![]).is_err());
        assert_eq!(
            Target::Comm("db".into()).filter(false),
            Filter::Comm(*b"db\0\0\0\0\0\0\0\0\0\0\0\0\0\0")
        );
        assert_eq!(
            Target::Pids(vec![1]).filter(true),
            Filter::Targets { follow_forks: true }
        );
    }

    #[test]
    fn targets_describe_themselves() {
        assert_eq!(Target::System.describe().0, "system");
        assert_eq!(
            Target::Pids(vec![1, 2]).describe(),
            ("pids", "PID 1, 2".to_owned())
        );
        let (mode, text) = Target::Command(vec!["make".into(), "-j 2".into()]).describe();
        assert_eq!(
            (mode, text.as_str()),
            ("command", "`make '-j 2'` and its descendants")
        );
    }
}
