//! `memtrace top`'s figures: each live process's rates over the last interval (from what the
//! kernel counted and what `/proc` says of its memory), a short history of each for the detail
//! view, and the same summed per cgroup. Pure: the command feeds it readings.

use std::collections::{HashMap, HashSet, VecDeque};

/// How many intervals of history a process keeps (two minutes at the default 1 s).
pub const HISTORY: usize = 120;

/// What the kernel counted for one process during an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counted {
    pub minor: u64,
    pub major: u64,
    /// Allocation syscalls (brk, mmap, munmap, mremap, ...).
    pub allocs: u64,
    /// Time its tasks stalled in reclaim, compaction or reclaim throttling.
    pub stall_ns: u64,
}

impl Counted {
    fn add(&mut self, other: Counted) {
        self.minor += other.minor;
        self.major += other.major;
        self.allocs += other.allocs;
        self.stall_ns += other.stall_ns;
    }
}

/// A live process as `/proc` shows it at the end of an interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub rss_kb: u64,
    /// Its memory cgroup's path in the hierarchy ("" where unknown).
    pub cgroup: String,
}

/// Per-second rates over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub minor: f64,
    pub major: f64,
    pub allocs: f64,
    /// Milliseconds stalled per second.
    pub stall_ms: f64,
}

impl Rates {
    fn of(counted: Counted, seconds: f64) -> Rates {
        Rates {
            minor: counted.minor as f64 / seconds,
            major: counted.major as f64 / seconds,
            allocs: counted.allocs as f64 / seconds,
            stall_ms: counted.stall_ns as f64 / 1e6 / seconds,
        }
    }
}

/// One process's row.
#[derive(Clone, Debug, PartialEq)]
pub struct Process {
    pub seen: Seen,
    /// Resident memory growth, KiB per second (negative when it shrank).
    pub rss_growth: f64,
    pub rates: Rates,
    /// Everything counted since `top` first saw it.
    pub total: Counted,
    /// Faults per second (minor and major) and RSS (KiB), oldest first.
    pub faults_history: VecDeque<f64>,
    pub rss_history: VecDeque<u64>,
}

/// One cgroup's row: its live processes' memory, and what all its processes (those that
/// exited during the interval too) were counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cgroup {
    pub path: String,
    pub processes: usize,
    pub rss_kb: u64,
    pub rates: Rates,
}

/// The live processes, by pid.
#[derive(Debug, Default)]
pub struct Table {
    processes: HashMap<u32, Process>,
    cgroups: Vec<Cgroup>,
}

