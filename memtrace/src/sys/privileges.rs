//! Checking, before touching the kernel, that memtrace may load BPF programs and open
//! system-wide perf events, so that the user gets one clear line instead of an EPERM.

use crate::{error::Failure, sys::procfs};

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

/// Gives up every capability for good, once everything privileged has been done: the programs
/// are loaded and attached, and what memtrace still reads (its maps through file descriptors it
/// holds; /proc and cgroupfs files, which are world-readable) needs none. Also sets
/// no_new_privs, so nothing it could be made to run regains them.
///
/// Kernels that forbid every `bpf()` command to the unprivileged (before 6.x, with
/// `kernel.unprivileged_bpf_disabled` set, as distributions do) refuse even reads of maps
/// through held descriptors: `reads_maps` tells, tried with CAP_BPF out of the effective set
/// but still permitted, and where it fails CAP_BPF (alone) is kept. Returns whether it was.
pub fn drop_all(reads_maps: impl Fn() -> bool) -> std::io::Result<bool> {
    // SAFETY: prctl with these constant arguments has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The bounding set first, while CAP_SETPCAP is still held; unknown capabilities fail (EINVAL)
    // and end the loop.
    for cap in 0..64 {
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break;
        }
    }
    let bpf = 1u64 << CAP_BPF;
    set_capabilities(0, bpf)?;
    if reads_maps() {
        set_capabilities(0, 0)?;
        return Ok(false);
    }
    set_capabilities(bpf, bpf)?;
    Ok(true)
}

/// Sets this thread's effective and permitted capabilities (none inheritable).
fn set_capabilities(effective: u64, permitted: u64) -> std::io::Result<()> {
    // Version 3 of the capability ABI: a header and two (64-bit split) data words.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let half = |set: u64, high: bool| if high { (set >> 32) as u32 } else { set as u32 };
    let data = [false, true].map(|high| Data {
        effective: half(effective, high),
        permitted: half(permitted, high),
        inheritable: 0,
    });
    // SAFETY: capset reads a valid header and two data structs that outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
