//! `memtrace oom`: the layout of `oom:mark_victim` read from tracefs → the `oom` object loaded
//! and attached (and the `pressure` one, to time stalls for the victims' histories) → each
//! second, the likely victims sampled (`enrich::history`) → for every victim the kernel marks,
//! victim, trigger and cgroup put together (`enrich::oom`), with what led to the kill, and
//! written at once.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use memtrace_common::{oom::OomFields, pressure::MAX_STALLERS};

use crate::{
    bpf::{
        self, Loaded,
        oom::{NewProcesses, OomEvents},
        targets::Filter,
        tracepoints::Release,
    },
    cli::OomArgs,
    enrich::{
        history::{self, HistorySampler},
        oom::KillResolver,
    },
    model::oom::OomRecord,
    model::time::Timestamp,
    output::{
        Format, Sink,
        oom::{Dropped, Start, Summary},
    },
    session::{self, End, Ending, Job, Session, Target},
    sys::cgroup,
};

/// Validated `oom` flags.
#[derive(Clone, Debug)]
pub struct OomConfig {
    pub cgroup: Option<PathBuf>,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    /// How far back each victim's history goes (zero: no history).
    pub history: Duration,
}

impl From<OomArgs> for OomConfig {
    fn from(args: OomArgs) -> OomConfig {
        OomConfig {
            cgroup: args.cgroup,
            format: Format::json(args.report.json),
            output: args.report.output,
            duration: args.duration,
            count: args.count,
            history: args.history,
        }
    }
}

const FIELD_NAMES: [(u32, &str); 8] = [
    (OomFields::COMM, "comm"),
    (OomFields::UID, "uid"),
    (OomFields::TOTAL_VM, "total_vm_kb"),
    (OomFields::ANON_RSS, "anon_rss_kb"),
    (OomFields::FILE_RSS, "file_rss_kb"),
    (OomFields::SHMEM_RSS, "shmem_rss_kb"),
    (OomFields::PGTABLES, "pgtables_kb"),
    (OomFields::OOM_SCORE_ADJ, "oom_score_adj"),
];

pub async fn execute(args: OomArgs) -> anyhow::Result<u8> {
    let config = OomConfig::from(args);
    // A bad --cgroup is a usage error (exit 2), found before anything needs privileges.
    let hierarchy = cgroup::memory_hierarchy();
    let filter = super::cgroup_filter(config.cgroup.as_deref(), hierarchy.as_ref())?;
    let mut session = Session::open(&session::Options {
        target: Target::System,
        format: config.format,
        output: config.output.clone(),
        duration: config.duration,
    })?;
    let layout = bpf::oom::layout()?;
    if layout.fields == 0 {
        log::warn!(
            "this kernel's oom:mark_victim reports only the victim's pid (before Linux 6.9): \
             its other fields are shown as unknown"
        );
    }
    let with_history = !config.history.is_zero();
    let mut loaded =
        bpf::oom::load(&layout, with_history).context("attach oom:mark_victim and console")?;
    let kernel_reports = bpf::oom::console_sees_reports();
    if !kernel_reports {
        log::warn!(
            "this kernel ({}) shows memtrace its OOM reports only when they reach a console: \
             cgroups come from /proc and a group kill's victims are not grouped",
            bpf::kernel::release()
        );
    }
    let events = OomEvents::open(&mut loaded.ebpf)?;
    // Everything attached before the start record: its reader knows histories are being kept.
    let (history, pressure) = if with_history {
        let new_processes = NewProcesses::open(&mut loaded.ebpf)?;
        let sampler = HistorySampler::new(config.history, hierarchy.clone(), new_processes);
        (Some(sampler), load_stall_timer())
    } else {
        (None, None)
    };

    let fields: Vec<&str> = std::iter::once("pid")
        .chain(
            FIELD_NAMES
                .iter()
                .filter(|(bit, _)| layout.fields & bit != 0)
                .map(|&(_, name)| name),
        )
        .collect();
    let mount = hierarchy
        .as_ref()
        .map(|h| h.mount.to_string_lossy().into_owned());
    session
        .sink()
        .emit(&Start {
            cgroup_filter: filter.as_deref(),
            hierarchy: hierarchy.as_ref().map(|h| h.version),
            hierarchy_mount: mount.as_deref(),
            victim_fields: &fields,
            kernel_reports,
        })
        .context("write the report")?;
    let job = Oom {
        count: config.count,
        loaded,
        events,
        resolver: KillResolver::new(hierarchy, filter),
        history,
        pressure,
        kills: 0,
    };
    session.run(job).await
}

