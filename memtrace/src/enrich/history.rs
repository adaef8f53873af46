//! What led up to an OOM kill: the last ~30 s of the victim's memory, sampled from `/proc`, and
//! the victim cgroup's biggest memory users at the kill.
//!
//! Sampling every process every second would cost a read per process per second for weeks, to
//! use one process's samples on the day of a kill. The OOM killer picks the biggest process (by
//! resident memory, swap and page tables, weighed by `oom_score_adj`) of the memory cgroup at
//! its limit, or of the machine; so only the likely victims are sampled each second:
//! - the biggest processes of the machine, and of each memory cgroup with a limit (every
//!   process of one near its limit);
//! - every process started since the last scan (it may be the one growing), and every process
//!   that stalled in reclaim since the last sample (memory is short where it runs).
//!
//! Who they are is decided by a scan of every process and every limited cgroup, every
//! [`SCAN_EVERY`] samples, or at every sample while memory is tight (a limited cgroup near its
//! limit, or the machine low on available memory). Between scans a sample costs one
//! `readdir` of `/proc`, one read of `/proc/meminfo`, a usage read per limited cgroup and one
//! `stat` read per candidate.
//!
//! `kmem:rss_stat` would give every RSS change from the kernel, but it fires in the context of
//! whoever changed the counter (a reclaimer, the OOM reaper) and names the mm by an id that is
//! reused: it needs the mm-to-process mapping this sampling gets from `/proc` for free, and it
//! fires on the fault path of every process, which `oom` must not slow.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::PathBuf,
    time::Duration,
};

use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};

use crate::{
    cgroup::{self, Limit, MemoryHierarchy},
    model::oom::{HistoryPoint, Kill, MemoryUser},
    output::Timestamp,
    procfs,
};

/// How often the candidates are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples between scans while memory is not tight.
const SCAN_EVERY: u64 = 10;

/// The biggest processes of the machine sampled each second.
const MACHINE_TOP: usize = 16;

/// The biggest processes of each limited cgroup sampled each second...
const CGROUP_TOP: usize = 2;

/// ...and of one near its limit (at least this share of it used), up to this many.
const NEAR_LIMIT: f64 = 0.5;
const NEAR_LIMIT_TOP: usize = 32;

/// Available memory under this share of the machine's: scan at every sample.
const MACHINE_LOW: f64 = 0.2;

/// New processes sampled before the next scan judges them (the biggest first).
const MAX_NEW: usize = 256;

/// Processes listed as the cgroup's top memory users.
const TOP_USERS: usize = 5;

/// One sample of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: f64,
    pub rss_kb: u64,
    pub vsz_kb: u64,
    pub minflt: u64,
    pub majflt: u64,
    /// All its stall time so far (every kind), where stalls are timed.
    pub stall_ns: Option<u64>,
}

/// A process's samples, oldest first.
#[derive(Debug)]
struct Ring {
    /// Its start time: a reused pid is another process.
    starttime: u64,
    samples: VecDeque<Sample>,
}

/// A memory cgroup with a limit, found by the last scan.
#[derive(Debug)]
struct LimitedCgroup {
    dir: PathBuf,
    /// Its directory and its descendants' (their processes count against its limit).
    dirs: Vec<PathBuf>,
    limit_bytes: u64,
}

pub struct HistorySampler {
    /// How far back a kill's history goes.
    window: Duration,
    hierarchy: Option<MemoryHierarchy>,
    page_kb: u64,
    rings: HashMap<u32, Ring>,
    /// Sampled at every sample until the next scan.
    candidates: HashSet<u32>,
    /// Every process at the last sample.
    known: HashSet<u32>,
    limited: Vec<LimitedCgroup>,
    /// New processes made candidates since the last scan.
    new_taken: usize,
    /// Stall totals at the last sample.
    stalls: HashMap<u32, u64>,
    samples: u64,
    ticker: Interval,
}

