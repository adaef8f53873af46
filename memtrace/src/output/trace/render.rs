//! Rendering a decoded call: arguments and return value as strace writes them (flags symbolic,
//! sizes exact, addresses hex), and the same arguments as named JSON fields.

use serde_json::{Map, Value};

use super::flags;
use crate::syscalls::{Call, FdPath, Syscall};

const MREMAP_FIXED: u64 = 0x2;

fn addr(value: u64) -> String {
    if value == 0 {
        "NULL".into()
    } else {
        format!("{value:#x}")
    }
}

/// A file descriptor as `strace -y` prints it: `3</usr/lib/libc.so.6>`, `3<pipe:[1234]>`,
/// `3</tmp/x>(deleted)`; the bare number when what it named is unknown.
fn fd(fd: i32, path: Option<&FdPath>) -> String {
    match path {
        Some(path) => format!(
            "{fd}<{}>{}",
            strace_quoted(path.path(), b"<>"),
            if path.deleted { "(deleted)" } else { "" }
        ),
        None => fd.to_string(),
    }
}

/// strace's quoting of a string without its quotes (its `string_quote` with the default
/// `-x` style): C escapes for `"`, `\` and `\f\n\r\t\v`; octal for what is not printable
/// ASCII and for `escape`, padded to three digits only before an octal digit.
fn strace_quoted(bytes: &[u8], escape: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for (i, &c) in bytes.iter().enumerate() {
        let named = match c {
            b'"' => Some('"'),
            b'\\' => Some('\\'),
            0x0c => Some('f'),
            b'\n' => Some('n'),
            b'\r' => Some('r'),
            b'\t' => Some('t'),
            0x0b => Some('v'),
            _ => None,
        };
        if let Some(named) = named {
            out.push('\\');
            out.push(named);
        } else if (b' '..0x7f).contains(&c) && !escape.contains(&c) {
            out.push(char::from(c));
        } else if bytes
            .get(i + 1)
            .is_some_and(|next| (b'0'..=b'7').contains(next))
        {
            out.push_str(&format!("\\{c:03o}"));
        } else {
            out.push_str(&format!("\\{c:o}"));
        }
    }
    out
}

/// The argument list, without parentheses: `NULL, 4096, PROT_READ|PROT_WRITE, ...`.
pub fn args(call: &Call) -> String {
    let a = &call.args;
    let parts: Vec<String> = match call.syscall {
        Syscall::Brk => vec![addr(a[0])],
        Syscall::Mmap => vec![
            addr(a[0]),
            a[1].to_string(),
            flags::prot(a[2]),
            flags::map_flags(a[3]),
            fd(a[4] as i32, call.fd_path.as_ref()),
            if a[5] == 0 {
                "0".into()
            } else {
                format!("{:#x}", a[5])
            },
        ],
        Syscall::Munmap | Syscall::Mlock | Syscall::Munlock => {
            vec![addr(a[0]), a[1].to_string()]
        }
        Syscall::Mremap => {
            let mut parts = vec![
                addr(a[0]),
                a[1].to_string(),
                a[2].to_string(),
                flags::mremap_flags(a[3]),
            ];
            if a[3] & MREMAP_FIXED != 0 {
                parts.push(addr(a[4]));
            }
            parts
        }
        Syscall::Mprotect => vec![addr(a[0]), a[1].to_string(), flags::prot(a[2])],
        Syscall::Madvise => vec![addr(a[0]), a[1].to_string(), flags::madvise(a[2])],
        Syscall::Mlockall => vec![flags::mlockall_flags(a[0])],
        Syscall::Munlockall => vec![],
        Syscall::Msync => vec![addr(a[0]), a[1].to_string(), flags::msync_flags(a[2])],
        Syscall::Shmat => vec![
            (a[0] as i32).to_string(),
            addr(a[1]),
            flags::shmat_flags(a[2]),
        ],
        Syscall::Shmdt => vec![addr(a[0])],
    };
    parts.join(", ")
}

