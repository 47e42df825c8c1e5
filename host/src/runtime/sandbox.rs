//! The store a plugin runs in: what it can see and how much it may use.
//!
//! Plugins built for `wasm32-wasip2` import WASI even when they use none of it (the
//! Rust standard library does, for stderr and hash seeds). The host links WASI but
//! grants nothing: no preopened directories, no environment or arguments, no network,
//! a wall clock frozen at the call's `now`, a virtual monotonic clock that starts at 0
//! with every call and moves only when the plugin waits on it, and never in real time
//! ([`super::virtual_time`]), and randomness from a fixed seed that restarts with every
//! call. Time and entropy therefore cannot make two calls with the same input differ,
//! whether they run in a fresh store or in one kept warm for many calls
//! ([`SandboxState::begin_call`]), and no wait can hold the host past a deadline.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::names::Patterns;
use super::virtual_time::{VirtualClock, Waits};
use super::wire::LogLevel;
use super::{PluginLimits, STDERR_CAPTURE_BYTES};
use crate::model::Timestamp;

/// How many log lines one evaluation may emit before the host drops the rest.
const LOG_LINES_PER_CALL: u32 = 200;
/// Longest log line kept, in bytes.
const LOG_LINE_BYTES: usize = 4096;
/// Most bytes one WASI random call may ask for: the host allocates them, so the default
/// (64 MiB) would let a plugin make the host allocate far past its own memory cap.
const RANDOM_BYTES_PER_CALL: u64 = 64 << 10;

/// The fixed seeds behind WASI's random interfaces (see the module comment).
const SECURE_RANDOM_SEED: [u8; 4] = [0x5a, 0x17, 0xc3, 0x9e];
const INSECURE_RANDOM_SEED: [u8; 4] = [0x3c, 0xa5, 0x0f, 0x71];

/// Everything a plugin's store holds.
pub(crate) struct SandboxState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(crate) memory: MemoryCap,
    stderr: MemoryOutputPipe,
    plugin: Arc<str>,
    log_lines: u32,
    /// The WASI wall clock's time, set by every call.
    now: Arc<AtomicI64>,
    /// The WASI monotonic clock, restarted by every call.
    clock: VirtualClock,
    secure_random: SeededRandom,
    insecure_random: SeededRandom,
    /// The call's names and deadline, for `names` ([`super::names`]).
    pub(super) patterns: Patterns,
}

impl SandboxState {
    /// What the plugin wrote to stderr (bounded), lossily decoded.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim_end().to_owned()
    }

    /// Whether the plugin has written anything to stderr in this store.
    pub(crate) fn wrote_stderr(&self) -> bool {
        !self.stderr.contents().is_empty()
    }

    /// Starts a call: the clock reads `now`, random starts over from its seed, and the
    /// per-call log budget is full again.
    pub(crate) fn begin_call(&mut self, now: Timestamp) {
        self.now.store(now.unix_micros(), Ordering::Relaxed);
        self.clock.restart();
        self.secure_random.restart();
        self.insecure_random.restart();
        self.log_lines = 0;
    }

    /// What `wasi:clocks/monotonic-clock` and `wasi:io/poll` work on.
    pub(crate) fn waits(&mut self) -> Waits<'_> {
        Waits { clock: &self.clock, table: &mut self.table }
    }
}

/// Builds a store: fresh state and the plugin's memory cap. [`arm`] it before each call.
pub(crate) fn new_store(engine: &wasmtime::Engine, plugin: &Arc<str>, limits: &PluginLimits) -> Store<SandboxState> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
    let now = Arc::new(AtomicI64::new(0));
    let secure_random = SeededRandom::new(SECURE_RANDOM_SEED);
    let insecure_random = SeededRandom::new(INSECURE_RANDOM_SEED);
    let clock = VirtualClock::default();
    let wasi = WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .wall_clock(FrozenWallClock(now.clone()))
        .monotonic_clock(clock.clone())
        .max_random_size(RANDOM_BYTES_PER_CALL)
        .secure_random(secure_random.clone())
        .insecure_random(insecure_random.clone())
        .insecure_random_seed(0x7461_6777_6172_6465_6e00_0000_0000_0001)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = SandboxState {
        wasi,
        table: ResourceTable::new(),
        memory: MemoryCap { limit: limits.memory_bytes, size: 0, exceeded: false },
        stderr,
        plugin: plugin.clone(),
        log_lines: 0,
        now,
        clock,
        secure_random,
        insecure_random,
        patterns: Patterns::default(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store
}

/// Gives the next call its deadline in epoch ticks (counted from now) and its fuel
/// budget when fuel metering is on.
pub(crate) fn arm(store: &mut Store<SandboxState>, limits: &PluginLimits, fuel_enabled: bool) {
    store.set_epoch_deadline(limits.deadline_ticks());
    // The same deadline for work the host does for the call (`names`), which no epoch interrupts.
    store.data_mut().patterns.deadline = Some(std::time::Instant::now() + limits.timeout);
    if fuel_enabled {
        // With metering on engine-wide, a plugin without a budget still needs fuel.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
    }
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl SandboxState {
    /// `log.log`, for plugins of every contract version.
    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin logged more than {LOG_LINES_PER_CALL} lines in one call; dropping the rest");
            }
            return;
        }
        let mut message = message;
        if message.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // One log call is one log line: a newline or escape sequence in it cannot fake
        // another line or restyle the output.
        let message = crate::untrusted::escape(&message);
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "tagwarden::plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "tagwarden::plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "tagwarden::plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "tagwarden::plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "tagwarden::plugin", plugin, "{message}"),
        }
    }
}

/// Caps linear memory; remembers whether the cap was hit so the error can say so, and
/// the largest memory granted so far.
pub(crate) struct MemoryCap {
    limit: usize,
    pub(crate) size: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // An error (not `false`) traps at once instead of letting the guest's
            // allocator abort with a less useful message.
            return Err(wasmtime::format_err!("memory cap of {} bytes exceeded (wanted {desired})", self.limit));
        }
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// WASI's wall clock: the current call's `now`, never moving during the call.
struct FrozenWallClock(Arc<AtomicI64>);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_micros(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.load(Ordering::Relaxed).max(0) as u64)
    }
}

/// WASI's random: a fixed byte cycle, restarted by every call, shared between the
/// WASI context (which owns a clone) and [`SandboxState`] (which restarts it).
#[derive(Clone)]
struct SeededRandom {
    seed: [u8; 4],
    bytes: Arc<Mutex<Deterministic>>,
}

impl SeededRandom {
    fn new(seed: [u8; 4]) -> Self {
        SeededRandom { seed, bytes: Arc::new(Mutex::new(Deterministic::new(seed.to_vec()))) }
    }

    fn restart(&self) {
        *self.bytes.lock().unwrap_or_else(PoisonError::into_inner) = Deterministic::new(self.seed.to_vec());
    }
}

impl rand::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).try_fill_bytes(dst)
    }
}
