//! Reclaim inside a test's memory cgroup, and an independent count of it: a file larger than the
//! cgroup's limit, read through the page cache, makes its reader reclaim at the limit (contained:
//! the rest of the machine sees no pressure); bpftrace counts the same tracepoints.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    thread,
};

use serde_json::Value;

use super::cgroup::MIB;

/// A clean file of `mib` MiB on a real disk (written and synced, so it can be dropped from the
/// page cache).
pub fn big_file(mib: usize) -> std::path::PathBuf {
    let path = super::disk_dir().join(format!("pressure-{mib}.bin"));
    if fs::metadata(&path).is_ok_and(|m| m.len() == (mib * MIB as usize) as u64) {
        return path;
    }
    let mut file = fs::File::create(&path).unwrap();
    let chunk: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8).collect();
    for _ in 0..mib {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    path
}

/// bpftrace counting the memcg reclaim stalls of one process, until stopped: the process and
/// its output lines, once it is attached.
pub struct Bpftrace {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bpftrace {
    pub fn memcg_stalls_of(pid: u32) -> Bpftrace {
        let script = format!(
            "BEGIN {{ printf(\"ready\\n\"); }} \
             tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin /pid == {pid}/ {{ @begin = count(); }} \
             tracepoint:vmscan:mm_vmscan_memcg_reclaim_end /pid == {pid}/ {{ @end = count(); }}"
        );
        let mut child = Command::new("bpftrace")
            .args(["-f", "json", "-e", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bpftrace");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let bpftrace = Bpftrace { child, lines };
        loop {
            let line = bpftrace
                .lines
                .recv_timeout(super::patience(30))
                .expect("bpftrace attached");
            if line.contains("ready") {
                return bpftrace;
            }
        }
    }

    /// Stops it (Ctrl-C: it prints its maps) and returns `@begin` and `@end`.
    pub fn counts(mut self) -> (u64, u64) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait().unwrap();
        let maps: Vec<Value> = self
            .lines
            .try_iter()
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter(|v| v["type"] == "map")
            .collect();
        let count = |name: &str| {
            maps.iter()
                .find_map(|v| v["data"].get(name)?.as_u64())
                .unwrap_or(0)
        };
        (count("@begin"), count("@end"))
    }
}
