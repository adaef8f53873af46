//! Who the history sampler samples, and how often: the likely OOM victims.
//!
//! The OOM killer picks the biggest process (resident memory, swap and page tables, weighed by
//! `oom_score_adj`) of the memory cgroup at its limit, or of the machine. So the candidates are
//! the biggest processes of the machine and of each limited memory cgroup, found by a scan of
//! every process every [`SCAN_EVERY`] ticks; between scans, every program the kernel says was
//! started (`exec`), and every process that stalled in reclaim, joins them.
//!
//! Candidates are sampled every [`CALM_EVERY`] ticks, and *urgent* ones at every tick: new
//! processes, processes that stall, and every member of a limited cgroup past half its limit.
//! While the machine itself is low on memory, every candidate is urgent and scans come
//! [`SCAN_EVERY_WHEN_LOW`] ticks apart.
//!
//! Between scans a tick reads only files kept open, one `pread` each: `/proc/meminfo`, the usage
//! of each watched cgroup, the `stat` of each due candidate. (Listing `/proc` costs a
//! millisecond or more on an idle machine: the kernel builds a dentry per process.)

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    fs,
    path::PathBuf,
};

use crate::{
    model::{cgroup::Limit, oom::MemoryUser},
    sys::{
        cgroup::{self, MemoryHierarchy},
        procfs::{self, LiveFile},
    },
};

/// Ticks between scans of every process, and while the machine is low on memory.
const SCAN_EVERY: u64 = 30;
const SCAN_EVERY_WHEN_LOW: u64 = 10;

/// Ticks between samples of the candidates that are not urgent.
pub const CALM_EVERY: u64 = 5;

/// The biggest processes of the machine that are candidates.
const MACHINE_TOP: usize = 16;

/// The biggest processes of each limited cgroup that are candidates...
const CGROUP_TOP: usize = 2;

/// ...and every one (up to the cap) of a cgroup using at least this share of its limit.
const NEAR_LIMIT: f64 = 0.5;

/// Available memory under this share of the machine's: the machine is low.
const MACHINE_LOW: f64 = 0.2;

/// New processes made candidates between two scans, at most.
const MAX_NEW: usize = 256;

/// Files held open, at most: candidates' `stat`, and limited cgroups' usage (the cgroups
/// nearest their limits; the rest are looked at by scans only).
const MAX_CANDIDATES: usize = 512;
const MAX_WATCHED_CGROUPS: usize = 256;

/// Processes listed as a cgroup's top memory users.
const TOP_USERS: usize = 5;

/// A process being sampled.
pub struct Candidate {
    pub stat: LiveFile,
    /// Sampled at every tick.
    urgent: bool,
    /// Sampled between ticks too: it grew fast between its last two samples, or is new and has
    /// one sample yet (set by the sampler).
    pub fast: bool,
}

/// Which candidates a look samples.
pub enum Due {
    /// The urgent ones, or all of them now and then.
    Regular,
    /// Those growing fast.
    Fast,
    /// These (just started).
    Only(Vec<u32>),
}

/// A memory cgroup with a limit, found by the last scan.
struct LimitedCgroup {
    /// Its directory and its descendants' (their processes count against its limit).
    dirs: Vec<PathBuf>,
    limit_bytes: u64,
    /// Past half its limit at the last look.
    near: bool,
    /// Its usage file, for a cgroup watched between scans.
    usage: Option<LiveFile>,
}

impl LimitedCgroup {
    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        self.dirs.iter().flat_map(|dir| cgroup::procs_in(dir))
    }
}

pub struct Watch {
    hierarchy: Option<MemoryHierarchy>,
    candidates: HashMap<u32, Candidate>,
    limited: Vec<LimitedCgroup>,
    meminfo: Option<LiveFile>,
    /// Every process at the last scan.
    known: HashSet<u32>,
    /// New processes made candidates since the last scan.
    new_taken: usize,
    ticks: u64,
    /// Whether every candidate is due this tick.
    all_due: bool,
}

impl Watch {
    pub fn new(hierarchy: Option<MemoryHierarchy>) -> Watch {
        Watch {
            hierarchy,
            candidates: HashMap::new(),
            limited: Vec::new(),
            meminfo: LiveFile::open("/proc/meminfo").ok(),
            known: HashSet::new(),
            new_taken: 0,
            ticks: 0,
            all_due: true,
        }
    }

    pub fn hierarchy(&self) -> Option<&MemoryHierarchy> {
        self.hierarchy.as_ref()
    }

