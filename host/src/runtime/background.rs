//! Compiling that can wait: one background thread at low priority, for the daemon.
//!
//! Two kinds of job run here, one at a time, in the order they were queued:
//!
//! - **tier-up**: a plugin loaded with the baseline compiler ([`super::Tier::Baseline`]) is
//!   compiled again with the optimizing one, and its calls switch to that code once it is
//!   ready (`RuntimeConfig::tiered_compilation`);
//! - **warm-up**: a plugin loaded from the compile cache is compiled once more only to fill
//!   the [function cache](super::function_cache), so that its first new version compiles
//!   only what changed (`RuntimeConfig::warm_function_cache`).
//!
//! The thread runs at nice 10, and wasmtime's parallel compile runs on a one-thread rayon pool
//! of its own at the same priority: beside busy threads of normal priority it gets about a
//! tenth of a core, so it hardly slows a pass, yet a daemon whose passes keep every core busy
//! still gets its optimized code within seconds (at `SCHED_IDLE`, which the first version used,
//! it waited for an idle core, and a loaded daemon ran baseline code indefinitely). The thread
//! exits when the queue is empty and starts again with the next job.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// A job: it compiles (on the current rayon pool) and does something with the result.
pub(super) type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub(super) struct Background {
    state: Mutex<State>,
    /// Signalled when the queue is empty and no job runs.
    idle: Condvar,
    /// Signalled when a hold is released.
    resumed: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Keys of the jobs queued so far that are to run once ([`Background::queue_once`]).
    seen: HashSet<String>,
    running: bool,
    done: u64,
    /// Holds ([`Background::hold`]) not yet released: no job starts meanwhile.
    holds: u32,
}

/// A hold on the queue: see [`Background::hold`].
pub(super) struct Hold(Arc<Background>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner).holds -= 1;
        self.0.resumed.notify_all();
    }
}

impl Background {
    /// Queues `job` unless a job with `key` was queued before.
    pub(super) fn queue_once(self: &Arc<Self>, key: String, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.seen.insert(key) {
            self.push(state, job);
        }
    }

    pub(super) fn queue(self: &Arc<Self>, job: Job) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.push(state, job);
    }

    fn push(self: &Arc<Self>, mut state: std::sync::MutexGuard<'_, State>, job: Job) {
        state.queue.push_back(job);
        if state.running {
            return;
        }
        state.running = true;
        let background = self.clone();
        let spawned = std::thread::Builder::new().name("tagwarden-compile".into()).spawn(move || background.run());
        if let Err(e) = spawned {
            // Plugins keep the code they have (baseline code is slower, not wrong): say so.
            tracing::warn!("cannot start the background compile thread: {e}");
            state.queue.clear();
            state.running = false;
        }
    }

    fn run(&self) {
        lower_priority();
        // wasmtime compiles a component's functions on the current rayon pool: this one has
        // a single thread, at low priority too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "tagwarden-compile-rayon".into())
            .start_handler(|_| lower_priority())
            .build();
        loop {
            let job = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                while state.holds > 0 {
                    state = self.resumed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                match state.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        state.running = false;
                        self.idle.notify_all();
                        return;
                    }
                }
            };
            match &pool {
                Ok(pool) => pool.install(job),
                Err(_) => job(),
            }
            self.state.lock().unwrap_or_else(PoisonError::into_inner).done += 1;
        }
    }

    /// Holds every job back until the returned guard is dropped (a job already running
    /// finishes). [`Background::wait_idle`] meanwhile waits for the release.
    pub(super) fn hold(self: &Arc<Self>) -> Hold {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).holds += 1;
        Hold(self.clone())
    }

    /// Waits until every job queued so far has run; returns how many have since the runtime
    /// started.
    pub(super) fn wait_idle(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.running {
            state = self.idle.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.done
    }
}

/// The background thread's nice value: CFS weighs a nice-10 thread at 110 against 1024 for a
/// normal one.
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread to [`BACKGROUND_NICE`] (on Linux the nice value is per thread).
/// Elsewhere, or if refused, it stays at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority is given the calling thread's id.
        let refused = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, BACKGROUND_NICE) } != 0;
        if refused {
            tracing::debug!("background compiles run at normal priority: {}", std::io::Error::last_os_error());
        }
    }
}
