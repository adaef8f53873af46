//! Reclaim inside a test's memory cgroup, and an independent count of it: a file larger than the
//! cgroup's limit, read through the page cache, makes its reader reclaim at the limit (contained:
//! the rest of the machine sees no pressure); bpftrace counts the same tracepoints.

use std::{fs, io::Write};

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

/// bpftrace counting one process's reclaim stalls of one kind, until stopped.
pub struct Bpftrace(super::bpftrace::Bpftrace);

impl Bpftrace {
    /// Memory cgroup reclaim (at the cgroup's limit).
    pub fn memcg_stalls_of(pid: u32) -> Bpftrace {
        Bpftrace::stalls_of(pid, "memcg_reclaim")
    }

    /// Direct reclaim (the machine's free memory ran low).
    pub fn direct_stalls_of(pid: u32) -> Bpftrace {
        Bpftrace::stalls_of(pid, "direct_reclaim")
    }

    fn stalls_of(pid: u32, kind: &str) -> Bpftrace {
        Bpftrace(super::bpftrace::Bpftrace::start(&format!(
            "tracepoint:vmscan:mm_vmscan_{kind}_begin /pid == {pid}/ {{ @begin = count(); }} \
             tracepoint:vmscan:mm_vmscan_{kind}_end /pid == {pid}/ {{ @end = count(); }}"
        )))
    }

    /// Stops it and returns `@begin` and `@end`.
    pub fn counts(self) -> (u64, u64) {
        let records = self.0.stop();
        (
            super::bpftrace::number(&records, "@begin"),
            super::bpftrace::number(&records, "@end"),
        )
    }
}
