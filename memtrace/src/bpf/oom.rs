//! The `oom` object: `oom:mark_victim` (one record per victim; a classic tracepoint, since its
//! record carries what the kernel computed of the victim's memory) and the `console` raw
//! tracepoint (the kernel's own OOM report, for the victim's cgroup and the OOM's scope), the
//! victim layout read from tracefs, and the ring buffer of what they send.

use aya::{Ebpf, programs::RawTracePoint};
use memtrace_common::{
    DropSource, globals, maps,
    oom::{OomFields, OomLayout},
};

use super::{Config, Loaded, Object, program_mut, ring::Ring, tracepoints::Tracepoints};
use crate::{
    decode,
    error::Failure,
    model::oom::OomRecord,
    sys::{
        refusal::kernel_refusal,
        tracefs::{Field, Format},
    },
};

/// Where an [`OomLayout`] keeps a field's offset.
type Slot = fn(&mut OomLayout) -> &mut u32;

/// The fields of `oom:mark_victim` beyond `pid` (6.9+): name, bit, size, and where the layout
/// keeps its offset.
const OPTIONAL_FIELDS: [(&str, u32, u32, Slot); 8] = [
    ("comm", OomFields::COMM, 4, |l| &mut l.comm),
    ("total_vm", OomFields::TOTAL_VM, 8, |l| &mut l.total_vm),
    ("anon_rss", OomFields::ANON_RSS, 8, |l| &mut l.anon_rss),
    ("file_rss", OomFields::FILE_RSS, 8, |l| &mut l.file_rss),
    ("shmem_rss", OomFields::SHMEM_RSS, 8, |l| &mut l.shmem_rss),
    ("uid", OomFields::UID, 4, |l| &mut l.uid),
    ("pgtables", OomFields::PGTABLES, 8, |l| &mut l.pgtables),
    ("oom_score_adj", OomFields::OOM_SCORE_ADJ, 2, |l| {
        &mut l.oom_score_adj
    }),
];

/// What the `oom` object can lose.
pub const LOSSES: [DropSource; 2] = [DropSource::OomRingFull, DropSource::NewProcessRingFull];

/// Reads the layout of `oom:mark_victim` from tracefs.
pub fn layout() -> Result<OomLayout, Failure> {
    let victim = Format::read("oom", "mark_victim")?;
    layout_of(victim.fields()).map_err(|detail| Failure::KernelUnsupported {
        what: "the expected layout of oom:mark_victim".into(),
        hint: detail,
    })
}

/// The `mark_victim` layout from its fields: `pid` must be there; every other field is used when
/// present with the size the program reads, and reported unknown otherwise.
pub fn layout_of(fields: &[Field]) -> Result<OomLayout, String> {
    let find = |name: &str| fields.iter().find(|f| f.name == name);
    let pid = find("pid").ok_or("no field `pid`")?;
    if pid.size != 4 {
        return Err(format!("field `pid` of size {} (expected 4)", pid.size));
    }
    let mut layout = OomLayout {
        pid: pid.offset,
        ..OomLayout::default()
    };
    for (name, bit, size, slot) in OPTIONAL_FIELDS {
        let Some(field) = find(name) else { continue };
        if field.size != size {
            log::warn!(
                "oom:mark_victim field `{name}` has size {} (expected {size}): reported as unknown",
                field.size
            );
            continue;
        }
        layout.fields |= bit;
        *slot(&mut layout) = field.offset;
    }
    Ok(layout)
}

/// Whether the `console` hook sees the kernel's OOM reports. Kernels that call it as a message
/// is stored (`printk_sprint`, in their BTF since 5.15 or so) hand it every message; older ones
/// (5.10) only those printed on a console, which the reports (KERN_INFO) are only at a console
/// log level of 7 or more. Without them, kills are still reported, with their cgroups from
/// `/proc` and no group ids.
pub fn console_sees_reports() -> bool {
    let stored =
        crate::sys::btf::Btf::from_sys_fs().is_ok_and(|btf| btf.has_function("printk_sprint"));
    stored || console_log_level().is_some_and(|level| level > KERN_INFO)
}

/// `KERN_INFO`, the level of the report's lines: printed when the console's level is above it.
const KERN_INFO: u32 = 6;

