//! Ranges of a fixed-size kernel array handed out and taken back (first fit, adjacent free
//! ranges merged), with a grace period: a freed range becomes reusable only after
//! [`RangeAlloc::release`] was called with a later epoch, so a kernel program that read the
//! old pointer to it just before it was freed never sees it rewritten.

/// A range `[start, start + len)`.
pub type Range = (u32, u32);

#[derive(Debug)]
pub struct RangeAlloc {
    capacity: u32,
    /// Free ranges, sorted by start, never adjacent.
    free: Vec<Range>,
    /// Freed but not yet reusable: (range, epoch freed).
    pending: Vec<(Range, u64)>,
}

impl RangeAlloc {
    pub fn new(capacity: u32) -> Self {
        RangeAlloc {
            capacity,
            free: if capacity > 0 {
                vec![(0, capacity)]
            } else {
                vec![]
            },
            pending: Vec::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries free now, and free once pending ranges are released.
    pub fn available(&self) -> (u64, u64) {
        let now: u64 = self.free.iter().map(|r| u64::from(r.1)).sum();
        let later: u64 = self.pending.iter().map(|(r, _)| u64::from(r.1)).sum();
        (now, now + later)
    }

    /// The first free range of `len` entries.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let i = self.free.iter().position(|r| r.1 >= len)?;
        let (start, have) = self.free[i];
        if have == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, have - len);
        }
        Some(start)
    }

    /// Gives a range back; reusable after `release` with an epoch later than `epoch`.
    pub fn free(&mut self, range: Range, epoch: u64) {
        if range.1 > 0 {
            self.pending.push((range, epoch));
        }
    }

    /// Makes ranges freed before `epoch` reusable.
    pub fn release(&mut self, epoch: u64) {
        let (ready, wait): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(_, e)| *e < epoch);
        self.pending = wait;
        for (r, _) in ready {
            self.insert(r);
        }
    }

    fn insert(&mut self, (start, len): Range) {
        let i = self.free.partition_point(|r| r.0 < start);
        self.free.insert(i, (start, len));
        // Merge with the next, then with the previous.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_grace_and_merging() {
        let mut a = RangeAlloc::new(10);
        assert_eq!(a.alloc(4), Some(0));
        assert_eq!(a.alloc(4), Some(4));
        assert_eq!(a.alloc(4), None);
        a.free((0, 4), 1);
        // Not reusable before a later epoch.
        a.release(1);
        assert_eq!(a.alloc(3), None);
        assert_eq!(a.available(), (2, 6));
        a.release(2);
        assert_eq!(a.alloc(3), Some(0));
        a.free((0, 3), 2);
        a.free((4, 4), 2);
        a.release(3);
        // [0,3) + [3,4) (left over) + [4,8) + [8,10) merged into one.
        assert_eq!(a.free, vec![(0, 10)]);
        assert_eq!(a.alloc(10), Some(0));
        assert_eq!(a.alloc(0), Some(0));
        assert_eq!(RangeAlloc::new(0).alloc(1), None);
    }
}
