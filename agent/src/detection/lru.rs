//! A bounded map that evicts its least recently used entry: entries live in a slab, a hash map
//! finds them and an intrusive doubly linked list keeps the use order, so lookup, touch,
//! insert and eviction are all O(1).

use std::{collections::HashMap, hash::Hash};

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: V,
    prev: u32,
    next: u32,
}

pub struct Lru<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// `capacity` ≥ 1 entries (smaller values count as 1).
    pub fn new(capacity: usize) -> Self {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.clamp(1, NIL as usize - 1),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&mut self, i: u32) -> &mut Slot<K, V> {
        self.slots[i as usize]
            .as_mut()
            .expect("linked slots are live")
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = self.slot(i);
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slot(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slot(n).prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        {
            let s = self.slot(i);
            s.prev = NIL;
            s.next = head;
        }
        match head {
            NIL => self.tail = i,
            h => self.slot(h).prev = i,
        }
        self.head = i;
    }

    /// The value for `key`, marked most recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(&mut self.slot(i).value)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.slots[i as usize].as_ref().map(|s| &s.value)
    }

    /// Inserts `key` (not present) as most recently used; returns the entry evicted to make
    /// room, if any.
    pub fn insert(&mut self, key: K, value: V) -> (&mut V, Option<(K, V)>) {
        let evicted = if self.index.len() >= self.capacity {
            self.pop_lru()
        } else {
            None
        };
        let slot = Slot {
            key: key.clone(),
            value,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.push_front(i);
        (&mut self.slot(i).value, evicted)
    }

    /// Removes and returns the least recently used entry.
    pub fn pop_lru(&mut self) -> Option<(K, V)> {
        match self.tail {
            NIL => None,
            i => Some(self.take(i)),
        }
    }

    fn take(&mut self, i: u32) -> (K, V) {
        self.unlink(i);
        let s = self.slots[i as usize]
            .take()
            .expect("linked slots are live");
        self.index.remove(&s.key);
        self.free.push(i);
        (s.key, s.value)
    }

    /// Keeps the entries for which `keep` is true; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let mut gone = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s {
                if !keep(&s.key, &mut s.value) {
                    gone.push(i as u32);
                }
            }
        }
        for &i in &gone {
            self.take(i);
        }
        gone.len()
    }

    /// Changes the capacity, evicting least recently used entries beyond it; returns how many.
    pub fn set_capacity(&mut self, capacity: usize) -> usize {
        self.capacity = capacity.clamp(1, NIL as usize - 1);
        let mut n = 0;
        while self.index.len() > self.capacity {
            self.pop_lru();
            n += 1;
        }
        n
    }

    /// Entries, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let s = self.slots.get(i as usize)?.as_ref()?;
            i = s.next;
            Some((&s.key, &s.value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut l = Lru::new(2);
        l.insert("a", 1);
        l.insert("b", 2);
        assert_eq!(l.get_mut(&"a"), Some(&mut 1));
        let (_, ev) = l.insert("c", 3);
        assert_eq!(ev, Some(("b", 2)));
        let order: Vec<_> = l.iter().map(|(k, _)| *k).collect();
        assert_eq!(order, ["c", "a"]);
        assert_eq!(l.retain(|k, _| *k != "c"), 1);
        assert_eq!(l.len(), 1);
        l.insert("d", 4);
        l.insert("e", 5);
        assert_eq!(l.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["e", "d"]);
        assert_eq!(l.set_capacity(1), 1);
        assert_eq!(l.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["e"]);
        assert_eq!(l.pop_lru(), Some(("e", 5)));
        assert_eq!(l.pop_lru(), None);
    }
}
