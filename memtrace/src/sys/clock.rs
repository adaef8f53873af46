//! The kernel's clock beside the wall's: BPF programs stamp events with CLOCK_MONOTONIC
//! (`bpf_ktime_get_ns`), people and JSON read Unix time.

use crate::model::time::Timestamp;

/// Converts CLOCK_MONOTONIC timestamps to wall-clock time, at the offset read when made (a
/// session makes one at its start, so that its events stay in order should the wall clock be
/// set meanwhile).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        WallClock {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn unix_ns(self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }

    /// The wall-clock time of a monotonic timestamp.
    pub fn timestamp(self, monotonic_ns: u64) -> Timestamp {
        Timestamp {
            unix: self.unix_ns(monotonic_ns) as f64 / 1e9,
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: what `bpf_ktime_get_ns` stamps, for ages.
pub fn monotonic_ns() -> u64 {
    u64::try_from(read(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// A clock's reading in nanoseconds.
fn read(clock: libc::clockid_t) -> i128 {
    // SAFETY: all-zero is a valid timespec; clock_gettime only writes into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_become_wall_clock() {
        let clock = WallClock {
            offset_ns: 1_700_000_000_000_000_000,
        };
        assert_eq!(clock.unix_ns(5), 1_700_000_000_000_000_005);
        assert_eq!(clock.timestamp(500_000_000).unix, 1_700_000_000.5);
    }

    #[test]
    fn now_is_now() {
        let clock = WallClock::now();
        let wall = Timestamp::now().unix;
        let monotonic = monotonic_ns();
        assert!((clock.timestamp(monotonic).unix - wall).abs() < 1.0);
    }
}
