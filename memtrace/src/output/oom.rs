//! Rendering `memtrace oom`: one line per victim for people, one JSON object per victim for
//! machines (schema in the README). Every record is flushed at once: a kill appears as it happens.

use std::io::{self, Write};

use serde::Serialize;

use super::{Timestamp, round_secs};
use crate::cgroup::{Limit, Version};

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
}

fn limit_json<S: serde::Serializer>(limit: &Option<Limit>, s: S) -> Result<S::Ok, S::Error> {
    match limit {
        Some(Limit::Bytes(bytes)) => s.serialize_u64(*bytes),
        Some(Limit::Unlimited) => s.serialize_str("max"),
        None => s.serialize_none(),
    }
}

/// One victim of one OOM kill.
#[derive(Clone, Debug)]
pub struct Kill {
    pub time: Timestamp,
    /// Shared by every victim of one OOM invocation (one group kill).
    pub group_id: u64,
    pub victim: Victim,
    pub trigger: Trigger,
    pub cgroup: Cgroup,
}

#[derive(Serialize)]
struct JsonKill<'a> {
    r#type: &'static str,
    timestamp: f64,
    group_id: u64,
    victim: &'a Victim,
    trigger: &'a Trigger,
    cgroup: &'a Cgroup,
}

#[derive(Serialize)]
struct JsonStart<'a> {
    r#type: &'static str,
    cgroup_filter: Option<&'a str>,
    hierarchy: Option<Version>,
    hierarchy_mount: Option<&'a str>,
    /// Victim fields this kernel's `mark_victim` reports.
    victim_fields: &'a [&'a str],
}

#[derive(Serialize)]
struct JsonSummary {
    r#type: &'static str,
    timestamp: f64,
    reason: &'static str,
    kills: u64,
    dropped: serde_json::Map<String, serde_json::Value>,
}

/// What the report is about, told once at the start.
pub struct Start<'a> {
    pub cgroup_filter: Option<&'a str>,
    pub hierarchy: Option<(Version, &'a str)>,
    pub victim_fields: &'a [&'a str],
}

pub struct OomOutput {
    out: Box<dyn Write>,
    json: bool,
}

impl OomOutput {
    pub fn new(out: Box<dyn Write>, json: bool) -> OomOutput {
        OomOutput { out, json }
    }

    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        super::json_line(&mut self.out, value)
    }

    pub fn start(&mut self, start: &Start) -> io::Result<()> {
        if self.json {
            return self.json_line(&JsonStart {
                r#type: "start",
                cgroup_filter: start.cgroup_filter,
                hierarchy: start.hierarchy.map(|(v, _)| v),
                hierarchy_mount: start.hierarchy.map(|(_, m)| m),
                victim_fields: start.victim_fields,
            });
        }
        let scope = match start.cgroup_filter {
            Some(cgroup) => format!("in memory cgroup {cgroup}"),
            None => "system-wide".into(),
        };
        eprintln!("memtrace: waiting for OOM kills {scope} (Ctrl-C to stop)");
        self.out.flush()
    }

    pub fn kill(&mut self, kill: &Kill) -> io::Result<()> {
        if self.json {
            return self.json_line(&JsonKill {
                r#type: "oom_kill",
                timestamp: round_secs(kill.time.unix),
                group_id: kill.group_id,
                victim: &kill.victim,
                trigger: &kill.trigger,
                cgroup: &kill.cgroup,
            });
        }
        let line = format_kill(kill);
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    pub fn summary(&mut self, reason: &'static str, kills: u64, dropped: u64) -> io::Result<()> {
        if self.json {
            let mut map = serde_json::Map::new();
            map.insert("oom_ring_full".into(), dropped.into());
            return self.json_line(&JsonSummary {
                r#type: "summary",
                timestamp: round_secs(Timestamp::now().unix),
                reason,
                kills,
                dropped: map,
            });
        }
        let lost = if dropped > 0 {
            format!(", {dropped} records lost (ring buffer full)")
        } else {
            String::new()
        };
        writeln!(
            self.out,
            "Summary: {kills} OOM kill{} ({}){lost}",
            if kills == 1 { "" } else { "s" },
            reason.replace('_', " ")
        )?;
        self.out.flush()
    }
}

fn or_unknown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "?".into(), |v| v.to_string())
}

fn kb(value: Option<u64>) -> String {
    value.map_or_else(|| "?".into(), |v| format!("{v}kB"))
}

fn bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "?".into(), |v| format!("{:.1}MiB", v as f64 / 1048576.0))
}

/// The human line for one victim; unknown values are `?`.
pub fn format_kill(kill: &Kill) -> String {
    let v = &kill.victim;
    let c = &kill.cgroup;
    let limit = match c.limit_bytes {
        Some(Limit::Bytes(b)) => bytes(Some(b)),
        Some(Limit::Unlimited) => "max".into(),
        None => "?".into(),
    };
    format!(
        "{} OOM-KILL group={} victim={} ({}) uid={} total-vm={} anon-rss={} file-rss={} \
         shmem-rss={} pgtables={} oom_score_adj={} trigger={} ({}) cgroup={} scope={} \
         domain={} limit={} usage={} oom_kill={}",
        kill.time.local_hms(),
        kill.group_id,
        v.pid,
        v.comm.as_deref().unwrap_or("?"),
        or_unknown(v.uid),
        kb(v.total_vm_kb),
        kb(v.anon_rss_kb),
        kb(v.file_rss_kb),
        kb(v.shmem_rss_kb),
        kb(v.pgtables_kb),
        or_unknown(v.oom_score_adj),
        kill.trigger.pid,
        kill.trigger.comm,
        c.path.as_deref().unwrap_or("?"),
        c.scope.unwrap_or("?"),
        c.oom_domain.as_deref().unwrap_or("-"),
        limit,
        bytes(c.usage_bytes),
        or_unknown(c.oom_kill),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill() -> Kill {
        Kill {
            time: Timestamp { unix: 0.0 },
            group_id: 2,
            victim: Victim {
                pid: 42,
                comm: None,
                uid: None,
                total_vm_kb: Some(100),
                anon_rss_kb: None,
                file_rss_kb: None,
                shmem_rss_kb: None,
                pgtables_kb: None,
                oom_score_adj: None,
            },
            trigger: Trigger {
                pid: 7,
                tid: 8,
                comm: "t".into(),
            },
            cgroup: Cgroup {
                path: Some("/a".into()),
                source: Some("proc"),
                hierarchy: Some(Version::V1),
                scope: None,
                constraint: None,
                oom_domain: None,
                oom_group: None,
                limit_bytes: Some(Limit::Unlimited),
                usage_bytes: None,
                oom_kill: Some(1),
            },
        }
    }

    #[test]
    fn unknown_fields_are_null_in_json_and_question_marks_in_text() {
        let k = kill();
        let json = serde_json::to_value(JsonKill {
            r#type: "oom_kill",
            timestamp: 0.0,
            group_id: k.group_id,
            victim: &k.victim,
            trigger: &k.trigger,
            cgroup: &k.cgroup,
        })
        .unwrap();
        assert_eq!(json["victim"]["comm"], serde_json::Value::Null);
        assert_eq!(json["victim"]["total_vm_kb"], 100);
        assert_eq!(json["cgroup"]["limit_bytes"], "max");
        assert_eq!(json["cgroup"]["hierarchy"], "v1");
        let text = format_kill(&k);
        assert!(
            text.contains("victim=42 (?) uid=? total-vm=100kB anon-rss=?"),
            "{text}"
        );
        assert!(text.contains("limit=max"), "{text}");
    }
}
