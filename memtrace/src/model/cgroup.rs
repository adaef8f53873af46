//! A memory cgroup as memtrace reports it: which hierarchy (v1's memory controller or v2) it is
//! in, and its limit. `sys::cgroup` reads them from cgroupfs.

use serde::Serialize;

/// Which cgroup version the memory controller is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The file holding a cgroup's memory limit (bytes; v2 also `max`).
    pub fn limit_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    /// The file holding a cgroup's memory usage, in bytes.
    pub fn usage_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    /// The flat-keyed file whose `oom_kill` line counts the cgroup's OOM kills.
    pub fn events_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        }
    }
}

/// A memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Bytes(u64),
    Unlimited,
}
