//! The failures memtrace explains to its user, each with its own exit code. Library code returns
//! these (wrapped in `anyhow` with context at the edges); `main` finds one in the error chain and
//! exits with its code, or with [`exit_code::RUNTIME`] for anything unexpected.

use thiserror::Error;

/// Process exit codes, documented in `docs/exit-codes.md`.
pub mod exit_code {
    /// Tracing ran and ended normally.
    pub const OK: u8 = 0;
    /// An unexpected runtime failure (the message says what failed).
    pub const RUNTIME: u8 = 1;
    /// Bad command-line usage: an unknown flag, a bad value, flags that make no sense together.
    pub const USAGE: u8 = 2;
    /// Not privileged enough to load BPF programs and open perf events.
    pub const NOT_PRIVILEGED: u8 = 3;
    /// A requested target does not exist (no such process).
    pub const NO_SUCH_TARGET: u8 = 4;
    /// The kernel lacks something memtrace needs (a tracepoint, perf event, tracefs).
    pub const KERNEL_UNSUPPORTED: u8 = 5;
    /// A target cannot be traced as asked: `leaks --malloc` found no allocator to attach to.
    pub const TARGET_UNSUPPORTED: u8 = 6;
    /// `-- COMMAND` could not be executed (as in shells).
    pub const COMMAND_NOT_EXECUTABLE: u8 = 126;
    /// `-- COMMAND` was not found (as in shells).
    pub const COMMAND_NOT_FOUND: u8 = 127;
}

#[derive(Debug, Error)]
pub enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(
        "memtrace needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}): \
         run it with sudo"
    )]
    NotPrivileged { missing: String },
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("this kernel lacks {what}: {hint}")]
    KernelUnsupported { what: String, hint: String },
    /// The kernel refused to load a program: its verifier rejected it, or it uses something
    /// this kernel lacks. The verifier log's last lines are shown only with `-v`.
    #[error("the kernel's verifier rejected {program} ({reason}); run with -v to see its log")]
    VerifierRejected {
        program: String,
        reason: String,
        log_tail: String,
    },
    /// `leaks --malloc`: no allocator to put uprobes on (`pid` 0 for a command not started).
    #[error("cannot trace {}'s allocator: {reason}", match pid { 0 => "the command".to_owned(), pid => format!("pid {pid}") })]
    NoAllocator { pid: u32, reason: String },
    #[error("cannot run `{command}`: {reason}")]
    CommandFailed {
        command: String,
        reason: String,
        code: u8,
    },
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit_code::USAGE,
            Failure::NotPrivileged { .. } => exit_code::NOT_PRIVILEGED,
            Failure::NoSuchProcess(_) => exit_code::NO_SUCH_TARGET,
            Failure::KernelUnsupported { .. } | Failure::VerifierRejected { .. } => {
                exit_code::KERNEL_UNSUPPORTED
            }
            Failure::CommandFailed { code, .. } => *code,
            Failure::NoAllocator { .. } => exit_code::TARGET_UNSUPPORTED,
        }
    }

    /// More than fits on the one line: shown under `-v`.
    pub fn details(&self) -> Option<&str> {
        match self {
            Failure::VerifierRejected { log_tail, .. } if !log_tail.is_empty() => Some(log_tail),
            _ => None,
        }
    }
}

/// The [`Failure`] an error carries, whether it was returned as the error itself, as a cause, or
/// attached as context (`anyhow::Error::context(failure)`, which `chain()` alone cannot see into).
pub fn failure_of(err: &anyhow::Error) -> Option<&Failure> {
    err.downcast_ref::<Failure>().or_else(|| {
        err.chain()
            .find_map(|cause| cause.downcast_ref::<Failure>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_found_as_error_cause_or_context() {
        let direct = anyhow::Error::new(Failure::NoSuchProcess(7));
        assert_eq!(failure_of(&direct).map(Failure::exit_code), Some(4));
        let as_context = anyhow::Error::new(std::io::Error::other("EPERM"))
            .context(Failure::NotPrivileged {
                missing: "x".into(),
            })
            .context("attach");
        assert_eq!(failure_of(&as_context).map(Failure::exit_code), Some(3));
        let as_cause = anyhow::Error::new(Failure::Usage("bad".into())).context("parse");
        assert_eq!(failure_of(&as_cause).map(Failure::exit_code), Some(2));
        assert!(failure_of(&anyhow::anyhow!("other")).is_none());
    }
}
