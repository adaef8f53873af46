//! Symbolic names for the flag and enum arguments of the allocation syscalls, and for errno
//! values, spelled as strace spells them so the two read alike.

/// `(bit, name)` tables, in ascending bit order (strace's order).
type Bits = &'static [(u64, &'static str)];

const PROT: Bits = &[
    (0x1, "PROT_READ"),
    (0x2, "PROT_WRITE"),
    (0x4, "PROT_EXEC"),
    (0x8, "PROT_SEM"),
    (0x0100_0000, "PROT_GROWSDOWN"),
    (0x0200_0000, "PROT_GROWSUP"),
];

const MAP_TYPE_MASK: u64 = 0xf;

const MAP_TYPES: Bits = &[
    (0x1, "MAP_SHARED"),
    (0x2, "MAP_PRIVATE"),
    (0x3, "MAP_SHARED_VALIDATE"),
];

const MAP: Bits = &[
    (0x10, "MAP_FIXED"),
    (0x20, "MAP_ANONYMOUS"),
    (0x40, "MAP_32BIT"),
    (0x100, "MAP_GROWSDOWN"),
    (0x800, "MAP_DENYWRITE"),
    (0x1000, "MAP_EXECUTABLE"),
    (0x2000, "MAP_LOCKED"),
    (0x4000, "MAP_NORESERVE"),
    (0x8000, "MAP_POPULATE"),
    (0x1_0000, "MAP_NONBLOCK"),
    (0x2_0000, "MAP_STACK"),
    (0x4_0000, "MAP_HUGETLB"),
    (0x8_0000, "MAP_SYNC"),
    (0x10_0000, "MAP_FIXED_NOREPLACE"),
    (0x400_0000, "MAP_UNINITIALIZED"),
];

const MREMAP: Bits = &[
    (0x1, "MREMAP_MAYMOVE"),
    (0x2, "MREMAP_FIXED"),
    (0x4, "MREMAP_DONTUNMAP"),
];

const MCL: Bits = &[
    (0x1, "MCL_CURRENT"),
    (0x2, "MCL_FUTURE"),
    (0x4, "MCL_ONFAULT"),
];

const MS: Bits = &[(0x1, "MS_ASYNC"), (0x2, "MS_INVALIDATE"), (0x4, "MS_SYNC")];

const SHM: Bits = &[
    (0x1000, "SHM_RDONLY"),
    (0x2000, "SHM_RND"),
    (0x4000, "SHM_REMAP"),
    (0x8000, "SHM_EXEC"),
];

const MADV: Bits = &[
    (0, "MADV_NORMAL"),
    (1, "MADV_RANDOM"),
    (2, "MADV_SEQUENTIAL"),
    (3, "MADV_WILLNEED"),
    (4, "MADV_DONTNEED"),
    (8, "MADV_FREE"),
    (9, "MADV_REMOVE"),
    (10, "MADV_DONTFORK"),
    (11, "MADV_DOFORK"),
    (12, "MADV_MERGEABLE"),
    (13, "MADV_UNMERGEABLE"),
    (14, "MADV_HUGEPAGE"),
    (15, "MADV_NOHUGEPAGE"),
    (16, "MADV_DONTDUMP"),
    (17, "MADV_DODUMP"),
    (18, "MADV_WIPEONFORK"),
    (19, "MADV_KEEPONFORK"),
    (20, "MADV_COLD"),
    (21, "MADV_PAGEOUT"),
    (22, "MADV_POPULATE_READ"),
    (23, "MADV_POPULATE_WRITE"),
    (24, "MADV_DONTNEED_LOCKED"),
    (25, "MADV_COLLAPSE"),
    (100, "MADV_HWPOISON"),
    (101, "MADV_SOFT_OFFLINE"),
    (102, "MADV_GUARD_INSTALL"),
    (103, "MADV_GUARD_REMOVE"),
];