    /// Decides who is sampled this tick: `born` ran `exec` since the last tick, `stalled`
    /// stalled in reclaim. Returns the processes gone since the last scan (found by scans).
    pub fn tick(&mut self, born: Vec<u32>, stalled: Vec<u32>) -> Vec<u32> {
        let machine = self.machine_memory();
        let low = machine
            .is_some_and(|(total, available)| (available as f64) < total as f64 * MACHINE_LOW);
        let scan_every = if low { SCAN_EVERY_WHEN_LOW } else { SCAN_EVERY };
        let gone = if self.ticks.is_multiple_of(scan_every) {
            // Limits at or above the machine's memory limit nothing.
            self.scan(machine.map_or(u64::MAX, |(total, _)| total * 1024))
        } else {
            self.watch_cgroups();
            Vec::new()
        };
        self.born(born);
        self.add(stalled, true);
        self.all_due = low || self.ticks.is_multiple_of(CALM_EVERY);
        self.ticks += 1;
        gone
    }

    /// Makes processes just started urgent candidates, sampled fast until they are seen not
    /// to grow fast (at most [`MAX_NEW`] between scans). Returns those taken.
    pub fn born(&mut self, born: Vec<u32>) -> Vec<u32> {
        let taken: Vec<u32> = born.into_iter().take(MAX_NEW - self.new_taken).collect();
        self.new_taken += taken.len();
        self.add(taken.iter().copied(), true);
        for pid in &taken {
            if let Some(candidate) = self.candidates.get_mut(pid) {
                candidate.fast = true;
            }
        }
        taken
    }

    /// Whether some candidate is to be sampled between ticks.
    pub fn any_fast(&self) -> bool {
        self.candidates.values().any(|candidate| candidate.fast)
    }

