//! OOM kills: what the kernel sends (a victim, or a fragment of its OOM report), and the
//! complete kill memtrace reports once it has put victim, trigger and cgroup together.

use memtrace_common::oom::OomVictim;
use serde::Serialize;

use crate::{
    model::cgroup::{Limit, Version},
    model::owner::Owner,
    model::time::Timestamp,
};

/// What the kernel sent: a victim, or a fragment of its OOM report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OomRecord {
    Victim(Box<OomVictim>),
    Text(TextFragment),
}

/// A piece of one line of the kernel's OOM report (`printk` prints a line in several pieces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFragment {
    /// The OOM invocation it belongs to.
    pub seq: u64,
    pub tid: u32,
    /// [`memtrace_common::oom::OomPhase`] of the report it belongs to.
    pub phase: u32,
    pub text: String,
}

/// One victim of one OOM kill.
#[derive(Clone, Debug, Serialize)]
pub struct Kill {
    #[serde(
        rename = "timestamp",
        serialize_with = "crate::model::time::unix_seconds"
    )]
    pub time: Timestamp,
    /// Shared by every victim of one OOM invocation (one group kill).
    pub group_id: u64,
    pub victim: Victim,
    pub trigger: Trigger,
    pub cgroup: Cgroup,
}

/// The victim, as `oom:mark_victim` reported it; `None` for what this kernel does not report.
#[derive(Clone, Debug, Serialize)]
pub struct Victim {
    pub pid: u32,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// What led up to the kill, oldest first (`None` with `--history 0`; empty when the victim
    /// was never sampled).
    pub history: Option<Vec<HistoryPoint>>,
}

/// The victim as sampled at one moment before its kill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Seconds before the kill.
    #[serde(serialize_with = "crate::model::time::seconds")]
    pub t: f64,
    pub rss_kb: u64,
    pub vsz_kb: u64,
    /// Since the sample before (`None` for the first).
    pub minor_faults: Option<u64>,
    pub major_faults: Option<u64>,
    /// Growth of the mapped address space since the sample before: what brk, mmap and mremap
    /// added less what munmap and shrinking removed (negative when it shrank).
    pub alloc_kb: Option<i64>,
    /// Time its tasks stalled in reclaim, compaction or reclaim throttling since the sample
    /// before (`None` where stalls are not timed).
    pub reclaim_stall_ms: Option<f64>,
}

/// A process of the victim's cgroup, by resident memory when the kill was reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryUser {
    pub pid: u32,
    pub comm: String,
    pub rss_kb: u64,
    pub victim: bool,
}

/// The task that ran the OOM killer.
#[derive(Clone, Debug, Serialize)]
pub struct Trigger {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

/// The victim's memory cgroup and the OOM's scope.
#[derive(Clone, Debug, Serialize)]
pub struct Cgroup {
    /// The victim's memory cgroup, as a path in the memory hierarchy.
    pub path: Option<String>,
    /// Where `path` came from: `kernel_report`, `proc`, `group_report`, `oom_domain`, `trigger`.
    pub source: Option<&'static str>,
    pub hierarchy: Option<Version>,
    /// `cgroup` (a cgroup's limit was hit) or `system` (the whole machine, or a cpuset/policy).
    pub scope: Option<&'static str>,
    /// The kernel's constraint, e.g. `CONSTRAINT_MEMCG`.
    pub constraint: Option<String>,
    /// The cgroup whose limit was hit, for a cgroup OOM.
    pub oom_domain: Option<String>,
    /// The cgroup of a `memory.oom.group` kill this victim was part of.
    pub oom_group: Option<String>,
    #[serde(serialize_with = "limit_json")]
    pub limit_bytes: Option<Limit>,
    pub usage_bytes: Option<u64>,
    pub oom_kill: Option<u64>,
    /// Its processes (and its descendants') using the most memory when the kill was reported,
    /// most first (`None` with `--history 0`).
    pub top_users: Option<Vec<MemoryUser>>,
    /// The container, pod and QoS class, or the systemd unit, the cgroup path names.
    #[serde(flatten)]
    pub owner: Owner,
}

fn limit_json<S: serde::Serializer>(limit: &Option<Limit>, s: S) -> Result<S::Ok, S::Error> {
    match limit {
        Some(Limit::Bytes(bytes)) => s.serialize_u64(*bytes),
        Some(Limit::Unlimited) => s.serialize_str("max"),
        None => s.serialize_none(),
    }
}
