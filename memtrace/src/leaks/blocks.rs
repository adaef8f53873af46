//! `leaks --malloc`: the kernel's table of live blocks, summed per process and stack.

use std::collections::HashMap;

use memtrace_common::{
    allocs::{AllocKey, Allocation},
    stacks::StackRef,
};

/// The live blocks of one process allocated at one stack (as the kernel named it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outstanding {
    pub bytes: u64,
    pub blocks: u64,
    /// Birth of the oldest (CLOCK_MONOTONIC ns).
    pub oldest_ns: u64,
}

impl Outstanding {
    pub fn add(&mut self, other: &Outstanding) {
        if self.blocks == 0 || other.oldest_ns < self.oldest_ns {
            self.oldest_ns = other.oldest_ns;
        }
        self.bytes += other.bytes;
        self.blocks += other.blocks;
    }
}

/// The table's blocks per (process, stack), leaving out those younger than `min_age_ns` and
/// those from before their process's last `exec` (`execs`: process → time of its exec), whose
/// keys are returned apart for deletion.
pub fn sum(
    table: &[(AllocKey, Allocation)],
    now_ns: u64,
    min_age_ns: u64,
    execs: &HashMap<u32, u64>,
) -> (HashMap<(u32, StackRef), Outstanding>, Vec<AllocKey>) {
    let mut per_stack: HashMap<(u32, StackRef), Outstanding> = HashMap::new();
    let mut stale = Vec::new();
    for (key, block) in table {
        if execs
            .get(&key.tgid)
            .is_some_and(|&exec| block.born_ns < exec)
        {
            stale.push(*key);
            continue;
        }
        if now_ns.saturating_sub(block.born_ns) < min_age_ns {
            continue;
        }
        let stack = StackRef {
            kernel: 0,
            ..block.stack
        };
        per_stack
            .entry((key.tgid, stack))
            .or_default()
            .add(&Outstanding {
                bytes: block.size,
                blocks: 1,
                oldest_ns: block.born_ns,
            });
    }
    (per_stack, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(tgid: u32, addr: u64, size: u64, born_ns: u64, hash: u64) -> (AllocKey, Allocation) {
        (
            AllocKey {
                tgid,
                _pad: 0,
                addr,
            },
            Allocation {
                size,
                born_ns,
                stack: StackRef {
                    hash,
                    how: StackRef::KNOWN,
                    kernel: 0,
                },
            },
        )
    }

    #[test]
    fn sums_per_process_and_stack_keeping_the_oldest() {
        let table = [
            block(1, 0x10, 100, 50, 7),
            block(1, 0x20, 28, 20, 7),
            block(1, 0x30, 5, 90, 8),
            block(2, 0x10, 1, 10, 7),
        ];
        let (sums, stale) = sum(&table, 100, 0, &HashMap::new());
        assert!(stale.is_empty());
        let at = |tgid, hash| {
            sums[&(
                tgid,
                StackRef {
                    hash,
                    how: StackRef::KNOWN,
                    kernel: 0,
                },
            )]
        };
        assert_eq!(
            at(1, 7),
            Outstanding {
                bytes: 128,
                blocks: 2,
                oldest_ns: 20
            }
        );
        assert_eq!(at(1, 8).blocks, 1);
        assert_eq!(at(2, 7).bytes, 1);
    }

    #[test]
    fn leaves_out_young_blocks_and_returns_those_before_exec() {
        let table = [
            block(1, 0x10, 100, 50, 7),
            block(1, 0x20, 8, 95, 7),
            block(2, 0x10, 1, 10, 7),
        ];
        let execs = HashMap::from([(2, 20)]);
        let (sums, stale) = sum(&table, 100, 10, &execs);
        assert_eq!(sums.len(), 1);
        assert_eq!(sums.values().next().unwrap().bytes, 100);
        assert_eq!(
            stale,
            [AllocKey {
                tgid: 2,
                _pad: 0,
                addr: 0x10
            }]
        );
    }
}
