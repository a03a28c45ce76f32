//! A syscall latency histogram held compactly in userspace: count, sum, errors and only the
//! non-empty log2 buckets (a process's calls of one syscall fill a handful of the 40).
//!
//! Invariant: `buckets` is sorted by index, has no zero counts, and its counts sum to `count`
//! (every call lands in exactly one bucket).

use agent_common::syscalls::{SyscallStats, HIST_BUCKETS};

/// Cumulative or incremental histogram of one (process, syscall), in kernel units (ns).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Agg {
    pub count: u64,
    pub sum_ns: u64,
    pub errors: u64,
    /// (bucket index, calls), sorted, no zeros.
    pub buckets: Vec<(u8, u64)>,
}

impl Agg {
    /// The sum of one kernel entry's per-CPU values.
    pub fn from_cpus<'a>(values: impl IntoIterator<Item = &'a SyscallStats>) -> Agg {
        let mut dense = [0u64; HIST_BUCKETS];
        let mut a = Agg::default();
        for v in values {
            a.count += v.count;
            a.sum_ns += v.sum_ns;
            a.errors += v.errors;
            for (d, b) in dense.iter_mut().zip(v.buckets.iter()) {
                *d += b;
            }
        }
        a.buckets = sparse(&dense);
        a
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.errors == 0 && self.sum_ns == 0
    }

    pub fn add(&mut self, o: &Agg) {
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.errors += o.errors;
        if o.buckets.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.buckets.len().max(o.buckets.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.buckets.len() || j < o.buckets.len() {
            match (self.buckets.get(i), o.buckets.get(j)) {
                (Some(a), Some(b)) if a.0 == b.0 => {
                    merged.push((a.0, a.1 + b.1));
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a.0 < b.0 => {
                    merged.push(*a);
                    i += 1;
                }
                (Some(_), Some(b)) | (None, Some(b)) => {
                    merged.push(*b);
                    j += 1;
                }
                (Some(a), None) => {
                    merged.push(*a);
                    i += 1;
                }
                (None, None) => unreachable!(),
            }
        }
        self.buckets = merged;
    }

    /// `self - earlier`, when `earlier` is an earlier reading of the same cumulative entry
    /// (every field of `self` at least `earlier`'s). `None` when it is not (the entry was
    /// recreated: the caller takes `self` whole).
    pub fn since(&self, earlier: &Agg) -> Option<Agg> {
        if self.count < earlier.count
            || self.sum_ns < earlier.sum_ns
            || self.errors < earlier.errors
        {
            return None;
        }
        let mut out = Agg {
            count: self.count - earlier.count,
            sum_ns: self.sum_ns - earlier.sum_ns,
            errors: self.errors - earlier.errors,
            buckets: Vec::new(),
        };
        // Both lists are sorted: walk them together. Every earlier bucket must still be there.
        let mut earlier_iter = earlier.buckets.iter().peekable();
        for &(b, n) in &self.buckets {
            let mut before = 0;
            if let Some(&&(eb, en)) = earlier_iter.peek() {
                if eb < b {
                    // A bucket the earlier reading had and this one lacks: not cumulative.
                    return None;
                }
                if eb == b {
                    before = en;
                    earlier_iter.next();
                }
            }
            if n < before {
                return None;
            }
            if n > before {
                out.buckets.push((b, n - before));
            }
        }
        if earlier_iter.next().is_some() {
            return None;
        }
        Some(out)
    }

    /// All `HIST_BUCKETS` bucket counts.
    pub fn dense(&self) -> Vec<u64> {
        let mut d = vec![0u64; HIST_BUCKETS];
        for &(b, n) in &self.buckets {
            d[b as usize] = n;
        }
        d
    }
}

fn sparse(dense: &[u64]) -> Vec<(u8, u64)> {
    dense
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(b, n)| (b as u8, *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(buckets: &[(u8, u64)], errors: u64) -> Agg {
        Agg {
            count: buckets.iter().map(|b| b.1).sum(),
            sum_ns: buckets.iter().map(|b| b.1 * (1 << b.0)).sum(),
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn add_merges_sorted_buckets() {
        let mut a = agg(&[(3, 2), (7, 1)], 1);
        a.add(&agg(&[(1, 5), (7, 2), (9, 1)], 0));
        assert_eq!(a.buckets, vec![(1, 5), (3, 2), (7, 3), (9, 1)]);
        assert_eq!((a.count, a.errors), (11, 1));
    }

    #[test]
    fn since_is_the_increment_and_refuses_non_cumulative_readings() {
        let before = agg(&[(3, 2), (7, 1)], 1);
        let after = agg(&[(3, 2), (5, 4), (7, 3)], 2);
        let d = after.since(&before).unwrap();
        assert_eq!(d.buckets, vec![(5, 4), (7, 2)]);
        assert_eq!((d.count, d.errors), (6, 1));
        let mut back = before.clone();
        back.add(&d);
        assert_eq!(back, after);
        // A bucket went down or vanished: the entry was recreated.
        assert_eq!(agg(&[(7, 5)], 1).since(&before), None);
        assert_eq!(agg(&[(3, 1), (7, 5)], 1).since(&before), None);
        assert_eq!(agg(&[], 0).since(&Agg::default()), Some(Agg::default()));
    }

    #[test]
    fn from_cpus_sums_and_keeps_only_used_buckets() {
        let mut a = SyscallStats::ZERO;
        a.count = 3;
        a.buckets[4] = 3;
        let mut b = SyscallStats::ZERO;
        b.count = 2;
        b.errors = 1;
        b.buckets[4] = 1;
        b.buckets[39] = 1;
        let s = Agg::from_cpus([&a, &b]);
        assert_eq!(s.buckets, vec![(4, 4), (39, 1)]);
        assert_eq!((s.count, s.errors), (5, 1));
        assert_eq!(s.dense().iter().sum::<u64>(), 5);
    }
}