impl HistorySampler {
    /// A sampler whose first sample is due now (within a tokio runtime).
    pub fn new(window: Duration, hierarchy: Option<MemoryHierarchy>) -> HistorySampler {
        let mut ticker = interval_at(Instant::now(), SAMPLE_EVERY);
        // A late sample is taken at once, and the next a period after it: never two in a row.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        HistorySampler {
            window,
            hierarchy,
            page_kb: procfs::page_kb(),
            rings: HashMap::new(),
            candidates: HashSet::new(),
            known: HashSet::new(),
            limited: Vec::new(),
            new_taken: 0,
            stalls: HashMap::new(),
            samples: 0,
            ticker,
        }
    }

    /// Resolves when the next sample is due.
    pub async fn due(&mut self) {
        self.ticker.tick().await;
    }

    /// One sample. `stalls`: every process's stall time so far (ns) where stalls are timed;
    /// `None` where they are not. Returns the processes gone since the last sample.
    pub fn sample(&mut self, stalls: Option<HashMap<u32, u64>>) -> Vec<u32> {
        let now = Timestamp::now().unix;
        let alive = list_processes();
        let born: Vec<u32> = if self.samples == 0 {
            Vec::new()
        } else {
            alive.difference(&self.known).copied().collect()
        };
        let gone: Vec<u32> = self.known.difference(&alive).copied().collect();
        let stalled: Vec<u32> = stalls.as_ref().map_or_else(Vec::new, |now| {
            now.iter()
                .filter(|&(pid, total)| self.stalls.get(pid) != Some(total))
                .map(|(&pid, _)| pid)
                .collect()
        });
        if self.samples.is_multiple_of(SCAN_EVERY) || self.memory_is_tight() {
            self.scan();
        } else {
            self.take_new(born);
        }
        self.candidates.extend(stalled);
        for &pid in &self.candidates {
            let Ok(stat) = procfs::read_stat(pid) else {
                continue;
            };
            let sample = Sample {
                // Stamped once read: a sample read after a kill must not count as before it
                // (the victim's memory is being torn down by then).
                at: Timestamp::now().unix,
                rss_kb: stat.rss_pages * self.page_kb,
                vsz_kb: stat.vsize / 1024,
                minflt: stat.minflt,
                majflt: stat.majflt,
                stall_ns: stalls.as_ref().map(|s| s.get(&pid).copied().unwrap_or(0)),
            };
            let ring = self.rings.entry(pid).or_insert_with(|| Ring {
                starttime: stat.starttime,
                samples: VecDeque::new(),
            });
            if ring.starttime != stat.starttime {
                *ring = Ring {
                    starttime: stat.starttime,
                    samples: VecDeque::new(),
                };
            }
            ring.samples.push_back(sample);
        }
        // Older samples go; so does a process no longer sampled, once its last sample has.
        let oldest = now - self.window.as_secs_f64() - SAMPLE_EVERY.as_secs_f64();
        self.rings.retain(|_, ring| {
            while ring.samples.front().is_some_and(|s| s.at < oldest) {
                ring.samples.pop_front();
            }
            !ring.samples.is_empty()
        });
        if let Some(stalls) = stalls {
            self.stalls = stalls;
        }
        self.known = alive;
        self.samples += 1;
        gone
    }

    /// A limited cgroup near its limit, or the machine low on available memory.
    fn memory_is_tight(&self) -> bool {
        let near = |cgroup: &LimitedCgroup| {
            let usage = self.hierarchy.as_ref().and_then(|h| {
                fs::read_to_string(cgroup.dir.join(h.version.usage_file()))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
            usage.is_some_and(|usage| usage as f64 >= cgroup.limit_bytes as f64 * NEAR_LIMIT)
        };
        self.limited.iter().any(near) || machine_is_low()
    }

    /// Processes born since the last sample join the candidates, up to [`MAX_NEW`] between
    /// scans.
    fn take_new(&mut self, born: Vec<u32>) {
        let taken = born.len().min(MAX_NEW - self.new_taken);
        self.candidates.extend(born.into_iter().take(taken));
        self.new_taken += taken;
    }

    /// Finds the likely victims again: every process's size, every limited cgroup's members.
    fn scan(&mut self) {
        let sizes: HashMap<u32, u64> = list_processes()
            .into_iter()
            .filter_map(|pid| Some((pid, procfs::memory_kb(pid)?.1)))
            .collect();
        let mut chosen = biggest(sizes.keys().copied(), &sizes, MACHINE_TOP);
        self.limited = self.limited_cgroups();
        for cgroup in &self.limited {
            let members: Vec<u32> = cgroup
                .dirs
                .iter()
                .flat_map(|dir| cgroup::procs_in(dir))
                .collect();
            let used_kb: u64 = members.iter().filter_map(|pid| sizes.get(pid)).sum();
            let near = used_kb as f64 * 1024.0 >= cgroup.limit_bytes as f64 * NEAR_LIMIT;
            let top = if near { NEAR_LIMIT_TOP } else { CGROUP_TOP };
            chosen.extend(biggest(members.into_iter(), &sizes, top));
        }
        self.candidates = chosen.into_iter().collect();
        self.new_taken = 0;
    }

    /// Every memory cgroup with a limit below the machine's memory, with its descendants.
    fn limited_cgroups(&self) -> Vec<LimitedCgroup> {
        let Some(hierarchy) = &self.hierarchy else {
            return Vec::new();
        };
        let machine = machine_memory().map_or(u64::MAX, |(total, _)| total * 1024);
        let all = hierarchy.subtree("/");
        all.iter()
            .filter_map(|(dir, path)| {
                let limit = fs::read_to_string(dir.join(hierarchy.version.limit_file())).ok()?;
                match cgroup::parse_limit(&limit)? {
                    Limit::Bytes(bytes) if bytes < machine => Some(LimitedCgroup {
                        dir: dir.clone(),
                        dirs: all
                            .iter()
                            .filter(|(_, inner)| cgroup::is_within(inner, path))
                            .map(|(dir, _)| dir.clone())
                            .collect(),
                        limit_bytes: bytes,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// The victim's history, oldest first, as of a kill at `kill_unix`.
    pub fn history_of(&self, pid: u32, kill_unix: f64) -> Vec<HistoryPoint> {
        let Some(ring) = self.rings.get(&pid) else {
            return Vec::new();
        };
        let samples: Vec<Sample> = ring
            .samples
            .iter()
            .filter(|s| s.at <= kill_unix && kill_unix - s.at <= self.window.as_secs_f64())
            .copied()
            .collect();
        points(&samples, kill_unix)
    }

    /// Fills in a kill's history and its cgroup's top memory users.
    pub fn complete(&self, kill: &mut Kill) {
        kill.victim.history = Some(self.history_of(kill.victim.pid, kill.time.unix));
        kill.cgroup.top_users = Some(match (&self.hierarchy, &kill.cgroup.path) {
            (Some(hierarchy), Some(path)) => top_users(hierarchy, path, kill.victim.pid),
            _ => Vec::new(),
        });
    }
}

/// The history points of a process's samples: sizes as sampled, counts since the sample before.
pub fn points(samples: &[Sample], kill_unix: f64) -> Vec<HistoryPoint> {
    let mut points = Vec::with_capacity(samples.len());
    let mut before: Option<&Sample> = None;
    for sample in samples {
        points.push(HistoryPoint {
            t: kill_unix - sample.at,
            rss_kb: sample.rss_kb,
            vsz_kb: sample.vsz_kb,
            minor_faults: before.map(|b| sample.minflt.saturating_sub(b.minflt)),
            major_faults: before.map(|b| sample.majflt.saturating_sub(b.majflt)),
            alloc_kb: before.map(|b| sample.vsz_kb as i64 - b.vsz_kb as i64),
            reclaim_stall_ms: before.and_then(|b| {
                let ns = sample.stall_ns?.saturating_sub(b.stall_ns?);
                Some(ns as f64 / 1e6)
            }),
        });
        before = Some(sample);
    }
    points
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
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `MemTotal` and `MemAvailable`, in KiB.
fn machine_memory() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

fn machine_is_low() -> bool {
    machine_memory()
        .is_some_and(|(total, available)| (available as f64) < total as f64 * MACHINE_LOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, rss_kb: u64, vsz_kb: u64, minflt: u64, stall_ns: Option<u64>) -> Sample {
        Sample {
            at,
            rss_kb,
            vsz_kb,
            minflt,
            majflt: 0,
            stall_ns,
        }
    }

    #[test]
    fn points_count_since_the_sample_before_and_time_back_from_the_kill() {
        let samples = [
            sample(100.0, 1000, 5000, 10, Some(0)),
            sample(101.0, 5096, 9096, 1034, Some(2_000_000)),
            sample(102.0, 4000, 8000, 1040, Some(2_500_000)),
        ];
        let points = points(&samples, 102.5);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0].t, 2.5);
        assert_eq!(points[0].minor_faults, None, "nothing before the first");
        assert_eq!(points[1].minor_faults, Some(1024));
        assert_eq!(points[1].alloc_kb, Some(4096));
        assert_eq!(points[1].reclaim_stall_ms, Some(2.0));
        assert_eq!(
            points[2].alloc_kb,
            Some(-1096),
            "unmapping shows as negative"
        );
        assert_eq!(points[2].reclaim_stall_ms, Some(0.5));
        assert_eq!(points[2].t, 0.5);
    }

    #[test]
    fn without_timed_stalls_there_is_no_stall_figure() {
        let samples = [sample(1.0, 1, 1, 0, None), sample(2.0, 1, 1, 0, None)];
        assert_eq!(points(&samples, 2.0)[1].reclaim_stall_ms, None);
    }

    #[test]
    fn the_biggest_come_first_and_unknown_sizes_are_left_out() {
        let sizes = HashMap::from([(1, 10), (2, 30), (3, 20)]);
        assert_eq!(biggest([1, 2, 3, 4].into_iter(), &sizes, 2), vec![2, 3]);
    }
}