/// Names the set bits of `value`, unknown ones as one hex remainder; `zero` when none is set.
fn bits(table: Bits, value: u64, zero: &str) -> String {
    if value == 0 {
        return zero.to_owned();
    }
    let mut names: Vec<String> = Vec::new();
    let mut rest = value;
    for &(bit, name) in table {
        if value & bit == bit {
            names.push(name.to_owned());
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names.join("|")
}

/// The name of an enumerated value, or the number in hex.
fn one_of(table: Bits, value: u64) -> String {
    table
        .iter()
        .find(|&&(v, _)| v == value)
        .map_or_else(|| format!("{value:#x}"), |&(_, name)| name.to_owned())
}

pub fn prot(value: u64) -> String {
    bits(PROT, value, "PROT_NONE")
}

/// mmap flags: the mapping type first, then the modifiers (as strace prints them).
pub fn map_flags(value: u64) -> String {
    let kind = value & MAP_TYPE_MASK;
    let mut text = if kind == 0 {
        String::new()
    } else {
        one_of(MAP_TYPES, kind)
    };
    let rest = value & !MAP_TYPE_MASK;
    if rest != 0 {
        if !text.is_empty() {
            text.push('|');
        }
        text.push_str(&bits(MAP, rest, "0"));
    }
    if text.is_empty() { "0".into() } else { text }
}

pub fn mremap_flags(value: u64) -> String {
    bits(MREMAP, value, "0")
}

pub fn madvise(value: u64) -> String {
    one_of(MADV, value)
}

pub fn mlockall_flags(value: u64) -> String {
    bits(MCL, value, "0")
}

pub fn msync_flags(value: u64) -> String {
    bits(MS, value, "0")
}

pub fn shmat_flags(value: u64) -> String {
    bits(SHM, value, "0")
}

/// The symbolic name of an errno value, e.g. `ENOMEM`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENOSYS => "ENOSYS",
        libc::EIDRM => "EIDRM",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHWPOISON => "EHWPOISON",
        _ => return format!("E{errno}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prot_names_bits_and_none() {
        assert_eq!(prot(0), "PROT_NONE");
        assert_eq!(prot(3), "PROT_READ|PROT_WRITE");
        assert_eq!(prot(0x5), "PROT_READ|PROT_EXEC");
        assert_eq!(prot(0x41), "PROT_READ|0x40");
    }

    #[test]
    fn map_flags_put_the_type_first() {
        assert_eq!(map_flags(0x22), "MAP_PRIVATE|MAP_ANONYMOUS");
        assert_eq!(map_flags(0x32), "MAP_PRIVATE|MAP_FIXED|MAP_ANONYMOUS");
        assert_eq!(map_flags(0x1), "MAP_SHARED");
        assert_eq!(map_flags(0x2_0022), "MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK");
        assert_eq!(map_flags(0x4022), "MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE");
        assert_eq!(map_flags(0), "0");
        assert_eq!(map_flags(0x20), "MAP_ANONYMOUS");
    }

    #[test]
    fn enumerations_and_small_flag_sets() {
        assert_eq!(madvise(4), "MADV_DONTNEED");
        assert_eq!(madvise(8), "MADV_FREE");
        assert_eq!(madvise(77), "0x4d");
        assert_eq!(mremap_flags(1), "MREMAP_MAYMOVE");
        assert_eq!(mremap_flags(3), "MREMAP_MAYMOVE|MREMAP_FIXED");
        assert_eq!(mremap_flags(0), "0");
        assert_eq!(mlockall_flags(3), "MCL_CURRENT|MCL_FUTURE");
        assert_eq!(msync_flags(4), "MS_SYNC");
        assert_eq!(shmat_flags(0x1000), "SHM_RDONLY");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(12), "ENOMEM");
        assert_eq!(errno_name(22), "EINVAL");
        assert_eq!(errno_name(4000), "E4000");
    }
}
