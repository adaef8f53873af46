//! Putting the kernel's OOM report back together: `printk` prints the `oom-kill:` line and the
//! group-kill announcement in fragments; they arrive as separate records tagged with their OOM
//! invocation (`seq`), before that invocation's victims. Pure: no I/O.

use std::collections::BTreeMap;

use memtrace_common::oom::OomPhase;

use crate::model::oom::TextFragment;

/// What the kernel's report says about one OOM invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, `CONSTRAINT_CPUSET`, `CONSTRAINT_MEMORY_POLICY`.
    pub constraint: Option<String>,
    /// The memory cgroup whose limit was hit (only for a cgroup OOM).
    pub oom_memcg: Option<String>,
    /// The chosen victim's memory cgroup.
    pub task_memcg: Option<String>,
    /// The chosen victim's pid.
    pub task_pid: Option<u32>,
    /// The cgroup of a `memory.oom.group` kill, when one was announced.
    pub group: Option<String>,
}

impl Report {
    /// Whether the OOM was a cgroup limit (`Some(true)`) or system-wide (`Some(false)`).
    pub fn is_cgroup_oom(&self) -> Option<bool> {
        self.constraint.as_deref().map(|c| c == "CONSTRAINT_MEMCG")
    }
}

/// Parses `oom-kill:constraint=...,nodemask=...,cpuset=...,mems_allowed=...,oom_memcg=...,
/// task_memcg=...,task=...,pid=...,uid=...`. Cgroup paths may hold commas, so each is taken up
/// to the next known key rather than split on commas.
pub fn parse_oom_line(line: &str, report: &mut Report) {
    let Some(rest) = line.strip_prefix("oom-kill:") else {
        return;
    };
    let value = |key: &str, until: &[&str]| -> Option<String> {
        let start = rest.find(key)? + key.len();
        let tail = &rest[start..];
        let end = until
            .iter()
            .filter_map(|next| tail.find(next))
            .min()
            .unwrap_or(tail.len());
        Some(tail[..end].to_owned())
    };
    report.constraint = value("constraint=", &[","]);
    report.oom_memcg = value(",oom_memcg=", &[",task_memcg=", ",task="]);
    report.task_memcg = value(",task_memcg=", &[",task="]);
    report.task_pid = value(",task=", &[])
        .and_then(|tail| tail.rsplit_once(",pid=").map(|(_, p)| p.to_owned()))
        .and_then(|p| p.split(',').next()?.parse().ok());
}

/// Parses `Tasks in /path are going to be killed due to memory.oom.group set`.
pub fn parse_group_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("Tasks in ")?;
    let end = rest.rfind(" are going to be killed")?;
    Some(rest[..end].to_owned())
}

/// The reports of recent OOM invocations, built from fragments.
#[derive(Default)]
pub struct Reports {
    texts: BTreeMap<u64, (String, String)>,
}

/// Invocations remembered at once; older ones are forgotten.
const KEEP: usize = 64;

impl Reports {
    pub fn add(&mut self, fragment: &TextFragment) {
        let (line, group) = self.texts.entry(fragment.seq).or_default();
        match fragment.phase {
            OomPhase::LINE => line.push_str(&fragment.text),
            OomPhase::GROUP => group.push_str(&fragment.text),
            _ => {}
        }
        while self.texts.len() > KEEP {
            self.texts.pop_first();
        }
    }

    pub fn get(&self, seq: u64) -> Report {
        let mut report = Report::default();
        if let Some((line, group)) = self.texts.get(&seq) {
            parse_oom_line(line, &mut report);
            report.group = parse_group_line(group);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(seq: u64, phase: u32, text: &str) -> TextFragment {
        TextFragment {
            seq,
            tid: 1,
            phase,
            text: text.into(),
        }
    }

    #[test]
    fn memcg_line_from_fragments() {
        let mut reports = Reports::default();
        for text in [
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null)",
            ",cpuset=",
            "/",
            ",mems_allowed=0",
            ",oom_memcg=",
            "/oomexp",
            ",task_memcg=",
            "/oomexp/a,b",
            ",task=hog,pid=20495,uid=0",
        ] {
            reports.add(&fragment(3, OomPhase::LINE, text));
        }
        let report = reports.get(3);
        assert_eq!(report.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(report.oom_memcg.as_deref(), Some("/oomexp"));
        assert_eq!(report.task_memcg.as_deref(), Some("/oomexp/a,b"));
        assert_eq!(report.task_pid, Some(20495));
        assert_eq!(report.is_cgroup_oom(), Some(true));
        assert_eq!(reports.get(4), Report::default());
    }

    #[test]
    fn system_wide_line_has_no_oom_memcg() {
        let mut report = Report::default();
        parse_oom_line(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,\
             global_oom,task_memcg=/user.slice,task=a,b,pid=7,uid=1000",
            &mut report,
        );
        assert_eq!(report.is_cgroup_oom(), Some(false));
        assert_eq!(report.oom_memcg, None);
        assert_eq!(report.task_memcg.as_deref(), Some("/user.slice"));
        assert_eq!(report.task_pid, Some(7));
    }

    #[test]
    fn group_announcement() {
        let mut reports = Reports::default();
        for text in [
            "Tasks in ",
            "/grp",
            " are going to be killed due to memory.oom.group set",
        ] {
            reports.add(&fragment(9, OomPhase::GROUP, text));
        }
        assert_eq!(reports.get(9).group.as_deref(), Some("/grp"));
        assert_eq!(parse_group_line("something else"), None);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut report = Report::default();
        parse_oom_line("oom-kill:", &mut report);
        assert_eq!(report, Report::default());
        parse_oom_line("not a report", &mut report);
        assert_eq!(report, Report::default());
    }

    #[test]
    fn old_invocations_are_forgotten() {
        let mut reports = Reports::default();
        for seq in 0..100 {
            reports.add(&fragment(
                seq,
                OomPhase::LINE,
                "oom-kill:constraint=CONSTRAINT_MEMCG",
            ));
        }
        assert_eq!(reports.get(0), Report::default());
        assert!(reports.get(99).constraint.is_some());
    }

    /// Property tests: report text from the kernel is parsed without panicking, whatever it is.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Text built from the report's own keys, so the parser's every branch is reached.
        fn report_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("oom-kill:".to_owned()),
                Just("constraint=".to_owned()),
                Just(",oom_memcg=".to_owned()),
                Just(",task_memcg=".to_owned()),
                Just(",task=".to_owned()),
                Just(",pid=".to_owned()),
                Just(",".to_owned()),
                Just("Tasks in ".to_owned()),
                Just(" are going to be killed".to_owned()),
                "\\PC{0,8}",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #[test]
            fn any_text_parses_without_panicking(line in "\\PC*", structured in report_like()) {
                for text in [&line, &structured] {
                    let mut report = Report::default();
                    parse_oom_line(text, &mut report);
                    let _ = parse_group_line(text);
                }
            }

            #[test]
            fn any_fragments_are_taken_without_panicking(
                fragments in proptest::collection::vec((0u64..4, 0u32..4, report_like()), 0..40),
            ) {
                let mut reports = Reports::default();
                for (seq, phase, text) in fragments {
                    reports.add(&fragment(seq, phase, &text));
                    let _ = reports.get(seq);
                }
            }
        }
    }
}
