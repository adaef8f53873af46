//! The allocation syscalls `memtrace trace` knows: their names, this architecture's numbers, how
//! the kernel side classifies them, and one completed call ([`Call`]); `output::trace` renders
//! calls.

use memtrace_common::syscalls::{MAX_ARGS, SyscallClass, is_error};

use crate::error::Failure;

/// One traceable syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Syscall {
    Brk,
    Mmap,
    Munmap,
    Mremap,
    Mprotect,
    Madvise,
    Mlock,
    Munlock,
    Mlockall,
    Munlockall,
    Msync,
    Shmat,
    Shmdt,
}

impl Syscall {
    pub const ALL: [Syscall; 13] = [
        Syscall::Brk,
        Syscall::Mmap,
        Syscall::Munmap,
        Syscall::Mremap,
        Syscall::Mprotect,
        Syscall::Madvise,
        Syscall::Mlock,
        Syscall::Munlock,
        Syscall::Mlockall,
        Syscall::Munlockall,
        Syscall::Msync,
        Syscall::Shmat,
        Syscall::Shmdt,
    ];

    /// Traced when `-e` is not given.
    pub const DEFAULT: [Syscall; 6] = [
        Syscall::Brk,
        Syscall::Mmap,
        Syscall::Munmap,
        Syscall::Mremap,
        Syscall::Mprotect,
        Syscall::Madvise,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Syscall::Brk => "brk",
            Syscall::Mmap => "mmap",
            Syscall::Munmap => "munmap",
            Syscall::Mremap => "mremap",
            Syscall::Mprotect => "mprotect",
            Syscall::Madvise => "madvise",
            Syscall::Mlock => "mlock",
            Syscall::Munlock => "munlock",
            Syscall::Mlockall => "mlockall",
            Syscall::Munlockall => "munlockall",
            Syscall::Msync => "msync",
            Syscall::Shmat => "shmat",
            Syscall::Shmdt => "shmdt",
        }
    }

    /// This architecture's syscall number.
    pub fn nr(self) -> u32 {
        let nr = match self {
            Syscall::Brk => libc::SYS_brk,
            Syscall::Mmap => libc::SYS_mmap,
            Syscall::Munmap => libc::SYS_munmap,
            Syscall::Mremap => libc::SYS_mremap,
            Syscall::Mprotect => libc::SYS_mprotect,
            Syscall::Madvise => libc::SYS_madvise,
            Syscall::Mlock => libc::SYS_mlock,
            Syscall::Munlock => libc::SYS_munlock,
            Syscall::Mlockall => libc::SYS_mlockall,
            Syscall::Munlockall => libc::SYS_munlockall,
            Syscall::Msync => libc::SYS_msync,
            Syscall::Shmat => libc::SYS_shmat,
            Syscall::Shmdt => libc::SYS_shmdt,
        };
        nr as u32
    }

    pub fn from_nr(nr: u32) -> Option<Syscall> {
        Syscall::ALL.into_iter().find(|s| s.nr() == nr)
    }

    pub fn from_name(name: &str) -> Option<Syscall> {
        Syscall::ALL.into_iter().find(|s| s.name() == name)
    }

    /// How the kernel side sizes and counts it.
    pub const fn class(self) -> SyscallClass {
        match self {
            Syscall::Brk => SyscallClass::Brk,
            Syscall::Mmap => SyscallClass::Mmap,
            Syscall::Munmap => SyscallClass::Munmap,
            Syscall::Mremap => SyscallClass::Mremap,
            Syscall::Mprotect
            | Syscall::Madvise
            | Syscall::Mlock
            | Syscall::Munlock
            | Syscall::Msync => SyscallClass::Sized,
            Syscall::Mlockall | Syscall::Munlockall | Syscall::Shmat | Syscall::Shmdt => {
                SyscallClass::Other
            }
        }
    }

    /// The argument names, as in the kernel's tracepoint format (and the JSON `args` fields).
    pub const fn arg_names(self) -> &'static [&'static str] {
        match self {
            Syscall::Brk => &["brk"],
            Syscall::Mmap => &["addr", "len", "prot", "flags", "fd", "off"],
            Syscall::Munmap => &["addr", "len"],
            Syscall::Mremap => &["addr", "old_len", "new_len", "flags", "new_addr"],
            Syscall::Mprotect => &["start", "len", "prot"],
            Syscall::Madvise => &["start", "len_in", "behavior"],
            Syscall::Mlock | Syscall::Munlock => &["start", "len"],
            Syscall::Mlockall => &["flags"],
            Syscall::Munlockall => &[],
            Syscall::Msync => &["start", "len", "flags"],
            Syscall::Shmat => &["shmid", "shmaddr", "shmflg"],
            Syscall::Shmdt => &["shmaddr"],
        }
    }

    /// Which argument is a file descriptor (named like `strace -y` does), if any.
    pub const fn fd_arg(self) -> Option<usize> {
        match self {
            Syscall::Mmap => Some(4),
            _ => None,
        }
    }

    /// Whether the return value is an address (rendered in hex).
    pub const fn returns_address(self) -> bool {
        matches!(
            self,
            Syscall::Brk | Syscall::Mmap | Syscall::Mremap | Syscall::Shmat
        )
    }
}