    /// The candidates a look samples.
    pub fn due<'a>(&'a mut self, due: &'a Due) -> impl Iterator<Item = (u32, &'a mut Candidate)> {
        let all = self.all_due;
        self.candidates
            .iter_mut()
            .filter(move |(pid, candidate)| match due {
                Due::Regular => all || candidate.urgent,
                Due::Fast => candidate.fast,
                Due::Only(pids) => pids.contains(pid),
            })
            .map(|(&pid, candidate)| (pid, candidate))
    }

    /// A candidate that has exited.
    pub fn forget(&mut self, pid: u32) {
        self.candidates.remove(&pid);
    }

    fn add(&mut self, pids: impl IntoIterator<Item = u32>, urgent: bool) {
        for pid in pids {
            match self.candidates.entry(pid) {
                Entry::Occupied(mut known) => known.get_mut().urgent |= urgent,
                Entry::Vacant(slot) => {
                    if let Ok(stat) = LiveFile::open(format!("/proc/{pid}/stat")) {
                        slot.insert(Candidate {
                            stat,
                            urgent,
                            fast: false,
                        });
                    }
                }
            }
            if self.candidates.len() >= MAX_CANDIDATES {
                break;
            }
        }
    }

    /// Watched cgroups past half their limit since the last look: all their members become
    /// urgent.
    fn watch_cgroups(&mut self) {
        let mut now_near = Vec::new();
        for (i, cgroup) in self.limited.iter_mut().enumerate() {
            let Some(usage) = cgroup.usage.as_mut() else {
                continue;
            };
            let bytes = usage
                .read()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            let near = bytes.is_some_and(|b| b as f64 >= cgroup.limit_bytes as f64 * NEAR_LIMIT);
            if near && !cgroup.near {
                now_near.push(i);
            }
            cgroup.near = near;
        }
        for i in now_near {
            let members: Vec<u32> = self.limited[i].members().collect();
            self.add(members, true);
        }
    }

    /// The machine's `MemTotal` and `MemAvailable`, in KiB.
    fn machine_memory(&mut self) -> Option<(u64, u64)> {
        parse_meminfo(self.meminfo.as_mut()?.read().ok()?)
    }

    /// Finds the candidates again from every process's size and every limited cgroup's members.
    fn scan(&mut self, machine_bytes: u64) -> Vec<u32> {
        let alive = list_processes();
        let gone = self.known.difference(&alive).copied().collect();
        let sizes: HashMap<u32, u64> = alive
            .iter()
            .filter_map(|&pid| Some((pid, procfs::memory_kb(pid)?.1)))
            .collect();
        let mut calm: HashSet<u32> = biggest(sizes.keys().copied(), &sizes, MACHINE_TOP)
            .into_iter()
            .collect();
        let mut urgent = HashSet::new();
        let mut limited = self.limited_cgroups(machine_bytes);
        for cgroup in &limited {
            if cgroup.near {
                urgent.extend(cgroup.members());
            } else {
                calm.extend(biggest(cgroup.members(), &sizes, CGROUP_TOP));
            }
        }
        // The cgroups nearest their limits are watched between scans.
        limited.sort_by_key(|cgroup| std::cmp::Reverse(cgroup.near));
        let usage_file = self.hierarchy.as_ref().map(|h| h.version.usage_file());
        for cgroup in limited.iter_mut().take(MAX_WATCHED_CGROUPS) {
            cgroup.usage =
                usage_file.and_then(|file| LiveFile::open(cgroup.dirs[0].join(file)).ok());
        }
        self.limited = limited;
        self.candidates
            .retain(|pid, _| calm.contains(pid) || urgent.contains(pid));
        for candidate in self.candidates.values_mut() {
            candidate.urgent = false;
        }
        self.add(urgent, true);
        self.add(calm, false);
        self.new_taken = 0;
        self.known = alive;
        gone
    }

    /// Every memory cgroup with a limit below the machine's memory, with its descendants.
    fn limited_cgroups(&self, machine: u64) -> Vec<LimitedCgroup> {
        let Some(hierarchy) = &self.hierarchy else {
            return Vec::new();
        };
        let all = hierarchy.subtree("/");
        let read = |dir: &PathBuf, file: &str| fs::read_to_string(dir.join(file)).ok();
        all.iter()
            .filter_map(|(dir, path)| {
                let limit = cgroup::parse_limit(&read(dir, hierarchy.version.limit_file())?)?;
                let usage: u64 = read(dir, hierarchy.version.usage_file())?
                    .trim()
                    .parse()
                    .ok()?;
                match limit {
                    Limit::Bytes(bytes) if bytes < machine => Some(LimitedCgroup {
                        // Itself first.
                        dirs: all
                            .iter()
                            .filter(|(_, inner)| cgroup::is_within(inner, path))
                            .map(|(dir, _)| dir.clone())
                            .collect(),
                        limit_bytes: bytes,
                        near: usage as f64 >= bytes as f64 * NEAR_LIMIT,
                        usage: None,
                    }),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The `n` biggest of `pids` by resident memory.
fn biggest(pids: impl Iterator<Item = u32>, sizes: &HashMap<u32, u64>, n: usize) -> Vec<u32> {
    let mut sized: Vec<(u64, u32)> = pids
        .filter_map(|pid| Some((*sizes.get(&pid)?, pid)))
        .collect();
    sized.sort_unstable_by(|a, b| b.cmp(a));
    sized.into_iter().take(n).map(|(_, pid)| pid).collect()
}

/// The processes of a cgroup and its descendants using the most memory now, most first.
pub fn top_users(hierarchy: &MemoryHierarchy, cgroup: &str, victim: u32) -> Vec<MemoryUser> {
    let mut users: Vec<MemoryUser> = hierarchy
        .subtree(cgroup)
        .iter()
        .flat_map(|(dir, _)| cgroup::procs_in(dir))
        .filter_map(|pid| {
            Some(MemoryUser {
                pid,
                comm: procfs::read_comm(pid, None)?,
                rss_kb: procfs::memory_kb(pid)?.1,
                victim: pid == victim,
            })
        })
        .collect();
    users.sort_by(|a, b| b.rss_kb.cmp(&a.rss_kb).then(a.pid.cmp(&b.pid)));
    users.truncate(TOP_USERS);
    users
}

/// Every process now.
fn list_processes() -> HashSet<u32> {
    procfs::list_pids().into_iter().collect()
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in KiB.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    Some((
        procfs::meminfo_kb(text, "MemTotal")?,
        procfs::meminfo_kb(text, "MemAvailable")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_come_first_and_unknown_sizes_are_left_out() {
        let sizes = HashMap::from([(1, 10), (2, 30), (3, 20)]);
        assert_eq!(biggest([1, 2, 3, 4].into_iter(), &sizes, 2), vec![2, 3]);
    }

    #[test]
    fn meminfo_gives_total_and_available() {
        let text = "MemTotal:       24683656 kB\nMemFree:  1 kB\nMemAvailable:   24251636 kB\n";
        assert_eq!(parse_meminfo(text), Some((24_683_656, 24_251_636)));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }
}
