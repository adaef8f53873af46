//! OOM kills: from the kernel's victim records and the OOM killer's own report lines, with the
//! victim's cgroup and that cgroup's figures read from cgroupfs, one complete [`Kill`] each.
//!
//! The victim's cgroup comes first from the kernel's own report (`task_memcg=` in the
//! `oom-kill:` line, printed by the trigger just before the victim is marked: exact, and no race
//! with the victim's exit), else from `/proc/PID/cgroup` read the moment the record arrives.

use memtrace_common::oom::{OomFields, OomPhase, OomVictim};

use crate::{
    decode::oom_report::Reports,
    enrich::owner::owner_of,
    model::oom::{Cgroup, Kill, OomRecord, Trigger, Victim},
    sys::{
        cgroup::{self, MemoryHierarchy},
        clock::WallClock,
        procfs,
    },
};

/// Puts together, for each victim record, the victim, its trigger and its cgroup, from the
/// kernel's records, its OOM report lines, /proc and cgroupfs.
pub struct KillResolver {
    pub hierarchy: Option<MemoryHierarchy>,
    /// Keep only kills in this cgroup subtree (a path in the memory hierarchy).
    pub filter: Option<String>,
    reports: Reports,
}

impl KillResolver {
    pub fn new(hierarchy: Option<MemoryHierarchy>, filter: Option<String>) -> KillResolver {
        KillResolver {
            hierarchy,
            filter,
            reports: Reports::default(),
        }
    }

    /// Turns one batch of records into kills, in order. The batch's report fragments are taken
    /// in first, so a group-kill announcement printed after the first victim still applies.
    pub fn resolve(&mut self, batch: Vec<OomRecord>) -> Vec<Kill> {
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

    /// Puts a victim whose cgroup was not found (the kernel's report unseen, `/proc` too late)
    /// in `path`, as the caller learnt it (`source`), with that cgroup's figures and owner.
    pub fn place(&self, kill: &mut Kill, path: String, source: &'static str) {
        if let Some(hierarchy) = &self.hierarchy {
            let stats = hierarchy.stats(&path);
            kill.cgroup.limit_bytes = stats.limit;
            kill.cgroup.usage_bytes = stats.usage_bytes;
            kill.cgroup.oom_kill = stats.oom_kills;
        }
        kill.cgroup.owner = owner_of(&path);
        kill.cgroup.path = Some(path);
        kill.cgroup.source = Some(source);
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
        let owner = path.as_deref().map(owner_of).unwrap_or_default();
        let stats = match (&self.hierarchy, &path) {
            (Some(hierarchy), Some(path)) => hierarchy.stats(path),
            _ => cgroup::Stats::default(),
        };
        let has = |bit: u32| raw.fields & bit != 0;
        let victim = Victim {
            pid: raw.pid,
            comm: has(OomFields::COMM).then(|| procfs::comm_from_bytes(&raw.comm)),
            uid: has(OomFields::UID).then_some(raw.uid),
            total_vm_kb: has(OomFields::TOTAL_VM).then_some(raw.total_vm_kb),
            anon_rss_kb: has(OomFields::ANON_RSS).then_some(raw.anon_rss_kb),
            file_rss_kb: has(OomFields::FILE_RSS).then_some(raw.file_rss_kb),
            shmem_rss_kb: has(OomFields::SHMEM_RSS).then_some(raw.shmem_rss_kb),
            pgtables_kb: has(OomFields::PGTABLES).then_some(raw.pgtables_kb),
            oom_score_adj: has(OomFields::OOM_SCORE_ADJ).then_some(raw.oom_score_adj),
            history: None,
        };
        let victim = Victim {
            comm: victim.comm.or_else(|| procfs::read_comm(raw.pid, None)),
            ..victim
        };
        let scope = report
            .is_cgroup_oom()
            .map(|memcg| if memcg { "cgroup" } else { "system" });
        Kill {
            time: WallClock::now().timestamp(raw.ktime_ns),
            group_id: raw.seq,
            victim,
            trigger: Trigger {
                pid: raw.trigger_pid,
                tid: raw.trigger_tid,
                comm: procfs::comm_from_bytes(&raw.trigger_comm),
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
                top_users: None,
                owner,
            },
        }
    }
}
