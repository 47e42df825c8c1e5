//! Waiting without blocking: the monotonic clock and `wasi:io/poll` as plugins see them.
//!
//! Epoch interruption stops a plugin only while guest code runs; a host call that blocks
//! (wasmtime-wasi's own `subscribe-duration` sleeps on a real Tokio timer, and `poll`
//! blocks the thread until it fires) would hold the calling thread for as long as the
//! plugin asks, past any deadline. So the host replaces both interfaces:
//!
//! - the monotonic clock is virtual: it reads 0 at the start of every call and moves only
//!   when the plugin waits on it, jumping at once to the end of the wait (a 60 s
//!   `sleep` returns immediately, and the clock then reads 60 s later);
//! - `poll`, `pollable.block` and `pollable.ready` look at their pollables once and never
//!   wait: a pollable that is not ready at once (nothing in the sandbox can become ready
//!   later) traps the call instead of blocking.
//!
//! No host call a plugin can reach then blocks in real time, so every call ends within
//! its deadline plus one epoch tick whatever the plugin does: a loop of sleeps is a busy
//! loop, which the deadline stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::sandbox::SandboxState;

/// What a plugin that waits on something never ready is told (it traps).
pub(crate) const NEVER_READY: &str =
    "waited on something that can never become ready in the sandbox (only clock waits complete, at once, on the virtual clock)";

/// The monotonic clock a plugin sees: nanoseconds of virtual time since the call began.
/// Shared by the WASI context (which reads it) and the sandbox (which restarts it).
#[derive(Clone, Default)]
pub(crate) struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Back to 0, at the start of every call.
    pub(crate) fn restart(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Moves the clock to `instant` unless it is already later: a wait has ended.
    fn advance_to(&self, instant: u64) {
        self.0.fetch_max(instant, Ordering::Relaxed);
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        VirtualClock::now(self)
    }
}

/// A timer on the virtual clock: ready as soon as anyone looks, which moves the clock
/// to its end.
struct VirtualDeadline {
    clock: VirtualClock,
    at: u64,
}

#[wasmtime_wasi::async_trait]
impl Pollable for VirtualDeadline {
    async fn ready(&mut self) {
        self.clock.advance_to(self.at);
    }
}

/// The part of a plugin's store the two interfaces use.
pub(crate) struct Waits<'a> {
    pub(crate) clock: &'a VirtualClock,
    pub(crate) table: &'a mut ResourceTable,
}

struct HasWaits;

impl HasData for HasWaits {
    type Data<'a> = Waits<'a>;
}

/// Replaces wasmtime-wasi's `wasi:clocks/monotonic-clock` and `wasi:io/poll` in a linker
/// that already has WASI. See the module comment.
pub(crate) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<SandboxState, HasWaits>(linker, SandboxState::waits)?;
    sync_poll::add_to_linker::<SandboxState, HasWaits>(linker, SandboxState::waits)?;
    linker.allow_shadowing(false);
    Ok(())
}

impl Waits<'_> {
    fn deadline(&mut self, at: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let deadline = self.table.push(VirtualDeadline { clock: self.clock.clone(), at })?;
        subscribe(&mut *self.table, deadline)
    }
}

impl monotonic_clock::Host for Waits<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.clock.now())
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        self.deadline(when)
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let at = self.clock.now().saturating_add(duration);
        self.deadline(at)
    }
}

/// Polls `future` once: its answer if it has one now, else the trap [`NEVER_READY`].
fn at_once<T>(future: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(wasmtime::format_err!("{NEVER_READY}")),
    }
}

impl sync_poll::Host for Waits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once(async_poll::Host::poll(&mut *self.table, pollables))
    }
}

impl sync_poll::HostPollable for Waits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        at_once(async_poll::HostPollable::ready(&mut *self.table, pollable))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once(async_poll::HostPollable::block(&mut *self.table, pollable))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(&mut *self.table, pollable)
    }
}
