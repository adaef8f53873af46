//! Memory pressure: the stalls the `pressure` object times per process (direct reclaim, reclaim
//! at a memory cgroup's limit, compaction, reclaim throttling), and its log2 histograms.

/// The kinds of stall, each a slot of [`StallCounts::kinds`] and of the histogram array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallKind {
    /// The task reclaimed memory itself because free memory ran low (direct reclaim).
    Direct = 0,
    /// The task reclaimed memory at its memory cgroup's limit.
    Memcg = 1,
    /// The task compacted memory to find contiguous pages (kcompactd's own work shows too).
    Compaction = 2,
    /// Reclaim made the task wait for writeback or congestion (`mm_vmscan_throttled`).
    Throttled = 3,
}

impl StallKind {
    pub const COUNT: usize = 4;
    pub const ALL: [StallKind; Self::COUNT] = [
        StallKind::Direct,
        StallKind::Memcg,
        StallKind::Compaction,
        StallKind::Throttled,
    ];

    /// A stable, machine-friendly name (JSON, Prometheus).
    pub const fn name(self) -> &'static str {
        match self {
            StallKind::Direct => "direct",
            StallKind::Memcg => "memcg",
            StallKind::Compaction => "compaction",
            StallKind::Throttled => "throttled",
        }
    }
}

/// Default capacity of the table of processes that stalled.
pub const MAX_STALLERS: u32 = 8_192;

/// Default capacity of the table of tasks inside a stall now.
pub const MAX_STALLING: u32 = 4_096;

/// log2 slots of a histogram: slot `i` counts stalls of `2^i` to `2^(i+1) - 1` microseconds
/// (slot 0: under 2 µs), the last one everything longer.
pub const HISTOGRAM_SLOTS: usize = 32;

/// One kind of stall of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stall {
    pub count: u64,
    pub total_ns: u64,
    /// The longest one (not atomic: two CPUs ending a stall of the same process at the same
    /// instant may keep the shorter).
    pub max_ns: u64,
}

/// A process's stalls, shared by every CPU (counts added atomically), with its name and memory
/// cgroup as the faults table records them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallCounts {
    pub kinds: [Stall; StallKind::COUNT],
    pub comm: [u8; crate::COMM_LEN],
    pub memcg: u64,
}

/// When each kind of stall of a task began (`bpf_ktime_get_ns`), 0 when not in one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StallStarts {
    pub direct_ns: u64,
    pub memcg_ns: u64,
    pub compaction_ns: u64,
}

/// A histogram of one kind of stall, per CPU.
pub type Histogram = [u64; HISTOGRAM_SLOTS];

/// The slot of a stall of `ns` nanoseconds: `floor(log2(µs))`, at most the last. Found by
/// halving rather than by counting leading zeros: the BPF target has no such instruction, and
/// the verifier cannot bound the bit tricks that stand in for it, while it follows these
/// branches exactly.
pub const fn histogram_slot(ns: u64) -> usize {
    let mut us = ns / 1000;
    if us >= 1 << 32 {
        return HISTOGRAM_SLOTS - 1;
    }
    let mut slot = 0;
    if us >= 1 << 16 {
        us >>= 16;
        slot += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        slot += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        slot += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        slot += 2;
    }
    if us >= 1 << 1 {
        slot += 1;
    }
    slot
}

const _: () = assert!(size_of::<Stall>() == 24);
const _: () = assert!(size_of::<StallCounts>() == 24 * 4 + 16 + 8);
const _: () = assert!(size_of::<StallStarts>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, integers and byte arrays only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::Stall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StallCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StallStarts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_powers_of_two_of_microseconds() {
        assert_eq!(histogram_slot(0), 0);
        assert_eq!(histogram_slot(1_999), 0);
        assert_eq!(histogram_slot(2_000), 1);
        assert_eq!(histogram_slot(3_999), 1);
        assert_eq!(histogram_slot(4_000), 2);
        assert_eq!(histogram_slot(1_000_000), 9); // 1 ms: 512..1023 µs
        assert_eq!(histogram_slot(u64::MAX), HISTOGRAM_SLOTS - 1);
        for shift in 0..40 {
            let us = 1u64 << shift;
            let expected = (shift as usize).min(HISTOGRAM_SLOTS - 1);
            assert_eq!(histogram_slot(us * 1000), expected, "2^{shift} µs");
        }
    }
}
