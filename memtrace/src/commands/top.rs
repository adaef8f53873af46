//! `memtrace top`: the machine counted in the kernel (`pipelines::machine`, as `serve` does),
//! read every interval with what `/proc` says of each process's memory (`aggregate::top`),
//! drawn full-screen (`output::top`), with OOM kills shown as they happen until dismissed.
//!
//! Flow: flags → the terminal taken (a usage error without one) → the kernel objects loaded →
//! each tick reads the kernel's per-process counts and `/proc`, retires exited processes and
//! draws; each key changes the view and draws; each OOM kill is resolved with its history →
//! `q`, Ctrl-C, SIGTERM, `--duration` or the `--pid`s exiting: the terminal is given back and
//! one line of summary printed.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use memtrace_common::{faults::MAX_FAULT_KEYS, targets::TargetFlags};
use ratatui::crossterm::event::Event;
use tokio::{
    sync::mpsc,
    time::{Instant, Interval, MissedTickBehavior, interval_at},
};

use crate::{
    aggregate::top::{self, Counted, Seen, Table},
    bpf::{
        oom::OomEvents,
        targets::{Filter, TargetTable as _},
        tracepoints::Release,
    },
    cli::TopArgs,
    enrich::{cgroups::CgroupResolver, history::HistorySampler, oom::KillResolver},
    leaks::resident::{self, Resident},
    model::{
        oom::{Kill, OomRecord},
        stacks::{StackLosses, StackRow},
    },
    output::{
        Format, Sink,
        top::{
            Action, View,
            render::{self, Header, Shown},
            terminal::{self, Screen},
        },
    },
    pipelines::{
        attributed::{Attributed, Attribution},
        machine::{self, Machine},
    },
    session::{self, End, Ending, Job, Session, Target},
    sys::{
        cgroup::{self, MemoryHierarchy},
        procfs,
    },
};

/// How far back an OOM victim's history goes.
const VICTIM_HISTORY: Duration = Duration::from_secs(30);

/// Mappings the detail view lists.
const DETAIL_MAPPINGS: usize = 12;

/// Stacks the detail view lists (with `--stacks`), and the kernel's capacity for them.
const DETAIL_STACKS: usize = 5;
const DETAIL_STACK_TABLE: u32 = 4096;

