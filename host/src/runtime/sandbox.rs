//! The per-evaluation store: what a plugin can see and how much it may use.
//!
//! Plugins built for `wasm32-wasip2` import WASI even when they use none of it (the
//! Rust standard library does, for stderr and hash seeds). The host links WASI but
//! grants nothing: no preopened directories, no environment or arguments, no network,
//! a wall clock frozen at the evaluation's `now`, a monotonic clock that never moves,
//! and randomness from a fixed seed. Time and entropy therefore cannot make two
//! evaluations of the same input differ.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::LogLevel;
use super::{PluginLimits, STDERR_CAPTURE_BYTES};
use crate::model::Timestamp;

/// How many log lines one evaluation may emit before the host drops the rest.
const LOG_LINES_PER_CALL: u32 = 200;
/// Longest log line kept, in bytes.
const LOG_LINE_BYTES: usize = 4096;

/// Everything a plugin's store holds.
pub(crate) struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    stderr: MemoryOutputPipe,
    plugin: Arc<str>,
    log_lines: u32,
}

impl SandboxState {
    /// What the plugin wrote to stderr (bounded), lossily decoded.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim_end().to_owned()
    }
}

/// Builds the store for one evaluation: fresh state, the plugin's memory cap, its
/// deadline in epoch ticks, and its fuel budget when fuel metering is on.
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    plugin: &Arc<str>,
    limits: &PluginLimits,
    now: Timestamp,
    fuel_enabled: bool,
) -> Store<SandboxState> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
    let wasi = WasiCtxBuilder::new()
        .stderr(stderr.clone())
        .wall_clock(FrozenWallClock(now))
        .monotonic_clock(StoppedMonotonicClock)
        .secure_random(Deterministic::new(vec![0x5a, 0x17, 0xc3, 0x9e]))
        .insecure_random(Deterministic::new(vec![0x3c, 0xa5, 0x0f, 0x71]))
        .insecure_random_seed(0x7461_6777_6172_6465_6e00_0000_0000_0001)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let state = SandboxState {
        wasi,
        table: ResourceTable::new(),
        memory: MemoryCap { limit: limits.memory_bytes, exceeded: false },
        stderr,
        plugin: plugin.clone(),
        log_lines: 0,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.memory);
    store.set_epoch_deadline(limits.deadline_ticks());
    if fuel_enabled {
        // With metering on engine-wide, a plugin without a budget still needs fuel.
        let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
    }
    store
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl super::bindings::retention::tagwarden::policy::types::Host for SandboxState {}

impl super::bindings::retention::tagwarden::policy::log::Host for SandboxState {
    fn log(&mut self, level: LogLevel, message: String) {
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

/// Caps linear memory; remembers whether the cap was hit so the error can say so.
pub(crate) struct MemoryCap {
    limit: usize,
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
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

struct FrozenWallClock(Timestamp);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_micros(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.unix_micros().max(0) as u64)
    }
}

struct StoppedMonotonicClock;

impl HostMonotonicClock for StoppedMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}
