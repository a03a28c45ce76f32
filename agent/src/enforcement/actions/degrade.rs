//! `degrade`: lowers the agent's own sampling (profiler frequency, per-process series of the
//! syscall probe). Shared with self-protection: every source sets its own caps on a
//! [`DegradeHub`]; the lowest cap of each setting wins; `runtime.rs` applies the merged caps to
//! the probes' config (watch channel), and lifting the last cap restores the configured values.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::config::Config;

/// Caps on the agent's own sampling; `None` leaves a setting as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Degrade {
    /// `probes.profiler.frequency` at most this (samples per second per CPU).
    pub profiler_frequency: Option<u32>,
    /// `probes.syscalls.top_processes` at most this.
    pub top_processes: Option<usize>,
}

fn min_opt<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Degrade {
    pub fn merge(self, o: Degrade) -> Degrade {
        Degrade {
            profiler_frequency: min_opt(self.profiler_frequency, o.profiler_frequency),
            top_processes: min_opt(self.top_processes, o.top_processes),
        }
    }

    /// `cfg` with these caps applied (what the probes run with).
    pub fn apply(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        if let Some(f) = self.profiler_frequency {
            c.probes.profiler.frequency = c.probes.profiler.frequency.min(f);
        }
        if let Some(t) = self.top_processes {
            c.probes.syscalls.top_processes = c.probes.syscalls.top_processes.min(t);
        }
        c
    }
}

/// Caps by source (`enforcement:<journal id>`, `self-protection`, ...), merged.
#[derive(Clone)]
pub struct DegradeHub {
    by_source: Arc<Mutex<BTreeMap<String, Degrade>>>,
    tx: watch::Sender<Degrade>,
}

impl Default for DegradeHub {
    fn default() -> Self {
        Self::new()
    }
}

impl DegradeHub {
    pub fn new() -> Self {
        DegradeHub {
            by_source: Arc::default(),
            tx: watch::channel(Degrade::default()).0,
        }
    }

    pub fn set(&self, source: &str, d: Degrade) {
        let mut m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(source.to_string(), d);
        self.publish(&m);
    }

    pub fn clear(&self, source: &str) {
        let mut m = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if m.remove(source).is_some() {
            self.publish(&m);
        }
    }

    fn publish(&self, m: &BTreeMap<String, Degrade>) {
        let merged = m.values().fold(Degrade::default(), |a, b| a.merge(*b));
        self.tx.send_if_modified(|cur| {
            let changed = *cur != merged;
            *cur = merged;
            changed
        });
    }

    /// The merged caps now.
    pub fn current(&self) -> Degrade {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Degrade> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_cap_wins_and_lifting_restores() {
        let h = DegradeHub::new();
        let mut rx = h.subscribe();
        h.set(
            "a",
            Degrade {
                profiler_frequency: Some(9),
                top_processes: None,
            },
        );
        h.set(
            "b",
            Degrade {
                profiler_frequency: Some(5),
                top_processes: Some(10),
            },
        );
        assert!(rx.has_changed().unwrap());
        let d = *rx.borrow_and_update();
        assert_eq!(
            d,
            Degrade {
                profiler_frequency: Some(5),
                top_processes: Some(10)
            }
        );
        let cfg = Config::default();
        let c = d.apply(&cfg);
        assert_eq!(c.probes.profiler.frequency, 5);
        assert_eq!(c.probes.syscalls.top_processes, 10);
        h.clear("b");
        assert_eq!(h.current().profiler_frequency, Some(9));
        h.clear("a");
        assert_eq!(h.current(), Degrade::default());
        assert_eq!(h.current().apply(&cfg), cfg);
    }
}
