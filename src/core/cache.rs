//! A read-through cache that a concurrent invalidation cannot leave stale.
//!
//! A reader that misses takes the cache's generation, reads the store, and
//! fills the entry only if no invalidation happened in between; otherwise
//! its (possibly outdated) read is used once and not kept.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

/// A map with a generation counter bumped by every invalidation.
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    inner: RwLock<(u64, HashMap<K, V>)>,
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    /// An empty cache.
    pub fn new() -> Self {
        Cache {
            inner: RwLock::new((0, HashMap::new())),
        }
    }

    /// The cached value and, on a miss, the generation to pass to [`Cache::fill`].
    pub fn get<Q>(&self, k: &Q) -> Result<V, u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.1.get(k).cloned().ok_or(g.0)
    }

    /// The cached value if `fresh` accepts it; otherwise (missing, or too
    /// old to trust without asking the store again) the generation to pass
    /// to [`Cache::fill`].
    pub fn get_if<Q>(&self, k: &Q, fresh: impl FnOnce(&V) -> bool) -> Result<V, u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.1.get(k).filter(|v| fresh(v)).cloned().ok_or(g.0)
    }

    /// Keeps `v` unless the cache was invalidated since generation `seen`.
    pub fn fill(&self, k: K, v: V, seen: u64) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.0 == seen {
            g.1.insert(k, v);
        }
    }

    /// The generation to pass to [`Cache::fill_many`] for values read from
    /// now on.
    pub fn generation(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Keeps every value of `entries` that is not cached yet, unless the
    /// cache was invalidated since generation `seen` (then keeps none: any
    /// of them may be outdated). Returns whether they were kept.
    pub fn fill_many(&self, entries: impl IntoIterator<Item = (K, V)>, seen: u64) -> bool {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if g.0 != seen {
            return false;
        }
        for (k, v) in entries {
            g.1.entry(k).or_insert(v);
        }
        true
    }

    /// Number of entries, and `bytes` summed over them.
    pub fn measure(&self, bytes: impl Fn(&K, &V) -> usize) -> (usize, usize) {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let slots = g.1.capacity() * (std::mem::size_of::<(K, V)>() + 1);
        (
            g.1.len(),
            slots + g.1.iter().map(|(k, v)| bytes(k, v)).sum::<usize>(),
        )
    }

    /// Drops one entry (after a change to what it caches).
    pub fn remove<Q>(&self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1.remove(k);
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_during_a_miss_keeps_the_read_out() {
        let c: Cache<&str, i32> = Cache::new();
        let seen = c.get("k").unwrap_err();
        c.remove("k"); // a writer changed the store meanwhile
        c.fill("k", 1, seen);
        assert!(
            c.get("k").is_err(),
            "a read older than the invalidation is not cached"
        );
        let seen = c.get("k").unwrap_err();
        c.fill("k", 2, seen);
        assert_eq!(c.get("k"), Ok(2));
    }

    #[test]
    fn a_bulk_fill_after_an_invalidation_keeps_nothing_and_never_overwrites() {
        let c: Cache<&str, i32> = Cache::new();
        let seen = c.generation();
        c.remove("a"); // a writer changed the store during the bulk read
        assert!(!c.fill_many([("a", 1), ("b", 1)], seen));
        assert!(c.get("a").is_err() && c.get("b").is_err());
        let seen = c.generation();
        c.fill("a", 2, seen); // a request's fresher read
        assert!(c.fill_many([("a", 1), ("b", 1)], seen));
        assert_eq!((c.get("a"), c.get("b")), (Ok(2), Ok(1)));
        assert_eq!(c.measure(|_, _| 10).0, 2);
    }
}
