//! `memtrace oom`: read the tracepoint layouts → load and attach the OOM programs → for every
//! victim the kernel marks, put together victim, trigger and cgroup, and print it at once.
//!
//! The victim's cgroup comes first from the kernel's own report (`task_memcg=` in the
//! `oom-kill:` line, printed by the trigger just before the victim is marked: exact, and no race
//! with the victim's exit), else from `/proc/PID/cgroup` read the moment the record arrives.

use std::{io, path::PathBuf};

use anyhow::Context as _;
use memtrace_common::{
    globals,
    oom::{OomFields, OomPhase, OomVictim},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::oom::Reports,
    bpf::{
        self, Globals,
        oom::{OomEvents, OomRecord},
    },
    cgroup::{self, MemoryHierarchy},
    cli::OomArgs,
    error::{Failure, exit_code},
    output::{
        self, Timestamp,
        oom::{Cgroup, Kill, OomOutput, Start, Trigger, Victim},
    },
    privileges, procfs,
};

/// Validated `oom` flags.
#[derive(Clone, Debug)]
pub struct OomConfig {
    pub cgroup: Option<PathBuf>,
    pub json: bool,
    pub output: Option<PathBuf>,
    pub count: Option<u64>,
}

impl From<OomArgs> for OomConfig {
    fn from(args: OomArgs) -> OomConfig {
        OomConfig {
            cgroup: args.cgroup,
            json: args.json,
            output: args.output,
            count: args.count,
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
    // Every usage error (exit 2) comes before the privilege check, so it needs no root.
    let hierarchy = cgroup::memory_hierarchy();
    let filter = match (&config.cgroup, &hierarchy) {
        (Some(path), Some(hierarchy)) => Some(hierarchy.resolve(path)?),
        (Some(path), None) => {
            return Err(Failure::Usage(format!(
                "no such cgroup: {} (no memory cgroup hierarchy is mounted)",
                path.display()
            ))
            .into());
        }
        (None, _) => None,
    };
    let out = output::open(config.output.as_deref())?;
    privileges::require()?;
    let layout = bpf::oom::layout()?;
    if layout.fields == 0 {
        log::warn!(
            "this kernel's oom:mark_victim reports only the victim's pid (before Linux 6.9): \
             its other fields are shown as unknown"
        );
    }

    let mut globals = Globals::default();
    globals.bytes(globals::OOM_LAYOUT, &layout.to_ne_bytes());
    let mut ebpf = bpf::load(&globals)?;
    bpf::forward_kernel_logs(&mut ebpf);
    bpf::oom::attach(&mut ebpf).context("attach oom:mark_victim and printk:console")?;
    let mut events = OomEvents::open(&mut ebpf)?;

    let mut out = OomOutput::new(out, config.json);
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
    out.start(&Start {
        cgroup_filter: filter.as_deref(),
        hierarchy: hierarchy
            .as_ref()
            .zip(mount.as_deref())
            .map(|(h, m)| (h.version, m)),
        victim_fields: &fields,
    })
    .context("write the report")?;

    let mut session = Session {
        hierarchy,
        filter,
        reports: Reports::default(),
        kills: 0,
    };
    let mut sigint = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let reason = 'run: loop {
        if config.count.is_some_and(|count| session.kills >= count) {
            break "count";
        }
        let batch = tokio::select! {
            batch = events.next_batch() => batch?,
            _ = sigint.recv() => break "signal",
            _ = sigterm.recv() => break "signal",
        };
        for kill in session.resolve(batch) {
            if config.count.is_some_and(|count| session.kills >= count) {
                break;
            }
            match out.kill(&kill) {
                Ok(()) => session.kills += 1,
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break 'run "output_closed",
                Err(err) => return Err(err).context("write the report"),
            }
        }
    };
    let dropped = bpf::oom::drops(&ebpf)?;
    if dropped > 0 {
        log::warn!("{dropped} OOM records were lost: the ring buffer was full");
    }
    if let Err(err) = out.summary(reason, session.kills, dropped)
        && err.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(err).context("write the summary");
    }
    Ok(exit_code::OK)
}

struct Session {
    hierarchy: Option<MemoryHierarchy>,
    filter: Option<String>,
    reports: Reports,
    kills: u64,
}

