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

use self::watch::{Due, Watch};
use crate::{
    bpf::oom::NewProcesses,
    model::oom::{HistoryPoint, Kill},
    model::time::Timestamp,
    sys::{cgroup::MemoryHierarchy, procfs},
};

/// How often the sampler looks (urgent candidates are sampled each time, the others less often).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How often a candidate growing fast is sampled, and a new process until its second sample
/// says whether it does: fast runaway growth, the common OOM, reaches its limit in a second or
/// two, which would leave a history of one sample at [`SAMPLE_EVERY`].
pub const FAST_EVERY: Duration = Duration::from_millis(100);

/// Growth at which a candidate is sampled every [`FAST_EVERY`]: at 16 MiB/s a 64 MiB cgroup
/// fills in 4 s.
const FAST_GROWTH_KB_PER_S: f64 = 16.0 * 1024.0;

/// Fast samples are kept this long before the kill; older ones are thinned to one a
/// [`SAMPLE_EVERY`], so that a process growing fast for minutes keeps a history of the usual
/// size.
const FAST_SPAN: Duration = Duration::from_secs(3);

/// Samples of one process closer than this are one too many (but for a birth's).
const MIN_APART: Duration = Duration::from_millis(20);

/// Births are looked at in batches at least this far apart: a machine starting a thousand
/// programs a second wakes the sampler a hundred times, not a thousand, and each new program
/// still has its first sample within this of its `exec`.
const BIRTHS_APART: Duration = Duration::from_millis(10);

/// What the sampler is woken for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Look {
    /// The regular look: scans, urgent candidates, and every candidate now and then.
    Regular,
    /// The candidates growing fast.
    Fast,
    /// Processes the kernel says were just started: their first sample.
    Births,
}

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
    /// Stall totals at the last regular look.
    stalls: HashMap<u32, u64>,
    ticker: Interval,
    /// When the candidates growing fast are due, while there are some.
    next_fast: Option<Instant>,
    /// What the wake `due` returned for is.
    look: Look,
    /// When births may wake the sampler again.
    next_births: Instant,
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
            next_fast: None,
            look: Look::Regular,
            next_births: Instant::now(),
        }
    }

    /// Resolves when the next sample is due: the regular look, the fast growers' turn, or a
    /// process started.
    pub async fn due(&mut self) {
        let next_fast = self.next_fast;
        let fast = async move {
            match next_fast {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next_births = self.next_births;
        let new_processes = &mut self.new_processes;
        let births = async move {
            tokio::time::sleep_until(next_births).await;
            new_processes.started().await;
        };
        self.look = tokio::select! {
            _ = self.ticker.tick() => Look::Regular,
            () = fast => Look::Fast,
            () = births => Look::Births,
        };
        if self.look == Look::Births {
            self.next_births = Instant::now() + BIRTHS_APART;
        }
    }

    /// One look: the due candidates sampled. `stalls`: every process's stall time so far (ns),
    /// where stalls are timed. Returns the processes gone since the last scan.
    pub fn sample(&mut self, stalls: Option<HashMap<u32, u64>>) -> Vec<u32> {
        let look = std::mem::replace(&mut self.look, Look::Regular);
        let (gone, due) = match look {
            Look::Regular => {
                let born = self.new_processes.drain();
                let stalled: Vec<u32> = stalls.as_ref().map_or_else(Vec::new, |now| {
                    now.iter()
                        .filter(|&(pid, total)| self.stalls.get(pid) != Some(total))
                        .map(|(&pid, _)| pid)
                        .collect()
                });
                (self.watch.tick(born, stalled), Due::Regular)
            }
            Look::Fast => (Vec::new(), Due::Fast),
            Look::Births => {
                let born = self.new_processes.drain();
                (Vec::new(), Due::Only(self.watch.born(born)))
            }
        };
        let page_kb = self.page_kb;
        let mut ended = Vec::new();
        let now = Timestamp::now().unix;
        for (pid, candidate) in self.watch.due(&due) {
            // A look right after another (a birth, then the regular tick) adds nothing.
            let recent = self
                .rings
                .get(&pid)
                .and_then(|ring| ring.samples.back())
                .is_some_and(|last| now - last.at < MIN_APART.as_secs_f64());
            if recent && look != Look::Births {
                continue;
            }
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
            // A birth's sample starts the new program's growth: it says nothing of its rate.
            if let Some(&before) = ring.samples.back()
                && look != Look::Births
            {
                candidate.fast = grows_fast(&before, &sample);
            }
            ring.samples.push_back(sample);
            thin(&mut ring.samples, sample.at - FAST_SPAN.as_secs_f64());
        }
        for pid in ended {
            self.watch.forget(pid);
        }
        self.next_fast = self.watch.any_fast().then(|| Instant::now() + FAST_EVERY);
        if look != Look::Regular {
            return gone;
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

/// Whether a process grew fast enough between two samples to be sampled every [`FAST_EVERY`].
fn grows_fast(before: &Sample, after: &Sample) -> bool {
    let seconds = after.at - before.at;
    let grown_kb = after.rss_kb.saturating_sub(before.rss_kb) as f64;
    seconds > 0.0 && grown_kb / seconds >= FAST_GROWTH_KB_PER_S
}

/// Thins the samples taken before `fast_since` (the last one excepted) to one a
/// [`SAMPLE_EVERY`], keeping the oldest of each run: counts stay cumulative, so the history's
/// deltas are those between the samples kept.
fn thin(samples: &mut VecDeque<Sample>, fast_since: f64) {
    let spacing = SAMPLE_EVERY.as_secs_f64() * 0.9;
    let mut kept: Option<f64> = None;
    let last = samples.len().saturating_sub(1);
    let mut i = 0;
    samples.retain(|sample| {
        let keep = i == last
            || sample.at >= fast_since
            || kept.is_none_or(|kept| sample.at - kept >= spacing);
        if keep {
            kept = Some(sample.at);
        }
        i += 1;
        keep
    });
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

    #[test]
    fn fast_growth_is_judged_by_rate_and_old_fast_samples_are_thinned() {
        let at = |t: f64, rss_kb: u64| sample(t, rss_kb, rss_kb, 0, None);
        assert!(grows_fast(&at(0.0, 1024), &at(0.1, 4096)), "30 MiB/s");
        assert!(!grows_fast(&at(0.0, 1024), &at(1.0, 4096)), "3 MiB/s");
        assert!(!grows_fast(&at(0.0, 9000), &at(0.1, 1024)), "shrinking");

        // Ten seconds at ten samples a second: the last FAST_SPAN kept whole, the rest one a
        // second, the oldest kept.
        let mut samples: VecDeque<Sample> = (0..100).map(|i| at(f64::from(i) / 10.0, 1)).collect();
        thin(&mut samples, 9.9 - FAST_SPAN.as_secs_f64());
        let kept: Vec<f64> = samples.iter().map(|s| s.at).collect();
        assert_eq!(kept[0], 0.0);
        let (old, recent): (Vec<f64>, Vec<f64>) = kept.iter().partition(|&&t| t < 6.9 - 1e-9);
        assert!(old.windows(2).all(|w| w[1] - w[0] >= 0.9 - 1e-9), "{old:?}");
        assert!(old.len() <= 8, "{old:?}");
        assert_eq!(recent.len(), 31, "{recent:?}");
    }
}