pub async fn execute(args: TopArgs) -> anyhow::Result<u8> {
    // Bad input first, and before the terminal is taken, so the error is seen.
    terminal::require()?;
    let hierarchy = cgroup::memory_hierarchy();
    let cgroup = super::cgroup_filter(args.cgroup.as_deref(), hierarchy.as_ref())?;
    let session = Session::open(&session::Options {
        target: if args.pids.is_empty() {
            Target::System
        } else {
            Target::Pids(args.pids.clone())
        },
        format: Format::Human,
        output: None,
        duration: args.duration,
    })?;
    let narrow = Narrowing {
        pids: session.watched().pids(),
        comm: args.comm,
        cgroup,
    };
    let mut machine = Machine::load(machine::Options {
        max_processes: args.max_processes.unwrap_or(MAX_FAULT_KEYS),
        births: true,
    })?;
    // The kernel counts from here: the first reading's rates are over the time since.
    let attached = std::time::Instant::now();
    let oom_events = machine.oom_events()?;
    let history = HistorySampler::new(VICTIM_HISTORY, hierarchy.clone(), machine.new_processes()?);
    let screen = Screen::open()?;
    let mut ticker = interval_at(Instant::now() + args.interval, args.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut top = Top {
        machine: Some(machine),
        oom_events: Some(oom_events),
        kills: KillResolver::new(hierarchy.clone(), None),
        history,
        cgroups: CgroupResolver::new(hierarchy.clone()),
        hierarchy,
        known_cgroups: HashMap::new(),
        narrow,
        table: Table::default(),
        view: View::default(),
        header: Header {
            interval_s: args.interval.as_secs_f64(),
            ..Header::default()
        },
        psi_total_us: None,
        meminfo: procfs::LiveFile::open("/proc/meminfo").ok(),
        pressure: procfs::LiveFile::open("/proc/pressure/memory").ok(),
        primed: false,
        departed: HashMap::new(),
        kills_shown: Vec::new(),
        kills_seen: 0,
        mappings: Vec::new(),
        stacks: args.stacks.then(DetailStacks::default),
        ticker,
        events: terminal::events()?,
        last_reading: attached,
        colour: !terminal::colourless(),
        screen: Some(screen),
    };
    // A first reading at once: the screen is never empty, and rates start from here.
    top.read()?;
    top.draw()?;
    session.run(top).await
}

/// What the flags narrow the view to (the kernel counts every process regardless: the cost
/// of counting is in the programs, not in how many processes are shown).
struct Narrowing {
    /// `--pid`s, with their descendants.
    pids: Vec<u32>,
    comm: Option<String>,
    /// `--cgroup`, as a path in the hierarchy.
    cgroup: Option<String>,
}

struct Top {
    /// `None` once released.
    machine: Option<Machine>,
    oom_events: Option<OomEvents>,
    kills: KillResolver,
    history: HistorySampler,
    cgroups: CgroupResolver,
    hierarchy: Option<MemoryHierarchy>,
    /// Each live process's cgroup, resolved once (pid and start time: pids are reused).
    known_cgroups: HashMap<(u32, u64), String>,
    narrow: Narrowing,
    table: Table,
    view: View,
    header: Header,
    psi_total_us: Option<(u64, u64)>,
    /// `/proc/meminfo` and `/proc/pressure/memory`, kept open (`None` where absent: no PSI).
    meminfo: Option<procfs::LiveFile>,
    pressure: Option<procfs::LiveFile>,
    /// Whether a reading was taken (the first one gives no rates).
    primed: bool,
    /// The memory cgroup ids the kernel recorded for the processes the last reading retired.
    departed: HashMap<u32, u64>,
    /// OOM kills not yet dismissed: the kill line and what led to it.
    kills_shown: Vec<(String, String)>,
    kills_seen: u64,
    mappings: Vec<Resident>,
    /// With `--stacks`: the open detail's fault stacks.
    stacks: Option<DetailStacks>,
    ticker: Interval,
    events: mpsc::UnboundedReceiver<Event>,
    last_reading: std::time::Instant,
    colour: bool,
    /// Given back (dropped) at the end, before the summary is printed.
    screen: Option<Screen>,
}

/// The stacks object attached to the process whose detail is open, and what it found.
#[derive(Default)]
struct DetailStacks {
    attached: Option<(u32, Attributed)>,
    rows: Vec<StackRow>,
    losses: StackLosses,
}

impl DetailStacks {
    /// Follows the detail: attached to the process it shows, detached when it closes.
    fn follow(&mut self, detail: Option<u32>) -> anyhow::Result<()> {
        if self.attached.as_ref().map(|(pid, _)| *pid) == detail {
            return Ok(());
        }
        if let Some((_, attributed)) = self.attached.take() {
            attributed.release();
        }
        self.rows.clear();
        self.losses = StackLosses::default();
        if let Some(pid) = detail {
            let filter = Filter::Targets {
                follow_forks: false,
            };
            let mut attributed = Attributed::load(filter, Attribution::Stack, DETAIL_STACK_TABLE)?;
            attributed.loaded.ebpf.insert(pid, TargetFlags::COUNT)?;
            self.attached = Some((pid, attributed));
        }
        Ok(())
    }

    /// Learns the stacks the kernel sent.
    fn drain(&mut self) {
        if let Some((_, attributed)) = &mut self.attached {
            attributed.drain();
        }
    }

    /// The busiest stacks so far.
    fn read(&mut self) -> anyhow::Result<()> {
        if let Some((_, attributed)) = &mut self.attached {
            attributed.drain();
            (self.rows, self.losses) = attributed.busiest_stacks(DETAIL_STACKS)?;
        }
        Ok(())
    }

    async fn readable(&mut self) -> anyhow::Result<()> {
        match &mut self.attached {
            Some((_, attributed)) => attributed.readable().await,
            None => std::future::pending().await,
        }
    }
}

enum Wake {
    Tick,
    Stacks(anyhow::Result<()>),
    Input(Option<Event>),
    Kills(Vec<OomRecord>),
    Sample,
}

impl Top {
    fn machine(&mut self) -> anyhow::Result<&mut Machine> {
        self.machine
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the kernel objects were released"))
    }

    /// One reading: the kernel's counts since the last one, every live process's memory, the
    /// header's figures; exited processes are retired from the kernel's tables.
    fn read(&mut self) -> anyhow::Result<()> {
        let seconds = self.last_reading.elapsed().as_secs_f64();
        self.last_reading = std::time::Instant::now();
        self.cgroups.new_reading();
        let reading = self.machine()?.read()?;
        let mut counted: HashMap<u32, Counted> = HashMap::new();
        let mut recorded: HashMap<u32, u64> = HashMap::new();
        for sample in &reading.faults {
            let entry = counted.entry(sample.tgid).or_default();
            entry.minor += sample.delta.minor;
            entry.major += sample.delta.major;
            recorded.insert(sample.tgid, sample.memcg);
        }
        for (tgid, _, delta) in &reading.syscalls {
            counted.entry(*tgid).or_default().allocs += delta.calls;
        }
        for sample in &reading.stalls {
            counted.entry(sample.tgid).or_default().stall_ns += sample.delta.total_ns();
        }
        self.header.lost += reading.dropped.iter().map(|(_, n)| n).sum::<u64>();
        if !self.primed {
            // The first reading comes moments after the attach: rates over those milliseconds
            // would be noise. It only starts the counts; the first rates are at the first tick.
            counted.clear();
            self.primed = true;
        }

        let seen = self.scan();
        let live: HashSet<u32> = seen.iter().map(|s| s.pid).collect();
        // Counts of processes left out by the flags are not shown; those of processes that
        // exited go to their cgroup's row, and the processes are retired from the tables.
        let mut exited = Vec::new();
        counted.retain(|pid, _| {
            live.contains(pid) || {
                let gone = !procfs::is_alive(*pid);
                if gone {
                    exited.push(*pid);
                }
                gone
            }
        });
        let cgroups = &mut self.cgroups;
        self.table.update(
            seen,
            &counted,
            |pid| cgroups.path_of(pid, recorded.get(&pid).copied().unwrap_or(0)),
            seconds,
        );
        // An OOM victim's kill can be read after the tick that retired it: what the kernel
        // recorded of the processes retired now is kept until the next reading.
        self.departed = exited
            .iter()
            .filter_map(|pid| Some((*pid, *recorded.get(pid)?)))
            .collect();
        let machine = self.machine()?;
        for pid in exited {
            machine.retire(pid)?;
        }
        self.known_cgroups.retain(|(pid, _), _| live.contains(pid));
        self.read_header(seconds);
        self.mappings = match self.view.detail {
            Some(pid) => biggest_mappings(pid),
            None => Vec::new(),
        };
        if let Some(stacks) = &mut self.stacks {
            stacks.read()?;
        }
        Ok(())
    }

    /// Every live process the flags let through, from `/proc`.
    fn scan(&mut self) -> Vec<Seen> {
        let mut seen: Vec<Seen> = procfs::list_pids()
            .into_iter()
            .filter_map(|pid| procfs::read_stat(pid).ok())
            // Kernel threads have no memory of their own to show.
            .filter(|stat| stat.vsize > 0)
            .map(|stat| {
                let cgroup = match &self.hierarchy {
                    Some(hierarchy) => self
                        .known_cgroups
                        .entry((stat.pid, stat.starttime))
                        .or_insert_with(|| {
                            cgroup::read_proc_cgroup(stat.pid, hierarchy.version)
                                .unwrap_or_default()
                        })
                        .clone(),
                    None => String::new(),
                };
                Seen {
                    pid: stat.pid,
                    ppid: stat.ppid,
                    rss_kb: stat.rss_pages * procfs::page_kb(),
                    comm: stat.comm,
                    cgroup,
                }
            })
            .filter(|seen| {
                self.narrow
                    .comm
                    .as_ref()
                    .is_none_or(|comm| &seen.comm == comm)
                    && self
                        .narrow
                        .cgroup
                        .as_ref()
                        .is_none_or(|root| cgroup::is_within(&seen.cgroup, root))
            })
            .collect();
        if !self.narrow.pids.is_empty() {
            let family = top::family(&seen, &self.narrow.pids);
            seen.retain(|s| family.contains(&s.pid));
        }
        seen
    }

    fn read_header(&mut self, seconds: f64) {
        let header = &mut self.header;
        header.clock = crate::model::time::Timestamp::now().local_hms();
        if let Some(text) = self.meminfo.as_mut().and_then(|file| file.read().ok()) {
            let field = |name| procfs::meminfo_kb(text, name).unwrap_or(0);
            header.mem_total_kb = field("MemTotal");
            header.mem_available_kb = field("MemAvailable");
            header.swap_total_kb = field("SwapTotal");
            header.swap_free_kb = field("SwapFree");
        }
        // PSI over the interval itself, from the kernel's stall totals: avg10 lags by seconds.
        let psi = (self.pressure.as_mut())
            .and_then(|file| file.read().ok())
            .and_then(procfs::parse_psi);
        header.psi = psi.map(|psi| {
            let now = (psi.some.total_us, psi.full.total_us);
            let percent =
                |now: u64, before: u64| now.saturating_sub(before) as f64 / 1e4 / seconds.max(1e-3);
            let shares = match self.psi_total_us {
                Some((some, full)) => (percent(now.0, some), percent(now.1, full)),
                None => (psi.some.avg10, psi.full.avg10),
            };
            self.psi_total_us = Some(now);
            (shares.0.min(100.0), shares.1.min(100.0))
        });
        if let Some((some, _)) = header.psi {
            if header.psi_history.len() >= 512 {
                header.psi_history.remove(0);
            }
            header.psi_history.push((some * 100.0) as u64);
        }
    }

    fn draw(&mut self) -> anyhow::Result<()> {
        let Some(screen) = &mut self.screen else {
            return Ok(());
        };
        let shown = Shown {
            header: &self.header,
            table: &self.table,
            kills: &self.kills_shown,
            mappings: &self.mappings,
            stacks: self.stacks.as_ref().map(|s| (s.rows.as_slice(), s.losses)),
            colour: self.colour,
        };
        let view = &mut self.view;
        screen.draw(|frame| render::draw(frame, view, &shown))?;
        Ok(())
    }

    fn record_kills(&mut self, batch: Vec<OomRecord>) {
        for mut kill in self.kills.resolve(batch) {
            if kill.cgroup.path.is_none() {
                self.place(&mut kill);
            }
            self.history.complete(&mut kill);
            self.kills_seen += 1;
            self.kills_shown.push(render::kill_lines(&kill));
        }
    }

    /// A victim gone before its cgroup was read: the cgroup its fault counts were recorded
    /// with in the kernel, else the one the last reading saw it in.
    fn place(&mut self, kill: &mut Kill) {
        let pid = kill.victim.pid;
        let recorded = self
            .machine
            .as_ref()
            .and_then(|m| m.recorded(pid))
            .map(|(_, memcg)| memcg)
            .or_else(|| self.departed.get(&pid).copied());
        let from_kernel = recorded.and_then(|memcg| self.cgroups.path_of(pid, memcg));
        let last_seen = || {
            self.known_cgroups
                .iter()
                .find(|((known, _), _)| *known == pid)
                .map(|(_, path)| path.clone())
        };
        let found = match from_kernel {
            Some(path) => Some((path, "fault_table")),
            None => last_seen().map(|path| (path, "proc")),
        };
        if let Some((path, source)) = found.filter(|(path, _)| !path.is_empty()) {
            self.kills.place(kill, path, source);
        }
    }

    /// A key: `Some(end)` when it quits.
    fn input(&mut self, event: Option<Event>) -> anyhow::Result<Option<End>> {
        let action = match event {
            Some(Event::Key(key)) => self.view.key(key),
            Some(_) => Action::Redraw,
            // The terminal went away: nothing can be drawn or asked any more.
            None => Action::Quit,
        };
        match action {
            Action::Quit => return Ok(Some(End::Signal(libc::SIGINT))),
            Action::None => return Ok(None),
            Action::Dismiss => self.kills_shown.clear(),
            Action::Redraw => {}
        }
        if self.view.detail.is_some() && self.mappings.is_empty() {
            self.mappings = self.view.detail.map(biggest_mappings).unwrap_or_default();
        }
        if let Some(stacks) = &mut self.stacks {
            stacks.follow(self.view.detail)?;
        }
        self.draw()?;
        Ok(None)
    }
}

/// A process's biggest mappings by resident size (none once it has gone).
fn biggest_mappings(pid: u32) -> Vec<Resident> {
    let mut mappings = resident::read(pid).unwrap_or_default();
    mappings.sort_by_key(|m| std::cmp::Reverse(m.rss));
    mappings.truncate(DETAIL_MAPPINGS);
    mappings
}

impl Job for Top {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        let kills = async {
            match &mut self.oom_events {
                Some(events) => events.next_batch().await,
                None => std::future::pending().await,
            }
        };
        let stacks = async {
            match &mut self.stacks {
                Some(stacks) => stacks.readable().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.ticker.tick() => Ok(Wake::Tick),
            ready = stacks => Ok(Wake::Stacks(ready)),
            event = self.events.recv() => Ok(Wake::Input(event)),
            batch = kills => Ok(Wake::Kills(batch?)),
            () = self.history.due() => Ok(Wake::Sample),
        }
    }

    fn work(&mut self, wake: Wake, _sink: &mut Sink) -> anyhow::Result<Option<End>> {
        match wake {
            // Paused, nothing is read: the next reading covers the pause, at its true length.
            Wake::Tick if self.view.paused => {}
            Wake::Tick => {
                self.read()?;
                self.draw()?;
            }
            Wake::Input(event) => return self.input(event),
            Wake::Stacks(ready) => {
                ready?;
                if let Some(stacks) = &mut self.stacks {
                    stacks.drain();
                }
            }
            Wake::Kills(batch) => {
                self.record_kills(batch);
                self.draw()?;
            }
            Wake::Sample => {
                let stalls = self
                    .machine
                    .as_ref()
                    .and_then(|m| crate::bpf::pressure::totals(m.pressure()).ok());
                self.history.sample(stalls);
            }
        }
        Ok(None)
    }

    /// The terminal is given back first, so the summary lands on the user's screen.
    fn finish(&mut self, ending: &Ending, _sink: &mut Sink) -> anyhow::Result<()> {
        self.screen = None;
        let why = match ending.end {
            End::Signal(libc::SIGTERM) => "SIGTERM",
            End::Duration => "--duration",
            End::TargetsExited => "the processes exited",
            _ => "quit",
        };
        eprintln!(
            "memtrace top: {:.1} s ({why}), {} OOM kills, {} events lost",
            ending.duration.as_secs_f64(),
            self.kills_seen,
            self.header.lost
        );
        Ok(())
    }

    fn release(mut self) {
        self.screen = None;
        if let Some(stacks) = &mut self.stacks {
            let _ = stacks.follow(None);
        }
        drop(self.oom_events.take());
        if let Some(machine) = self.machine.take() {
            machine.release(Release::Here);
        }
    }
}
