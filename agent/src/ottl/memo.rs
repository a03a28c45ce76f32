//! Results of a pure string function kept per input value: the replacement `replace_pattern`
//! computes for an attribute value, so the points that share a value (every syscall series of
//! one container shares its `container.id`) run the regex once per value, not once per point.
//!
//! Invariants: only for results that depend on the input string alone (a literal regex, a
//! literal replacement, no replacement `function` that could differ between calls: the
//! functions allowed there are pure); at most [`CAPACITY`] entries of at most [`MAX_INPUT`]
//! bytes each (a full cache is cleared and refilled: values churn as processes come and go);
//! the keys are hashed with `hashbrown`'s foldhash, seeded per map (a value a local user
//! chooses, such as an executable name, cannot be aimed at a known hash; the bound caps the
//! cost of collisions anyway); a contended lock (`/metrics` and the exporter at the same
//! moment) computes without the cache rather than waiting.

use std::sync::{Arc, Mutex, TryLockError};

use hashbrown::HashMap;

/// Entries kept per statement.
pub const CAPACITY: usize = 1024;
/// Longer inputs are computed every time (the key would cost more memory than it saves).
pub const MAX_INPUT: usize = 256;

/// A memoized `&str -> Option<String>` (`None`: the function leaves the value as it is).
#[derive(Debug, Default)]
pub struct Memo {
    map: Mutex<HashMap<Box<str>, Option<Arc<str>>>>,
}

impl Memo {
    /// `f(input)` as a shared string, from the cache when `input` was seen before.
    pub fn get(&self, input: &str, f: impl FnOnce(&str) -> Option<String>) -> Option<Arc<str>> {
        if input.len() > MAX_INPUT {
            return f(input).map(Arc::from);
        }
        let mut map = match self.map.try_lock() {
            Ok(m) => m,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return f(input).map(Arc::from),
        };
        if let Some(r) = map.get(input) {
            return r.clone();
        }
        let r = f(input).map(Arc::from);
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(input.into(), r.clone());
        r
    }

    /// Entries held (tests).
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_per_value_and_stays_bounded() {
        let m = Memo::default();
        let calls = std::cell::Cell::new(0);
        let up = |s: &str| {
            calls.set(calls.get() + 1);
            (s != "keep").then(|| s.to_uppercase())
        };
        assert_eq!(m.get("a", up).as_deref(), Some("A"));
        assert_eq!(m.get("a", up).as_deref(), Some("A"));
        assert_eq!(m.get("keep", up), None);
        assert_eq!(m.get("keep", up), None);
        assert_eq!(calls.get(), 2);
        for i in 0..CAPACITY + 10 {
            m.get(&format!("v{i}"), up);
        }
        assert!(m.entries() <= CAPACITY);
        let long = "x".repeat(MAX_INPUT + 1);
        let before = calls.get();
        assert_eq!(
            m.get(&long, up).as_deref().map(str::len),
            Some(MAX_INPUT + 1)
        );
        assert_eq!(
            m.get(&long, up).as_deref().map(str::len),
            Some(MAX_INPUT + 1)
        );
        assert_eq!(calls.get(), before + 2);
        assert!(m.entries() <= CAPACITY);
    }
}
