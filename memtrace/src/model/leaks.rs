//! What processes keep, as `leaks` reports it.

use serde::Serialize;

use super::stacks::Named;

/// One process's outstanding regions (or blocks) from one stack.
#[derive(Serialize)]
pub struct LeakRow {
    pub pid: u32,
    pub comm: String,
    pub bytes: u64,
    /// Regions mapped (mapping level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<u64>,
    /// Blocks allocated (`--malloc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    /// Mapping level: resident bytes of the regions (`null` once the process has exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<Option<u64>>,
    /// Age of the oldest, in seconds.
    pub oldest_s: f64,
    /// Innermost frame first; empty when the stack could not be known.
    pub stack: Vec<Named>,
    pub complete: bool,
}
