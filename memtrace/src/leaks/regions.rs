//! What a process has mapped and not unmapped since tracing began, region by region, each with
//! the stack that mapped it and when: kept up to date from its mmap, munmap, mremap and brk
//! calls as the kernel completed them.

use std::collections::BTreeMap;

use crate::stacks::StackId;

/// A mapped region still outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub len: u64,
    /// The stack of the call that mapped it, if known.
    pub stack: Option<StackId>,
    /// When it was mapped (CLOCK_MONOTONIC nanoseconds).
    pub born_ns: u64,
}

/// A process's outstanding regions, by start address; they never overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regions {
    regions: BTreeMap<u64, Region>,
}

impl Regions {
    /// `[start, start + len)` was mapped (replacing whatever it overlapped, as `MAP_FIXED`).
    pub fn map(&mut self, start: u64, len: u64, stack: Option<StackId>, born_ns: u64) {
        if len == 0 {
            return;
        }
        self.unmap(start, len);
        self.regions.insert(
            start,
            Region {
                len,
                stack,
                born_ns,
            },
        );
    }

    /// `[start, start + len)` was unmapped: regions inside it go, regions across its edges
    /// keep what lies outside.
    pub fn unmap(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        let overlapping: Vec<(u64, Region)> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|&(&at, region)| at + region.len > start || at >= start)
            .filter(|&(&at, region)| at < end && at + region.len > start)
            .map(|(&at, &region)| (at, region))
            .collect();
        for (at, region) in overlapping {
            self.regions.remove(&at);
            if at < start {
                self.regions.insert(
                    at,
                    Region {
                        len: start - at,
                        ..region
                    },
                );
            }
            let region_end = at + region.len;
            if region_end > end {
                self.regions.insert(
                    end,
                    Region {
                        len: region_end - end,
                        ..region
                    },
                );
            }
        }
    }

    /// mremap moved or resized `[old, old + old_len)` to `[new, new + new_len)`: it keeps the
    /// stack and age of what it was (the stack of the mremap itself when nothing was known).
    pub fn remap(
        &mut self,
        (old, old_len): (u64, u64),
        (new, new_len): (u64, u64),
        stack: Option<StackId>,
        now_ns: u64,
    ) {
        let origin = self
            .regions
            .range(..=old)
            .next_back()
            .filter(|&(&at, region)| at + region.len > old)
            .map(|(_, &region)| region);
        self.unmap(old, old_len);
        let (stack, born_ns) = match origin {
            Some(region) => (region.stack, region.born_ns),
            None => (stack, now_ns),
        };
        self.map(new, new_len, stack, born_ns);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Region)> {
        self.regions.iter().map(|(&at, region)| (at, region))
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(regions: &Regions) -> Vec<(u64, u64, Option<StackId>)> {
        regions
            .iter()
            .map(|(at, r)| (at, at + r.len, r.stack))
            .collect()
    }

    #[test]
    fn unmapping_splits_trims_and_removes() {
        let mut regions = Regions::default();
        regions.map(0x1000, 0x4000, Some(1), 0);
        regions.map(0x8000, 0x1000, Some(2), 0);
        regions.unmap(0x2000, 0x1000);
        assert_eq!(
            spans(&regions),
            [
                (0x1000, 0x2000, Some(1)),
                (0x3000, 0x5000, Some(1)),
                (0x8000, 0x9000, Some(2))
            ]
        );
        regions.unmap(0x4000, 0x5000);
        assert_eq!(
            spans(&regions),
            [(0x1000, 0x2000, Some(1)), (0x3000, 0x4000, Some(1))]
        );
        regions.unmap(0, 0x10000);
        assert!(regions.is_empty());
    }

    #[test]
    fn a_fixed_mapping_replaces_what_it_overlaps() {
        let mut regions = Regions::default();
        regions.map(0x1000, 0x3000, Some(1), 0);
        regions.map(0x2000, 0x1000, Some(2), 5);
        assert_eq!(
            spans(&regions),
            [
                (0x1000, 0x2000, Some(1)),
                (0x2000, 0x3000, Some(2)),
                (0x3000, 0x4000, Some(1))
            ]
        );
    }

    #[test]
    fn mremap_keeps_the_stack_and_age_of_what_it_moves() {
        let mut regions = Regions::default();
        regions.map(0x1000, 0x1000, Some(1), 7);
        regions.remap((0x1000, 0x1000), (0x9000, 0x3000), Some(2), 99);
        assert_eq!(spans(&regions), [(0x9000, 0xc000, Some(1))]);
        assert_eq!(regions.iter().next().unwrap().1.born_ns, 7);
        // Growing something mapped before tracing began: the mremap's own stack.
        regions.remap((0x20000, 0x1000), (0x30000, 0x2000), Some(3), 99);
        assert_eq!(spans(&regions)[1], (0x30000, 0x32000, Some(3)));
    }
}
