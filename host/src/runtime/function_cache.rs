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
//! restarted daemon's first new version would compile every function. [`Warmer`] compiles
//! such plugins once more, in the background at idle priority, for the daemon
//! (`RuntimeConfig::warm_function_cache`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use wasmtime::Engine;
use wasmtime::component::Component;

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

/// Compiles components again, one at a time on a background thread at idle priority, only
/// to fill the function cache (the compiled result is dropped).
#[derive(Debug, Default)]
pub(super) struct Warmer {
    state: Mutex<WarmerState>,
    /// Signalled when the queue is empty and no compile runs.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct WarmerState {
    queue: VecDeque<Vec<u8>>,
    /// The sha256 of every component queued so far: each is compiled once.
    seen: HashSet<String>,
    running: bool,
    done: u64,
}

impl Warmer {
    /// Queues `bytes` (a component that loaded, whose sha256 is `sha256`) to be compiled with
    /// `engine` unless it was queued before; starts the thread if it is not running.
    pub(super) fn warm(self: &Arc<Self>, engine: &Engine, sha256: &str, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.seen.insert(sha256.to_owned()) {
            return;
        }
        state.queue.push_back(bytes.to_vec());
        if state.running {
            return;
        }
        state.running = true;
        let (warmer, engine) = (self.clone(), engine.clone());
        let spawned = std::thread::Builder::new().name("tagwarden-warm".into()).spawn(move || warmer.run(&engine));
        if let Err(e) = spawned {
            // Only the first swap of these plugins is slower: say so and go on.
            tracing::warn!("cannot start the function cache's warm-up thread: {e}");
            state.queue.clear();
            state.running = false;
        }
    }

    fn run(&self, engine: &Engine) {
        set_idle_priority();
        // wasmtime compiles a component's functions on the current rayon pool: this one has
        // a single thread, at idle priority too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "tagwarden-warm-rayon".into())
            .start_handler(|_| set_idle_priority())
            .build();
        loop {
            let next = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                match state.queue.pop_front() {
                    Some(bytes) => bytes,
                    None => {
                        state.running = false;
                        self.idle.notify_all();
                        return;
                    }
                }
            };
            // The component loaded from the compile cache already; an error here (none is
            // expected) costs only the warm-up.
            let compiled = match &pool {
                Ok(pool) => pool.install(|| Component::new(engine, &next)),
                Err(_) => Component::new(engine, &next),
            };
            if let Err(e) = compiled {
                tracing::debug!("function cache warm-up: {e}");
            }
            self.state.lock().unwrap_or_else(PoisonError::into_inner).done += 1;
        }
    }

    /// Waits until every component queued so far is compiled; returns how many were since
    /// the runtime started.
    pub(super) fn wait_idle(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.running {
            state = self.idle.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.done
    }
}

/// Runs the calling thread only when a core would otherwise idle (Linux `SCHED_IDLE`, per
/// thread): the warm-up never slows a pass. Elsewhere, or if refused, at normal priority.
fn set_idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
        let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0;
        if refused {
            tracing::debug!("the function cache's warm-up runs at normal priority: {}", std::io::Error::last_os_error());
        }
    }
}
