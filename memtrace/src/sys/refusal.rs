//! What the kernel's refusals mean for the user: a missing privilege (exit 3), a program the
//! verifier rejected (exit 5), or anything else, reported as it is. Shared by every call that
//! asks the kernel for programs, maps or perf events.

use std::{error::Error as StdError, io};

use crate::error::Failure;

/// Wraps a kernel error with `action` as context, turning the refusals a user can act on into a
/// [`Failure`]: a missing privilege (exit 3) or a program the verifier rejected (exit 5). The
/// verifier also answers EACCES, so EACCES alone never means "needs root".
pub fn kernel_refusal<E>(err: E, action: &str) -> anyhow::Error
where
    E: StdError + Send + Sync + 'static,
{
    let privileged = super::procfs::effective_capabilities()
        .is_ok_and(|caps| super::privileges::check(caps).is_ok());
    let failure = match classify(&err, privileged) {
        Refusal::NotPrivileged => Failure::NotPrivileged {
            missing: format!("the kernel refused to {action}"),
        },
        Refusal::Rejected { errno, log_tail } => Failure::VerifierRejected {
            program: action.strip_prefix("load ").unwrap_or(action).to_owned(),
            reason: io::Error::from_raw_os_error(errno).to_string(),
            log_tail,
        },
        Refusal::Other => return anyhow::Error::new(err).context(action.to_owned()),
    };
    anyhow::Error::new(err).context(failure)
}

/// What a kernel error means for the user.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Not privileged enough.
    NotPrivileged,
    /// `BPF_PROG_LOAD` failed for another reason than privilege: the verifier rejected the
    /// program (its log's last lines, when it wrote one) or the kernel lacks what it uses.
    Rejected { errno: i32, log_tail: String },
    /// Anything else: reported as it is, with its context.
    Other,
}

/// Lines of the verifier's log kept for `-v`: its verdict is at the end.
const VERIFIER_LOG_LINES: usize = 20;

/// Classifies a kernel error. `privileged`: whether memtrace holds the capabilities it needs.
///
/// - `BPF_PROG_LOAD` (aya's `ProgramError::LoadError`) fails with EPERM *before* the verifier
///   runs when the caller lacks CAP_BPF; any other failure (EACCES or EINVAL from the verifier,
///   E2BIG, ...) or any failure with a verifier log is a rejection of the program.
/// - `perf_event_open` answers EACCES when `perf_event_paranoid` forbids an unprivileged caller;
///   privileged, EACCES there comes from a security policy and is reported as it is.
/// - EPERM from any other call means a missing privilege.
fn classify(err: &(dyn StdError + 'static), privileged: bool) -> Refusal {
    use aya::{programs::ProgramError, sys::SyscallError};

    let mut current = Some(err);
    while let Some(err) = current {
        // `ProgramError::SyscallError` is transparent: its `source()` skips the SyscallError,
        // so it is matched here rather than found further down the chain.
        let syscall = match err.downcast_ref::<ProgramError>() {
            Some(ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let log = verifier_log.to_string();
                let errno = io_error.raw_os_error().unwrap_or(0);
                if errno == libc::EPERM && log.trim().is_empty() {
                    return Refusal::NotPrivileged;
                }
                return Refusal::Rejected {
                    errno,
                    log_tail: last_lines(&log, VERIFIER_LOG_LINES),
                };
            }
            Some(ProgramError::SyscallError(syscall)) => Some(syscall),
            _ => err.downcast_ref::<SyscallError>(),
        };
        if let Some(syscall) = syscall
            && syscall.call.starts_with("perf_event_open")
            && syscall.io_error.raw_os_error() == Some(libc::EACCES)
            && !privileged
        {
            return Refusal::NotPrivileged;
        }
        current = err.source();
    }
    if os_error(err) == Some(libc::EPERM) {
        Refusal::NotPrivileged
    } else {
        Refusal::Other
    }
}

/// The last `n` non-blank lines of a text.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The OS error code at the root of an error chain, if any.
fn os_error(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use aya::{programs::ProgramError, sys::SyscallError};
    use aya_obj::VerifierLog;

    use super::*;

    fn load_error(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(log.to_owned()),
        }
    }

    fn syscall_error(call: &'static str, errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    const LOG: &str = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (79) r2 = *(u64 *)(r1 +0)\n\n\
                       invalid bpf_context access off=0 size=8\n\
                       processed 1 insns (limit 1000000) max_states_per_insn 0\n";

    #[test]
    fn a_verifier_rejection_is_not_a_missing_privilege() {
        // The verifier answers EACCES: exit 5 with the log's end, never "needs root".
        let refusal = classify(&load_error(libc::EACCES, LOG), true);
        let Refusal::Rejected { errno, log_tail } = refusal else {
            panic!("{refusal:?}");
        };
        assert_eq!(errno, libc::EACCES);
        assert!(log_tail.ends_with("max_states_per_insn 0"), "{log_tail}");
        assert!(log_tail.contains("invalid bpf_context access"));
        // Even unprivileged, a log means the verifier ran.
        assert!(matches!(
            classify(&load_error(libc::EACCES, LOG), false),
            Refusal::Rejected { .. }
        ));
        // Other load failures without a log (E2BIG, EINVAL) are rejections too.
        assert_eq!(
            classify(&load_error(libc::EINVAL, ""), true),
            Refusal::Rejected {
                errno: libc::EINVAL,
                log_tail: String::new()
            }
        );
    }

    #[test]
    fn eperm_at_load_means_not_privileged() {
        assert_eq!(
            classify(&load_error(libc::EPERM, ""), false),
            Refusal::NotPrivileged
        );
        assert_eq!(
            classify(&syscall_error("bpf_map_create", libc::EPERM), false),
            Refusal::NotPrivileged
        );
        let wrapped = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM)).context("x");
        assert_eq!(classify(wrapped.as_ref(), true), Refusal::NotPrivileged);
    }

    #[test]
    fn eacces_from_perf_event_open_depends_on_privilege() {
        let err = syscall_error("perf_event_open", libc::EACCES);
        assert_eq!(classify(&err, false), Refusal::NotPrivileged);
        assert_eq!(classify(&err, true), Refusal::Other);
        // EACCES from anything else is never a privilege problem.
        assert_eq!(
            classify(&syscall_error("bpf_link_create", libc::EACCES), false),
            Refusal::Other
        );
        assert_eq!(
            classify(&syscall_error("perf_event_open", libc::ENOENT), false),
            Refusal::Other
        );
    }

    #[test]
    fn a_rejection_is_one_line_with_exit_5_and_the_log_under_v() {
        let err = kernel_refusal(load_error(libc::EACCES, LOG), "load mt_fault_minor");
        let failure = crate::error::failure_of(&err).expect("a Failure");
        assert_eq!(
            failure.exit_code(),
            crate::error::exit_code::KERNEL_UNSUPPORTED
        );
        let line = failure.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("verifier rejected mt_fault_minor") && !line.contains("root"),
            "{line}"
        );
        assert!(
            failure
                .details()
                .is_some_and(|d| d.contains("invalid bpf_context"))
        );
    }

    #[test]
    fn verifier_log_keeps_its_last_lines() {
        let log: String = (1..=50).map(|i| format!("line {i}\n\n")).collect();
        let tail = last_lines(&log, 3);
        assert_eq!(tail, "line 48\nline 49\nline 50");
        assert_eq!(last_lines("", 3), "");
    }
}