/// The `oom` job: writes each kill as the kernel reports it.
struct Oom {
    count: Option<u64>,
    loaded: Loaded,
    events: OomEvents,
    resolver: KillResolver,
    history: Option<HistorySampler>,
    /// Times the stalls of the histories (only while memory is short does it run).
    pressure: Option<Loaded>,
    kills: u64,
}

/// Processes whose stalls `oom` times at once, for its victims' histories: an eighth of
/// `pressure`'s table, so that even kernels that charge a table at its capacity (before 6.4)
/// keep `oom` within its 1 MiB. A stalling process beyond them is counted as a drop.
const HISTORY_STALLERS: u32 = MAX_STALLERS / 8;

/// The `pressure` object, system-wide, for the stall times of victims' histories; without it
/// histories have no stall figures.
fn load_stall_timer() -> Option<Loaded> {
    let options = bpf::pressure::Options {
        filter: Filter::All,
        memcg: None,
        histograms: false,
        max_processes: HISTORY_STALLERS,
        warn_missing: false,
    };
    bpf::pressure::load(&options)
        .inspect_err(|err| log::warn!("victims' histories show no stall times: {err:#}"))
        .ok()
}

/// What wakes the job.
enum Wake {
    Kills(Vec<OomRecord>),
    Sample,
}

impl Oom {
    fn done(&self) -> bool {
        self.count.is_some_and(|count| self.kills >= count)
    }

    /// One sample of the likely victims; the stalls of processes gone are forgotten.
    fn sample(&mut self) -> anyhow::Result<()> {
        let Some(history) = &mut self.history else {
            return Ok(());
        };
        let stalls = match &self.pressure {
            Some(pressure) => Some(bpf::pressure::totals(&pressure.ebpf)?),
            None => None,
        };
        let gone = history.sample(stalls);
        if let Some(pressure) = &mut self.pressure {
            for pid in gone {
                bpf::pressure::remove(&mut pressure.ebpf, pid)?;
            }
        }
        Ok(())
    }
}

impl Job for Oom {
    type Work = Wake;

    async fn next(&mut self) -> anyhow::Result<Wake> {
        tokio::select! {
            batch = self.events.next_batch() => Ok(Wake::Kills(batch?)),
            () = history::next_sample(&mut self.history) => Ok(Wake::Sample),
        }
    }

    fn work(&mut self, wake: Wake, sink: &mut Sink) -> anyhow::Result<Option<End>> {
        let batch = match wake {
            Wake::Kills(batch) => batch,
            Wake::Sample => {
                self.sample()?;
                return Ok(None);
            }
        };
        for mut kill in self.resolver.resolve(batch) {
            if self.done() {
                break;
            }
            if let Some(history) = &self.history {
                history.complete(&mut kill);
            }
            sink.emit(&kill)?;
            sink.flush()?;
            self.kills += 1;
        }
        Ok(self.done().then_some(End::Count))
    }

    fn finish(&mut self, ending: &Ending, sink: &mut Sink) -> anyhow::Result<()> {
        let dropped = bpf::oom::drops(&self.loaded.ebpf)?;
        if dropped > 0 {
            log::warn!("{dropped} OOM records were lost: the ring buffer was full");
        }
        sink.emit(&Summary {
            timestamp: Timestamp::now(),
            reason: ending.end.reason(),
            kills: self.kills,
            dropped: Dropped {
                oom_ring_full: dropped,
            },
        })?;
        Ok(())
    }

    fn release(self) {
        drop(self.events);
        self.loaded.release(Release::Background);
        if let Some(pressure) = self.pressure {
            pressure.release(Release::Background);
        }
    }
}
