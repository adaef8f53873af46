//! `memtrace oom`: read the tracepoint layouts → load and attach the OOM programs → for every
//! victim the kernel marks, put together victim, trigger and cgroup (`enrich::oom`), and print it
//! at once.

use std::{io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use memtrace_common::{globals, oom::OomFields};

use super::lifecycle::{Endings, Watched};
use crate::{
    bpf::{self, Globals, oom::OomEvents},
    cgroup,
    cli::OomArgs,
    enrich::oom::KillResolver,
    error::{Failure, exit_code},
    output::{
        self,
        oom::{OomOutput, Start},
    },
    privileges,
};

/// Validated `oom` flags.
#[derive(Clone, Debug)]
pub struct OomConfig {
    pub cgroup: Option<PathBuf>,
    pub json: bool,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

impl From<OomArgs> for OomConfig {
    fn from(args: OomArgs) -> OomConfig {
        OomConfig {
            cgroup: args.cgroup,
            json: args.json,
            output: args.output,
            duration: args.duration,
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

    let mut resolver = KillResolver::new(hierarchy, filter);
    let mut kills = 0u64;
    let mut endings = Endings::install(config.duration)?;
    // No targets: only a signal, --duration or --count ends it.
    let nothing = Watched::default();
    let reason = 'run: loop {
        if config.count.is_some_and(|count| kills >= count) {
            break "count";
        }
        let batch = tokio::select! {
            batch = events.next_batch() => batch?,
            end = endings.next(&nothing) => break end.reason(),
        };
        for kill in resolver.resolve(batch) {
            if config.count.is_some_and(|count| kills >= count) {
                break;
            }
            match out.kill(&kill) {
                Ok(()) => kills += 1,
                Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break 'run "output_closed",
                Err(err) => return Err(err).context("write the report"),
            }
        }
    };
    let dropped = bpf::oom::drops(&ebpf)?;
    if dropped > 0 {
        log::warn!("{dropped} OOM records were lost: the ring buffer was full");
    }
    if let Err(err) = out.summary(reason, kills, dropped)
        && err.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(err).context("write the summary");
    }
    Ok(exit_code::OK)
}
