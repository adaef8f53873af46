//! The records of a `memtrace oom` report (and of `serve --events`): a start, one per victim,
//! a summary. Every kill is flushed at once: it appears as it happens.

use std::io::{self, Write};

use serde::Serialize;

use super::Record;
use crate::{
    model::cgroup::{Limit, Version},
    model::oom::{HistoryPoint, Kill},
    model::time::{Timestamp, unix_seconds},
    output::size_kb,
};

/// What the report is about, told once at the start.
#[derive(Serialize)]
pub struct Start<'a> {
    pub cgroup_filter: Option<&'a str>,
    pub hierarchy: Option<Version>,
    pub hierarchy_mount: Option<&'a str>,
    /// Victim fields this kernel's `mark_victim` reports.
    pub victim_fields: &'a [&'a str],
    /// Whether memtrace sees the kernel's reports of OOM kills (`bpf::oom::console_sees_reports`).
    pub kernel_reports: bool,
}

impl Record for Start<'_> {
    const TYPE: &'static str = "start";

    fn human(&self, _out: &mut dyn Write) -> io::Result<()> {
        let scope = match self.cgroup_filter {
            Some(cgroup) => format!("in memory cgroup {cgroup}"),
            None => "system-wide".into(),
        };
        eprintln!("memtrace: waiting for OOM kills {scope} (Ctrl-C to stop)");
        Ok(())
    }
}

impl Record for Kill {
    const TYPE: &'static str = "oom_kill";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", format_kill(self))?;
        if let Some(history) = self.victim.history.as_deref().filter(|h| !h.is_empty()) {
            write_history(out, self.victim.pid, history)?;
        }
        if let Some(users) = self.cgroup.top_users.as_deref().filter(|u| !u.is_empty()) {
            let list: Vec<String> = users
                .iter()
                .map(|u| {
                    let victim = if u.victim { " (victim)" } else { "" };
                    format!("{} {} {}{victim}", u.pid, u.comm, size_kb(u.rss_kb))
                })
                .collect();
            writeln!(out, "  top memory users of its cgroup: {}", list.join(", "))?;
        }
        Ok(())
    }
}

/// The victim's history as a small table under the kill line.
fn write_history(out: &mut dyn Write, pid: u32, history: &[HistoryPoint]) -> io::Result<()> {
    writeln!(out, "  what led to it ({pid}, seconds before the kill):")?;
    writeln!(
        out,
        "  {:>7} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
        "T", "RSS", "VSZ", "MINOR", "MAJOR", "ALLOC", "STALL-ms"
    )?;
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for point in history {
        writeln!(
            out,
            "  {:>7} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9}",
            format!("-{:.1}", point.t),
            size_kb(point.rss_kb),
            size_kb(point.vsz_kb),
            or_dash(point.minor_faults.map(|n| n.to_string())),
            or_dash(point.major_faults.map(|n| n.to_string())),
            or_dash(point.alloc_kb.map(|kb| {
                let sign = if kb < 0 { "-" } else { "+" };
                format!("{sign}{}", size_kb(kb.unsigned_abs()))
            })),
            or_dash(point.reclaim_stall_ms.map(|ms| format!("{ms:.1}"))),
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
pub struct Summary {
    #[serde(serialize_with = "unix_seconds")]
    pub timestamp: Timestamp,
    /// Why it ended ([`crate::session::End::reason`]).
    pub reason: &'static str,
    pub kills: u64,
    pub dropped: Dropped,
}

#[derive(Serialize)]
pub struct Dropped {
    pub oom_ring_full: u64,
}

impl Record for Summary {
    const TYPE: &'static str = "summary";

    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let lost = match self.dropped.oom_ring_full {
            0 => String::new(),
            n => format!(", {n} records lost (ring buffer full)"),
        };
        writeln!(
            out,
            "Summary: {} OOM kill{} ({}){lost}",
            self.kills,
            if self.kills == 1 { "" } else { "s" },
            self.reason.replace('_', " ")
        )
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
    ) + &owner_words(&c.owner)
}

/// ` pod=UID qos=CLASS container=RUNTIME://ID12`, or ` unit=UNIT`, where the cgroup says.
fn owner_words(owner: &crate::model::owner::Owner) -> String {
    let mut words = String::new();
    if let Some(uid) = &owner.pod_uid {
        words.push_str(&format!(" pod={uid}"));
    }
    if let Some(qos) = owner.qos_class {
        words.push_str(&format!(" qos={qos}"));
    }
    if let Some(id) = &owner.container_id {
        let short = &id[..id.len().min(12)];
        match owner.runtime {
            Some(runtime) => words.push_str(&format!(" container={runtime}://{short}")),
            None => words.push_str(&format!(" container={short}")),
        }
    }
    if let Some(unit) = &owner.systemd_unit {
        words.push_str(&format!(" unit={unit}"));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::oom::{Cgroup, Trigger, Victim},
        output::{Captured, Format},
    };

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
                history: None,
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
                top_users: None,
                owner: crate::enrich::owner::owner_of("/system.slice/db.service"),
            },
        }
    }

    #[test]
    fn unknown_fields_are_null_in_json_and_question_marks_in_text() {
        let k = kill();
        let (mut sink, captured) = Captured::sink(Format::Json);
        sink.emit(&k).unwrap();
        sink.flush().unwrap();
        let json: serde_json::Value = serde_json::from_str(&captured.text()).unwrap();
        assert_eq!(json["type"], "oom_kill");
        assert_eq!(json["timestamp"], 0.0);
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
        assert!(text.ends_with(" unit=db.service"), "{text}");
        assert_eq!(json["cgroup"]["systemd_unit"], "db.service");
        assert_eq!(json["cgroup"]["pod_uid"], serde_json::Value::Null);
    }
}