impl Table {
    /// One interval of `seconds`: `seen` is every live process (those missing have exited),
    /// `counted` what the kernel counted per pid, `recorded_cgroup` the cgroup the kernel
    /// recorded for a pid no longer live (so its last counts still land in its cgroup).
    pub fn update(
        &mut self,
        seen: Vec<Seen>,
        counted: &HashMap<u32, Counted>,
        mut recorded_cgroup: impl FnMut(u32) -> Option<String>,
        seconds: f64,
    ) {
        let seconds = seconds.max(1e-3);
        let mut cgroups: HashMap<String, Cgroup> = HashMap::new();
        let mut live = HashMap::with_capacity(seen.len());
        for seen in seen {
            let pid = seen.pid;
            let now = counted.get(&pid).copied().unwrap_or_default();
            let mut process = match self.processes.remove(&pid) {
                // The same process only if its name is kept; an exec or a reused pid starts over.
                Some(mut old) if old.seen.comm == seen.comm => {
                    old.rss_growth = (seen.rss_kb as f64 - old.seen.rss_kb as f64) / seconds;
                    old.seen = seen;
                    old.rates = Rates::of(now, seconds);
                    old.total.add(now);
                    old
                }
                _ => Process {
                    seen,
                    rss_growth: 0.0,
                    rates: Rates::of(now, seconds),
                    total: now,
                    faults_history: VecDeque::new(),
                    rss_history: VecDeque::new(),
                },
            };
            push_bounded(
                &mut process.faults_history,
                process.rates.minor + process.rates.major,
            );
            push_bounded(&mut process.rss_history, process.seen.rss_kb);
            let cgroup = cgroups.entry(process.seen.cgroup.clone()).or_default();
            cgroup.processes += 1;
            cgroup.rss_kb += process.seen.rss_kb;
            add_rates(&mut cgroup.rates, process.rates);
            live.insert(pid, process);
        }
        // What exited during the interval: its counts go to its cgroup's row.
        for (&pid, &now) in counted.iter().filter(|(pid, _)| !live.contains_key(pid)) {
            let path = self
                .processes
                .get(&pid)
                .map(|gone| gone.seen.cgroup.clone())
                .or_else(|| recorded_cgroup(pid))
                .unwrap_or_default();
            add_rates(
                &mut cgroups.entry(path).or_default().rates,
                Rates::of(now, seconds),
            );
        }
        self.processes = live;
        self.cgroups = cgroups
            .into_iter()
            .map(|(path, mut cgroup)| {
                cgroup.path = path;
                cgroup
            })
            .collect();
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    pub fn cgroups(&self) -> &[Cgroup] {
        &self.cgroups
    }
}

/// `roots` and their descendants among `seen` (listed in any order).
pub fn family(seen: &[Seen], roots: &[u32]) -> HashSet<u32> {
    let mut family: HashSet<u32> = roots.iter().copied().collect();
    // Parents before children is not guaranteed: widen until nothing is added.
    loop {
        let before = family.len();
        let children: Vec<u32> = seen
            .iter()
            .filter(|s| family.contains(&s.ppid))
            .map(|s| s.pid)
            .collect();
        family.extend(children);
        if family.len() == before {
            return family;
        }
    }
}

fn add_rates(sum: &mut Rates, rates: Rates) {
    sum.minor += rates.minor;
    sum.major += rates.major;
    sum.allocs += rates.allocs;
    sum.stall_ms += rates.stall_ms;
}

fn push_bounded<T>(history: &mut VecDeque<T>, value: T) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: u32, comm: &str, rss_kb: u64, cgroup: &str) -> Seen {
        Seen {
            pid,
            ppid: 1,
            comm: comm.into(),
            rss_kb,
            cgroup: cgroup.into(),
        }
    }

    fn faults(minor: u64) -> Counted {
        Counted {
            minor,
            ..Counted::default()
        }
    }

    #[test]
    fn rates_and_growth_are_per_second_of_the_interval() {
        let mut table = Table::default();
        table.update(
            vec![seen(7, "a", 1000, "/x")],
            &HashMap::new(),
            |_| None,
            1.0,
        );
        let counted = HashMap::from([(7, faults(500))]);
        table.update(vec![seen(7, "a", 3000, "/x")], &counted, |_| None, 2.0);
        let row = table.process(7).unwrap();
        assert_eq!(row.rates.minor, 250.0);
        assert_eq!(row.rss_growth, 1000.0);
        assert_eq!(row.total.minor, 500);
        assert_eq!(row.rss_history, [1000, 3000]);
    }

    #[test]
    fn a_renamed_process_starts_over_and_an_exited_one_counts_in_its_cgroup() {
        let mut table = Table::default();
        table.update(
            vec![seen(7, "sh", 10, "/x"), seen(8, "b", 20, "/x")],
            &HashMap::new(),
            |_| None,
            1.0,
        );
        let counted = HashMap::from([(7, faults(4)), (8, faults(6)), (9, faults(10))]);
        table.update(
            vec![seen(7, "make", 10, "/x")],
            &counted,
            |pid| (pid == 9).then(|| "/y".into()),
            1.0,
        );
        assert_eq!(table.process(7).unwrap().total.minor, 4);
        assert!(table.process(8).is_none());
        let by_path: HashMap<&str, &Cgroup> = table
            .cgroups()
            .iter()
            .map(|c| (c.path.as_str(), c))
            .collect();
        assert_eq!(by_path["/x"].rates.minor, 10.0);
        assert_eq!(by_path["/x"].processes, 1);
        assert_eq!(by_path["/y"].rates.minor, 10.0);
        assert_eq!(by_path["/y"].processes, 0);
    }

    #[test]
    fn descendants_include_grandchildren_listed_first() {
        let child = |pid, ppid| Seen {
            ppid,
            ..seen(pid, "c", 1, "")
        };
        let seen = [child(30, 20), child(20, 10), child(10, 1), child(40, 1)];
        let family = family(&seen, &[10]);
        assert_eq!(family.len(), 3);
        assert!(!family.contains(&40));
    }

    #[test]
    fn history_is_bounded() {
        let mut table = Table::default();
        for _ in 0..HISTORY + 5 {
            table.update(vec![seen(1, "a", 1, "")], &HashMap::new(), |_| None, 1.0);
        }
        assert_eq!(table.process(1).unwrap().rss_history.len(), HISTORY);
    }
}
