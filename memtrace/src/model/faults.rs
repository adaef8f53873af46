//! Page faults as memtrace counts them: minor and major, per process, thread, stack or mapping.

/// Minor and major faults (the kernel's `min_flt` and `maj_flt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub minor: u64,
    pub major: u64,
}

impl Counts {
    pub fn sum(self) -> u64 {
        self.minor + self.major
    }

    pub fn add(&mut self, other: Counts) {
        self.minor += other.minor;
        self.major += other.major;
    }

    /// What was counted since `earlier`; a counter that went backwards was restarted.
    pub fn since(self, earlier: Counts) -> Counts {
        if self.minor < earlier.minor || self.major < earlier.major {
            self
        } else {
            Counts {
                minor: self.minor - earlier.minor,
                major: self.major - earlier.major,
            }
        }
    }
}
