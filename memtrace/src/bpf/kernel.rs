//! What the running kernel's BPF accepts, where kernels differ and a program must be shaped to
//! fit: asked of the kernel itself with tiny probes (never guessed from its version, which
//! distributions' backports make unreliable), once per process.

use std::{ffi::CStr, io, os::fd::FromRawFd as _, os::fd::OwnedFd, sync::OnceLock};

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};

/// The running kernel's release (`uname -r`), for messages that say what it lacks.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether programs of `program_type` may call `helper` here.
pub fn has_helper(program_type: ProgramType, helper: BpfHelper) -> bool {
    is_helper_supported(program_type, helper).unwrap_or(false)
}

/// Whether tracing programs may use only preallocated hash maps here, as before Linux 6.1: the
/// verifier refuses others to programs on perf events ("perf_event programs can only use
/// preallocated hash map") and, for the other tracing programs, loads them with a kernel
/// warning (`WARN_ONCE`: a splat in the log, a tainted kernel, a panic under panic_on_warn).
/// Tables allocated as they fill are then made whole at load. Asked with a perf_event program,
/// which the same 6.1 change relaxed with the others.
pub fn hash_maps_preallocated() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| match probe_perf_event_lookup() {
        Ok(accepted) => !accepted,
        Err(err) => {
            log::debug!("probing hash maps in perf_event programs failed ({err}): preallocating");
            true
        }
    })
}

/// `enum bpf_cmd`, `enum bpf_map_type`, `enum bpf_prog_type` values (uapi, stable).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_PERF_EVENT: u32 = 7;
const BPF_F_NO_PREALLOC: u32 = 1;

/// Loads a perf_event program that looks up a hash map allocated as it fills: whether the
/// kernel accepts it.
fn probe_perf_event_lookup() -> io::Result<bool> {
    // SAFETY: BPF_MAP_CREATE with the leading fields of `union bpf_attr` set and the rest zero.
    let map = unsafe {
        let mut attr = [0u32; 32];
        attr[..5].copy_from_slice(&[BPF_MAP_TYPE_HASH, 4, 8, 1, BPF_F_NO_PREALLOC]);
        bpf(BPF_MAP_CREATE, attr.as_mut_ptr().cast())?
    };
    let map_fd = {
        use std::os::fd::AsRawFd as _;
        map.as_raw_fd()
    };
    // r1 = map; *(u32 *)(r10 - 8) = 0; r2 = r10 - 8; call bpf_map_lookup_elem; r0 = 0; exit
    let instructions: [u64; 8] = [
        instruction(0x18, 1, 1, 0, map_fd),
        0,
        instruction(0x62, 10, 0, -8, 0),
        instruction(0xbf, 2, 10, 0, 0),
        instruction(0x07, 2, 0, 0, -8),
        instruction(0x85, 0, 0, 0, 1),
        instruction(0xb7, 0, 0, 0, 0),
        instruction(0x95, 0, 0, 0, 0),
    ];
    let license = c"GPL";
    let mut log = [0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_PROG_TYPE_PERF_EVENT) | ((instructions.len() as u64) << 32);
    attr[1] = instructions.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    // SAFETY: BPF_PROG_LOAD with pointers to the instructions, licence and log buffer above,
    // all alive for the call.
    match unsafe { bpf(BPF_PROG_LOAD, attr.as_mut_ptr().cast()) } {
        Ok(_) => Ok(true),
        Err(err) => {
            let said = CStr::from_bytes_until_nul(&log)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if said.contains("preallocated") {
                Ok(false)
            } else {
                Err(io::Error::new(
                    err.kind(),
                    format!("{err}: {}", said.trim()),
                ))
            }
        }
    }
}

/// One BPF instruction: opcode, registers, offset, immediate.
const fn instruction(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst & 0xf) | ((src & 0xf) << 4)) as u64) << 8
        | ((off as u16) as u64) << 16
        | ((imm as u32) as u64) << 32
}

/// The `bpf` syscall, returning the descriptor it made.
///
/// # Safety
/// `attr` points to a `union bpf_attr` of 128 bytes valid for `cmd`.
unsafe fn bpf(cmd: libc::c_long, attr: *mut libc::c_void) -> io::Result<OwnedFd> {
    // SAFETY: as the caller guarantees.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, 128u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // r2 += -8: BPF_ALU64 | BPF_ADD | BPF_K, dst r2.
        assert_eq!(instruction(0x07, 2, 0, 0, -8), 0xffff_fff8_0000_0207);
        // *(u32 *)(r10 - 8) = 0
        assert_eq!(instruction(0x62, 10, 0, -8, 0), 0x0000_0000_fff8_0a62);
        // ld_imm64 r1 with a map descriptor: src 1.
        assert_eq!(instruction(0x18, 1, 1, 0, 5), 0x0000_0005_0000_1118);
    }
}
