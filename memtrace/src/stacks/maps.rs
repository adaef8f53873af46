//! A process's mappings, as `/proc/PID/maps` lists them.

use std::io;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the mapping's first byte.
    pub offset: u64,
    pub executable: bool,
    pub inode: u64,
    /// The file's path as the process sees it, a kernel name (`[heap]`, `[stack]`, `[vdso]`),
    /// or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// Whether it maps a file (rather than anonymous memory or a kernel-named region).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file offset of `address` inside the mapping: what strace -k prints.
    pub fn file_offset(&self, address: u64) -> u64 {
        address - self.start + self.offset
    }
}

/// Parses the text of `/proc/PID/maps`; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path], the path possibly containing spaces.
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        inode: inode.parse().ok()?,
        path: path.to_owned(),
    })
}

/// Reads a live process's mappings.
pub fn read(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_anonymous_and_named_regions() {
        let text = "\
55d0c0a00000-55d0c0a02000 r-xp 00001000 fe:01 1054 /usr/bin/my prog\n\
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n\
7ffd5d7e1000-7ffd5d802000 rw-p 00000000 00:00 0                          [stack]\n";
        let maps = parse(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].path, "/usr/bin/my prog");
        assert!(maps[0].executable && maps[0].is_file());
        assert_eq!(maps[0].file_offset(0x55d0c0a00010), 0x1010);
        assert_eq!(maps[1].path, "");
        assert!(!maps[1].is_file());
        assert_eq!(maps[2].path, "[stack]");
    }
}
