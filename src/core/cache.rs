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
}
