//! OOM kills: the records the `oom:mark_victim` and `console` programs send through the
//! `OOM_EVENTS` ring buffer, and the tracepoint layout userspace hands the programs at load time.
//!
//! Every record starts with a `u32` kind tag ([`OomRecordKind`]), so userspace can tell them apart
//! before it knows their size.

/// Size of the `OOM_EVENTS` ring buffer. OOM kills are rare; this holds thousands of records.
pub const OOM_RING_BYTES: u32 = 256 * 1024;

/// Size of the `NEW_PROCESSES` ring buffer: 16-byte records, drained every second, so a
/// thousand `exec`s a second.
pub const NEW_PROCESS_RING_BYTES: u32 = 16 * 1024;

/// Tasks whose OOM-killer state is tracked at once (one per task running the OOM killer).
pub const MAX_OOM_TASKS: u32 = 256;

/// Bytes of one kernel log fragment carried to userspace (longer ones are truncated).
pub const OOM_TEXT_LEN: usize = 256;

/// Fragments of one kernel log line sent for one OOM invocation, at most.
pub const MAX_OOM_FRAGMENTS: u32 = 16;

/// The kind tag at the start of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomRecordKind {
    /// An [`OomVictim`]: `oom:mark_victim` fired.
    Victim = 1,
    /// An [`OomText`]: a fragment of the kernel's own OOM report, printed by the trigger.
    Text = 2,
}

/// Bits of [`OomVictim::fields`]: which `mark_victim` fields this kernel provides. Before 6.9
/// only the pid exists; the others are then unknown, never zero.
pub struct OomFields;

impl OomFields {
    pub const COMM: u32 = 1 << 0;
    pub const TOTAL_VM: u32 = 1 << 1;
    pub const ANON_RSS: u32 = 1 << 2;
    pub const FILE_RSS: u32 = 1 << 3;
    pub const SHMEM_RSS: u32 = 1 << 4;
    pub const UID: u32 = 1 << 5;
    pub const PGTABLES: u32 = 1 << 6;
    pub const OOM_SCORE_ADJ: u32 = 1 << 7;
}

/// Which part of the kernel's OOM report an [`OomText`] fragment belongs to.
pub struct OomPhase;

impl OomPhase {
    /// The `oom-kill:constraint=...,oom_memcg=...,task_memcg=...` line, before the first victim.
    pub const LINE: u32 = 1;
    /// The chosen victim has been marked.
    pub const KILLED: u32 = 2;
    /// `Tasks in CGROUP are going to be killed due to memory.oom.group set`.
    pub const GROUP: u32 = 3;
    /// The members of a `memory.oom.group` kill are being marked.
    pub const MEMBERS: u32 = 4;
}

/// Byte offsets of the fields in the `oom:mark_victim` record, read from its tracefs `format`
/// file at start-up. An absent field has its bit clear in `fields`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomLayout {
    /// [`OomFields`] bits of the fields present.
    pub fields: u32,
    pub pid: u32,
    /// A `__data_loc char[]`: a `u32` whose low 16 bits are the string's offset in the record.
    pub comm: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub uid: u32,
    pub pgtables: u32,
    pub oom_score_adj: u32,
}

impl OomLayout {
    /// The layout as the bytes of the `OOM_LAYOUT` global.
    pub fn to_ne_bytes(&self) -> [u8; size_of::<OomLayout>()] {
        let words = [
            self.fields,
            self.pid,
            self.comm,
            self.total_vm,
            self.anon_rss,
            self.file_rss,
            self.shmem_rss,
            self.uid,
            self.pgtables,
            self.oom_score_adj,
        ];
        let mut bytes = [0; size_of::<OomLayout>()];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }
}

/// One OOM victim, as `oom:mark_victim` saw it. Sizes are in KiB, as the kernel reports them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomVictim {
    /// [`OomRecordKind::Victim`].
    pub kind: u32,
    /// [`OomFields`] bits: which of the victim's fields below are valid.
    pub fields: u32,
    /// The OOM invocation this victim belongs to: shared by every victim of one group kill.
    pub seq: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the victim was marked.
    pub ktime_ns: u64,
    pub pid: u32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    /// The task running the OOM killer (the current task when `mark_victim` fired).
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    /// [`OomPhase`] of the trigger's OOM report when this victim was marked.
    pub phase: u32,
    pub comm: [u8; crate::COMM_LEN],
    pub trigger_comm: [u8; crate::COMM_LEN],
}

/// One fragment of the kernel's OOM report (`printk` prints a line in several pieces).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomText {
    /// [`OomRecordKind::Text`].
    pub kind: u32,
    /// Valid bytes in `text`.
    pub len: u32,
    /// The OOM invocation, as in [`OomVictim::seq`].
    pub seq: u64,
    pub tid: u32,
    /// [`OomPhase::LINE`] or [`OomPhase::GROUP`].
    pub phase: u32,
    pub text: [u8; OOM_TEXT_LEN],
}

const _: () = assert!(size_of::<OomLayout>() == 40);
const _: () = assert!(size_of::<OomVictim>() == 120);
const _: () = assert!(size_of::<OomText>() == 24 + OOM_TEXT_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, only integers and byte arrays, no padding bytes (sizes asserted above).
    unsafe impl aya::Pod for super::OomLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OomVictim {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OomText {}
}
