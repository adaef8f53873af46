//! What led up to an OOM kill: the last ~30 s of the victim's memory, sampled from `/proc`, and
//! the victim cgroup's biggest memory users at the kill.
//!
//! Sampling every process every second would cost a read per process per second for weeks, to
//! use one process's samples on the day of a kill: only the likely victims are sampled, and
//! only those in danger every second (`watch`). Each sample of a process is one `pread` of its
//! `/proc/PID/stat`, kept open: resident memory and virtual size, fault counts, start time; its
//! stall time comes from the `pressure` object's table.
//!
//! `kmem:rss_stat` would give every RSS change from the kernel, but it fires in the context of
//! whoever changed the counter (a reclaimer, the OOM reaper) and names the mm by an id that is
//! reused: it needs the mm-to-process mapping this sampling gets from `/proc` for free, and it
//! fires on the fault path of every process, which `oom` must not slow.

mod watch;

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};

use self::watch::Watch;
use crate::{
    bpf::oom::NewProcesses,
    cgroup::MemoryHierarchy,
    model::oom::{HistoryPoint, Kill},
    output::Timestamp,
    procfs,
};

/// How often the sampler looks (urgent candidates are sampled each time, the others less often).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

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

pub struct HistorySampler {
    /// How far back a kill's history goes.
    window: Duration,
    page_kb: u64,
    rings: HashMap<u32, Ring>,
    watch: Watch,
    /// The kernel's word of each `exec`.
    new_processes: NewProcesses,
    /// Stall totals at the last sample.
    stalls: HashMap<u32, u64>,
    ticker: Interval,
}

impl HistorySampler {
    /// A sampler whose first sample is due now (within a tokio runtime).
    pub fn new(
        window: Duration,
        hierarchy: Option<MemoryHierarchy>,
        new_processes: NewProcesses,
    ) -> HistorySampler {
        let mut ticker = interval_at(Instant::now(), SAMPLE_EVERY);
        // A late sample is taken at once, and the next a period after it: never two in a row.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        HistorySampler {
            window,
            page_kb: procfs::page_kb(),
            rings: HashMap::new(),
            watch: Watch::new(hierarchy),
            new_processes,
            stalls: HashMap::new(),
            ticker,
        }
    }

    /// Resolves when the next sample is due.
    pub async fn due(&mut self) {
        self.ticker.tick().await;
    }

    /// One look: the due candidates sampled. `stalls`: every process's stall time so far (ns),
    /// where stalls are timed. Returns the processes gone since the last scan.
    pub fn sample(&mut self, stalls: Option<HashMap<u32, u64>>) -> Vec<u32> {
        let born = self.new_processes.drain();
        let stalled: Vec<u32> = stalls.as_ref().map_or_else(Vec::new, |now| {
            now.iter()
                .filter(|&(pid, total)| self.stalls.get(pid) != Some(total))
                .map(|(&pid, _)| pid)
                .collect()
        });
        let gone = self.watch.tick(born, stalled);
        let page_kb = self.page_kb;
        let mut ended = Vec::new();
        for (pid, candidate) in self.watch.due() {
            let Some(stat) = candidate.stat.read().ok().and_then(procfs::parse_stat) else {
                ended.push(pid);
                continue;
            };
            let sample = Sample {
                // Stamped once read: a sample read after a kill must not count as before it
                // (the victim's memory is being torn down by then).
                at: Timestamp::now().unix,
                rss_kb: stat.rss_pages * page_kb,
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
                ring.starttime = stat.starttime;
                ring.samples.clear();
            }
            ring.samples.push_back(sample);
        }
        for pid in ended {
            self.watch.forget(pid);
        }
        // Older samples go; so does a process no longer sampled, once its last sample has.
        let oldest = Timestamp::now().unix
            - self.window.as_secs_f64()
            - (SAMPLE_EVERY * watch::CALM_EVERY as u32).as_secs_f64();
        self.rings.retain(|_, ring| {
            while ring.samples.front().is_some_and(|s| s.at < oldest) {
                ring.samples.pop_front();
            }
            !ring.samples.is_empty()
        });
        if let Some(stalls) = stalls {
            self.stalls = stalls;
        }
        gone
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
        kill.cgroup.top_users = Some(match (self.watch.hierarchy(), &kill.cgroup.path) {
            (Some(hierarchy), Some(path)) => watch::top_users(hierarchy, path, kill.victim.pid),
            _ => Vec::new(),
        });
    }
}

/// Resolves when the sampler's next sample is due; never, without one (`--history 0`).
pub async fn next_sample(sampler: &mut Option<HistorySampler>) {
    match sampler {
        Some(sampler) => sampler.due().await,
        None => std::future::pending().await,
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
}
