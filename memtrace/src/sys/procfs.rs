//! Reading the kernel's own per-process records in `/proc`: command names, fault counters,
//! liveness and capabilities. Parsing is pure and unit-tested; reading is a thin layer on top.

use std::{fs, io, path::PathBuf};

/// The fields memtrace uses from `/proc/PID/stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 10: minor faults of the process (all its threads, living and dead).
    pub minflt: u64,
    /// Field 12: major faults.
    pub majflt: u64,
    /// Field 22: when the process started, in clock ticks since boot (with the pid, it names
    /// one process: pids are reused, start times with them are not).
    pub starttime: u64,
    /// Field 23: virtual size, in bytes.
    pub vsize: u64,
    /// Field 24: resident set size, in pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name is between the first `(` and the *last* `)`, since
/// it may itself contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields from 3 (state) on; index 0 here is field 3.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        minflt: rest.get(7)?.parse().ok()?,
        majflt: rest.get(9)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
        vsize: rest.get(20)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
    })
}

pub fn read_stat(pid: u32) -> io::Result<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::other(format!("unparsable /proc/{pid}/stat")))
}

/// A file of `/proc` or cgroupfs kept open and read again from its start (`pread`): one system
/// call per reading instead of four. One under `/proc/PID/` stays bound to that process: once it
/// has exited, reading fails (ESRCH), even if its pid has been reused.
pub struct LiveFile {
    file: fs::File,
    buf: Vec<u8>,
}

impl LiveFile {
    pub fn open(path: impl AsRef<std::path::Path>) -> io::Result<LiveFile> {
        Ok(LiveFile {
            file: fs::File::open(path)?,
            buf: vec![0; 1024],
        })
    }

    /// The file's whole content now.
    pub fn read(&mut self) -> io::Result<&str> {
        use std::os::unix::fs::FileExt as _;
        loop {
            let n = self.file.read_at(&mut self.buf, 0)?;
            if n < self.buf.len() {
                return std::str::from_utf8(&self.buf[..n]).map_err(io::Error::other);
            }
            // It may not have fit: read it again into twice the room.
            self.buf.resize(self.buf.len() * 2, 0);
        }
    }
}

/// Whether a process exists and has not yet exited (a zombie has exited).
pub fn is_alive(pid: u32) -> bool {
    read_stat(pid).is_ok_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

/// Whether a thread of a process still exists.
pub fn thread_exists(pid: u32, tid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}/task/{tid}")).exists()
}

/// The current command name of a process, or of one of its threads.
pub fn read_comm(pid: u32, tid: Option<u32>) -> Option<String> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/comm"),
        None => format!("/proc/{pid}/comm"),
    };
    let comm = fs::read_to_string(path).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

/// This process's CPU time (user + system) and resident memory, from `/proc/self/stat`.
pub fn own_usage() -> io::Result<(f64, u64)> {
    let text = fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = text
        .get(text.rfind(')').map_or(0, |i| i + 1)..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime) in clock ticks, 24 (rss) in pages; index 0 is field 3.
    let number = |index: usize| -> io::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unparsable /proc/self/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let cpu = (number(11)? + number(12)?) as f64 / ticks.max(1) as f64;
    Ok((cpu, number(21)? * page.max(1) as u64))
}

/// The effective capability set (`CapEff` in `/proc/self/status`) as a bit mask.
pub fn effective_capabilities() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| io::Error::other("no CapEff in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// One line of a pressure file (`some` or `full`): the kernel's running averages (percent of
/// time some or all tasks stalled) and its total stall time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// Where this process sees the filesystem of device `major:minor` mounted: (the directory of
/// the filesystem mounted, the mount point), from `/proc/self/mountinfo`.
pub fn mounts_of_device(major: u32, minor: u32) -> Vec<(String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts_of_device(&text, &format!("{major}:{minor}"))
}

fn parse_mounts_of_device(text: &str, device: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(2);
            (fields.next()? == device).then(|| {
                Some((
                    unescape_mount(fields.next()?),
                    unescape_mount(fields.next()?),
                ))
            })?
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A memory pressure file: `/proc/pressure/memory`, or a v2 cgroup's `memory.pressure`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Psi {
    pub some: PsiLine,
    pub full: PsiLine,
}

/// Parses `some avg10=0.00 avg60=0.00 avg300=0.00 total=8749` and its `full` line.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let line = |which: &str| -> Option<PsiLine> {
        let rest = text.lines().find_map(|l| l.strip_prefix(which))?;
        let mut psi = PsiLine::default();
        for pair in rest.split_whitespace() {
            let (key, value) = pair.split_once('=')?;
            match key {
                "avg10" => psi.avg10 = value.parse().ok()?,
                "avg60" => psi.avg60 = value.parse().ok()?,
                "avg300" => psi.avg300 = value.parse().ok()?,
                "total" => psi.total_us = value.parse().ok()?,
                _ => {}
            }
        }
        Some(psi)
    };
    Some(Psi {
        some: line("some ")?,
        full: line("full ").unwrap_or_default(),
    })
}

