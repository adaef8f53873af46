//! Kernel memory per command: the maps a running memtrace holds (from its descriptors'
//! `fdinfo`), as bpftool reports their `memlock`, and the same computed for machines with more
//! CPUs from each map's per-CPU share, as the kernel's own accounting has it
//! (`array_map_mem_usage`, `htab_map_mem_usage` in kernel/bpf/).

use std::{collections::BTreeSet, fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::runner::{self, Ready};

/// One map, as bpftool shows it.
#[derive(Debug, PartialEq)]
pub struct MapInfo {
    pub name: String,
    pub kind: String,
    pub key: u64,
    pub value: u64,
    pub max_entries: u64,
    pub flags: u64,
    pub memlock: u64,
}

/// `BPF_F_NO_PREALLOC`: a hash map that allocates entries as they are created.
const NO_PREALLOC: u64 = 1;
/// `sizeof(struct htab_elem)` on 64-bit kernels (the hash-node header before key and value).
const HTAB_ELEM: u64 = 48;
/// `HASHTAB_MAP_LOCK_COUNT` per-CPU `int`s every hash map keeps.
const HASH_LOCKS_PER_CPU: u64 = 8 * 4;

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

impl MapInfo {
    /// Bytes the map's accounting grows by per possible CPU.
    pub fn per_cpu_bytes(&self) -> u64 {
        let prealloc = self.flags & NO_PREALLOC == 0;
        match self.kind.as_str() {
            "percpu_array" => round8(self.value) * self.max_entries,
            // Each CPU has one spare element (and a pointer to it) in a preallocated hash.
            "hash" if prealloc => {
                HASH_LOCKS_PER_CPU + HTAB_ELEM + round8(self.key) + round8(self.value) + 8
            }
            "percpu_hash" if prealloc => HASH_LOCKS_PER_CPU + round8(self.value) * self.max_entries,
            "hash" | "lru_hash" | "percpu_hash" | "lru_percpu_hash" => HASH_LOCKS_PER_CPU,
            _ => 0,
        }
    }

    /// The map's `memlock` on a machine with `cpus` possible CPUs, this one having `here`.
    pub fn memlock_at(&self, cpus: u64, here: u64) -> u64 {
        let delta = i128::from(cpus) - i128::from(here);
        (i128::from(self.memlock) + delta * i128::from(self.per_cpu_bytes())).max(0) as u64
    }

    fn parse(json: &Value) -> Option<MapInfo> {
        Some(MapInfo {
            name: json["name"].as_str().unwrap_or("").to_owned(),
            kind: json["type"].as_str()?.to_owned(),
            key: json["bytes_key"].as_u64().unwrap_or(0),
            value: json["bytes_value"].as_u64().unwrap_or(0),
            max_entries: json["max_entries"].as_u64()?,
            flags: json["flags"].as_u64().unwrap_or(0),
            memlock: json["bytes_memlock"].as_u64()?,
        })
    }
}

/// The maps a process holds descriptors for.
fn maps_held_by(pid: u32) -> Result<Vec<MapInfo>> {
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|line| line.strip_prefix("map_id:"))
                .filter_map(|id| id.trim().parse::<u64>().ok()),
        );
    }
    ids.into_iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "id", &id.to_string()])
                .output()
                .context("run bpftool")?;
            let json: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("bpftool's JSON for map {id}"))?;
            MapInfo::parse(&json).with_context(|| format!("bpftool's fields for map {id}"))
        })
        .collect()
}

/// Possible CPUs, as the kernel sizes per-CPU memory by (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> Result<u64> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut count = 0;
    for range in text.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        count += last.parse::<u64>()? - first.parse::<u64>()? + 1;
    }
    Ok(count)
}

/// One command to measure.
pub struct Case {
    pub label: String,
    pub argv: Vec<String>,
    pub ready: Ready,
    /// What the issue asks of it, if anything.
    pub target: &'static str,
}

const MIB: f64 = 1048576.0;

/// Starts each command, reads what it holds once it is ready, and stops it.
pub fn table(title: &str, cases: &[Case], scratch: &Path) -> Result<String> {
    eprintln!("bench: {title}");
    let here = possible_cpus()?;
    let mut out = format!(
        "### {title}\n\n`memlock` of the maps each command holds, as bpftool reports it here \
         ({here} possible CPUs), and computed for 64 and 192 CPUs from each map's per-CPU share.\n\n\
         | command | maps | here | 64 CPUs | 192 CPUs | target |\n|---|---|---|---|---|---|\n"
    );
    for case in cases {
        let tracer = runner::start(&case.argv, case.ready, &scratch.join("tracer.out"))
            .with_context(|| format!("start {}", case.label))?;
        let maps = maps_held_by(tracer.id());
        runner::stop(tracer)?;
        let maps = maps?;
        let total = |cpus: u64| -> f64 {
            maps.iter().map(|m| m.memlock_at(cpus, here)).sum::<u64>() as f64 / MIB
        };
        eprintln!(
            "bench:   {:<40} {} maps, {:.2} MiB: {}",
            case.label,
            maps.len(),
            total(here),
            maps.iter()
                .map(|m| format!("{} {:.0} KiB", m.name, m.memlock as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} MiB | {:.2} MiB | {:.2} MiB | {} |",
            case.label,
            maps.len(),
            total(here),
            total(64),
            total(192),
            case.target
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kind: &str, key: u64, value: u64, max_entries: u64, memlock: u64) -> MapInfo {
        MapInfo {
            name: "m".into(),
            kind: kind.into(),
            key,
            value,
            max_entries,
            flags: 0,
            memlock,
        }
    }

    #[test]
    fn per_cpu_shares_follow_the_kernels_accounting() {
        // A per-CPU array of 16 values of 64 bytes: 1 KiB more per CPU.
        let stats = map("percpu_array", 4, 64, 16, 2488);
        assert_eq!(stats.per_cpu_bytes(), 1024);
        assert_eq!(stats.memlock_at(192, 2), 2488 + 190 * 1024);
        // A preallocated hash: one spare element, its pointer and the lock counters per CPU.
        let hash = map("hash", 8, 32, 16384, 1_705_024);
        assert_eq!(hash.per_cpu_bytes(), 32 + 48 + 8 + 32 + 8);
        // Ring buffers and plain arrays do not grow with CPUs.
        assert_eq!(map("ringbuf", 0, 0, 4096, 16728).memlock_at(192, 2), 16728);
        assert_eq!(map("array", 4, 4, 512, 4408).per_cpu_bytes(), 0);
    }

    #[test]
    fn bpftool_json_is_read() {
        let json: Value = serde_json::from_str(
            r#"{"id":7,"type":"hash","name":"FAULT_COUNTS","flags":0,"bytes_key":8,
                "bytes_value":32,"max_entries":16384,"bytes_memlock":1705024}"#,
        )
        .unwrap();
        let info = MapInfo::parse(&json).unwrap();
        assert_eq!(info.memlock, 1_705_024);
        assert_eq!((info.key, info.value, info.max_entries), (8, 32, 16384));
    }
}