/// The return value: `-1 ENOMEM (Cannot allocate memory)`, an address in hex, or a number.
pub fn ret(call: &Call) -> String {
    if let Some(errno) = call.errno() {
        return format!("-1 {} ({})", flags::errno_name(errno), strerror(errno));
    }
    if call.syscall.returns_address() {
        format!("{:#x}", call.ret)
    } else {
        call.ret.to_string()
    }
}

/// The C library's description of an errno, without Rust's ` (os error N)` suffix.
fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// For brk, the growth of the break: ` (+135168 bytes)`; empty otherwise.
pub fn growth(call: &Call) -> String {
    match call.brk_growth() {
        Some(bytes) => format!(" ({bytes:+} bytes)"),
        None => String::new(),
    }
}

/// A latency for people: `850ns`, `4.1µs`, `2.3ms`, `1.204s`.
pub fn latency(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// The arguments as named JSON fields: numbers for sizes, descriptors and addresses, symbolic
/// strings for flags.
pub fn json_args(call: &Call) -> Map<String, Value> {
    let a = &call.args;
    let values: Vec<Value> = match call.syscall {
        Syscall::Brk => vec![a[0].into()],
        Syscall::Mmap => vec![
            a[0].into(),
            a[1].into(),
            flags::prot(a[2]).into(),
            flags::map_flags(a[3]).into(),
            (a[4] as i32).into(),
            a[5].into(),
        ],
        Syscall::Munmap | Syscall::Mlock | Syscall::Munlock => vec![a[0].into(), a[1].into()],
        Syscall::Mremap => vec![
            a[0].into(),
            a[1].into(),
            a[2].into(),
            flags::mremap_flags(a[3]).into(),
            a[4].into(),
        ],
        Syscall::Mprotect => vec![a[0].into(), a[1].into(), flags::prot(a[2]).into()],
        Syscall::Madvise => vec![a[0].into(), a[1].into(), flags::madvise(a[2]).into()],
        Syscall::Mlockall => vec![flags::mlockall_flags(a[0]).into()],
        Syscall::Munlockall => vec![],
        Syscall::Msync => vec![a[0].into(), a[1].into(), flags::msync_flags(a[2]).into()],
        Syscall::Shmat => vec![
            (a[0] as i32).into(),
            a[1].into(),
            flags::shmat_flags(a[2]).into(),
        ],
        Syscall::Shmdt => vec![a[0].into()],
    };
    call.syscall
        .arg_names()
        .iter()
        .map(|name| (*name).to_owned())
        .zip(values)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(syscall: Syscall, args: [u64; 6], ret: i64) -> Call {
        Call {
            syscall,
            pid: 1,
            tid: 1,
            comm: "t".into(),
            start_ns: 0,
            latency_ns: 0,
            args,
            ret,
            prev_brk: None,
            fd_path: None,
            stack: Default::default(),
        }
    }

    #[test]
    fn mmap_reads_like_strace() {
        let c = call(
            Syscall::Mmap,
            [0, 1_052_672, 3, 0x22, u64::from(u32::MAX), 0],
            0x7f3a_1c00_0000,
        );
        assert_eq!(
            args(&c),
            "NULL, 1052672, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0"
        );
        assert_eq!(ret(&c), "0x7f3a1c000000");
        let file = call(Syscall::Mmap, [0x1000, 8192, 1, 0x12, 3, 0x2000], 0x1000);
        assert_eq!(
            args(&file),
            "0x1000, 8192, PROT_READ, MAP_PRIVATE|MAP_FIXED, 3, 0x2000"
        );
    }

    fn named(link: &[u8], deleted: bool) -> Option<FdPath> {
        Some(FdPath {
            link: link.to_vec(),
            deleted,
        })
    }

    #[test]
    fn descriptors_are_named_like_strace_y() {
        let mut c = call(Syscall::Mmap, [0, 4096, 1, 2, 3, 0], 0x1000);
        let with = |c: &mut Call, path| {
            c.fd_path = path;
            args(c)
        };
        assert_eq!(
            with(&mut c, named(b"/usr/lib/x86_64-linux-gnu/libc.so.6", false)),
            "NULL, 4096, PROT_READ, MAP_PRIVATE, 3</usr/lib/x86_64-linux-gnu/libc.so.6>, 0"
        );
        // What strace 6.1 -y printed here for descriptors naming these links.
        for (link, deleted, shown) in [
            (&b"pipe:[253674]"[..], false, "3<pipe:[253674]>"),
            (b"socket:[253675]", false, "3<socket:[253675]>"),
            (b"/memfd:mine (deleted)", true, "3</memfd:mine>(deleted)"),
            (b"/tmp/fdx/del (deleted)", true, "3</tmp/fdx/del>(deleted)"),
            (b"/tmp/fdx/a<b>c", false, "3</tmp/fdx/a\\74b\\76c>"),
            (
                b"/tmp/fdx/sp ace\\q\"uo'te",
                false,
                "3</tmp/fdx/sp ace\\\\q\\\"uo'te>",
            ),
            (b"/tmp/fdx/nl\nx\ttab", false, "3</tmp/fdx/nl\\nx\\ttab>"),
            (
                b"/tmp/fdx/\xc3\xbc\x01\x7f",
                false,
                "3</tmp/fdx/\\303\\274\\1\\177>",
            ),
            (b"/tmp/fdx/\x017\x1b8", false, "3</tmp/fdx/\\0017\\338>"),
        ] {
            let shown = format!("NULL, 4096, PROT_READ, MAP_PRIVATE, {shown}, 0");
            assert_eq!(with(&mut c, named(link, deleted)), shown);
        }
        // Unknown: the bare number, as before.
        assert_eq!(
            with(&mut c, None),
            "NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0"
        );
    }

    #[test]
    fn failures_name_the_errno() {
        let c = call(Syscall::Mprotect, [0x1000, 4096, 1, 0, 0, 0], -12);
        assert_eq!(args(&c), "0x1000, 4096, PROT_READ");
        assert_eq!(ret(&c), "-1 ENOMEM (Cannot allocate memory)");
    }

    #[test]
    fn mremap_shows_the_new_address_only_when_fixed() {
        let moved = call(Syscall::Mremap, [0x1000, 4096, 8192, 1, 0, 0], 0x9000);
        assert_eq!(args(&moved), "0x1000, 4096, 8192, MREMAP_MAYMOVE");
        let fixed = call(Syscall::Mremap, [0x1000, 4096, 8192, 3, 0x9000, 0], 0x9000);
        assert_eq!(
            args(&fixed),
            "0x1000, 4096, 8192, MREMAP_MAYMOVE|MREMAP_FIXED, 0x9000"
        );
    }

    #[test]
    fn brk_shows_request_result_and_growth() {
        let mut c = call(Syscall::Brk, [0x55_6000, 0, 0, 0, 0, 0], 0x55_6000);
        c.prev_brk = Some(0x53_5000);
        assert_eq!(args(&c), "0x556000");
        assert_eq!(ret(&c), "0x556000");
        assert_eq!(growth(&c), " (+135168 bytes)");
        c.args[0] = 0;
        assert_eq!((args(&c).as_str(), growth(&c)), ("NULL", String::new()));
    }

    #[test]
    fn json_args_are_named() {
        let c = call(Syscall::Madvise, [0x1000, 4096, 4, 0, 0, 0], 0);
        let json = json_args(&c);
        assert_eq!(json["start"], 0x1000);
        assert_eq!(json["len_in"], 4096);
        assert_eq!(json["behavior"], "MADV_DONTNEED");
        assert!(json_args(&call(Syscall::Munlockall, [0; 6], 0)).is_empty());
    }

    #[test]
    fn latencies_scale() {
        assert_eq!(latency(850), "850ns");
        assert_eq!(latency(4100), "4.1µs");
        assert_eq!(latency(2_300_000), "2.3ms");
        assert_eq!(latency(1_204_000_000), "1.204s");
    }
}