/// Reads a pressure file; `None` where the kernel has no PSI (or the cgroup none: v1).
pub fn read_psi(path: &std::path::Path) -> Option<Psi> {
    parse_psi(&fs::read_to_string(path).ok()?)
}

/// Every process now (the numeric entries of `/proc`).
pub fn list_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One field of `/proc/meminfo` (`MemTotal`, `SwapFree`, ...), in KiB.
pub fn meminfo_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory usage of a process from `/proc/PID/statm`: (virtual size, resident), in KiB.
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (size, resident) = (fields.next()??, fields.next()??);
    Some((size * page_kb(), resident * page_kb()))
}

/// The size of a page, in KiB.
pub fn page_kb() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1024) as u64 / 1024
}

/// A kernel command name (NUL-padded bytes) as text.
pub fn comm_from_bytes(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1234 56 7 0 3 1 0 0 20 0 \
                        1 0 1234567 10000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                        1 0 0 0 0 0";

    #[test]
    fn a_live_file_reads_the_current_content_each_time() {
        let mut stat = LiveFile::open("/proc/self/stat").unwrap();
        let before = parse_stat(stat.read().unwrap()).unwrap().minflt;
        let touched: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 * 1024]).collect();
        let after = parse_stat(stat.read().unwrap()).unwrap().minflt;
        assert!(
            after > before,
            "{before} -> {after} minor faults ({})",
            touched.len()
        );
        let mut meminfo = LiveFile::open("/proc/meminfo").unwrap();
        assert!(
            meminfo.read().unwrap().contains("MemAvailable:"),
            "longer than 1 KiB"
        );
    }

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "my (odd) prog");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.minflt, 1234);
        assert_eq!(stat.majflt, 7);
        assert_eq!(stat.starttime, 1234567);
        assert_eq!(stat.vsize, 10000000);
        assert_eq!(stat.rss_pages, 300);
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn cap_eff_is_hex() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_from_bytes(b"bash\0\0\0\0"), "bash");
        assert_eq!(comm_from_bytes(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn pressure_files_parse() {
        let psi = parse_psi(
            "some avg10=1.25 avg60=0.50 avg300=0.10 total=8749\n\
             full avg10=0.75 avg60=0.00 avg300=0.00 total=5607\n",
        )
        .unwrap();
        assert_eq!(psi.some.avg10, 1.25);
        assert_eq!(psi.some.total_us, 8749);
        assert_eq!(psi.full.total_us, 5607);
        assert_eq!(parse_psi("garbage"), None);
        assert_eq!(parse_psi("some avg10=x"), None);
    }

    #[test]
    fn mounts_of_a_device_are_found_and_unescaped() {
        let mountinfo = "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
                         30 22 254:16 /data /srv/my\\040disk rw - ext4 /dev/vdb rw\n";
        assert_eq!(
            parse_mounts_of_device(mountinfo, "254:16"),
            vec![("/data".to_owned(), "/srv/my disk".to_owned())]
        );
        assert!(parse_mounts_of_device(mountinfo, "8:1").is_empty());
    }

    #[test]
    fn own_process_is_readable() {
        let stat = read_stat(std::process::id()).unwrap();
        assert_eq!(stat.pid, std::process::id());
        assert!(is_alive(std::process::id()));
        assert!(stat.minflt > 0);
    }
}
