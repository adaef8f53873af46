//! Checking, before touching the kernel, that memtrace may load BPF programs and open
//! system-wide perf events, so that the user gets one clear line instead of an EPERM.

use crate::{error::Failure, procfs};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Succeeds with CAP_SYS_ADMIN, or with both CAP_BPF and CAP_PERFMON.
pub fn check(effective: u64) -> Result<(), Failure> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    Err(Failure::NotPrivileged {
        missing: missing.join(", "),
    })
}

pub fn require() -> Result<(), Failure> {
    // If the set cannot be read, let the kernel be the judge at load time.
    procfs::effective_capabilities().map_or(Ok(()), check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_bpf_plus_perfmon_suffice() {
        assert!(check(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
    }

    #[test]
    fn missing_capabilities_are_named() {
        let err = check(1 << CAP_BPF).unwrap_err().to_string();
        assert!(
            err.contains("CAP_PERFMON") && !err.contains("CAP_BPF,"),
            "{err}"
        );
        let err = check(0).unwrap_err().to_string();
        assert!(err.contains("CAP_BPF, CAP_PERFMON"), "{err}");
    }
}