impl Session {
    /// Turns one batch of records into kills, in order. The batch's report fragments are taken
    /// in first, so a group-kill announcement printed after the first victim still applies.
    fn resolve(&mut self, batch: Vec<OomRecord>) -> Vec<Kill> {
        for record in &batch {
            if let OomRecord::Text(fragment) = record {
                self.reports.add(fragment);
            }
        }
        batch
            .into_iter()
            .filter_map(|record| match record {
                OomRecord::Victim(victim) => Some(self.kill(&victim)),
                OomRecord::Text(_) => None,
            })
            .filter(|kill| match &self.filter {
                None => true,
                Some(root) => kill
                    .cgroup
                    .path
                    .as_deref()
                    .is_some_and(|path| cgroup::is_within(path, root)),
            })
            .collect()
    }

    fn kill(&self, raw: &OomVictim) -> Kill {
        let report = self.reports.get(raw.seq);
        let version = self.hierarchy.as_ref().map(|h| h.version);
        let from_proc =
            |pid: u32| version.and_then(|version| cgroup::read_proc_cgroup(pid, version));
        let (path, source) = if let (Some(pid), Some(memcg)) = (report.task_pid, &report.task_memcg)
            && pid == raw.pid
        {
            (Some(memcg.clone()), Some("kernel_report"))
        } else if let Some(path) = from_proc(raw.pid) {
            (Some(path), Some("proc"))
        } else if let Some(group) = &report.group {
            (Some(group.clone()), Some("group_report"))
        } else if let Some(domain) = &report.oom_memcg {
            (Some(domain.clone()), Some("oom_domain"))
        } else if let Some(path) = from_proc(raw.trigger_tid) {
            (Some(path), Some("trigger"))
        } else {
            (None, None)
        };
        let stats = match (&self.hierarchy, &path) {
            (Some(hierarchy), Some(path)) => hierarchy.stats(path),
            _ => cgroup::Stats::default(),
        };
        let has = |bit: u32| raw.fields & bit != 0;
        let victim = Victim {
            pid: raw.pid,
            comm: has(OomFields::COMM).then(|| bpf::oom::comm(&raw.comm)),
            uid: has(OomFields::UID).then_some(raw.uid),
            total_vm_kb: has(OomFields::TOTAL_VM).then_some(raw.total_vm_kb),
            anon_rss_kb: has(OomFields::ANON_RSS).then_some(raw.anon_rss_kb),
            file_rss_kb: has(OomFields::FILE_RSS).then_some(raw.file_rss_kb),
            shmem_rss_kb: has(OomFields::SHMEM_RSS).then_some(raw.shmem_rss_kb),
            pgtables_kb: has(OomFields::PGTABLES).then_some(raw.pgtables_kb),
            oom_score_adj: has(OomFields::OOM_SCORE_ADJ).then_some(raw.oom_score_adj),
        };
        let victim = Victim {
            comm: victim.comm.or_else(|| procfs::read_comm(raw.pid, None)),
            ..victim
        };
        let scope = report
            .is_cgroup_oom()
            .map(|memcg| if memcg { "cgroup" } else { "system" });
        Kill {
            time: time_of(raw.ktime_ns),
            group_id: raw.seq,
            victim,
            trigger: Trigger {
                pid: raw.trigger_pid,
                tid: raw.trigger_tid,
                comm: bpf::oom::comm(&raw.trigger_comm),
            },
            cgroup: Cgroup {
                path,
                source,
                hierarchy: version,
                scope,
                constraint: report.constraint.clone(),
                oom_domain: report.oom_memcg.clone(),
                oom_group: report
                    .group
                    .clone()
                    .filter(|_| raw.phase == OomPhase::MEMBERS || raw.phase == OomPhase::KILLED),
                limit_bytes: stats.limit,
                usage_bytes: stats.usage_bytes,
                oom_kill: stats.oom_kills,
            },
        }
    }
}

/// Wall-clock time of a CLOCK_MONOTONIC timestamp from `bpf_ktime_get_ns`.
fn time_of(ktime_ns: u64) -> Timestamp {
    let now = Timestamp::now();
    // SAFETY: all-zero is a valid timespec; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return now;
    }
    let mono_now = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    Timestamp {
        unix: now.unix - (mono_now - ktime_ns as f64 / 1e9).max(0.0),
    }
}
