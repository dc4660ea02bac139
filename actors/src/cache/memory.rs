//! The in-process context cache: a bounded map.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Context;

/// Entries kept at most; past it the least recently written tenth is dropped.
const CAPACITY: usize = 10_000;

/// A bounded map of contexts by key.
#[derive(Default)]
pub struct MemoryCache {
    /// Each entry with the write it was last written by, for eviction.
    entries: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, (u64, Context)>,
    writes: u64,
}

impl MemoryCache {
    pub fn get(&self, key: &str) -> Option<Context> {
        let inner = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(key).map(|(_, c)| c.clone())
    }

    pub fn put(&self, key: &str, context: Context) {
        let mut inner = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        inner.writes += 1;
        let stamp = inner.writes;
        inner.map.insert(key.to_owned(), (stamp, context));
        if inner.map.len() > CAPACITY {
            // Amortised: one sort per CAPACITY / 10 writes past the bound.
            let mut stamps: Vec<u64> = inner.map.values().map(|(s, _)| *s).collect();
            stamps.sort_unstable();
            let cut = stamps[CAPACITY / 10];
            inner.map.retain(|_, (s, _)| *s > cut);
        }
    }

    pub fn len(&self) -> usize {
        let inner = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_stays_bounded_and_keeps_the_newest() {
        let m = MemoryCache::default();
        let c = |v| Context {
            version: v,
            limit: 1,
            turns: Vec::new(),
        };
        for i in 0..(CAPACITY as i64 + 1) {
            m.put(&format!("k{i}"), c(i));
        }
        assert!(m.len() <= CAPACITY);
        assert_eq!(
            m.get(&format!("k{CAPACITY}")).unwrap().version,
            CAPACITY as i64
        );
        assert!(m.get("k0").is_none());
    }
}
