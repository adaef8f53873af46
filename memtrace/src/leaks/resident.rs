//! How much of a region is resident, from the kernel's own per-mapping figures
//! (`/proc/PID/smaps`): exact for a region that is a whole mapping, else the mapping's resident
//! share for the region's part of it.

use std::ops::Range;

/// One mapping of `/proc/PID/smaps` and its resident bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resident {
    pub range: Range<u64>,
    pub rss: u64,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// The file, `[heap]`, `[stack]`, ... ("" for anonymous memory).
    pub name: String,
}

/// Parses `/proc/PID/smaps`.
pub fn parse(text: &str) -> Vec<Resident> {
    let mut mappings: Vec<Resident> = Vec::new();
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            if let (Some(last), Some(kb)) = (
                mappings.last_mut(),
                kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok(),
            ) {
                last.rss = kb * 1024;
            }
            continue;
        }
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            // perms offset dev inode [name]; the name may contain spaces.
            let mut fields = rest.splitn(5, ' ');
            let perms = fields.next().unwrap_or_default().to_owned();
            let name = fields.nth(3).unwrap_or_default().trim_start().to_owned();
            mappings.push(Resident {
                range: start..end,
                rss: 0,
                perms,
                name,
            });
        }
    }
    mappings
}

/// Reads a live process's mappings; `None` once it has gone.
pub fn read(pid: u32) -> Option<Vec<Resident>> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .ok()
        .map(|text| parse(&text))
        .filter(|mappings| !mappings.is_empty())
}

/// The resident bytes of `[start, start + len)`.
pub fn of(mappings: &[Resident], start: u64, len: u64) -> u64 {
    let end = start + len;
    mappings
        .iter()
        .filter(|m| m.range.start < end && m.range.end > start)
        .map(|m| {
            let overlap = m.range.end.min(end) - m.range.start.max(start);
            let size = m.range.end - m.range.start;
            if overlap == size {
                m.rss
            } else {
                (u128::from(m.rss) * u128::from(overlap) / u128::from(size)) as u64
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_mappings_exactly_parts_by_share() {
        let text = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n\
Size:               4096 kB\n\
Rss:                2048 kB\n\
7f0000400000-7f0000401000 r--p 00000000 fe:01 12 /usr/lib/x.so\n\
Rss:                   4 kB\n";
        let mappings = parse(text);
        assert_eq!(mappings.len(), 2);
        assert_eq!(
            (mappings[0].perms.as_str(), mappings[0].name.as_str()),
            ("rw-p", "")
        );
        assert_eq!(mappings[1].name, "/usr/lib/x.so");
        assert_eq!(of(&mappings, 0x7f00_0000_0000, 0x40_0000), 2048 * 1024);
        assert_eq!(of(&mappings, 0x7f00_0000_0000, 0x20_0000), 1024 * 1024);
        assert_eq!(of(&mappings, 0x7f00_0040_0000, 0x1000), 4096);
    }
}
