//! Deltas from cumulative counters: the kernel keeps running totals per key, and exporters want
//! what changed since the last reading. A key deleted and created again (a retired process whose
//! pid is reused) starts again from zero, which shows as a counter going backwards.

use std::{collections::HashMap, hash::Hash};

/// A set of counters that only grow, unless restarted.
pub trait Cumulative: Copy + Default {
    /// What was counted since `earlier`; all of `self` if any counter went backwards.
    fn since(self, earlier: Self) -> Self;
}

impl Cumulative for u64 {
    fn since(self, earlier: u64) -> u64 {
        self.checked_sub(earlier).unwrap_or(self)
    }
}

/// Two counters that restart together (a program's run time and run count).
impl Cumulative for (u64, u64) {
    fn since(self, earlier: (u64, u64)) -> (u64, u64) {
        if self.0 < earlier.0 || self.1 < earlier.1 {
            self
        } else {
            (self.0 - earlier.0, self.1 - earlier.1)
        }
    }
}

/// The last cumulative value seen per key.
#[derive(Debug)]
pub struct Deltas<K, V> {
    seen: HashMap<K, V>,
}

impl<K, V> Default for Deltas<K, V> {
    fn default() -> Self {
        Deltas {
            seen: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash, V: Cumulative> Deltas<K, V> {
    /// Records a reading and returns what changed since the previous one of this key.
    pub fn update(&mut self, key: K, cumulative: V) -> V {
        let previous = self.seen.insert(key, cumulative).unwrap_or_default();
        cumulative.since(previous)
    }

    /// The key's kernel counter was deleted: its next reading starts from zero.
    pub fn forget(&mut self, key: &K) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_between_readings() {
        let mut deltas = Deltas::default();
        assert_eq!(deltas.update("a", 5u64), 5);
        assert_eq!(deltas.update("a", 12), 7);
        assert_eq!(deltas.update("a", 12), 0);
        assert_eq!(deltas.update("b", 3), 3);
    }

    #[test]
    fn a_counter_going_backwards_was_restarted() {
        let mut deltas = Deltas::default();
        deltas.update(1, 100u64);
        assert_eq!(deltas.update(1, 4), 4);
    }

    #[test]
    fn a_forgotten_key_starts_again_from_zero() {
        let mut deltas = Deltas::default();
        deltas.update(1, 100u64);
        deltas.forget(&1);
        assert!(deltas.is_empty());
        // Deleted in the kernel and created again: 150, not 150 - 100.
        assert_eq!(deltas.update(1, 150), 150);
    }
}
