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

/// The table's blocks summed per (process, stack) as they are read, leaving out those younger
/// than `min_age_ns`.
pub struct Sums {
    now_ns: u64,
    min_age_ns: u64,
    pub per_stack: HashMap<(u32, StackRef), Outstanding>,
}

impl Sums {
    pub fn new(now_ns: u64, min_age_ns: u64) -> Sums {
        Sums {
            now_ns,
            min_age_ns,
            per_stack: HashMap::new(),
        }
    }

    pub fn add(&mut self, key: &AllocKey, block: &Allocation) {
        if self.now_ns.saturating_sub(block.born_ns) < self.min_age_ns {
            return;
        }
        let stack = StackRef {
            kernel: 0,
            ..block.stack
        };
        self.per_stack
            .entry((key.tgid, stack))
            .or_default()
            .add(&Outstanding {
                bytes: block.size,
                blocks: 1,
                oldest_ns: block.born_ns,
            });
    }
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
                stack: known(hash),
            },
        )
    }

    fn known(hash: u64) -> StackRef {
        StackRef {
            hash,
            how: StackRef::KNOWN,
            kernel: 0,
        }
    }

    fn sum(table: &[(AllocKey, Allocation)], now_ns: u64, min_age_ns: u64) -> Sums {
        let mut sums = Sums::new(now_ns, min_age_ns);
        for (key, block) in table {
            sums.add(key, block);
        }
        sums
    }

    #[test]
    fn sums_per_process_and_stack_keeping_the_oldest() {
        let table = [
            block(1, 0x10, 100, 50, 7),
            block(1, 0x20, 28, 20, 7),
            block(1, 0x30, 5, 90, 8),
            block(2, 0x10, 1, 10, 7),
        ];
        let sums = sum(&table, 100, 0).per_stack;
        let expected = Outstanding {
            bytes: 128,
            blocks: 2,
            oldest_ns: 20,
        };
        assert_eq!(sums[&(1, known(7))], expected);
        assert_eq!(sums[&(1, known(8))].blocks, 1);
        assert_eq!(sums[&(2, known(7))].bytes, 1);
    }

    #[test]
    fn leaves_out_young_blocks() {
        let table = [block(1, 0x10, 100, 50, 7), block(1, 0x20, 8, 95, 7)];
        let sums = sum(&table, 100, 10).per_stack;
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[&(1, known(7))].bytes, 100);
    }
}