/// The console log level (the first figure of `/proc/sys/kernel/printk`).
fn console_log_level() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/printk")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Loads the `oom` object with `layout` and attaches its programs: the victims' and the
/// console's, and with `new_processes` the one telling each `exec` (for victims' histories).
pub fn load(layout: &OomLayout, new_processes: bool) -> anyhow::Result<Loaded> {
    let mut config = Config::default();
    config.bytes(globals::OOM_LAYOUT, &layout.to_ne_bytes());
    if !new_processes {
        config.size(maps::NEW_PROCESSES, super::MIN_RING_BYTES);
    }
    let mut ebpf = super::load(Object::Oom, &config)?;
    super::forward_kernel_logs(&mut ebpf);
    let console: &mut RawTracePoint = program_mut(&mut ebpf, "mt_oom_console")?;
    console
        .load()
        .map_err(|err| kernel_refusal(err, "load mt_oom_console"))?;
    console
        .attach("console")
        .map_err(|err| kernel_refusal(err, "attach the raw tracepoint console"))?;
    if new_processes {
        let exec: &mut RawTracePoint = program_mut(&mut ebpf, "mt_oom_exec")?;
        exec.load()
            .map_err(|err| kernel_refusal(err, "load mt_oom_exec"))?;
        exec.attach("sched_process_exec")
            .map_err(|err| kernel_refusal(err, "attach the raw tracepoint sched_process_exec"))?;
    }
    let mut tracepoints = Tracepoints::default();
    tracepoints.attach(&mut ebpf, "mt_oom_victim", "oom", "mark_victim")?;
    Ok(Loaded { ebpf, tracepoints })
}

/// The processes that ran `exec` since the last drain, from the `NEW_PROCESSES` ring buffer
/// (read from its shared memory: no system call).
pub struct NewProcesses {
    ring: Ring,
}

impl NewProcesses {
    /// The ring, awaited through tokio (so within a runtime).
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<NewProcesses> {
        Ok(NewProcesses {
            ring: Ring::open(ebpf, maps::NEW_PROCESSES)?,
        })
    }

    /// Resolves once the ring has a birth to `drain` (perhaps already drained: a look may have
    /// taken it meanwhile). Cancel-safe.
    pub async fn started(&mut self) {
        if self.ring.readable().await.is_err() {
            // Without polling, births are found by the next regular look.
            std::future::pending::<()>().await;
        }
    }

    pub fn drain(&mut self) -> Vec<u32> {
        let mut pids = Vec::new();
        self.ring.drain(usize::MAX, |item| {
            if let Ok(bytes) = <[u8; 4]>::try_from(item) {
                pids.push(u32::from_ne_bytes(bytes));
            }
        });
        pids
    }
}

/// The ring buffer, awaited through tokio.
pub struct OomEvents {
    ring: Ring,
}

impl OomEvents {
    pub fn open(ebpf: &mut Ebpf) -> anyhow::Result<OomEvents> {
        Ok(OomEvents {
            ring: Ring::open(ebpf, maps::OOM_EVENTS)?,
        })
    }

    /// Waits until records are available, then decodes every one of them. Malformed records
    /// are reported and skipped. Cancel-safe: nothing is taken from the ring before it returns.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<OomRecord>> {
        loop {
            self.ring.readable().await?;
            let mut batch = Vec::new();
            self.ring
                .drain(usize::MAX, |item| match decode::oom::record(item) {
                    Ok(record) => batch.push(record),
                    Err(err) => log::warn!("skipping a malformed OOM record: {err}"),
                });
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// OOM records the kernel side could not send (the ring buffer was full).
pub fn drops(ebpf: &Ebpf) -> anyhow::Result<u64> {
    Ok(super::drops::read(ebpf, &LOSSES)?
        .into_iter()
        .map(|(_, n)| n)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tracefs::parse_format;

    const MARK_VICTIM_6_18: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    // Before 6.9 the record held only the pid.
    const MARK_VICTIM_6_1: &str = "name: mark_victim
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
";

    #[test]
    fn full_layout_on_6_18() {
        let layout = layout_of(&parse_format(MARK_VICTIM_6_18)).unwrap();
        assert_eq!(layout.fields, 0xff);
        assert_eq!(
            (layout.pid, layout.comm, layout.total_vm, layout.anon_rss),
            (8, 12, 16, 24)
        );
        assert_eq!(
            (
                layout.file_rss,
                layout.shmem_rss,
                layout.uid,
                layout.pgtables
            ),
            (32, 40, 48, 56)
        );
        assert_eq!(layout.oom_score_adj, 64);
    }

    #[test]
    fn old_kernels_give_only_the_pid() {
        let layout = layout_of(&parse_format(MARK_VICTIM_6_1)).unwrap();
        assert_eq!(layout.fields, 0);
        assert_eq!(layout.pid, 8);
        assert!(layout_of(&[]).is_err());
    }
}
