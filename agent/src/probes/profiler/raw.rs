//! Unsymbolized samples as they come out of the kernel, counted per distinct (thread, stacks).
//!
//! Invariants: addresses are exactly what the kernel unwound (leaf first, return addresses for
//! every frame but the leaf); equal stacks share one allocation; counts only grow.

use std::{collections::HashMap, sync::Arc};

use agent_common::COMM_LEN;

/// One distinct sample key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawStack {
    pub tgid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    /// The process incarnation the kernel announced (see `procmaps::ProcKey`).
    pub incarnation: u64,
    pub comm: [u8; COMM_LEN],
    /// Leaf first; empty when there was none (kernel thread, or lost: see `user_lost`).
    pub user: Arc<[u64]>,
    pub kernel: Arc<[u64]>,
    /// The user stack existed but was lost (stack map collision or full).
    pub user_lost: bool,
    pub kernel_lost: bool,
    /// Samples folded here because their window held as many distinct keys as it may (the
    /// thread's and stacks' identity is gone; the process's is kept).
    pub folded: bool,
}

/// Samples of one time window, at most `cap` distinct keys (then new keys fold into one per
/// process, counted in `folded`).
#[derive(Clone, Debug)]
pub struct RawProfile {
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub counts: HashMap<RawStack, u64>,
    cap: usize,
    /// Samples folded because the window was full.
    pub folded: u64,
}

impl RawProfile {
    pub fn new(start_unix_nanos: u64) -> Self {
        Self::with_cap(start_unix_nanos, usize::MAX)
    }

    pub fn with_cap(start_unix_nanos: u64, cap: usize) -> Self {
        RawProfile {
            start_unix_nanos,
            end_unix_nanos: start_unix_nanos,
            counts: HashMap::new(),
            cap: cap.max(1),
            folded: 0,
        }
    }

    pub fn add(&mut self, stack: RawStack, n: u64) {
        if let Some(c) = self.counts.get_mut(&stack) {
            *c += n;
            return;
        }
        if self.counts.len() < self.cap {
            self.counts.insert(stack, n);
            return;
        }
        self.folded += n;
        let key = RawStack {
            tid: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
            user: Arc::from(&[][..]),
            kernel: Arc::from(&[][..]),
            user_lost: false,
            kernel_lost: false,
            folded: true,
            ..stack
        };
        // One folded key per process may exceed the cap: processes are bounded elsewhere.
        *self.counts.entry(key).or_insert(0) += n;
    }

    /// An empty window with the same bound, starting at `start_unix_nanos`.
    pub fn next(&self, start_unix_nanos: u64) -> Self {
        Self::with_cap(start_unix_nanos, self.cap)
    }

    /// Adds every sample of `other` (restricted to process `pid` when given).
    pub fn merge(&mut self, other: &RawProfile, pid: Option<u32>) {
        for (k, n) in &other.counts {
            if pid.is_none_or(|p| p == k.tgid) {
                self.add(k.clone(), *n);
            }
        }
        self.end_unix_nanos = self.end_unix_nanos.max(other.end_unix_nanos);
    }

    pub fn samples(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Interns stacks so equal ones share one allocation across drains.
#[derive(Default)]
pub struct StackInterner {
    set: std::collections::HashSet<Arc<[u64]>>,
}

impl StackInterner {
    pub fn intern(&mut self, frames: &[u64]) -> Arc<[u64]> {
        if let Some(a) = self.set.get(frames) {
            return a.clone();
        }
        let a: Arc<[u64]> = Arc::from(frames);
        self.set.insert(a.clone());
        a
    }

    /// Drops stacks no profile refers to any more.
    pub fn trim(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(tgid: u32, user: &[u64]) -> RawStack {
        RawStack {
            tgid,
            tid: tgid,
            cgroup_id: 1,
            incarnation: 1,
            comm: [0; COMM_LEN],
            user: Arc::from(user),
            kernel: Arc::from(&[][..]),
            user_lost: false,
            kernel_lost: false,
            folded: false,
        }
    }

    #[test]
    fn a_full_window_folds_new_keys_per_process() {
        let mut w = RawProfile::with_cap(0, 2);
        w.add(stack(1, &[1]), 1);
        w.add(stack(1, &[2]), 1);
        w.add(stack(1, &[1]), 5); // known key: counted as itself
        w.add(stack(1, &[3]), 2);
        w.add(stack(2, &[4]), 3);
        w.add(stack(1, &[5]), 1);
        assert_eq!(w.counts[&stack(1, &[1])], 6);
        assert_eq!(w.folded, 6);
        assert_eq!(w.samples(), 13);
        let folded: Vec<_> = w.counts.iter().filter(|(k, _)| k.folded).collect();
        assert_eq!(folded.len(), 2, "one per process");
        assert!(folded.iter().all(|(k, _)| k.user.is_empty()));
        assert_eq!(folded.iter().map(|(_, n)| **n).sum::<u64>(), 6);
    }

    #[test]
    fn merge_filters_and_sums() {
        let mut a = RawProfile::new(10);
        a.add(stack(1, &[1, 2]), 3);
        a.add(stack(2, &[1, 2]), 1);
        a.end_unix_nanos = 20;
        let mut b = RawProfile::new(0);
        b.add(stack(1, &[1, 2]), 2);
        b.merge(&a, Some(1));
        assert_eq!(b.counts[&stack(1, &[1, 2])], 5);
        assert_eq!(b.samples(), 5);
        assert_eq!(b.end_unix_nanos, 20);
        b.merge(&a, None);
        assert_eq!(b.samples(), 9);
    }

    #[test]
    fn interner_shares_and_trims() {
        let mut i = StackInterner::default();
        let a = i.intern(&[1, 2, 3]);
        let b = i.intern(&[1, 2, 3]);
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        i.intern(&[4]);
        i.trim();
        assert_eq!(i.len(), 0);
    }
}