/// One completed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub syscall: Syscall,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// CLOCK_MONOTONIC nanoseconds at entry.
    pub start_ns: u64,
    pub latency_ns: u64,
    pub args: [u64; MAX_ARGS],
    /// The raw return value (`-errno` on failure).
    pub ret: i64,
    /// For brk: the break before the call, when known.
    pub prev_brk: Option<u64>,
    /// What the file descriptor argument named, when memtrace could still read it.
    pub fd_path: Option<FdPath>,
    /// How the kernel identified the call's user stack (`trace --stack`).
    pub stack: memtrace_common::stacks::StackRef,
}

/// What a file descriptor named, read from `/proc` after the call (see [`crate::enrich::fds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdPath {
    /// The link's text verbatim, as the kernel gives it: `/usr/lib/libc.so.6`, `pipe:[1234]`,
    /// `/tmp/x (deleted)`. Bytes, as a path need not be UTF-8.
    pub link: Vec<u8>,
    /// The kernel appended ` (deleted)`: the file was unlinked (told apart, as strace does,
    /// from a file whose name really ends so).
    pub deleted: bool,
}

impl FdPath {
    /// The path without the kernel's ` (deleted)` suffix when the file was unlinked.
    pub fn path(&self) -> &[u8] {
        match self.link.strip_suffix(DELETED) {
            Some(path) if self.deleted => path,
            _ => &self.link,
        }
    }
}

/// What the kernel appends to the link of an unlinked file.
pub const DELETED: &[u8] = b" (deleted)";

impl Call {
    /// The file descriptor argument, if the call has one and it is not `-1` (anonymous).
    pub fn fd(&self) -> Option<i32> {
        let fd = self.args[self.syscall.fd_arg()?] as i32;
        (fd >= 0).then_some(fd)
    }

    /// The errno, if the call failed.
    pub fn errno(&self) -> Option<i32> {
        is_error(self.ret).then(|| (-self.ret) as i32)
    }

    /// The bytes the call is about, as `--min-size` measures them: its length argument, the
    /// larger of mremap's two lengths, or how far brk moved the break.
    pub fn bytes(&self) -> u64 {
        memtrace_common::syscalls::bytes_about(
            self.syscall.class() as u32,
            self.args[1],
            self.args[2],
            self.brk_growth().unwrap_or(0),
        )
    }

    /// For brk: how far the break moved, when the previous one is known and the call asked to
    /// move it (`brk(NULL)` only asks where it is).
    pub fn brk_growth(&self) -> Option<i64> {
        if self.syscall != Syscall::Brk || self.args[0] == 0 {
            return None;
        }
        let prev = self.prev_brk?;
        Some((self.ret as u64).wrapping_sub(prev) as i64)
    }
}

/// Parses `-e brk,mmap,...`; an unknown name is a usage error listing the valid ones.
pub fn parse_list(lists: &[String]) -> Result<Vec<Syscall>, Failure> {
    if lists.is_empty() {
        return Ok(Syscall::DEFAULT.to_vec());
    }
    let mut set = Vec::new();
    for name in lists.iter().flat_map(|list| list.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let syscall = Syscall::from_name(name).ok_or_else(|| {
            let valid: Vec<&str> = Syscall::ALL.iter().map(|s| s.name()).collect();
            Failure::Usage(format!(
                "-e: unknown syscall `{name}`; valid: {}",
                valid.join(", ")
            ))
        })?;
        if !set.contains(&syscall) {
            set.push(syscall);
        }
    }
    if set.is_empty() {
        return Err(Failure::Usage("-e: no syscall named".into()));
    }
    set.sort_unstable();
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        for syscall in Syscall::ALL {
            assert_eq!(Syscall::from_name(syscall.name()), Some(syscall));
            assert_eq!(Syscall::from_nr(syscall.nr()), Some(syscall));
        }
    }

    #[test]
    fn lists_default_narrow_and_extend() {
        assert_eq!(parse_list(&[]).unwrap(), Syscall::DEFAULT.to_vec());
        assert_eq!(
            parse_list(&["mmap,munmap".into(), "mmap".into()]).unwrap(),
            vec![Syscall::Mmap, Syscall::Munmap]
        );
        assert_eq!(parse_list(&["mlock".into()]).unwrap(), vec![Syscall::Mlock]);
        let err = parse_list(&["mmap,open".into()]).unwrap_err().to_string();
        assert!(err.contains("`open`") && err.contains("shmdt"), "{err}");
        assert!(parse_list(&[",".into()]).is_err());
    }
}
