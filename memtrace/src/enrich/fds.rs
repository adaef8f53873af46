//! What a call's file descriptor named: the link `/proc/TID/fd/N`, read when the call's record
//! is decoded, as `strace -y` reads it. By then the descriptor may be closed, or closed and its
//! number reused for another file (the loader's open, mmap, close, then the program's open): a
//! name is kept only if that file is still the one mapped at the call's address, else the call
//! keeps its bare number. Nothing is guessed.

use std::{
    fs,
    os::unix::{
        ffi::{OsStrExt as _, OsStringExt as _},
        fs::MetadataExt as _,
    },
    path::Path,
};

use crate::syscalls::{Call, DELETED, FdPath};

/// Fills in what the call's descriptor names, if it has one, it can still be read and it is the
/// file the call mapped.
pub fn name_fd(call: &mut Call) {
    let (Some(fd), None) = (call.fd(), call.errno()) else {
        return;
    };
    let Some(path) = read(call.tid, fd) else {
        return;
    };
    // The mapping (mmap is the only call with a descriptor), as `/proc/TID/map_files` names it:
    // its exact range, the length rounded up to pages.
    let page = crate::sys::procfs::page_kb() * 1024;
    let start = call.ret as u64;
    let end = start.wrapping_add(call.args[1].div_ceil(page) * page);
    let mapped = fs::metadata(format!("/proc/{}/map_files/{start:x}-{end:x}", call.tid));
    let open = fs::metadata(format!("/proc/{}/fd/{fd}", call.tid));
    if let (Ok(mapped), Ok(open)) = (mapped, open)
        && (mapped.dev(), mapped.ino()) == (open.dev(), open.ino())
    {
        call.fd_path = Some(path);
    }
}

/// The thread's own view, as strace's (a thread may have its own descriptor table).
fn read(tid: u32, fd: i32) -> Option<FdPath> {
    let link = format!("/proc/{tid}/fd/{fd}");
    let link = Path::new(&link);
    let target = fs::read_link(link).ok()?.into_os_string().into_vec();
    let deleted = unlinked(link, &target);
    Some(FdPath {
        link: target,
        deleted,
    })
}

/// strace's test: the link ends in ` (deleted)` and that text does not name the open file
/// (a file may really be called `x (deleted)`).
fn unlinked(link: &Path, target: &[u8]) -> bool {
    // strace only looks when something precedes the suffix and its NUL: more than 11 bytes.
    if target.len() <= DELETED.len() + 1 || !target.ends_with(DELETED) {
        return false;
    }
    let Ok(open) = fs::metadata(link) else {
        return false;
    };
    match fs::symlink_metadata(Path::new(std::ffi::OsStr::from_bytes(target))) {
        Ok(named) => (named.ino(), named.dev()) != (open.ino(), open.dev()),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    fn own(fd: i32) -> Option<FdPath> {
        read(std::process::id(), fd)
    }

    #[test]
    fn an_open_file_a_deleted_one_and_a_closed_descriptor() {
        let dir = std::env::temp_dir().join(format!("memtrace-fds-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kept");
        let file = fs::File::create(&path).unwrap();
        let named = own(file.as_raw_fd()).unwrap();
        assert_eq!(named.link, path.as_os_str().as_bytes());
        assert!(!named.deleted);

        // A file really named `... (deleted)` is not taken for an unlinked one.
        let odd = dir.join("odd (deleted)");
        let odd_file = fs::File::create(&odd).unwrap();
        let named = own(odd_file.as_raw_fd()).unwrap();
        assert!(!named.deleted, "{named:?}");
        assert_eq!(named.path(), odd.as_os_str().as_bytes());

        fs::remove_file(&path).unwrap();
        let named = own(file.as_raw_fd()).unwrap();
        assert!(named.deleted, "{named:?}");
        assert_eq!(named.path(), path.as_os_str().as_bytes());

        let fd = file.as_raw_fd();
        drop(file);
        assert_eq!(own(fd), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
