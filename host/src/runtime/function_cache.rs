//! Compiled functions kept in memory, so that a new version of a plugin compiles only the
//! functions the previous versions did not have.
//!
//! Cranelift's incremental cache (wasmtime's `incremental-cache` feature) keys each
//! compiled function by a hash of its code with the names of the functions it calls taken
//! out, so a function that moved to another index in a rebuilt component still hits. A
//! plugin's new version shares most of its code with the old one (its dependencies, the
//! SDK, most of the policy), which the daemon compiled when it loaded the old version: the
//! swap then pays for the changed functions only (docs/benchmarks.md, "Plugin directory").
//!
//! The cache lives as long as the runtime, bounded in bytes; when it is full the oldest
//! entries go first. Nothing in it is trusted beyond the process: it is never written to
//! disk (the whole-component [`compile_cache`](super::compile_cache) covers restarts).
//!
//! A plugin loaded from the compile cache is not compiled, so it leaves nothing here, and a
//! restarted daemon's first new version would compile every function. The daemon compiles
//! such plugins once more, in the [`background`](super::background) at low priority
//! (`RuntimeConfig::warm_function_cache`).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What a [`FunctionCache`] did since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionCacheStats {
    /// Functions compiled from the cache (not compiled again).
    pub hits: u64,
    /// Functions compiled because the cache did not have them.
    pub misses: u64,
    /// Bytes held now.
    pub bytes: usize,
}

/// The compiled functions, for Cranelift's incremental cache.
#[derive(Debug)]
pub(super) struct FunctionCache {
    max_bytes: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<Vec<u8>, Arc<[u8]>>,
    /// Keys in insertion order, for evicting the oldest.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl FunctionCache {
    pub(super) fn new(max_bytes: usize) -> Self {
        FunctionCache { max_bytes, entries: Mutex::default(), hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub(super) fn stats(&self) -> FunctionCacheStats {
        FunctionCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.entries.lock().unwrap_or_else(PoisonError::into_inner).bytes,
        }
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.entries.lock().unwrap_or_else(PoisonError::into_inner).by_key.get(key).cloned();
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        // Copied out: the entry may be evicted while Cranelift reads it.
        found.map(|bytes| Cow::Owned(bytes.to_vec()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > self.max_bytes {
            return false;
        }
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if e.by_key.contains_key(key) {
            return true;
        }
        while e.bytes + size > self.max_bytes {
            let Some(oldest) = e.order.pop_front() else { break };
            if let Some(bytes) = e.by_key.remove(&oldest) {
                e.bytes -= oldest.len() + bytes.len();
            }
        }
        e.by_key.insert(key.to_vec(), Arc::from(value));
        e.order.push_back(key.to_vec());
        e.bytes += size;
        true
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::CacheStore;

    use super::*;

    #[test]
    fn keeps_entries_within_its_bytes_evicting_the_oldest() {
        let cache = FunctionCache::new(10);
        assert!(cache.insert(b"a", vec![0; 4]));
        assert!(cache.insert(b"b", vec![1; 4]));
        assert_eq!(cache.get(b"a").as_deref(), Some(&[0u8; 4][..]));
        // 5 + 5 + 5 > 10: `a`, the oldest, goes.
        assert!(cache.insert(b"c", vec![2; 4]));
        assert_eq!(cache.get(b"a"), None);
        assert_eq!(cache.get(b"c").as_deref(), Some(&[2u8; 4][..]));
        assert!(!cache.insert(b"d", vec![3; 20]), "larger than the whole cache");
        assert_eq!(cache.stats(), FunctionCacheStats { hits: 2, misses: 1, bytes: 10 });
    }
}
