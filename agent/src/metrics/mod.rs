//! The metric store: the latest batch of every source, and a broadcast of each new batch.
//!
//! Each source (`syscalls`, `agent`, ...) owns one slot; publishing replaces that slot.
//! Subscribers get every published batch through a bounded channel of [`CHANNEL_CAPACITY`];
//! a subscriber that falls behind loses the oldest batches (it sees
//! `RecvError::Lagged` and continues with the newest), it never slows publishers down.

pub mod model;
pub mod prometheus;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use tokio::sync::broadcast;

use model::Batch;

/// Batches a subscriber may fall behind before it loses the oldest ones.
pub const CHANNEL_CAPACITY: usize = 64;

/// Latest batch per source, plus a broadcast of every published batch.
pub struct Store {
    latest: RwLock<BTreeMap<String, Arc<Batch>>>,
    tx: broadcast::Sender<Arc<Batch>>,
}

impl Store {
    pub fn new() -> Arc<Store> {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Arc::new(Store {
            latest: RwLock::new(BTreeMap::new()),
            tx,
        })
    }

    /// Replaces `batch.source`'s previous batch and broadcasts it to subscribers.
    pub fn publish(&self, batch: Batch) {
        let batch = Arc::new(batch);
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(batch.source.clone(), batch.clone());
        // No subscriber is not an error.
        let _ = self.tx.send(batch);
    }

    /// The latest batch of every source, sorted by source.
    pub fn snapshot(&self) -> Vec<Arc<Batch>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every batch published from now on. Bounded: a lagging receiver loses the oldest
    /// batches (`RecvError::Lagged`) rather than blocking publishers.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }

    /// Forgets `source`'s batch (the probe stopped); it disappears from snapshots.
    pub fn remove(&self, source: &str) {
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(source);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn batch(source: &str, n: usize) -> Batch {
        Batch {
            source: source.to_string(),
            time: SystemTime::now(),
            families: Vec::with_capacity(n),
        }
    }

    #[test]
    fn publish_replaces_and_snapshot_is_sorted() {
        let s = Store::new();
        s.publish(batch("syscalls", 1));
        s.publish(batch("agent", 1));
        s.publish(batch("syscalls", 2));
        let snap = s.snapshot();
        let sources: Vec<_> = snap.iter().map(|b| b.source.as_str()).collect();
        assert_eq!(sources, ["agent", "syscalls"]);
        assert_eq!(snap[1].families.capacity(), 2);
        s.remove("agent");
        assert_eq!(s.snapshot().len(), 1);
        s.remove("missing");
        assert_eq!(s.snapshot().len(), 1);
    }

    #[tokio::test]
    async fn subscribers_receive_and_lagging_ones_lose_old_batches() {
        let s = Store::new();
        let mut rx = s.subscribe();
        s.publish(batch("a", 0));
        assert_eq!(rx.recv().await.unwrap().source, "a");

        for i in 0..CHANNEL_CAPACITY + 5 {
            s.publish(batch(&format!("s{i}"), 0));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected lag, got {other:?}"),
        }
        assert_eq!(rx.recv().await.unwrap().source, "s5");
    }
}

/// Test fixtures shared by the modules that consume batches.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::SystemTime;

    use super::model::{Batch, Desc, Family, Kind, Point, Value};

    /// A batch from `source` with one `process.syscall.errors` point of value `v`.
    pub(crate) fn errors_batch(source: &str, v: f64) -> Batch {
        Batch {
            source: source.to_string(),
            time: SystemTime::now(),
            families: vec![Family {
                desc: Desc {
                    name: "process.syscall.errors",
                    unit: "{error}",
                    help: "errors",
                    kind: Kind::Counter,
                },
                points: vec![Point {
                    labels: vec![super::model::attr("syscall.name", "openat")],
                    value: Value::Counter(v),
                    start_time: SystemTime::now(),
                }],
            }],
        }
    }
}
